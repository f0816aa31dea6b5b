"""NPC memory snapshots: bit-exact round trips, corruption detected, never a half-written file."""

from __future__ import annotations

import pytest
import torch

from avatar_backend.generator.convkv import ConvKVMemory, SlotLayout, StepCache
from avatar_backend.generator.memory import MemorySnapshotError, NpcMemory, read_memory_header
from avatar_backend.generator.vae import CausalCache


def memory() -> NpcMemory:
    generator = torch.Generator().manual_seed(0)
    step = StepCache(torch.randn(2, 1, 28, 4, 8, generator=generator), torch.randn(2, 1, 28, 4, 8, generator=generator),
                     SlotLayout())
    decoder = CausalCache(frames={"conv": torch.randn(1, 8, 2, 8, 8, generator=generator).to(torch.bfloat16)},
                          first_chunk=False)
    return NpcMemory(
        npc_id="guard", character_id="villager", model_name="tiny", width=64, height=64, fps=20, seed=7,
        convkv=ConvKVMemory(steps=[step]), decoder=decoder, audio_tail=torch.randn(320, generator=generator),
        noise_state=generator.get_state(), memory_layout="single-device/k_conv",
        blocks_generated=3, frames_generated=85, timeline_samples=68000, prompt="an angry villager", intensity=0.5,
    )


def test_round_trip_is_bit_exact_and_the_header_reads_without_the_tensors(tmp_path):
    original = memory()
    path = tmp_path / "guard.npcmem"
    original.save(path)
    header = read_memory_header(path)
    assert header["blocks_generated"] == 3 and header["memory_bytes"] == original.nbytes()
    assert header["resume_token"] == original.resume_token()
    restored = NpcMemory.load(path)
    restored_tensors = restored.state_tensors()
    assert restored_tensors.keys() == original.state_tensors().keys()
    for name, tensor in original.state_tensors().items():
        assert restored_tensors[name].dtype == tensor.dtype
        assert torch.equal(restored_tensors[name].view(torch.uint8), tensor.view(torch.uint8))
    assert restored.convkv.steps[0].k.shape == (2, 1, 28, 4, 8) and not restored.decoder.first_chunk
    assert (restored.prompt, restored.intensity, restored.lineage) == ("an angry villager", 0.5, original.lineage)
    assert list(tmp_path.iterdir()) == [path], "no temporary files are left behind"


def test_a_flipped_byte_is_detected(tmp_path):
    path = tmp_path / "guard.npcmem"
    memory().save(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(MemorySnapshotError, match="checksum"):
        NpcMemory.load(path)


@pytest.mark.parametrize("content", [b"", b"not a snapshot at all", b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}"])
def test_foreign_files_are_refused_with_a_named_error(tmp_path, content):
    path = tmp_path / "guard.npcmem"
    path.write_bytes(content)
    with pytest.raises(MemorySnapshotError):
        read_memory_header(path)
    with pytest.raises(MemorySnapshotError):
        NpcMemory.load(path)


def test_a_failed_write_keeps_the_previous_snapshot(tmp_path, monkeypatch):
    path = tmp_path / "guard.npcmem"
    first = memory()
    first.save(path)
    second = memory()
    second.blocks_generated = 4

    def broken_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("avatar_backend.generator.memory.save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        second.save(path)
    assert read_memory_header(path)["blocks_generated"] == 3
    assert list(tmp_path.iterdir()) == [path]
