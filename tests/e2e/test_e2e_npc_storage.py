"""End to end: the NPC storage flags of `avatar-backend serve` reach the worker. A killed worker keeps the
NPC of a live session (periodic snapshots), a new NPC beyond --max-stored-npcs is refused with
RESOURCE_EXHAUSTED, and ServerInfo.limits says what was set."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import grpc
import pytest
from e2e_helpers import FPS, RATE, SIZE, Server, collect, frames_of, run

from avatar_backend.client import AvatarClient, AvatarError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def worker_pids(server: Server) -> list[int]:
    return [int(m.group(1)) for line in list(server.output) if (m := re.search(r"worker pid (\d+) ready", line))]


def test_storage_flags_snapshots_survive_a_killed_worker_and_the_npc_cap_refuses(tmp_path, speech):
    server = Server(tmp_path, "--max-stored-npcs", "1", "--npc-snapshot-interval-s", "1",
                    "--max-parked-memory-bytes", "1M").start()

    async def scenario():
        async with AvatarClient(server.address) as client:
            limits = (await client.server_info()).limits
            assert (limits.max_stored_npcs, limits.npc_snapshot_interval_s, limits.max_parked_memory_bytes) == (
                1, 1, 1 << 20)

            [first_worker] = worker_pids(server)
            with pytest.raises(AvatarError) as lost:
                async with client.converse("keeper", "default", width=SIZE, height=SIZE, fps=FPS) as conv:
                    await conv.send_audio_pcm(speech[:RATE])
                    await collect(conv, lambda items: len(frames_of(items)) >= 21)
                    await asyncio.sleep(2.5)              # past the snapshot interval, the session still open
                    os.kill(first_worker, signal.SIGKILL)
                    await collect(conv, lambda items: False, timeout=30)
            assert lost.value.code is grpc.StatusCode.UNAVAILABLE

            deadline = time.monotonic() + 120
            while len(worker_pids(server)) < 2:           # the gateway restarts its worker
                assert time.monotonic() < deadline, "".join(server.output[-40:])
                await asyncio.sleep(0.2)
            while not (await client.server_info()).worker_ready:   # and serves again once it is ready
                assert time.monotonic() < deadline, "".join(server.output[-40:])
                await asyncio.sleep(0.2)
            keeper = await client.get_npc("keeper")
            assert keeper.character_id == "default" and keeper.blocks_generated >= 1

            with pytest.raises(AvatarError) as refused:
                async with client.converse("newcomer", "default", width=SIZE, height=SIZE, fps=FPS) as conv:
                    await conv.next_item(timeout=30)
            assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-stored-npcs" in refused.value.details
            assert [n.npc_id for n in await client.list_npcs()] == ["keeper"]

    try:
        run(scenario())
    finally:
        assert server.stop() == 0, "".join(server.output[-40:])
    assert sorted(p.name for p in (tmp_path / "npcs").iterdir()) == ["keeper.npcmem"]
