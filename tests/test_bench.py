"""The benchmark's generator parts run and report what README's performance table quotes (no timing is
asserted: numbers are the benchmark's job)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from avatar_backend.bench import bench_batches, bench_worker_realtime, main  # noqa: E402


def test_batches_report_blocks_per_second_and_real_time_per_npc():
    result = bench_batches("tiny", (1, 2), blocks=1, threads=2)
    rows = result["batches"]
    assert [r["npcs"] for r in rows] == [1, 2]
    for row in rows:
        assert row["frames_per_block"] == 32 and row["call_s_median"] > 0
        assert row["blocks_per_s"] == pytest.approx(row["npcs"] / row["call_s_median"], rel=1e-2)
        assert row["dit_s_median"] + row["decode_s_median"] <= row["call_s_median"]
    assert result["compute_keeps_up_npcs"] == max((r["npcs"] for r in rows if r["per_npc_realtime_factor"] >= 1),
                                                  default=0)


@pytest.mark.parametrize("prompt", ["", "angry"])
def test_npcs_talking_through_a_worker_process_are_counted_late_or_chopped(prompt):
    result = bench_worker_realtime("tiny", (2,), seconds=4.0, prompt=prompt)
    assert result["prompt"] == prompt
    [row] = result["runs"]
    assert row["npcs"] == 2 and row["blocks"] >= 2
    # Two NPCs talking for 4 s make at least their first two blocks each, at most two per call.
    assert 1.0 <= row["mean_batch_size"] <= 2.0
    assert 0 <= row["late_blocks"] <= row["blocks"] and row["chopped_blocks"] <= row["blocks"]
    assert (result["width"], result["height"]) == (128, 128)


@pytest.mark.parametrize("option", ["--realtime-npcs", "--batches"])
def test_npc_counts_below_one_are_refused_before_anything_runs(option, capsys):
    with pytest.raises(SystemExit) as exit:
        main([option, "2,0", "--skip-generator"])
    assert exit.value.code == 2 and f"{option} takes NPC counts of 1 or more" in capsys.readouterr().err


def test_decoder_precisions_are_timed_side_by_side_against_the_first():
    from avatar_backend.bench import bench_decode_precisions

    result = bench_decode_precisions("tiny", ("float32", "bfloat16"), blocks=1, threads=2, rounds=1)
    full, half = result["precisions"]
    assert (full["decode_dtype"], half["decode_dtype"]) == ("float32", "bfloat16")
    assert full["block_speedup"] == full["decode_speedup"] == 1.0
    assert half["block_speedup"] == pytest.approx(full["block_s_median"] / half["block_s_median"], abs=0.01)
    assert 0 < half["decode_s_median"] < half["block_s_median"]


@pytest.mark.slow
def test_compiled_variants_are_timed_beside_the_eager_ones():
    from avatar_backend.bench import bench_decode_precisions, bench_decoders

    result = bench_decode_precisions("tiny", ("float32",), blocks=1, threads=2, rounds=1, compiled=True)
    eager, compiled = result["precisions"]
    assert (eager["compiled"], compiled["compiled"]) == (False, True)
    for row in (eager, compiled):
        assert 0 < row["dit_s_median"] + row["decode_s_median"] <= row["block_s_median"]
    rows = bench_decoders("tiny", ("light",), threads=2, rounds=2, compiled=True)["decoders"]
    assert [(r["decoder"], r["compiled"]) for r in rows] == [("light", False), ("light", True)]
    assert rows[0]["parameters"] == rows[1]["parameters"] and rows[1]["block_s_median"] > 0


def test_unknown_decoder_precisions_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--decode-precisions", "float32,float16", "--skip-generator"])
    assert "unknown ['float16']" in capsys.readouterr().err


def test_the_vae_decoders_are_timed_side_by_side_on_one_block():
    from avatar_backend.bench import MIRROR_DECODER, bench_decoders

    result = bench_decoders("tiny", ("wan", "light", MIRROR_DECODER, "light-64-32-24-8"), threads=2, rounds=2)
    wan, light, mirror, wider = result["decoders"]
    assert (wan["decoder"], light["decoder"], mirror["decoder"]) == ("wan", "light", MIRROR_DECODER)
    assert result["block_frames"] == 32
    assert wan["speedup"] == 1.0 and light["block_s_median"] > 0 and 0 < light["parameters"]
    # The tiny config serves a light decoder narrower than the encoder's mirror, which is timed beside it, and so
    # is one of widths named on the command line (wider than the served one at half resolution only).
    assert light["parameters"] < wider["parameters"] < mirror["parameters"] < wan["parameters"]
    with pytest.raises(ValueError, match="2 rounds or more"):
        bench_decoders("tiny", ("light",), threads=2, rounds=1)


def test_unknown_decoders_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--decoders", "light,tiny", "--skip-generator"])
    assert "--decoders: unknown ['tiny']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--decoders", "light-64-32", "--skip-generator"])
    assert "--decoders: light-64-32: light_decoder_dims needs one width per resolution level" in capsys.readouterr().err


def test_measurements_record_the_cpu_and_its_vector_units():
    import platform

    from avatar_backend.machine import describe_machine

    machine = describe_machine()
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert machine["cpu"] not in ("", "x86_64"), machine  # the model name, not the architecture
        assert machine["cpu_capability"] in ("DEFAULT", "AVX2", "AVX512"), machine
    # bf16 matrix units (AMX, AVX512-BF16) come only with AVX512: a speed measured without them is the slow case.
    assert not (machine["bf16_matrix_units"] and machine["cpu_capability"] == "AVX2"), machine
    assert machine["threads"] >= 1 and machine["cpus"] >= 1
