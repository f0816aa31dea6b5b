"""The DiT's loss weights: the mouth weighted up always; the eyes, brows and a visible hand as well in the
control stage, where an emotion or an action shows."""

import numpy as np

from model.data import Event
from model.data.render import render_clip
from model.train.clips import LATENT_STRIDE, box_mask, expression_boxes, latent_loss_weight


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
