"""Caps on what NPCs may take: the number of stored NPCs and their bytes on disk (a new NPC beyond either is
refused with RESOURCE_EXHAUSTED, existing ones keep working) and host memory for parked memories (beyond it
the least recently used goes to disk, never refused)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from stand_in_generator import WORKER_ENV, StandInGenerator
from worker_helpers import open_npc

from avatar_backend.gateway.limits import Limits, parse_byte_size
from avatar_backend.gateway.status import failure_from_worker
from avatar_backend.worker.config import WorkerConfig
from avatar_backend.worker.engine import Engine
from avatar_backend.worker.executor import InProcessExecutor
from avatar_backend.worker.link import GatewayLink, WorkerRequestError
from avatar_backend.worker.main import parse_args
from avatar_backend.worker.memory_pool import MemoryPool, PoolError
from avatar_backend.worker.process import WorkerProcess, WorkerProcessConfig


def talk(pipeline: StandInGenerator, pool: MemoryPool, npc_id: str, memory) -> None:
    pool.mark_updated(npc_id)
    consume, lookahead = pipeline.block_audio_samples(memory)
    pipeline.generate_block(memory, None, np.zeros(consume + lookahead, np.float32), None)


def session(pipeline, pool: MemoryPool, npc_id: str, **kw) -> None:
    memory, _ = pool.acquire(npc_id, f"s-{npc_id}", **kw)
    talk(pipeline, pool, npc_id, memory)
    pool.release(npc_id)


def npc_files(data_dir) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in data_dir.npcs_dir.iterdir()}


def test_a_new_npc_beyond_the_stored_count_is_refused_and_existing_ones_keep_working(pipeline, data_dir):
    pool = MemoryPool(pipeline, data_dir, StandInGenerator.codec, max_stored_npcs=2)
    session(pipeline, pool, "a", character_id="villager")
    pool.acquire("b", "s-b", character_id="villager")   # live and not written yet: it counts too
    with pytest.raises(PoolError) as err:
        pool.acquire("c", "s-c", character_id="villager")
    assert err.value.code == "RESOURCE_EXHAUSTED"
    assert "max_stored_npcs (2)" in err.value.message and "--max-stored-npcs" in err.value.message
    assert "npc rm" in err.value.message
    assert not pool.is_live("c")

    session(pipeline, pool, "a")                         # existing NPCs: resumed and reset as before
    memory, resumed = pool.acquire("a", "s-a2", reset=True)
    assert not resumed and memory.blocks_generated == 0
    pool.release("a")
    pool.release("b")
    assert sorted(npc_files(data_dir)) == ["a.npcmem", "b.npcmem"]

    pool.delete("a")                                     # room again
    session(pipeline, pool, "c", character_id="villager")
    assert sorted(npc_files(data_dir)) == ["b.npcmem", "c.npcmem"]


def test_a_new_npc_beyond_the_stored_bytes_is_refused_counting_files_already_there(pipeline, data_dir):
    one = pipeline.memory_bytes(64, 64)
    big = pipeline.memory_bytes(128, 128)
    first = MemoryPool(pipeline, data_dir, StandInGenerator.codec)
    session(pipeline, first, "a", character_id="villager")
    on_disk = npc_files(data_dir)["a.npcmem"]
    assert on_disk > one                                  # the file holds a header besides the memory

    # A restarted worker with room for one more small NPC, not a big one: it counts the file it finds, and
    # the size the new memory will have (known before allocation).
    pool = MemoryPool(pipeline, data_dir, StandInGenerator.codec, max_stored_bytes=on_disk + one + one // 2)
    with pytest.raises(PoolError) as err:
        pool.acquire("c", "s-c", character_id="villager", width=128, height=128)
    assert err.value.code == "RESOURCE_EXHAUSTED"
    assert "max_stored_npc_bytes" in err.value.message and "--max-stored-npc-bytes" in err.value.message
    assert f"128x128 memory ({big} bytes)" in err.value.message
    session(pipeline, pool, "b", character_id="villager")
    with pytest.raises(PoolError) as err:
        pool.acquire("c", "s-c", character_id="villager")
    assert err.value.code == "RESOURCE_EXHAUSTED"
    assert sorted(npc_files(data_dir)) == ["a.npcmem", "b.npcmem"]
    session(pipeline, pool, "a")                          # existing NPCs keep working


@pytest.mark.parametrize("parked", ["resident", "on disk"])
def test_an_npc_whose_memory_does_not_fit_on_the_device_is_refused_and_nothing_is_lost(pipeline, data_dir,
                                                                                      monkeypatch, parked):
    torch = pytest.importorskip("torch")
    pool = MemoryPool(pipeline, data_dir, StandInGenerator.codec,
                      resident_budget_bytes=1 << 30 if parked == "resident" else 0)
    session(pipeline, pool, "a", character_id="villager")
    assert pool.resident_ids == (["a"] if parked == "resident" else [])

    def device_full(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 35.20 GiB")

    with monkeypatch.context() as device:
        device.setattr(pipeline, "new_memory", device_full)
        device.setattr(pipeline, "activate", device_full)
        for npc_id, kw in (("b", {"character_id": "villager"}), ("a", {})):
            with pytest.raises(PoolError) as err:
                pool.acquire(npc_id, f"s-{npc_id}", **kw)
            # Busy, not broken: RESOURCE_EXHAUSTED (retry later), never INTERNAL or DATA_LOSS for a stored NPC.
            assert err.value.code == "RESOURCE_EXHAUSTED" and "no device memory left" in err.value.message
            assert "--max-sessions" in err.value.message and not pool.is_live(npc_id)
    assert pool.resident_ids == (["a"] if parked == "resident" else [])
    memory, resumed = pool.acquire("a", "s-a")             # room again: the NPC continues where it was
    assert resumed and memory.blocks_generated == 1


def test_parked_memories_stay_within_their_bytes_and_the_rest_goes_to_disk(pipeline, data_dir):
    one = pipeline.memory_bytes(64, 64)
    pool = MemoryPool(pipeline, data_dir, StandInGenerator.codec, resident_budget_bytes=3 * one + one // 2)
    for n in range(10):
        session(pipeline, pool, f"npc{n}", character_id="villager")
        assert pool.resident_bytes <= 3 * one + one // 2
    assert pool.resident_ids == ["npc7", "npc8", "npc9"]
    assert len(npc_files(data_dir)) == 10
    memory, resumed = pool.acquire("npc0", "again")       # from disk, never refused
    assert resumed and memory.blocks_generated == 1

    nothing_parked = MemoryPool(pipeline, data_dir, StandInGenerator.codec, resident_budget_bytes=0)
    session(pipeline, nothing_parked, "npc1")
    assert nothing_parked.resident_ids == [] and nothing_parked.resident_bytes == 0


def test_the_worker_refuses_open_npc_with_resource_exhausted_and_the_gateway_maps_it(pipeline, data_dir):
    class Link:
        def __init__(self):
            self.replies = {}

        def reply(self, request_id, msg, payloads=()):
            self.replies[request_id] = msg

        def emit(self, msg, payloads=()):
            pass

    link = Link()
    config = WorkerConfig(endpoint="inproc://unused", data_dir=data_dir.root, max_stored_npcs=1)
    worker = Engine(config, InProcessExecutor(pipeline), StandInGenerator.codec, link)
    for rid, npc in ((1, "a"), (2, "b")):
        worker.handle(*open_npc(data_dir, "villager", request_id=rid, session_id=f"s-{npc}", npc_id=npc,
                                character_id="villager"))
    assert link.replies[1].WhichOneof("body") == "npc_opened"
    error = link.replies[2].error
    assert error.code == "RESOURCE_EXHAUSTED" and "--max-stored-npcs" in error.message
    failure = failure_from_worker(WorkerRequestError(error.code, error.message))
    assert failure.code is grpc.StatusCode.RESOURCE_EXHAUSTED and "max_stored_npcs" in failure.message


def test_the_caps_reach_a_worker_process_through_its_config(data_dir):
    async def main():
        async with GatewayLink() as link:
            config = WorkerProcessConfig(data_dir=data_dir.root, env=WORKER_ENV,
                                         ready_timeout_s=30, max_stored_npcs=1, max_stored_npc_bytes=1 << 40,
                                         max_parked_memory_bytes=12345, voice_jitter_budget_ms=250)
            worker = WorkerProcess(link, config)
            cmd = worker.command()
            parsed = parse_args(cmd[cmd.index("avatar_backend.worker") + 1:])
            assert (parsed.max_stored_npcs, parsed.max_stored_npc_bytes, parsed.resident_budget_bytes) == (
                1, 1 << 40, 12345)
            assert parsed.scheduler.voice_jitter_budget_s == 0.25
            await worker.start()
            try:
                await link.request(*open_npc(data_dir, "villager", session_id="s1", npc_id="first",
                                             character_id="villager"), timeout=10)
                with pytest.raises(WorkerRequestError) as err:
                    await link.request(*open_npc(data_dir, "villager", session_id="s2", npc_id="second",
                                                 character_id="villager"), timeout=10)
                assert err.value.code == "RESOURCE_EXHAUSTED" and "max_stored_npcs (1)" in err.value.message
            finally:
                await worker.stop(timeout=10)
        assert sorted(p.name for p in data_dir.npcs_dir.iterdir()) == ["first.npcmem"]

    asyncio.run(asyncio.wait_for(main(), 60))


def test_limits_publish_the_caps_and_the_serve_flags_set_them():
    from avatar_backend.cli import build_parser

    args = build_parser().parse_args(["serve", "--max-stored-npcs", "10", "--max-stored-npc-bytes", "2G",
                                      "--max-parked-memory-bytes", "512M", "--npc-snapshot-interval-s", "15",
                                      "--voice-jitter-budget-ms", "300", "--max-sessions", "3"])
    assert (args.max_stored_npcs, args.max_stored_npc_bytes, args.max_parked_memory_bytes,
            args.npc_snapshot_interval_s, args.voice_jitter_budget_ms) == (10, 2 << 30, 512 << 20, 15.0, 300)
    # The session cap reaches the server (and ServerInfo.limits.max_sessions), the default too.
    from avatar_backend.cli.serve import server_options

    assert server_options(args, Path("data"), None).limits().max_sessions == 3
    defaults = build_parser().parse_args(["serve"])
    assert server_options(defaults, Path("data"), None).limits().max_sessions == Limits.max_sessions
    assert defaults.max_stored_npcs == Limits.max_stored_npcs > 0
    assert defaults.npc_snapshot_interval_s == Limits.npc_snapshot_interval_s > 0

    proto = Limits(max_stored_npcs=10, max_stored_npc_bytes=2 << 30, max_parked_memory_bytes=512 << 20,
                   max_reference_image_pixels=1000, npc_snapshot_interval_s=0.5).to_proto()
    assert (proto.max_stored_npcs, proto.max_stored_npc_bytes, proto.max_parked_memory_bytes,
            proto.max_reference_image_pixels, proto.npc_snapshot_interval_s) == (10, 2 << 30, 512 << 20, 1000, 1)
    assert Limits(npc_snapshot_interval_s=0).to_proto().npc_snapshot_interval_s == 0
    assert Limits().to_proto().voice_jitter_budget_ms == 500
    assert Limits(voice_jitter_budget_ms=120).to_proto().voice_jitter_budget_ms == 120


@pytest.mark.parametrize("text,value", [("1073741824", 1 << 30), ("512M", 512 << 20), ("64G", 64 << 30),
                                        ("1.5GiB", 3 << 29), ("0", 0), ("2t", 2 << 40)])
def test_byte_sizes(text, value):
    assert parse_byte_size(text) == value


@pytest.mark.parametrize("text", ["", "-1G", "12Q", "G", "1 0"])
def test_bad_byte_sizes(text):
    with pytest.raises(ValueError):
        parse_byte_size(text)
