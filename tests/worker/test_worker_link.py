"""The ZeroMQ link: requests and replies with large payloads, session events, timeouts, a restarted worker."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest

from avatar_backend.proto_gen import worker_pb2 as pb
from avatar_backend.worker.link import (
    GatewayLink,
    WorkerLink,
    WorkerLost,
    WorkerRequestError,
    WorkerUnavailableError,
)

FRAMES = np.random.default_rng(0).integers(0, 256, size=(32, 256, 320, 3), dtype=np.uint8)  # 7.9 MB


def standard_behaviour(link: WorkerLink, msg: pb.ToWorker, payloads: list[memoryview]) -> None:
    body = msg.WhichOneof("body")
    if body == "ping":
        link.reply(msg.request_id, pb.FromWorker(pong=pb.Pong(pid=1)))
    elif body == "push_audio":
        # Echo the PCM back and add a frame block: both must arrive intact.
        assert all(isinstance(p, memoryview) for p in payloads)
        pcm = np.frombuffer(payloads[0], dtype=np.float32)
        link.reply(msg.request_id, pb.FromWorker(ack=pb.Ack()), [pcm, FRAMES])
    elif body == "open_npc":
        sid = msg.open_npc.session_id
        link.emit(pb.FromWorker(frame_block=pb.FrameBlock(session_id=sid, num_frames=32)),
                  [FRAMES, np.zeros(25600, np.float32)])
        link.emit(pb.FromWorker(utterance_done=pb.UtteranceDone(session_id="someone-else")))
        link.reply(msg.request_id, pb.FromWorker(npc_opened=pb.NpcOpened(session_id=sid)))
    elif body == "delete_npc":
        link.reply(msg.request_id, pb.FromWorker(error=pb.WorkerError(code="NOT_FOUND", message="no NPC")))
    # npc_query: never answered (a stuck worker)


class ThreadWorker:
    """A WorkerLink served from a thread, like the worker process's loop."""

    def __init__(self, endpoint: str, behaviour: Callable = standard_behaviour):
        self.endpoint = endpoint
        self.behaviour = behaviour
        self.stop_event = threading.Event()
        self.received: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        link = WorkerLink(self.endpoint)
        try:
            while not self.stop_event.is_set():
                for msg, payloads in link.poll(20):
                    self.received.append(msg.WhichOneof("body"))
                    self.behaviour(link, msg, payloads)
        finally:
            link.close(linger_ms=0)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_round_trip_with_large_payloads():
    async def main():
        async with GatewayLink() as link:
            worker = ThreadWorker(link.connect_endpoint)
            try:
                await link.wait_connected(5)
                pcm = np.linspace(-1, 1, 1_000_000, dtype=np.float32)   # 4 MB
                reply, payloads = await link.request(
                    pb.ToWorker(push_audio=pb.PushAudio(session_id="s", num_samples=pcm.size)), [pcm], timeout=5)
                assert reply.WhichOneof("body") == "ack" and reply.request_id > 0
                assert all(isinstance(p, memoryview) for p in payloads)
                np.testing.assert_array_equal(np.frombuffer(payloads[0], dtype=np.float32), pcm)
                frames = np.frombuffer(payloads[1], dtype=np.uint8).reshape(FRAMES.shape)
                np.testing.assert_array_equal(frames, FRAMES)
            finally:
                worker.stop()

    run(main())


def test_session_events_go_to_the_subscribed_queue():
    async def main():
        async with GatewayLink() as link:
            worker = ThreadWorker(link.connect_endpoint)
            try:
                await link.wait_connected(5)
                queue = link.subscribe("s1")
                reply, _ = await link.request(pb.ToWorker(open_npc=pb.OpenNpc(session_id="s1", npc_id="n")))
                assert reply.npc_opened.session_id == "s1"
                msg, payloads = await asyncio.wait_for(queue.get(), 5)
                assert msg.frame_block.num_frames == 32 and len(payloads) == 2
                np.testing.assert_array_equal(np.frombuffer(payloads[0], np.uint8).reshape(FRAMES.shape), FRAMES)
                assert queue.empty()  # the other session's event was not delivered here
                link.unsubscribe("s1")
            finally:
                worker.stop()

    run(main())


def test_errors_and_timeouts():
    async def main():
        async with GatewayLink() as link:
            with pytest.raises(WorkerUnavailableError):
                await link.request(pb.ToWorker(ping=pb.Ping()), timeout=1)
            with pytest.raises(WorkerUnavailableError):
                link.send(pb.ToWorker(ping=pb.Ping()))
            worker = ThreadWorker(link.connect_endpoint)
            try:
                await link.wait_connected(5)
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(WorkerUnavailableError, match="did not answer npc_query"):
                    await link.request(pb.ToWorker(npc_query=pb.NpcQuery()), timeout=0.3)
                assert loop.time() - started < 2
                with pytest.raises(WorkerRequestError) as err:
                    await link.request(pb.ToWorker(delete_npc=pb.DeleteNpc(npc_id="x")), timeout=5)
                assert err.value.code == "NOT_FOUND"
                reply, _ = await link.request(pb.ToWorker(ping=pb.Ping()), timeout=5)  # still fine after
                assert reply.pong.pid == 1
            finally:
                worker.stop()

    run(main())


def test_worker_lost_fails_requests_and_ends_sessions():
    async def main():
        async with GatewayLink() as link:
            worker = ThreadWorker(link.connect_endpoint)
            try:
                await link.wait_connected(5)
                queue = link.subscribe("s1")
                pending = asyncio.ensure_future(link.request(pb.ToWorker(npc_query=pb.NpcQuery()), timeout=10))
                await asyncio.sleep(0.1)
                link.worker_lost("worker pid 42 was killed by SIGKILL")
                with pytest.raises(WorkerUnavailableError, match="SIGKILL"):
                    await pending
                item = queue.get_nowait()
                assert isinstance(item, WorkerLost) and "SIGKILL" in item.reason
                assert not link.connected
            finally:
                worker.stop()

    run(main())


def test_a_restarted_worker_on_the_same_endpoint_takes_over():
    async def main():
        async with GatewayLink("tcp://127.0.0.1:*") as link:
            assert link.endpoint.startswith("tcp://127.0.0.1:") and not link.endpoint.endswith("*")
            first = ThreadWorker(link.connect_endpoint)
            await link.wait_connected(5)
            queue = link.subscribe("s1")
            pending = asyncio.ensure_future(link.request(pb.ToWorker(npc_query=pb.NpcQuery()), timeout=10))
            await asyncio.sleep(0.1)
            first.stop()                               # the process died (nobody told the link)
            second = ThreadWorker(link.connect_endpoint)
            try:
                with pytest.raises(WorkerUnavailableError, match="restarted"):
                    await pending
                assert isinstance(await asyncio.wait_for(queue.get(), 5), WorkerLost)
                reply, _ = await link.request(pb.ToWorker(ping=pb.Ping()), timeout=5)
                assert reply.pong.pid == 1 and second.received == ["ping"]
            finally:
                second.stop()

    run(main())
