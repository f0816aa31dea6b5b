"""The teacher-forced arm measure: it scores the truth 1 and an arm left down 0, reads the DiT through the
training step's own pass, and runs alone from the evaluation command in seconds."""

import json

import numpy as np
import pytest
import torch

from avatar_backend.generator.pipeline import LiveActPipeline, shipped_weights
from model.data import Event
from model.data.render import render_clip
from model.data.speech import espeak_available
from model.evaluate.__main__ import main
from model.evaluate.teacher_forced import arm_errors, arm_score, raised_arm_cells, teacher_forced_arm
from model.train.clips import TrainingClip


def waving_clip(seconds: float = 3.0) -> TrainingClip:
    clip = render_clip(3, None, [Event.action(0.4, "wave")], size=128, seconds=seconds)
    return TrainingClip(clip.frames, clip.audio, clip.truth, {"identity": clip.identity.to_dict(), "events": [],
                                                             "speech": {"spans": []}})


def test_the_arm_score_is_one_for_the_truth_and_zero_for_an_arm_left_down():
    truth = render_clip(3, None, [Event.action(0.4, "wave")], size=128, seconds=3.0).truth
    latent_frames = 1 + (len(truth["arm_raise"]) - 1) // 4
    index, cells = raised_arm_cells(truth, latent_frames, 128, 128)
    assert len(index) >= 4 and cells.shape == (len(index), 16, 16)
    for (latent, before), mask in zip(index, cells):
        assert truth["arm_raise"][4 * latent] > 0.5 >= truth["arm_raise"][4 * before] and before < latent
        assert mask.any() and not mask[:, 12:].any()      # the raised arm is on the picture's left
    latents = torch.randn(16, latent_frames, 16, 16, generator=torch.Generator().manual_seed(0))
    assert arm_score(*arm_errors(latents, latents, index, cells)) == 1.0
    down = latents.clone()
    down[:, index[:, 0]] = latents[:, index[:, 1]]
    assert arm_score(*arm_errors(down, latents, index, cells)) == 0.0
    assert arm_score(*arm_errors((down + latents) / 2, latents, index, cells)) == pytest.approx(0.75)
    # A clip without a raised arm has nothing to score.
    still = render_clip(3, None, [Event.action(0.4, "nod")], size=128, seconds=3.0).truth
    assert len(raised_arm_cells(still, latent_frames, 128, 128)[0]) == 0
    assert arm_score(0.0, 0.0, 0) is None
    # Nor does a truth whose latents barely change where the arm rises: its VAE did not keep the arm.
    faint = latents.clone()
    faint[:, index[:, 0]] = latents[:, index[:, 1]] + 0.1 * (latents[:, index[:, 0]] - latents[:, index[:, 1]])
    assert arm_score(*arm_errors(latents, faint, index, cells)) is None


@pytest.mark.skipif(shipped_weights("tiny") is None, reason="no shipped tiny weights")
def test_at_almost_no_noise_the_dit_returns_the_clips_own_arm():
    """Nearly clean latents in, nearly the truth out, whatever the DiT learned: the measure lines up the blocks,
    latents and cells it compares."""
    pipeline = LiveActPipeline.from_config("tiny", weights=shipped_weights("tiny"))
    clip = waving_clip()
    report = teacher_forced_arm(pipeline, [clip], timesteps=(1.0,))
    assert report["raised_arm_latents"] >= 4 and report["timesteps"] == [1.0]
    assert report["truth_arm_change"] > 0.1            # the shipped VAE keeps enough of this arm to judge a DiT by
    assert report["arm_score"][0] > 0.99
    sampled = teacher_forced_arm(pipeline, [clip])
    assert sampled["timesteps"] == list(pipeline.config.sampler.timesteps[:-1])
    assert sampled["truth_arm_change"] == pytest.approx(report["truth_arm_change"])
    assert all(score < 0.99 for score in sampled["arm_score"])


@pytest.mark.slow
@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
@pytest.mark.skipif(shipped_weights("tiny") is None, reason="no shipped tiny weights")
def test_the_evaluation_runs_the_measure_alone(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--teacher-forced", "--clips", "2", "--clip-seconds", "6"]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    arm = report["teacher_forced_arm"]
    assert len(arm["arm_score"]) == len(arm["timesteps"]) == 3 and "lip_sync" not in report
    assert "raised arm drawn from its own noised latents" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--teacher-forced", "--vae-checkpoint", str(tmp_path / "x.ckpt")])
    assert "one at a time" in capsys.readouterr().err
