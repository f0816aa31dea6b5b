"""The evaluation's headline numbers written into the manifest beside the weights it judged (``--record``).

A manifest (``tiny.json`` beside ``tiny.safetensors``) says how its weights were made; after ``--record`` it also
says how well they do, under ``metrics``, with what the evaluation ran under. A report is recorded only into the
manifest of the weights it measured (their sha256), so no manifest carries another training run's numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

from avatar_backend.store import atomic_write_with


class RecordError(ValueError):
    """The report cannot go into that manifest: none there, other weights', or a partial evaluation."""


def manifest_path(weights: Path) -> Path:
    """Where the training run wrote the manifest of ``weights`` (``tiny.safetensors`` -> ``tiny.json``)."""
    return Path(weights).with_suffix(".json")


def headline(report: dict) -> dict:
    """A full evaluation's report reduced to the numbers its targets are stated in (README, "The embedded
    default"); accuracies as shares of the classifier's accuracy on the ground truth."""
    summary = report["lip_sync"]["summary"]
    controls = report["control_response"]
    truth = controls["classifier_accuracy_on_ground_truth"]
    generated = controls["generated"]
    metrics = {
        "evaluated_under": {"clips": len(report["lip_sync"]["clips"]),
                            **{key: report[key] for key in ("decode_precision", "prompt_guidance",
                                                            "prompt_onset_latents", "events")},
                            "machine": report["machine"]},
        **{key: summary[key] for key in ("lip_sync_r", "lip_sync_r_held_out_voice", "lip_sync_r_seen_languages",
                                         "swapped_audio_r", "amplitude_ratio", "seam_ratio", "psnr_db",
                                         "colour_similarity")},
        "emotion_accuracy_of_truth": generated["emotion_accuracy"] / truth["emotion"],
        "action_accuracy_of_truth": generated["action_accuracy"] / truth["action"],
        "events_visible_within_one_block": generated["visible_within_one_block"],
        "events": controls["events"],
        "real_time_factor": report["speed"]["real_time_factor"],
    }
    if report.get("long_streams"):
        metrics["long_streams"] = [
            {"minutes": stream["minutes"],
             "last_minus_first_minute": {key: stream["delta_last_minus_first"][key] for key in ("lip_sync_r",
                                                                                                 "psnr_db")},
             "memory_bytes_block_2": stream["memory_bytes"]["block_2"],
             "memory_bytes_last_block": stream["memory_bytes"]["last_block"]}
            for stream in report["long_streams"]]
    return metrics


def record(weights: Path, report: dict) -> Path:
    """Write ``headline(report)`` as ``metrics`` into the manifest of ``weights``, replacing any earlier one;
    returns the manifest's path. RecordError when there is no manifest, when it is another file's, or when the
    report is a partial evaluation (``--speed-only``, ``--teacher-forced``, ``--vae-checkpoint``)."""
    manifest = recordable_manifest(weights, report.get("weights_sha256"))
    missing = [key for key in ("lip_sync", "control_response", "speed") if key not in report]
    if missing:
        raise RecordError(f"the report lacks {', '.join(missing)}: only a full evaluation is recorded")
    manifest["metrics"] = headline(report)
    path = manifest_path(weights)
    atomic_write_with(path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
    return path


def recordable_manifest(weights: Path, sha256: str | None) -> dict:
    """The manifest of ``weights`` when it describes the file whose sha256 is ``sha256``; RecordError otherwise.
    Checked before an evaluation too, so that ``--record`` fails before its minutes of work, not after."""
    path = manifest_path(weights)
    if not path.is_file():
        raise RecordError(f"{path}: no manifest beside the weights (python -m model.train writes one)")
    manifest = json.loads(path.read_text())
    if manifest.get("sha256") != sha256:
        raise RecordError(f"{path} describes weights with sha256 {str(manifest.get('sha256'))[:12]}, the report "
                          f"measured {str(sha256)[:12]}: record a report of these weights")
    return manifest
