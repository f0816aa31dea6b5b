"""The memory plan: the spec's cache sizes for the published model, computed before anything is loaded."""

from __future__ import annotations

import json

import pytest

from avatar_backend.cli import main
from avatar_backend.generator.config import LIVEACT_18B, TINY
from avatar_backend.generator.memory_plan import kv_cache_bytes, memory_plan

GB = 1e9


@pytest.mark.parametrize("size, one_gpu_gb, per_rank_gb", [
    ((512, 512), 35.2, 17.6), ((416, 720), 40.3, 20.1), ((480, 832), 53.7, 26.8)])
def test_bf16_caches_of_the_published_model_are_the_spec_figures(size, one_gpu_gb, per_rank_gb):
    plan = memory_plan(LIVEACT_18B, gpu_bytes=141 << 30)
    rows = {(n.width, n.height, n.kv, n.ranks): n for n in plan.npcs}
    assert rows[(*size, "bf16", 1)].kv_bytes_per_rank / GB == pytest.approx(one_gpu_gb, abs=0.05)
    assert rows[(*size, "bf16", 2)].kv_bytes_per_rank / GB == pytest.approx(per_rank_gb, abs=0.05)
    # FP8: one byte per element plus an fp32 scale per token and head (head_dim 128): 1 + 4/128 of bf16's half.
    fp8 = kv_cache_bytes(LIVEACT_18B, *size, "fp8")
    assert fp8 == pytest.approx(kv_cache_bytes(LIVEACT_18B, *size, "bf16") / 2 * (1 + 4 / 128))


def test_weights_and_npcs_per_gpu_follow_from_the_sizes():
    h100 = memory_plan(LIVEACT_18B, gpu_bytes=80 << 30)
    assert h100.dit_parameters / 1e9 == pytest.approx(18.884, abs=0.001)      # the spec's count
    assert h100.dit_bytes / GB == pytest.approx(37.8, abs=0.05)               # bf16, on every rank
    rows = {(n.width, n.height, n.kv, n.ranks): n for n in h100.npcs}
    for row in h100.npcs:
        free = h100.gpu_bytes - h100.workspace_bytes - h100.rank0_weight_bytes()
        need = row.kv_bytes_per_rank + row.rank0_extra_bytes
        assert row.npcs_per_gpu == max(0, free // need)
    # Two ranks halve the cache per NPC, FP8 halves it again: more NPCs fit.
    assert rows[(512, 512, "fp8", 2)].npcs_per_gpu > rows[(512, 512, "bf16", 2)].npcs_per_gpu
    # FP8 GEMM holds the blocks' linear weights in one byte: about half the DiT, and one H100 then holds an NPC
    # at 512x512 with the full-precision cache.
    assert h100.dit_fp8_gemm_bytes / GB == pytest.approx(19.2, abs=0.1)
    assert all(row.npcs_per_gpu_fp8_gemm >= row.npcs_per_gpu for row in h100.npcs)
    assert (rows[(512, 512, "bf16", 1)].npcs_per_gpu, rows[(512, 512, "bf16", 1)].npcs_per_gpu_fp8_gemm) == (0, 1)
    # The encoders are counted from the modules that load the published files (CLIP up to its block 31).
    sizes = {e.name.split()[0]: e for e in h100.encoders}
    assert sizes["umT5-XXL"].parameters / 1e9 == pytest.approx(5.68, abs=0.01) and sizes["umT5-XXL"].on_host
    assert sizes["CLIP"].parameters / 1e9 == pytest.approx(0.61, abs=0.01)
    assert sizes["wav2vec2-base"].parameters / 1e6 == pytest.approx(94.4, abs=0.5)
    h200 = memory_plan(LIVEACT_18B, gpu_bytes=141 << 30)
    assert all(a.npcs_per_gpu >= b.npcs_per_gpu for a, b in zip(h200.npcs, h100.npcs))
    tiny = memory_plan(TINY, gpu_bytes=8 << 30)
    assert not tiny.encoders and all(n.npcs_per_gpu == 0 for n in tiny.npcs)  # 8 GiB minus 8 GiB workspace


def test_memory_plan_command_prints_and_writes_the_plan(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["memory-plan", "--config", "liveact-18b", "--gpu-memory", "141G", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "memory plan of liveact-18b (nothing loaded" in text and "35.2 GB" in text and "17.6 GB" in text
    record = json.loads(out.read_text())
    assert record["config_name"] == "liveact-18b" and len(record["npcs"]) == 3 * 2 * 2
    assert main(["memory-plan", "--config", "no-such-model"]) == 1
