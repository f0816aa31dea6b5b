"""A killed worker takes the processes it started with it: the supervisor kills the worker's process group, so
follower ranks blocked in a collective do not outlive a hung or dead worker, and a stop stays the graceful one.
The real worker entry point with the stand-in generator and a stand-in follower, so it runs without torch; the
same on a real two-rank worker is in test_worker_ranks.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest
from stand_in_generator import WORKER_ENV, StandInGenerator
from worker_helpers import open_npc, until_process_gone

from avatar_backend.worker.link import GatewayLink
from avatar_backend.worker.process import WorkerProcess, WorkerProcessConfig


async def _restarted(worker: WorkerProcess, old_pid: int, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if worker.ready and worker.pid not in (0, old_pid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker pid {old_pid} was not replaced within {timeout:.0f}s")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_hung_or_dead_worker_takes_its_follower_with_it_and_a_stop_still_saves(data_dir, tmp_path):
    follower_pids = tmp_path / "followers"

    def followers() -> list[int]:
        return [int(line) for line in follower_pids.read_text().split()]

    async def main():
        lost: list[str] = []
        async with GatewayLink() as link:
            config = WorkerProcessConfig(
                data_dir=data_dir.root, env={**WORKER_ENV, "AVATAR_STAND_IN_FOLLOWER_PID_FILE": str(follower_pids)},
                ready_timeout_s=30, restart_backoff_s=0.1, heartbeat_interval_s=0.2, hang_timeout_s=1.0)
            worker = WorkerProcess(link, config, on_lost=lost.append)
            await worker.start()
            try:
                # Hung: the worker stops answering and is killed, its follower with it.
                hung_pid = worker.pid
                [follower] = followers()
                os.kill(hung_pid, signal.SIGSTOP)
                await _restarted(worker, hung_pid)
                assert len(lost) == 1 and "did not answer" in lost[0], lost
                assert await until_process_gone(follower), f"follower pid {follower} outlived its hung worker"

                # Dead: killed from outside, while its follower still holds the worker's output open.
                dead_pid = worker.pid
                follower = followers()[-1]
                os.kill(dead_pid, signal.SIGKILL)
                await _restarted(worker, dead_pid)
                assert len(lost) == 2 and "SIGKILL" in lost[1], lost
                assert await until_process_gone(follower), f"follower pid {follower} outlived its dead worker"

                # A stop is still the graceful one: the worker saves its NPCs, then nothing of it is left.
                follower = followers()[-1]
                reply, _ = await link.request(*open_npc(data_dir, "villager", session_id="s1", npc_id="guard",
                                                        character_id="villager"), timeout=10)
                assert reply.WhichOneof("body") == "npc_opened", reply
            finally:
                await worker.stop(timeout=10)
            assert len(lost) == 2
            assert StandInGenerator.codec.read_header(data_dir.npc_memory_path("guard"))["character_id"] == "villager"
            assert await until_process_gone(follower), f"follower pid {follower} outlived its stopped worker"

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
    finally:
        for pid in followers() if follower_pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
