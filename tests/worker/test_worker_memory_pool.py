"""NPC memories: one live session per NPC, resident LRU parking, snapshots on disk, queries, reset, delete."""

from __future__ import annotations

import numpy as np
import pytest
from stand_in_generator import StandInGenerator

from avatar_backend.worker.memory_pool import (
    MemoryCodec,
    MemoryPool,
    PoolError,
    derive_seed,
)


def make_pool(pipeline: StandInGenerator, data_dir, budget: int = 1 << 30, codec: MemoryCodec | None = None) -> MemoryPool:
    return MemoryPool(pipeline, data_dir, codec or StandInGenerator.codec, resident_budget_bytes=budget)


def talk(pipeline: StandInGenerator, memory, blocks: int = 1) -> None:
    for _ in range(blocks):
        consume, lookahead = pipeline.block_audio_samples(memory)
        pipeline.generate_block(memory, None, np.zeros(consume + lookahead, np.float32), None)


def code_of(excinfo) -> str:
    return excinfo.value.code


def test_one_live_session_per_npc(pipeline, data_dir):
    pool = make_pool(pipeline, data_dir)
    memory, resumed = pool.acquire("guard", "s1", character_id="villager")
    assert not resumed and memory.width == 64 and memory.fps == 20
    with pytest.raises(PoolError) as err:
        pool.acquire("guard", "s2", character_id="villager")
    assert code_of(err) == "ABORTED"
    with pytest.raises(PoolError) as err:
        pool.reset("guard")
    assert code_of(err) == "ABORTED"
    with pytest.raises(PoolError) as err:
        pool.delete("guard")
    assert code_of(err) == "ABORTED"


def test_new_npc_needs_a_character_and_a_supported_size(pipeline, data_dir):
    pool = make_pool(pipeline, data_dir)
    with pytest.raises(PoolError) as err:
        pool.acquire("guard", "s1")
    assert code_of(err) == "INVALID_ARGUMENT" and "character_id" in err.value.message
    with pytest.raises(PoolError) as err:
        pool.acquire("guard", "s1", character_id="villager", width=100, height=100)
    assert code_of(err) == "INVALID_ARGUMENT" and "100x100" in err.value.message
    with pytest.raises(PoolError) as err:
        pool.acquire("../etc", "s1", character_id="villager")
    assert code_of(err) == "INVALID_ARGUMENT"
    assert pool.live_ids == []


def test_release_snapshots_and_resumes(pipeline, data_dir):
    pool = make_pool(pipeline, data_dir)
    memory, _ = pool.acquire("guard", "s1", character_id="villager", seed=0)
    assert memory.seed == derive_seed("guard")
    talk(pipeline, memory, 2)
    pool.mark_updated("guard")
    state = pool.release("guard")
    assert not state.live and state.blocks_generated == 2 and state.frames_generated == 53
    assert data_dir.npc_memory_path("guard").is_file()
    again, resumed = pool.acquire("guard", "s2", resume_token=state.resume_token)
    assert resumed and again is memory  # resident: no reload


def test_resume_checks_token_character_and_size(pipeline, data_dir):
    pool = make_pool(pipeline, data_dir)
    memory, _ = pool.acquire("guard", "s1", character_id="villager")
    talk(pipeline, memory)
    pool.mark_updated("guard")
    token = pool.release("guard").resume_token
    for kwargs, code in [
        ({"resume_token": "stale-1"}, "FAILED_PRECONDITION"),
        ({"character_id": "smith"}, "INVALID_ARGUMENT"),
        ({"width": 128, "height": 128}, "INVALID_ARGUMENT"),
        ({"fps": 25}, "INVALID_ARGUMENT"),
    ]:
        with pytest.raises(PoolError) as err:
            pool.acquire("guard", "s2", **kwargs)
        assert code_of(err) == code, kwargs
    memory, resumed = pool.acquire("guard", "s2", character_id="villager", resume_token=token)
    assert resumed and memory.blocks_generated == 1


def test_reset_memory_on_open_starts_fresh_with_the_same_character(pipeline, data_dir):
    pool = make_pool(pipeline, data_dir)
    memory, _ = pool.acquire("guard", "s1", character_id="villager")
    talk(pipeline, memory)
    pool.mark_updated("guard")
    pool.release("guard")
    fresh, resumed = pool.acquire("guard", "s2", reset=True)
    assert not resumed and fresh.blocks_generated == 0 and fresh.character_id == "villager"


def test_lru_eviction_keeps_memories_on_disk(pipeline, data_dir):
    one = pipeline.memory_bytes(64, 64)
    pool = make_pool(pipeline, data_dir, budget=int(2.5 * one))
    for npc in ("a", "b", "c"):
        memory, _ = pool.acquire(npc, f"s-{npc}", character_id="villager")
        talk(pipeline, memory)
        pool.mark_updated(npc)
        pool.release(npc)
    assert pool.resident_ids == ["b", "c"]           # "a" was least recently used
    assert pool.resident_bytes <= 2.5 * one
    assert all(data_dir.npc_memory_path(n).is_file() for n in "abc")
    memory, resumed = pool.acquire("a", "s-a2")        # back from disk
    assert resumed and memory.blocks_generated == 1
    pool.release("a")
    assert pool.resident_ids == ["c", "a"]


def test_query_lists_live_resident_and_on_disk_reading_headers_only(pipeline, data_dir):
    pool = make_pool(pipeline, data_dir)
    for npc, character in (("a", "villager"), ("b", "smith")):
        memory, _ = pool.acquire(npc, f"s-{npc}", character_id=character)
        talk(pipeline, memory)
        pool.mark_updated(npc)
        pool.release(npc)
    pool.acquire("c", "s-c", character_id="villager")

    def no_load(path, device):
        raise AssertionError("query must not load tensors")

    # A new pool on the same directory (a restarted worker) sees a and b on disk only.
    fresh = make_pool(pipeline, data_dir, codec=MemoryCodec(load=no_load, read_header=StandInGenerator.codec.read_header))
    states = fresh.query()
    assert [s.npc_id for s in states] == ["a", "b"]
    assert states[0].blocks_generated == 1 and states[0].width == 64 and not states[0].live
    assert states[0].memory_bytes == pipeline.memory_bytes(64, 64)
    assert [s.npc_id for s in fresh.query(character_id="smith")] == ["b"]
    assert fresh.query("zzz") == []

    live = {s.npc_id: s.live for s in pool.query()}
    assert live == {"a": False, "b": False, "c": True}


def test_reset_and_delete(pipeline, data_dir):
    pool = make_pool(pipeline, data_dir)
    memory, _ = pool.acquire("guard", "s1", character_id="smith")
    talk(pipeline, memory, 3)
    pool.mark_updated("guard")
    old_token = pool.release("guard").resume_token
    state = pool.reset("guard")
    assert state.blocks_generated == 0 and state.character_id == "smith" and state.resume_token != old_token
    assert StandInGenerator.codec.read_header(data_dir.npc_memory_path("guard"))["blocks_generated"] == 0
    pool.delete("guard")
    assert not data_dir.npc_memory_path("guard").exists() and pool.query() == []
    for call in (pool.delete, pool.reset):
        with pytest.raises(PoolError) as err:
            call("guard")
        assert code_of(err) == "NOT_FOUND"


def test_abandoned_session_returns_to_the_last_snapshot(pipeline, data_dir):
    pool = make_pool(pipeline, data_dir)
    memory, _ = pool.acquire("guard", "s1", character_id="villager")
    talk(pipeline, memory)
    pool.mark_updated("guard")
    pool.release("guard")
    memory, _ = pool.acquire("guard", "s2")
    talk(pipeline, memory)
    pool.mark_updated("guard")
    pool.abandon("guard")                              # the block failed: do not keep a half-updated memory
    assert [s.blocks_generated for s in pool.query()] == [1]
    memory, _ = pool.acquire("guard", "s3")
    assert memory.blocks_generated == 1


def test_save_all_writes_live_memories(pipeline, data_dir):
    pool = make_pool(pipeline, data_dir)
    memory, _ = pool.acquire("guard", "s1", character_id="villager")
    talk(pipeline, memory, 2)
    pool.mark_updated("guard")
    assert pool.save_all() == 1
    assert StandInGenerator.codec.read_header(data_dir.npc_memory_path("guard"))["blocks_generated"] == 2
    assert pool.save_all() == 0


def test_unreadable_snapshot(pipeline, data_dir):
    pool = make_pool(pipeline, data_dir)
    data_dir.npc_memory_path("broken").write_bytes(b"garbage")
    assert pool.query() == []                          # listed NPCs skip it (with a warning)
    with pytest.raises(PoolError) as err:
        pool.query("broken")                           # asked for by name, it is reported
    assert code_of(err) == "DATA_LOSS" and "'broken'" in err.value.message
    with pytest.raises(PoolError) as err:
        pool.acquire("broken", "s1")
    assert code_of(err) == "DATA_LOSS"
    memory, resumed = pool.acquire("broken", "s1", character_id="villager", reset=True)
    assert not resumed
    pool.abandon("broken")
    pool.delete("broken")
    assert not data_dir.npc_memory_path("broken").exists()


def test_a_snapshot_header_without_its_fields_is_data_loss_and_does_not_break_the_listing(pipeline, data_dir):
    pool = make_pool(pipeline, data_dir)
    for npc_id in ("guard", "smith"):
        pool.acquire(npc_id, "s1", character_id="villager")
        pool.release(npc_id)

    def header_without_size_for_the_smith(path):
        header = StandInGenerator.codec.read_header(path)
        return {k: v for k, v in header.items() if k != "width"} if path.stem == "smith" else header

    restarted = make_pool(pipeline, data_dir, codec=MemoryCodec(StandInGenerator.codec.load,
                                                                header_without_size_for_the_smith))
    assert [s.npc_id for s in restarted.query()] == ["guard"]
    with pytest.raises(PoolError) as err:
        restarted.query("smith")
    assert code_of(err) == "DATA_LOSS" and "'smith'" in err.value.message and "incomplete" in err.value.message


def test_resume_token_of_an_npc_that_does_not_exist(pipeline, data_dir):
    # Guards: a resume_token for an NPC with no memory (never made, or deleted) is FAILED_PRECONDITION; it used
    # to create a fresh NPC silently, as if the memory had been resumed.
    pool = make_pool(pipeline, data_dir)
    with pytest.raises(PoolError) as err:
        pool.acquire("ghost", "s1", character_id="villager", resume_token="abc-3")
    assert code_of(err) == "FAILED_PRECONDITION"
    assert pool.live_ids == [] and pool.query() == [] and not data_dir.npc_memory_path("ghost").exists()

    memory, _ = pool.acquire("guard", "s1", character_id="villager")
    talk(pipeline, memory)
    pool.mark_updated("guard")
    token = pool.release("guard").resume_token
    pool.delete("guard")
    with pytest.raises(PoolError) as err:
        pool.acquire("guard", "s2", character_id="villager", resume_token=token)
    assert code_of(err) == "FAILED_PRECONDITION"
    # A resume names only the NPC and its token: still the token's error, not "character_id is required".
    with pytest.raises(PoolError) as err:
        pool.acquire("guard", "s2", resume_token=token)
    assert code_of(err) == "FAILED_PRECONDITION"
    assert pool.live_ids == [] and pool.query() == []
    memory, resumed = pool.acquire("guard", "s2", character_id="villager")   # without a token: a new NPC
    assert not resumed and memory.blocks_generated == 0


def test_reset_keeps_the_npc_seed(pipeline, data_dir):
    # Guards: reset makes a fresh memory with the NPC's own seed (it used to derive one from the npc_id),
    # from a resident memory and from a snapshot on disk alike.
    pool = make_pool(pipeline, data_dir)
    memory, _ = pool.acquire("guard", "s1", character_id="villager", seed=12345)
    assert memory.seed == 12345 != derive_seed("guard")
    talk(pipeline, memory, 2)
    pool.mark_updated("guard")
    pool.release("guard")
    assert pool.resident_ids == ["guard"]
    pool.reset("guard")
    fresh, resumed = pool.acquire("guard", "s2")
    assert resumed and fresh.blocks_generated == 0 and fresh.seed == 12345
    talk(pipeline, fresh)
    pool.mark_updated("guard")
    pool.release("guard")
    # A restarted worker: the NPC is on disk only.
    restarted = make_pool(pipeline, data_dir)
    restarted.reset("guard")
    assert StandInGenerator.codec.read_header(data_dir.npc_memory_path("guard"))["seed"] == 12345
    fresh, _ = restarted.acquire("guard", "s3")
    assert fresh.blocks_generated == 0 and fresh.seed == 12345
