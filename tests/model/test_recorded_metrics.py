"""An evaluation's headline numbers in the weights' manifest (``python -m model.evaluate --record``): written only
into the manifest of the weights the report measured, and the shipped manifest carries its own evaluation's."""

import json
import shutil
from pathlib import Path

import pytest

from avatar_backend.generator.pipeline import shipped_weights
from model.evaluate.__main__ import main
from model.evaluate.record import headline

DOCS = Path(__file__).resolve().parents[2] / "docs"
SHIPPED_REPORT = DOCS / "tiny_eval.json"    # the full evaluation of the shipped weights, the README's table

pytestmark = pytest.mark.skipif(shipped_weights("tiny") is None, reason="no shipped tiny weights")


@pytest.fixture
def weights(tmp_path) -> Path:
    """A copy of the shipped weights and their manifest, without its metrics."""
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(shipped_weights("tiny"), folder)
    manifest = json.loads(shipped_weights("tiny").with_suffix(".json").read_text())
    manifest.pop("metrics", None)
    (folder / "tiny.json").write_text(json.dumps(manifest))
    return folder / "tiny.safetensors"


def test_the_shipped_manifest_carries_the_numbers_of_its_weights_evaluation():
    manifest = json.loads(shipped_weights("tiny").with_suffix(".json").read_text())
    report = json.loads(SHIPPED_REPORT.read_text())
    assert report["weights_sha256"] == manifest["sha256"]
    assert manifest["metrics"] == json.loads(json.dumps(headline(report)))


def test_a_report_is_recorded_into_the_manifest_of_the_weights_it_measured(weights, capsys):
    before = json.loads(weights.with_suffix(".json").read_text())
    assert main(["--weights", str(weights), "--record-report", str(SHIPPED_REPORT)]) == 0
    manifest = json.loads(weights.with_suffix(".json").read_text())
    assert {key: value for key, value in manifest.items() if key != "metrics"} == before
    metrics = manifest["metrics"]
    # The README's table: lip-sync r 0.908, emotion 0.888 and action 0.698 of truth, 58 of 104 events.
    assert round(metrics["lip_sync_r"], 3) == 0.908 and metrics["swapped_audio_r"] < 0.1
    assert round(metrics["emotion_accuracy_of_truth"], 3) == 0.888
    assert round(metrics["action_accuracy_of_truth"], 3) == 0.698
    assert (metrics["events_visible_within_one_block"], metrics["events"]) == (58, 104)
    assert metrics["evaluated_under"]["clips"] == 24 and metrics["evaluated_under"]["prompt_guidance"] == 3
    for stream in metrics["long_streams"]:    # an hour each, memory the same at its end as at block 2
        assert stream["minutes"] == 60 and stream["memory_bytes_block_2"] == stream["memory_bytes_last_block"]
    assert "wrote the metrics of" in capsys.readouterr().out


def test_a_report_of_other_weights_or_a_partial_one_is_refused_and_the_manifest_kept(weights, tmp_path, capsys):
    before = weights.with_suffix(".json").read_bytes()
    # The 90-minute recipe's weights were evaluated, not these.
    assert main(["--weights", str(weights), "--record-report", str(DOCS / "tiny_eval_short_recipe.json")]) == 2
    assert "sha256 80334efbe211, the report measured 0a795ebf4e6c" in capsys.readouterr().err
    partial = json.loads(SHIPPED_REPORT.read_text())
    del partial["control_response"]
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    assert main(["--weights", str(weights), "--record-report", str(tmp_path / "partial.json")]) == 2
    assert "lacks control_response" in capsys.readouterr().err
    assert main(["--weights", str(weights), "--record-report", str(tmp_path / "missing.json")]) == 2
    assert weights.with_suffix(".json").read_bytes() == before
    weights.with_suffix(".json").unlink()
    assert main(["--weights", str(weights), "--record-report", str(SHIPPED_REPORT)]) == 2
    assert "no manifest beside the weights" in capsys.readouterr().err


def test_record_refuses_before_evaluating_when_the_manifest_is_another_runs(weights, tmp_path, capsys):
    manifest = json.loads(weights.with_suffix(".json").read_text())
    weights.with_suffix(".json").write_text(json.dumps({**manifest, "sha256": "0" * 64}))
    assert main(["--weights", str(weights), "--out", str(tmp_path / "eval"), "--record"]) == 2
    assert "describes weights with sha256 000000000000" in capsys.readouterr().err
    assert not (tmp_path / "eval" / "eval.json").exists()
    weights.with_suffix(".json").write_text("{not json")
    assert main(["--weights", str(weights), "--out", str(tmp_path / "eval"), "--record"]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "eval" / "eval.json").exists()
    with pytest.raises(SystemExit):
        main(["--weights", str(weights), "--speed-only", "--record"])
    assert "--record records a full evaluation" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--weights", str(weights), "--record", "--record-report", str(SHIPPED_REPORT)])
    assert "one at a time" in capsys.readouterr().err
