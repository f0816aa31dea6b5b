"""The GPU benchmark: its analytic FLOP count against the spec's table, and its code path on the CPU (``--smoke``,
what CI can run; the GPU numbers come from running it on a GPU)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from avatar_backend.generator.config import LIVEACT_18B  # noqa: E402
from avatar_backend.gpu_bench import dit_flops_per_call, main  # noqa: E402


@pytest.mark.parametrize("size, spec_tflop_per_frame", [((512, 512), 30.4), ((416, 720), 36.1)])
def test_flops_per_frame_match_the_spec_less_what_runs_once_per_prompt(size, spec_tflop_per_frame):
    # LIVEACT_SPEC.md 10.2 counts the text/CLIP cross-attention keys and values in every forward; here they are
    # computed once per prompt, so the count is about 1% lower.
    steps = [dit_flops_per_call(LIVEACT_18B, *size, 8, 14, audio=step > 0) for step in range(3)]
    per_frame = sum(steps) / 32 / 1e12
    assert spec_tflop_per_frame * 0.97 < per_frame < spec_tflop_per_frame


def test_smoke_mode_runs_the_variants_and_sequence_parallelism_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "gpu_bench.json"
    # fastest: every fast path at once, compiled (torch.compile must lower the FP8 cache's writes too)
    assert main(["--smoke", "--blocks", "3", "--variants", "bf16,fp8-kv,fp8-gemm,fastest", "--sp-devices", "cpu,cpu",
                 "--json", str(out)]) == 0
    results = {(r["variant"], r["ranks"]): r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {("bf16", 1), ("fp8-kv", 1), ("fp8-gemm", 1), ("fastest", 1), ("bf16", 2)}
    assert all(r["block_s"] > 0 and len(r["blocks_s"]) == 3 and r["flop_per_frame"] > 0 and r["warm_up_s"] > 0
               for r in results.values())
    # The quality guard of each fast path: its latents against the default path's on the same inputs and noise.
    assert "latent_error" not in results["bf16", 1]
    assert all(0 < results[v, 1]["latent_error"] < 0.1 for v in ("fp8-kv", "fp8-gemm", "fastest"))
    assert results["bf16", 2]["latent_error"] < 1e-4 and results["bf16", 2]["speedup"] > 0
    # Every decode setting serving can run, and the decoder compiled, each with its frames' error against float32
    # one latent per pass.
    decodes = results["bf16", 1]["vae_decode"]
    assert set(decodes) == ({f"{dtype} x{n}" for dtype in ("float32", "bfloat16") for n in (1, 2, 8)}
                            | {"bfloat16 x8 compiled"})
    assert decodes["float32 x1"]["error"] == 0 and 0 < decodes["bfloat16 x2"]["error"] < 0.05
    assert abs(decodes["bfloat16 x8 compiled"]["error"] - decodes["bfloat16 x8"]["error"]) < 0.01
    # The end-to-end stream (the fastest variant's, by default): the fastest eager decode of each dtype and the
    # compiled one (compiled on the thread that decodes beside the DiT), one after the other and overlapped, every
    # block timed.
    end_to_end = results["fastest", 1]["end_to_end"]
    assert [setting.split()[0] for setting in end_to_end] == ["float32", "bfloat16", "bfloat16"]
    assert list(end_to_end)[-1] == "bfloat16 x8 compiled"
    assert all(len(m["blocks_s"]) == 5 and m["fps"] > 0 for modes in end_to_end.values()
               for m in (modes["sequential"], modes["overlapped"]))
    assert all("end_to_end" not in r for key, r in results.items() if key != ("fastest", 1))
    out = capsys.readouterr().out
    assert "fp8-gemm on 1 device(s)" in out and "overlapped" in out


def test_unknown_variants_are_refused():
    with pytest.raises(SystemExit):
        main(["--smoke", "--variants", "int4"])
