"""The per-session outbound queue: oldest frames dropped, everything else kept, order preserved."""

from __future__ import annotations

import asyncio

import pytest

from avatar_backend.gateway.outbound import OutboundOverflow, OutboundQueue


async def _drain(queue: OutboundQueue) -> list:
    items = []
    while (item := await queue.get()) is not None:
        items.append(item)
    return items


def test_drops_the_oldest_frames_only():
    async def scenario():
        queue = OutboundQueue(max_frames=3, max_undroppable_bytes=1000)
        queue.put("echo-0", 10)
        dropped = [queue.put_frame(f"frame-{i}") for i in range(5)]
        queue.put("event", 1)
        queue.put_frame("frame-5")
        queue.close()
        return dropped, queue.frames_dropped, await _drain(queue)

    dropped, frames_dropped, items = asyncio.run(scenario())
    assert dropped == [False, False, False, True, True]
    assert frames_dropped == 3
    assert items == [("echo-0", False), ("frame-3", True), ("frame-4", True), ("event", False), ("frame-5", True)]


def test_close_can_discard_frames_but_keeps_events():
    async def scenario():
        queue = OutboundQueue(max_frames=10, max_undroppable_bytes=1000)
        queue.put_frame("frame")
        queue.put("draining")
        queue.close(discard_frames=True)
        queue.put("late")  # ignored after close
        return await _drain(queue)

    assert asyncio.run(scenario()) == [("draining", False)]


def test_get_waits_for_a_message():
    async def scenario():
        queue = OutboundQueue(max_frames=2, max_undroppable_bytes=1000)
        getter = asyncio.ensure_future(queue.get())
        await asyncio.sleep(0.01)
        assert not getter.done()
        queue.put_frame("frame")
        return await asyncio.wait_for(getter, 1)

    assert asyncio.run(scenario()) == ("frame", True)


def test_undroppable_backlog_is_bounded():
    async def scenario():
        queue = OutboundQueue(max_frames=2, max_undroppable_bytes=100)
        queue.put("a", 60)
        with pytest.raises(OutboundOverflow):
            queue.put("b", 60)
        await queue.get()  # the client read one: room again
        queue.put("b", 60)

    asyncio.run(scenario())
