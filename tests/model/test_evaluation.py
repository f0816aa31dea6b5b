"""The evaluation command on a short run with the shipped weights: every section of its report is there and
the shipped model talks (lip sync well above the swapped-audio control)."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from avatar_backend.generator.config import TINY
from avatar_backend.generator.pipeline import shipped_weights
from avatar_backend.generator.vae import WanVAE
from model.data import Event
from model.data.dataset import make_clip
from model.data.render import render_clip
from model.data.timeline import ACTIONS, EMOTIONS
from model.data.speech import espeak_available
from model.train.recipe import HELD_OUT_LANGUAGE, HELD_OUT_SPEAKER, TRAIN_LANGUAGES, TRAIN_SPEAKERS
from model.evaluate.__main__ import hand_frames, held_out_clips, main
from model.evaluate.controls import confusion, labels, recall, response

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
@pytest.mark.skipif(shipped_weights("tiny") is None, reason="no shipped tiny weights")
def test_a_short_evaluation_reports_every_measure(tmp_path, capsys):
    weights = tmp_path / "weights" / "tiny.safetensors"     # the shipped weights and manifest, copied: --record
    weights.parent.mkdir()                                   # writes into the manifest
    for path in (shipped_weights("tiny"), shipped_weights("tiny").with_suffix(".json")):
        shutil.copy(path, weights.parent / path.name)
    assert main(["--out", str(tmp_path), "--clips", "2", "--clip-seconds", "8", "--long-minutes", "1",
                 "--long-identities", "1", "--ablation-minutes", "1", "--classifier-clips", "10",
                 "--classifier-steps", "60", "--speed-blocks", "4", "--weights", str(weights), "--record"]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    # The manifest now says how well its weights did in this evaluation, beside how they were made.
    manifest, shipped = (json.loads(path.with_suffix(".json").read_text())
                         for path in (weights, shipped_weights("tiny")))
    assert {key: value for key, value in manifest.items() if key != "metrics"} == {
        key: value for key, value in shipped.items() if key != "metrics"}
    metrics = manifest["metrics"]
    assert metrics["lip_sync_r"] == report["lip_sync"]["summary"]["lip_sync_r"]
    assert metrics["events"] == report["control_response"]["events"] and metrics["evaluated_under"]["clips"] == 2
    assert metrics["long_streams"][0]["minutes"] == 1
    summary = report["lip_sync"]["summary"]
    assert summary["measure_on_truth_r"] >= 0.95
    assert summary["lip_sync_r"] >= 0.5 and summary["lip_sync_r"] > summary["swapped_audio_r"] + 0.3
    # The truth through the VAE alone keeps the mouth and is nearer the truth than any generation can be (a
    # generated head blinks and sways on its own): the ceiling the report sets beside the DiT's numbers.
    assert summary["autoencoder_lip_sync_r"] >= 0.8 and summary["autoencoder_psnr_db"] > summary["psnr_db"]
    # Identity as colours: the truth keeps the reference's (only the mouth, lids and arms move), the frames the
    # tiny model draws keep much less of them (its colours drift towards the training average).
    assert summary["truth_colour_similarity"] >= 0.8
    assert summary["truth_colour_similarity"] > summary["colour_similarity"]
    # Every block boundary is either a prompt change or not; the split ratios are there when boundaries are.
    assert 0 <= summary["seams_with_a_prompt_change"] <= summary["seams"] and summary["seams"] >= 2 * 3
    for clip in report["lip_sync"]["clips"]:
        assert (clip["seam_ratio_prompt_change"] is None) == (clip["seams_with_a_prompt_change"] == 0)
        assert (clip["seam_ratio_same_prompt"] is None) == (clip["seams_with_a_prompt_change"] == clip["seams"])
        split = [clip[k] for k in ("seam_ratio_same_prompt", "seam_ratio_prompt_change") if clip[k] is not None]
        assert min(split) - 1e-9 <= clip["seam_ratio"] <= max(split) + 1e-9     # the whole ratio mixes the two
    stream = report["long_streams"][0]
    assert stream["minutes"] == 1 and stream["memory_bytes"]["block_2"] == stream["memory_bytes"]["last_block"]
    speed = report["speed"]     # measured, not judged here: that is the benchmark's job
    assert speed["real_time_factor"] > 0 and speed["blocks"] == 4
    slow, fast = speed["real_time_factor_quartiles"]    # the middle half of the blocks, the median among them
    assert slow <= speed["real_time_factor"] <= fast
    # The decode and the rest (DiT, audio) are shares of the same blocks, each less than a whole block.
    assert 0 < speed["decode_ms"] < speed["block_ms"] and 0 < speed["dit_and_rest_ms"] < speed["block_ms"]
    assert len(report["teacher_forced_arm"]["arm_score"]) == 3     # the DiT's arm, from the clips' own latents
    ablation = report["ablation"]
    assert ablation["convkv"]["memory_bytes"] == ablation["sink_sliding_window"]["memory_bytes"]
    assert ablation["convkv"]["psnr_db_mean"] != ablation["sink_sliding_window"]["psnr_db_mean"]  # other memory
    full = ablation["full_history"]   # grows with the stream: a minute is about 300 latent frames, not 14
    assert full["latent_frames"] > 250 and full["memory_bytes"] > 10 * ablation["convkv"]["memory_bytes"]
    controls = report["control_response"]
    for version in ("generated", "ground_truth", "autoencoder"):
        read = controls[version]
        assert 0 <= read["visible_within_one_block"] <= controls["events"]
        assert 0 < read["emotion_accuracy"] <= 1 and 0 < read["action_accuracy"] <= 1
        for kind in ("emotion", "action"):
            low, high = read[f"{kind}_accuracy_interval"]
            assert low <= read[f"{kind}_accuracy"] <= high
        assert all(read[f"{kind}_recall"] is None or 0 <= read[f"{kind}_recall"] <= 1 for kind in ("emotion", "action"))
        # Every frame is in the confusion once, and the frames without an action read as one are split in two.
        frames = sum(sum(row.values()) for row in read["action_confusion"].values())
        assert frames == sum(sum(row.values()) for row in read["emotion_confusion"].values()) > 0
        misread = sum(n for name, n in read["action_confusion"].get("none", {}).items() if name != "none")
        assert read["action_read_out_of_time"] + read["action_read_unasked"] == misread
    assert (tmp_path / "strip.png").stat().st_size > 0 and (tmp_path / "long_stream.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "lip-sync r" in out
    # The generated accuracies are also set against the classifier's reading of the same clips' truth.
    same_clips = " / ".join(f"{controls['generated'][f'{k}_accuracy'] / controls['ground_truth'][f'{k}_accuracy']:.3f}"
                            for k in ("emotion", "action"))
    assert any("generated / the same clips' truth" in line and same_clips in line for line in out.splitlines())


@pytest.mark.skipif(shipped_weights("tiny") is None, reason="no shipped tiny weights")
def test_the_speed_alone_is_timed_as_the_full_evaluation_times_it(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--speed-only", "--speed-blocks", "3"]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert "lip_sync" not in report and report["speed"]["blocks"] == 3 and report["speed"]["real_time_factor"] > 0
    assert "real-time factor at 128x128 (median of 3 blocks" in capsys.readouterr().out


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
@pytest.mark.skipif(shipped_weights("tiny") is None, reason="no shipped tiny weights")
def test_a_vae_checkpoint_is_judged_beside_the_shipped_vae_before_any_dit_is_trained_on_it(tmp_path, capsys):
    # A training checkpoint holding the shipped VAE's encoder with a decoder that has not been trained yet.
    vae = {key[len("vae."):]: value for key, value in load_file(shipped_weights("tiny")).items()
           if key.startswith("vae.")}
    torch.manual_seed(0)
    untrained = WanVAE(TINY.vae).state_dict()
    vae.update({key: value for key, value in untrained.items() if key.startswith("decoder.")})
    torch.save({"modules": {"vae": vae}, "step": 1}, tmp_path / "decoder.ckpt")
    assert main(["--out", str(tmp_path), "--vae-checkpoint", str(tmp_path / "decoder.ckpt"), "--clips", "2",
                 "--clip-seconds", "3", "--classifier-clips", "4", "--classifier-steps", "20"]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())["autoencoders"]
    shipped, disturbed = report["weights"], report[str(tmp_path / "decoder.ckpt")]
    assert shipped["lip_sync_r"] >= 0.8
    for key in ("psnr_db", "psnr_db_eyes_and_brows", "psnr_db_mouth"):
        assert shipped[key] > disturbed[key] + 5.0
    # Neither clip shows a hand: no PSNR over one, and no strip of one.
    assert shipped["psnr_db_hand"] is None and not (tmp_path / "autoencoders_hand.png").exists()
    assert disturbed["lip_sync_r"] < shipped["lip_sync_r"]
    measures = {"emotion_accuracy", "action_recall", "visible_within_one_block", "seam_ratio", "psnr_db_hand"}
    assert measures <= shipped.keys() & disturbed.keys()
    # The shipped decoder does not step into each latent's first frame: 1.01x its change inside latents on these
    # clips, where the same VAE's decoder trained without the motion term changes the picture 1.42x as much there.
    assert shipped["change_at_latent_boundaries"] < 1.25 * shipped["change_inside_latents"]
    out = capsys.readouterr().out
    assert "events visible within one block" in out and "into a latent's first frame" in out

    assert main(["--out", str(tmp_path), "--size", "100"]) == 2
    assert "--size 100: the model takes 128x128, 64x64" in capsys.readouterr().err

    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    assert main(["--out", str(tmp_path), "--vae-checkpoint", str(tmp_path / "junk.ckpt")]) == 1
    assert "is not a training checkpoint with a VAE" in capsys.readouterr().err


def test_weights_it_cannot_serve_are_refused_by_name_before_any_work(tmp_path, capsys):
    """The evaluation serves weights as ``serve --weights`` does, so weights trained for another model, or a file that
    is not there, stop it at once with the reason."""
    import dataclasses

    from safetensors.torch import save_file

    weights = tmp_path / "other.safetensors"
    save_file({"dit.unused": torch.zeros(1)}, str(weights),
              metadata={"config": dataclasses.replace(TINY, name="tiny-renamed").to_json()})
    assert main(["--out", str(tmp_path / "eval"), "--weights", str(weights)]) == 2
    assert ("trained for config 'tiny-renamed', not 'tiny'; serve it with --config tiny-renamed"
            in capsys.readouterr().err)
    assert main(["--out", str(tmp_path / "eval"), "--weights", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


class ReadsFixedLabels:
    """In place of the classifier: reads every frame as the given per-frame labels."""

    def __init__(self, emotion: np.ndarray, action: np.ndarray):
        self.emotion, self.action = emotion, action

    def predict(self, frames, still):
        return self.emotion[: len(frames)], self.action[: len(frames)]


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_the_vae_comparisons_strip_spreads_its_frames_over_those_where_the_hand_is_in_the_picture():
    truth = render_clip(3, None, [Event.action(0.2, "wave")], size=128, seconds=2.4).truth
    picks = hand_frames(truth, 128)
    x, y = truth["hand"].T
    inside = np.flatnonzero((x >= 0) & (x < 128) & (y >= 0) & (y < 128))
    assert len(picks) == 8 and picks == sorted(picks) and set(picks) <= set(inside.tolist())
    assert (picks[0], picks[-1]) == (inside[0], inside[-1])
    # A wave's hand drops below the picture before the arm is down: those frames are not picked.
    assert ((y >= 128) & (x >= 0)).any()
    assert hand_frames(render_clip(3, None, [Event.action(0.2, "nod")], size=128, seconds=2.4).truth, 128) == []


def test_a_model_that_never_shows_an_emotion_or_an_action_scores_accuracy_but_no_recall():
    clip, entry = make_clip(5, size=64, seconds=6.0)
    emotion, action = labels(clip.truth)
    assert 0 < (emotion > 0).mean() < 1 and 0 < (action > 0).mean() < 1   # the clip has both kinds of frames
    still = clip.frames[0]
    never = response(ReadsFixedLabels(np.zeros_like(emotion), np.zeros_like(action)), clip.frames, still,
                     clip.truth, entry["events"], 20, 32)
    # Frame accuracy is the share of neutral (no-action) frames, though nothing was ever shown.
    assert never["emotion_accuracy"] == pytest.approx((emotion == 0).mean())
    assert never["action_accuracy"] == pytest.approx((action == 0).mean())
    assert recall([never], "emotion") == 0 and recall([never], "action") == 0
    always = response(ReadsFixedLabels(emotion, action), clip.frames, still, clip.truth, entry["events"], 20, 32)
    assert recall([always], "emotion") == 1 and recall([always], "action") == 1
    assert recall([never, always], "emotion") == 0.5


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_half_the_clips_speak_the_held_out_voice_and_the_other_half_only_voices_trained_on():
    clips = held_out_clips(8, 2.0, 64, 20)   # as many as the evaluation's default
    voices = [(c.entry["held_out_voice"], c.entry["speech"]["language"], c.entry["speech"]["speaker"]) for c in clips]
    assert [held_out for held_out, _, _ in voices] == [True] * 4 + [False] * 4
    assert all((language, speaker) == (HELD_OUT_LANGUAGE, HELD_OUT_SPEAKER) for _, language, speaker in voices[:4])
    assert all(language in TRAIN_LANGUAGES and speaker in TRAIN_SPEAKERS for _, language, speaker in voices[4:])


def test_an_emotion_drawn_too_faintly_for_the_classifier_is_not_counted_as_an_event_to_show():
    events = [Event.emotion(0.2, "sad", 0.4), Event.emotion(2.0, "happy", 0.9), Event.action(3.0, "nod")]
    clip = render_clip(5, None, events, size=64, seconds=5.0)
    emotion, action = labels(clip.truth)
    assert EMOTIONS.index("sad") not in emotion and EMOTIONS.index("happy") in emotion   # labelled neutral
    # Read as the truth is labelled: the two readable events show, the faint one is not asked of any model.
    read = response(ReadsFixedLabels(emotion, action), clip.frames, clip.frames[0], clip.truth,
                    [e.to_dict() for e in events], 20, 32)
    assert [(e["name"], e["visible"]) for e in read["events"]] == [("happy", True), ("nod", True)]


def test_actions_read_where_the_truth_has_none_are_told_apart_by_whether_the_clip_asked_for_them_nearby():
    clip, entry = make_clip(5, size=64, seconds=6.0)
    emotion, action = labels(clip.truth)
    asked = {e["name"] for e in entry["events"] if e["kind"] == "action"}
    frames = np.flatnonzero(action > 0)
    assert len(asked) and len(frames)
    # The clip's own actions drawn 10 frames early: the frames before each starts are out of time, none unasked.
    early = np.roll(action, -10)
    drawn_early = response(ReadsFixedLabels(emotion, early), clip.frames, clip.frames[0], clip.truth, entry["events"],
                           20, 32)
    misread = int(((action == 0) & (early > 0)).sum())
    assert misread >= 10 and drawn_early["action_read_out_of_time"] == misread
    assert drawn_early["action_read_unasked"] == 0
    # An action the clip never asked for, read on every frame: each frame without an action is unasked.
    other = next(i for i, name in enumerate(ACTIONS) if i and name not in asked)
    wrong = response(ReadsFixedLabels(emotion, np.full_like(action, other)), clip.frames, clip.frames[0], clip.truth,
                     entry["events"], 20, 32)
    assert wrong["action_read_unasked"] == int((action == 0).sum()) and wrong["action_read_out_of_time"] == 0
    # What each true label's frames were read as: all of them as the one action, and none missing.
    table = confusion([wrong], "action")
    assert {truth: list(read) for truth, read in table.items()} == {
        ACTIONS[a]: [ACTIONS[other]] for a in np.unique(action)}
    assert sum(read[ACTIONS[other]] for read in table.values()) == len(action)
    # Emotions read as the truth has them: every frame on the diagonal.
    assert confusion([drawn_early], "emotion") == {EMOTIONS[e]: {EMOTIONS[e]: int((emotion == e).sum())}
                                                   for e in np.unique(emotion)}


def test_an_accuracy_over_few_clips_is_given_with_the_range_another_draw_of_clips_would_give():
    from model.evaluate.metrics import mean_interval

    assert mean_interval([0.6] * 8) == pytest.approx((0.6, 0.6))       # clips that agree: no spread
    # One clip of eight far from the others moves the mean by an eighth of its distance, in some draws twice.
    low, high = mean_interval([0.9] * 7 + [0.1])
    assert low < 0.8 < high and high == pytest.approx(0.9) and low < 0.75
    wide, narrow = mean_interval([0.2, 1.0] * 4), mean_interval([0.2, 1.0] * 12)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]                    # three times the clips, a narrower range
    assert mean_interval([0.2, 1.0] * 4) == wide                        # the same clips, the same range


def test_block_seams_are_measured_against_the_change_every_latent_boundary_shows():
    from model.evaluate.metrics import latent_changes, latent_seam_ratio, seam_ratio

    starts = [0, 21, 53, 85]                        # the worker's blocks: 6 latents, then 8 (4 frames each)
    steps = np.ones(116)                            # change from frame t to t + 1
    steps[4::4] += 2.0                              # every latent boundary (frames 5, 9, ...) steps further
    frames = np.cumsum(np.concatenate([[0.0], steps]))[:, None, None, None].repeat(3, axis=3)
    assert latent_seam_ratio(frames, starts) == pytest.approx(1.0)      # a decoder's step, no block seam
    assert seam_ratio(frames, starts) > 2.0                             # the plain ratio counts it as a seam
    inside, boundary = latent_changes(frames)
    assert inside == pytest.approx(1.0) and boundary > 2.5              # the step, where it is
    steps[[s - 1 for s in starts[1:]]] += 3.0                           # the blocks now jump too
    frames = np.cumsum(np.concatenate([[0.0], steps]))[:, None, None, None].repeat(3, axis=3)
    assert latent_seam_ratio(frames, starts) == pytest.approx(2.0)


def test_seams_where_the_prompt_changes_are_measured_apart_from_the_others():
    from model.evaluate.metrics import seam_ratio

    starts = [0, 21, 53, 85]
    steps = np.ones(116)
    steps[52] += 4.0                                # the block at frame 53 (a new prompt) jumps, the others do not
    frames = np.cumsum(np.concatenate([[0.0], steps]))[:, None, None, None].repeat(3, axis=3)
    assert seam_ratio(frames, starts, {21, 85}) == pytest.approx(1.0)
    assert seam_ratio(frames, starts, {53}) == pytest.approx(5.0)
    assert seam_ratio(frames, starts) == pytest.approx(7.0 / 3.0)      # all three together
    assert seam_ratio(frames, starts, set()) is None                   # no such boundary: nothing to average


def test_the_swapped_audio_control_takes_the_partner_whose_mouth_moves_least_like_the_clips():
    from model.evaluate.__main__ import swap_partners
    from model.train.clips import TrainingClip

    t = np.arange(200) / 20
    mouths = [np.sin(t) ** 2, np.sin(t + 0.1) ** 2, np.cos(3 * t) ** 2, np.sin(t + 0.2) ** 2]
    clips = [TrainingClip(None, None, {"mouth_open": m.astype(np.float32)}, {}) for m in mouths]
    partners = swap_partners(clips)
    # Clips 0, 1 and 3 speak alike; clip 2 moves unlike any of them, so it drives theirs, and theirs drive it.
    assert partners[0] == partners[1] == partners[3] == 2
    assert partners[2] != 2
    assert all(p != i for i, p in enumerate(partners))
