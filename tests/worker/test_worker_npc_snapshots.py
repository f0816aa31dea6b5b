"""Periodic snapshots of live NPC memories: a worker crash loses at most one interval, sessions never wait
for the file, and an older snapshot never lands over a newer one."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import numpy as np
import pytest
from stand_in_generator import WORKER_ENV, StandInGenerator, StandInMemory
from worker_helpers import FakeClock, open_npc

from avatar_backend.proto_gen import worker_pb2 as pb
from avatar_backend.worker.link import GatewayLink, WorkerLost
from avatar_backend.worker.memory_pool import MemoryPool
from avatar_backend.worker.process import WorkerProcess, WorkerProcessConfig

INTERVAL_S = 30.0


def talk(pipeline: StandInGenerator, pool: MemoryPool, npc_id: str, memory, blocks: int = 1) -> None:
    for _ in range(blocks):
        pool.mark_updated(npc_id)
        consume, lookahead = pipeline.block_audio_samples(memory)
        pipeline.generate_block(memory, None, np.zeros(consume + lookahead, np.float32), None)


def blocks_on_disk(data_dir, npc_id: str) -> int | None:
    path = data_dir.npc_memory_path(npc_id)
    return StandInGenerator.codec.read_header(path)["blocks_generated"] if path.is_file() else None


def wait_written(pool: MemoryPool, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while pool.snapshot_in_flight:
        assert time.monotonic() < deadline, "the snapshot write did not finish"
        time.sleep(0.01)


class SlowDisk:
    """Makes StandInMemory.save wait until released (a slow disk), counting writes in progress."""

    def __init__(self, monkeypatch):
        self.release = threading.Event()
        self.started = threading.Event()
        self.in_progress = 0
        self.most_at_once = 0
        original = StandInMemory.save
        disk = self

        def save(memory, path):
            if threading.current_thread() is not threading.main_thread():
                disk.in_progress += 1
                disk.most_at_once = max(disk.most_at_once, disk.in_progress)
                disk.started.set()
                disk.release.wait(10)
                disk.in_progress -= 1
            original(memory, path)

        monkeypatch.setattr(StandInMemory, "save", save)


def test_a_live_npc_is_on_disk_one_interval_after_it_changed(pipeline, data_dir):
    clock = FakeClock()
    pool = MemoryPool(pipeline, data_dir, StandInGenerator.codec, snapshot_interval_s=INTERVAL_S, clock=clock)
    memory, _ = pool.acquire("newcomer", "s1", character_id="villager")
    talk(pipeline, pool, "newcomer", memory, 2)
    assert not pool.snapshot_due() and blocks_on_disk(data_dir, "newcomer") is None  # not due yet

    clock.advance(INTERVAL_S)
    assert pool.snapshot_due()
    wait_written(pool)
    talk(pipeline, pool, "newcomer", memory, 1)     # the session goes on; the file holds the copy's state
    assert not pool.snapshot_due()                  # collects the finished write; next one in an interval
    assert blocks_on_disk(data_dir, "newcomer") == 2
    assert pool.is_live("newcomer") and pool.query("newcomer")[0].live

    clock.advance(INTERVAL_S)
    assert pool.snapshot_due()
    wait_written(pool)
    pool.snapshot_due()
    assert blocks_on_disk(data_dir, "newcomer") == 3


def test_an_unchanged_npc_is_not_rewritten_and_zero_turns_it_off(pipeline, data_dir):
    clock = FakeClock()
    pool = MemoryPool(pipeline, data_dir, StandInGenerator.codec, snapshot_interval_s=INTERVAL_S, clock=clock)
    memory, _ = pool.acquire("guard", "s1", character_id="villager")
    talk(pipeline, pool, "guard", memory)
    pool.release("guard")
    mtime = data_dir.npc_memory_path("guard").stat().st_mtime_ns
    pool.acquire("guard", "s2")                     # resumed, no block yet: nothing new to save
    clock.advance(10 * INTERVAL_S)
    assert not pool.snapshot_due()
    assert data_dir.npc_memory_path("guard").stat().st_mtime_ns == mtime

    off = MemoryPool(pipeline, data_dir, StandInGenerator.codec, snapshot_interval_s=0, clock=clock)
    memory, _ = off.acquire("smith", "s3", character_id="smith")
    talk(pipeline, off, "smith", memory)
    clock.advance(10 * INTERVAL_S)
    assert not off.snapshot_due() and blocks_on_disk(data_dir, "smith") is None


def test_the_loop_never_waits_for_the_file_and_one_write_at_a_time(pipeline, data_dir, monkeypatch):
    disk = SlowDisk(monkeypatch)
    clock = FakeClock()
    pool = MemoryPool(pipeline, data_dir, StandInGenerator.codec, snapshot_interval_s=INTERVAL_S, clock=clock)
    memories = {}
    for npc in ("a", "b", "c"):
        memories[npc], _ = pool.acquire(npc, f"s-{npc}", character_id="villager")
        talk(pipeline, pool, npc, memories[npc])
    clock.advance(INTERVAL_S)

    started = time.monotonic()
    assert pool.snapshot_due()
    assert disk.started.wait(5)
    for _ in range(20):                             # the loop goes on: blocks run, no second write starts
        assert not pool.snapshot_due()
        talk(pipeline, pool, "a", memories["a"])
    # The disk holds the write for 10 s: a loop that waited for it would take that long.
    assert time.monotonic() - started < 5.0, "snapshot_due waited for the disk"
    assert disk.most_at_once == 1 and pool.snapshot_in_flight == "a"

    disk.release.set()
    wait_written(pool)
    written = 0
    for _ in range(10):                             # the other two follow, one per call
        written += pool.snapshot_due()
        wait_written(pool)
    assert written == 2 and disk.most_at_once == 1
    assert {npc: blocks_on_disk(data_dir, npc) for npc in "abc"} == {"a": 1, "b": 1, "c": 1}


def test_an_older_snapshot_never_lands_over_a_newer_save(pipeline, data_dir, monkeypatch):
    disk = SlowDisk(monkeypatch)
    clock = FakeClock()
    pool = MemoryPool(pipeline, data_dir, StandInGenerator.codec, snapshot_interval_s=INTERVAL_S, clock=clock)
    memory, _ = pool.acquire("guard", "s1", character_id="villager")
    talk(pipeline, pool, "guard", memory, 1)
    clock.advance(INTERVAL_S)
    assert pool.snapshot_due() and disk.started.wait(5)   # block 1 being written, slowly
    talk(pipeline, pool, "guard", memory, 2)
    threading.Timer(0.2, disk.release.set).start()
    pool.release("guard")                           # saves block 3: waits for the block-1 write first
    time.sleep(0.3)
    assert blocks_on_disk(data_dir, "guard") == 3
    restarted = MemoryPool(pipeline, data_dir, StandInGenerator.codec)
    memory, resumed = restarted.acquire("guard", "s2")
    assert resumed and memory.blocks_generated == 3


def test_a_worker_killed_after_the_interval_keeps_its_new_npc_and_its_blocks(data_dir):
    async def main():
        async with GatewayLink() as link:
            config = WorkerProcessConfig(data_dir=data_dir.root, env=WORKER_ENV,
                                         restart_backoff_s=0.1, ready_timeout_s=30, npc_snapshot_interval_s=0.3)
            worker = WorkerProcess(link, config)
            await worker.start()
            first_pid = worker.pid
            queue = link.subscribe("s1")
            reply, _ = await link.request(*open_npc(data_dir, "villager", session_id="s1", npc_id="newcomer",
                                                    character_id="villager"), timeout=10)
            assert not reply.npc_opened.resumed
            blocks = 0
            while blocks < 2:
                item = await asyncio.wait_for(queue.get(), 10)
                assert not isinstance(item, WorkerLost), item
                blocks += item[0].WhichOneof("body") == "frame_block"
            await asyncio.sleep(1.0)                # a few intervals

            os.kill(first_pid, signal.SIGKILL)      # no shutdown, no session end: only the periodic snapshots
            for _ in range(200):
                if worker.ready and worker.pid not in (0, first_pid):
                    break
                await asyncio.sleep(0.05)
            assert worker.ready and worker.pid != first_pid

            reply, _ = await link.request(pb.ToWorker(npc_query=pb.NpcQuery(npc_id="newcomer")), timeout=10)
            [npc] = reply.npc_list.npcs
            assert npc.character_id == "villager" and npc.blocks_generated >= 2
            reply, _ = await link.request(*open_npc(data_dir, "villager", session_id="s2", npc_id="newcomer"),
                                          timeout=10)
            assert reply.npc_opened.resumed and reply.npc_opened.npc.blocks_generated == npc.blocks_generated
            await worker.stop(timeout=10)

    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("interval", [0.0, 0.5, 60.0])
def test_the_interval_reaches_the_worker_through_its_process_config(interval, data_dir):
    from avatar_backend.worker.main import parse_args

    async def command() -> list[str]:
        async with GatewayLink() as link:
            config = WorkerProcessConfig(data_dir=data_dir.root, npc_snapshot_interval_s=interval)
            return WorkerProcess(link, config).command()

    cmd = asyncio.run(command())
    config = parse_args(cmd[cmd.index("avatar_backend.worker") + 1:])
    assert config.npc_snapshot_interval_s == interval


def test_a_generator_memory_copy_is_frozen_while_the_original_talks_on(tmp_path):
    torch = pytest.importorskip("torch")
    from avatar_backend.generator.convkv import ConvKVMemory, SlotLayout, StepCache
    from avatar_backend.generator.memory import NpcMemory
    from avatar_backend.generator.vae import CausalCache

    step = StepCache(torch.zeros(2, 1, 14, 1, 4), torch.zeros(2, 1, 14, 1, 4), SlotLayout())
    memory = NpcMemory(npc_id="guard", character_id="villager", model_name="tiny", width=64, height=64, fps=20,
                       seed=7, blocks_generated=3, convkv=ConvKVMemory(steps=[step]), decoder=CausalCache(),
                       audio_tail=torch.zeros(8), noise_state=torch.arange(6, dtype=torch.uint8))
    frozen = memory.host_copy()
    memory.convkv.steps[0].k.add_(1.0)          # the next block updates the caches in place
    memory.blocks_generated = 4
    frozen.save(tmp_path / "guard.npcmem")
    restored = NpcMemory.load(tmp_path / "guard.npcmem")
    assert restored.blocks_generated == 3 and torch.equal(restored.convkv.steps[0].k, torch.zeros(2, 1, 14, 1, 4))
    assert restored.resume_token() == f"{memory.lineage}-3" and restored.nbytes() == memory.nbytes()
