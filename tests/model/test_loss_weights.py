"""The loss weights: the DiT's, the mouth weighted up always, the eyes, brows and a visible hand as well in the
control stage, where an emotion or an action shows, and a waving forearm when the recipe asks; the VAE's, the
mouth always, the face when the recipe asks, with crops placed over the mouth, the whole face or a raised hand."""

import dataclasses

import numpy as np
import pytest

from model.data import Event
from model.data.render import render_clip, render_still
from model.train.clips import (LATENT_STRIDE, TrainingClip, box_mask, expression_boxes, hand_and_forearm_boxes,
                               latent_loss_weight, mouth_mask)
from model.train.__main__ import main as train_main
from model.train.recipe import TINY_RECIPE, TrainRecipe, with_overrides
from model.train.vae_stage import hand_window, vae_crop, vae_loss_weight


def _cells(boxes: np.ndarray) -> set[tuple[int, int]]:
    return {tuple(c) for c in np.argwhere(box_mask(boxes[None], 128, 128, LATENT_STRIDE)[0] > 0)}


def test_expression_weight_covers_the_eyes_brows_and_a_waving_hand_and_only_adds_to_the_mouth_weights():
    clip = render_clip(3, None, [Event.emotion(0.0, "angry"), Event.action(0.2, "wave")], size=128, seconds=1.6)
    truth = clip.truth
    latents = 1 + (len(clip.frames) - 1) // 4
    mouth_only = latent_loss_weight(truth, latents, 128, 128, mouth_weight=4.0)[0, 0].numpy()
    weighted = latent_loss_weight(truth, latents, 128, 128, mouth_weight=4.0, expression_weight=3.0)[0, 0].numpy()
    assert mouth_only.shape == weighted.shape == (latents, 16, 16)
    assert set(np.unique(mouth_only)) == {1.0, 5.0}
    assert (weighted >= mouth_only).all()

    # Latent 0 is frame 0: no hand yet; eyes and brows weighted, the rest of the face not.
    boxes = expression_boxes(truth)
    assert (truth["hand"][0] < 0).all() and (boxes[0, 3, 2] <= boxes[0, 3, 0])
    eyes_and_brows = _cells(boxes[0, :3])
    added = {tuple(c) for c in np.argwhere(weighted[0] - mouth_only[0] == 3.0)}
    assert eyes_and_brows and eyes_and_brows <= added | {tuple(c) for c in np.argwhere(mouth_only[0] > 1)}
    assert len(added) < 0.25 * 16 * 16

    # Mid-wave the raised hand is weighted too.
    frame = int(np.argmax(truth["arm_raise"]))
    assert (truth["hand"][frame] >= 0).all()
    hand_x, hand_y = (truth["hand"][frame] // LATENT_STRIDE).astype(int)
    latent = (frame + 3) // 4
    assert weighted[latent, hand_y, hand_x] > mouth_only[latent, hand_y, hand_x]


def test_hand_weight_covers_the_drawn_waving_arm_from_hand_to_elbow_and_a_thinking_hand_alone():
    clip = render_clip(3, None, [Event.action(0.1, "wave"), Event.action(2.2, "think")], size=128, seconds=4.4)
    truth = clip.truth
    boxes = hand_and_forearm_boxes(truth, 128, 128)
    still = render_still(clip.identity, 128).astype(int)

    # Mid-wave: the pixels the arm changes beside the face (left of it) lie in the box, and the box is no
    # taller than the forearm needs.
    frame = int(np.argmax(truth["arm_raise"]))
    arm = np.abs(clip.frames[frame].astype(int) - still).sum(-1) > 90
    arm[:, 36:] = False
    arm[104:] = False
    inside = box_mask(boxes[frame:frame + 1], 128, 128)[0] > 0
    assert arm.sum() > 150 and (arm & inside).sum() >= 0.9 * arm.sum()
    x0, y0, x1, y1 = boxes[frame, 0]
    assert y1 - y0 < 70 and (truth["hand"][frame] >= (x0, y0)).all() and (truth["hand"][frame] <= (x1, y1)).all()

    # Thinking: the hand at the chin, its box alone; before any action, no box.
    thinking = int(np.argmax(truth["hand_chin"]))
    x0, y0, x1, y1 = boxes[thinking, 0]
    assert truth["arm_raise"][thinking] == 0 and x1 - x0 == y1 - y0 == 20
    assert (boxes[0] == 0).all()

    latents = 1 + (len(clip.frames) - 1) // 4
    plain = latent_loss_weight(truth, latents, 128, 128, mouth_weight=4.0)[0, 0].numpy()
    weighted = latent_loss_weight(truth, latents, 128, 128, mouth_weight=4.0, hand_weight=8.0)[0, 0].numpy()
    hand_x, hand_y = (truth["hand"][frame] // LATENT_STRIDE).astype(int)
    assert weighted[(frame + 3) // 4, hand_y, hand_x] == plain[(frame + 3) // 4, hand_y, hand_x] + 8.0
    np.testing.assert_array_equal(weighted[0], plain[0])
    with pytest.raises(ValueError, match="hand_weight"):
        TrainRecipe(hand_weight=-1.0)


def _inside(box: np.ndarray, rows: slice, cols: slice) -> bool:
    x0, y0, x1, y1 = box
    return rows.start <= y0 and y1 <= rows.stop and cols.start <= x0 and x1 <= cols.stop


def test_vae_crops_centred_on_the_face_hold_brows_eyes_and_mouth_and_those_on_the_mouth_the_mouth():
    truth = render_clip(5, None, [Event.emotion(0.0, "surprised")], size=128, seconds=1.6).truth
    rng = np.random.default_rng(0)
    for start in range(0, 30, 3):
        rows, cols = vae_crop(truth, start, 128, 128, 64, "face", rng)
        assert rows.stop - rows.start == cols.stop - cols.start == 64 and rows.start % 8 == cols.start % 8 == 0
        assert _inside(truth["brow_box"][start], rows, cols) and _inside(truth["mouth_box"][start], rows, cols)
        assert all(_inside(eye, rows, cols) for eye in truth["eye_boxes"][start])
        assert _inside(truth["mouth_box"][start], *vae_crop(truth, start, 128, 128, 64, "mouth", rng))


def test_vae_crops_on_a_hand_start_where_a_hand_shows_and_hold_it_even_at_the_frames_edge():
    def training_clip(clip):
        return TrainingClip(clip.frames, np.zeros(1, np.float32), clip.truth, {})

    waving = training_clip(render_clip(3, None, [Event.action(0.2, "wave")], size=128, seconds=2.4))
    still = training_clip(render_clip(5, None, [Event.emotion(0.0, "happy")], size=128, seconds=2.4))
    rng = np.random.default_rng(0)
    assert hand_window([still], 9, rng) is None
    with pytest.raises(ValueError, match="no hand"):
        vae_crop(still.truth, 0, 128, 128, 64, "hand", rng)
    edges = set()
    for _ in range(40):
        clip, start = hand_window([still, waving], 9, rng)
        assert clip is waving and start + 9 <= len(clip.frames)
        x, y = clip.truth["hand"][start]
        assert x >= 0 and y >= 0
        rows, cols = vae_crop(clip.truth, start, 128, 128, 64, "hand", rng)
        assert rows.stop - rows.start == cols.stop - cols.start == 64 and rows.start % 8 == cols.start % 8 == 0
        assert rows.start <= y < rows.stop and cols.start <= x < cols.stop
        edges.add(cols.start)
    # The raised arm is at the frame's left edge, which crops centred on the face (columns 32-96) never reach.
    assert 0 in edges
    with pytest.raises(ValueError, match="vae_hand_crops"):
        TrainRecipe(vae_hand_crops=1.5)


def test_the_vae_weights_the_eyes_and_brows_only_when_the_recipe_asks():
    truth = render_clip(5, None, [Event.emotion(0.0, "angry")], size=128, seconds=0.5).truth
    window = slice(0, 9)
    mouth = vae_loss_weight(truth, window, 128, 128, TINY_RECIPE, 0.0)
    np.testing.assert_array_equal(mouth, 1.0 + TINY_RECIPE.mouth_weight * mouth_mask(truth, window, 128, 128))
    x0, y0, x1, y1 = truth["brow_box"][0]
    # Any stage's weight (the VAE stage's, or the decoder stages' raised as docs/TINY_EXPERIMENTS.md tried it).
    for extra in (TINY_RECIPE.vae_expression_weight, 12.0):
        face = vae_loss_weight(truth, window, 128, 128, TINY_RECIPE, extra)
        assert face[0, (y0 + y1) // 2, (x0 + x1) // 2] == mouth[0, (y0 + y1) // 2, (x0 + x1) // 2] + extra
        assert (face >= mouth).all() and (face > mouth).mean() < 0.15


def test_recipe_settings_parse_as_their_fields_types_and_bad_ones_are_named(tmp_path, capsys):
    recipe = with_overrides(TINY_RECIPE, ["vae_expression_weight=0", "vae_crop_centre=mouth", "dit_steps=10"])
    assert (recipe.vae_expression_weight, recipe.vae_crop_centre, recipe.dit_steps) == (0.0, "mouth", 10)
    assert dataclasses.replace(recipe, vae_expression_weight=4.0, vae_crop_centre="face", dit_steps=7200) == TINY_RECIPE
    for setting, named in (("vae_weight=4", "vae_expression_weight"), ("dit_steps=many", "dit_steps"),
                           ("vae_crop_centre=eyes", "mouth, face"), ("dit_steps", "FIELD=VALUE")):
        with pytest.raises(ValueError, match=named):
            with_overrides(TINY_RECIPE, [setting])
    # The command refuses before it writes anything.
    with pytest.raises(SystemExit) as refused:
        train_main(["--work", str(tmp_path / "work"), "--set", "vae_weight=4"])
    assert refused.value.code == 2 and "vae_expression_weight" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
