"""Training clips in memory, and what each block of a clip is conditioned on and weighted by."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avatar_backend.generator.schedule import BlockLayout
from model.data.dataset import iter_clips, read_manifest
from model.data.identity import CharacterIdentity
from model.data.prompts import BlockPrompt, block_prompt
from model.data.render import render_still, wave_elbow

LATENT_STRIDE = 8          # pixels per latent cell (the VAE's spatial stride)


@dataclass
class TrainingClip:
    frames: np.ndarray             # uint8 [T, H, W, 3]
    audio: np.ndarray              # float32 16 kHz
    truth: dict[str, np.ndarray]
    entry: dict                    # the manifest entry (identity, speech, events)

    @property
    def reference(self) -> np.ndarray:
        """The character's neutral still at the clip's size: what a server would be given as its image."""
        identity = CharacterIdentity.from_dict(self.entry["identity"])
        return render_still(identity, self.frames.shape[1])


def load_clips(folder: str | Path) -> list[TrainingClip]:
    return [TrainingClip(frames, audio, truth, entry) for entry, frames, audio, truth in iter_clips(folder)]


def dataset_fps(folder: str | Path) -> int:
    return int(read_manifest(folder)["fps"])


def video_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [1, 3, T, H, W] in [-1, 1] (the VAE's input)."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0


def latent_first_frames(num_frames: int, stride: int = 4) -> np.ndarray:
    """The frames after frame 0 that open a latent, among ``num_frames``: a stream's first latent is frame 0 alone,
    then every ``stride``-th frame from frame 1 opens one (1, 1 + stride, ...). A decoder whose error moves with
    each latent steps into these frames."""
    return np.arange(1, num_frames, stride)


HAND_BOX_HALF = 10         # pixels either side of a visible hand's centre that count as the hand


def box_mask(boxes: np.ndarray, height: int, width: int, stride: int = 1, margin: int = 2) -> np.ndarray:
    """Boxes [T, k, 4] (x0, y0, x1, y1 in pixels; x1 <= x0: none) -> [T, height // stride, width // stride],
    1.0 inside any of a frame's boxes grown by ``margin`` pixels."""
    mask = np.zeros((len(boxes), height // stride, width // stride), np.float32)
    for i, frame_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in frame_boxes:
            if x1 > x0 and y1 > y0:
                mask[i, max(0, (y0 - margin) // stride): (y1 + margin + stride - 1) // stride,
                     max(0, (x0 - margin) // stride): (x1 + margin + stride - 1) // stride] = 1.0
    return mask


def mouth_mask(truth: dict[str, np.ndarray], frames: slice, height: int, width: int, stride: int = 1,
               margin: int = 2) -> np.ndarray:
    """[T, height // stride, width // stride] 1.0 inside each frame's mouth box (grown by ``margin`` pixels)."""
    return box_mask(truth["mouth_box"][frames][:, None], height, width, stride, margin)


def hand_in_picture(truth: dict[str, np.ndarray], height: int, width: int) -> np.ndarray:
    """[T] per frame: whether its hand's centre lies inside the picture (a hand below the frame counts as shown in
    the truth's ``hand`` while the arm rises or falls)."""
    x, y = truth["hand"].T
    return (x >= 0) & (x < width) & (y >= 0) & (y < height)


def _hand_boxes(truth: dict[str, np.ndarray], reach: np.ndarray) -> np.ndarray:
    """[T, 4] per frame: the box from a visible hand to ``reach`` [T, 2] (pixels), grown by ``HAND_BOX_HALF``;
    none when no hand shows."""
    hand = truth["hand"].astype(np.float64)
    low = np.round(np.minimum(hand, reach)).astype(np.int32) - HAND_BOX_HALF
    high = np.round(np.maximum(hand, reach)).astype(np.int32) + HAND_BOX_HALF
    return np.where(hand[:, :1] >= 0, np.concatenate([low, high], axis=1), 0)


def expression_boxes(truth: dict[str, np.ndarray]) -> np.ndarray:
    """[T, 4, 4] per frame: the two eyes, the brows and the visible hand (none when no hand shows): where an
    emotion or an action shows besides the head's pose."""
    hand_box = _hand_boxes(truth, truth["hand"])
    return np.concatenate([truth["eye_boxes"], truth["brow_box"][:, None], hand_box[:, None]], axis=1)


def hand_and_forearm_boxes(truth: dict[str, np.ndarray], height: int, width: int) -> np.ndarray:
    """[T, 1, 4] per frame: the box from a visible hand to its elbow while a wave raises the arm, the hand's box
    alone while it shows otherwise (at the chin), none when no hand shows."""
    raised = truth["arm_raise"][:, None] > 0
    elbow = np.where(raised, wave_elbow(truth["arm_raise"]) * (width, height), truth["hand"])
    return _hand_boxes(truth, elbow)[:, None]


def face_weight(truth: dict[str, np.ndarray], frames: slice, height: int, width: int, *, mouth_weight: float,
                expression_weight: float, hand_weight: float = 0.0, stride: int = 1) -> np.ndarray:
    """[T, height // stride, width // stride] extra loss weight: ``mouth_weight`` where a mouth box touches, plus
    ``expression_weight`` where the eyes, the brows or a visible hand touch (:func:`expression_boxes`), plus
    ``hand_weight`` where a hand or a waving forearm touches (:func:`hand_and_forearm_boxes`)."""
    weight = mouth_weight * mouth_mask(truth, frames, height, width, stride)
    if expression_weight:
        weight = weight + expression_weight * box_mask(expression_boxes(truth)[frames], height, width, stride)
    if hand_weight:
        weight = weight + hand_weight * box_mask(hand_and_forearm_boxes(truth, height, width)[frames], height, width,
                                                 stride)
    return weight


def latent_loss_weight(truth: dict[str, np.ndarray], latent_frames: int, height: int, width: int, *,
                       mouth_weight: float, expression_weight: float = 0.0, hand_weight: float = 0.0,
                       vae_scale: int = 4) -> torch.Tensor:
    """[1, 1, latent_frames, h, w] loss weights: 1 plus :func:`face_weight` on the latent grid, each latent cell
    taking its video frames' largest.

    Latent frame 0 is video frame 0; latent j >= 1 covers video frames 4j - 3 .. 4j.
    """
    frames = slice(0, 1 + vae_scale * (latent_frames - 1))
    video = face_weight(truth, frames, height, width, mouth_weight=mouth_weight,
                        expression_weight=expression_weight, hand_weight=hand_weight, stride=LATENT_STRIDE)
    per_latent = [video[0]] + [video[vae_scale * j - vae_scale + 1: vae_scale * j + 1].max(axis=0)
                               for j in range(1, latent_frames)]
    return torch.from_numpy(1.0 + np.stack(per_latent))[None, None]


def prompts_for_blocks(clip: TrainingClip, plans: list[BlockLayout], fps: int) -> list[BlockPrompt]:
    """Per block, the prompt serving would use if the clip's events had been sent as they happened.

    A block is planned once its audio (and look-ahead) has arrived, so every event before the block's last frame
    reached the worker before it: the block shows the latest emotion, the action that started in it, and
    listening if it was on and the block is silent. Of two actions in one block the later shows: the worker's
    scheduler keeps the latest action for the next block.
    """
    return _prompts_for_blocks(clip, [(p.video_end / fps, p.video_start / fps, p.video_end / fps) for p in plans],
                               plans, fps)


def timed_prompts_for_blocks(clip: TrainingClip, plans: list[BlockLayout], fps: int) -> list[BlockPrompt]:
    """Per block, the prompt serving uses when the clip's emotions and actions are sent ahead, timed to points of
    its voice (a TTS flow with word timings; listening is sent as it happens, as in :func:`prompts_for_blocks`).

    The worker's scheduler applies a timed event from the block holding its point when the point lies in the
    block's first half, else from the next block: the block shows the latest such emotion, and the last action
    so placed in it (``tests/model/test_training.py`` drives the scheduler itself to check that this is its rule).
    """
    middles = [(p.video_start + p.video_frames / 2) / fps for p in plans]
    return _prompts_for_blocks(clip, [(middle, middles[i - 1] if i else 0.0, middle)
                                      for i, middle in enumerate(middles)], plans, fps)


def _prompts_for_blocks(clip: TrainingClip, windows: list[tuple[float, float, float]], plans: list[BlockLayout],
                        fps: int) -> list[BlockPrompt]:
    """Per block: the latest emotion before its window's first time, the latest action in [its second, third),
    listening if it was on before the block's end and the block is silent."""
    speech = clip.entry["speech"]["spans"]
    events = sorted(clip.entry["events"], key=lambda e: e["time"])
    prompts = []
    for plan, (emotions_until, actions_from, actions_until) in zip(plans, windows):
        start_s, end_s = plan.video_start / fps, plan.video_end / fps
        actions = [e for e in events if e["kind"] == "action" and actions_from <= e["time"] < actions_until]
        moods = [e for e in events if e["kind"] == "emotion" and e["time"] < emotions_until]
        switches = [e for e in events if e["kind"] == "listening" and e["time"] < end_s]
        silent = not any(s < end_s and e > start_s for s, e in speech)
        prompts.append(block_prompt(
            emotion=moods[-1]["name"] if moods else "neutral",
            intensity=float(moods[-1]["intensity"]) if moods else 0.0,
            action_started=actions[-1]["name"] if actions else None,
            listening_silent=bool(switches and switches[-1]["on"]) and silent,
        ))
    return prompts


__all__ = ["TrainingClip", "box_mask", "expression_boxes", "hand_and_forearm_boxes", "latent_loss_weight",
           "load_clips", "mouth_mask", "prompts_for_blocks", "timed_prompts_for_blocks", "video_to_tensor"]
