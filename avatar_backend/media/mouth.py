"""The mouth, from both sides: how open speech makes it (from the audio) and how open it looks (from pixels).

:func:`mouth_from_audio` is the ground truth the training renderer (``model/data``) draws: frame ``i`` shows the
audio in ``[i, i + 1) / fps`` seconds (50 ms at 20 fps); its RMS level relative to the clip's loud speech gives
the openness (smoothed with a fast attack and a slower release, and exactly 0 below a silence gate once the
release has run out); its spectral centroid gives the width: low (``oo``) is rounded, high (``ee``) is wide.

:func:`measure_mouth_openness` reads the opening back from frames. The training data's tests use it to prove the
drawing matches the truth, the evaluation to score generated video, and ``demo`` and the end-to-end tests to
score the frames a server sent against the voice it was sent (a lip-sync score without any ground truth).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Mapping

import numpy as np

from .resample import MODEL_SAMPLE_RATE

SILENCE_RMS = 10 ** (-50 / 20)      # below -50 dBFS a frame counts as silence
LEVEL_FLOOR_DB = -30.0              # relative to the clip's loud speech: at or below this the mouth is closed
LEVEL_RANGE_DB = 30.0               # dB above the floor for a fully open mouth
ATTACK = 0.75                       # fraction of the way to a louder target covered per frame
RELEASE = 0.45                      # ... to a quieter target (mouths close more slowly than they open)
CLOSED_BELOW = 0.03                 # smoothed openness under this is drawn (and reported) as closed
CENTROID_ROUNDED_HZ = 500.0         # centroid at or below: fully rounded (width 0)
CENTROID_WIDE_HZ = 2800.0           # centroid at or above: fully wide (width 1)
NEUTRAL_WIDTH = 0.5


def frame_windows(audio: np.ndarray, n_frames: int, sample_rate: int, fps: int) -> np.ndarray:
    """The audio under each frame, [n_frames, samples_per_frame], zero-padded past the end."""
    hop = sample_rate // fps
    padded = np.zeros(n_frames * hop, np.float32)
    usable = min(len(audio), len(padded))
    padded[:usable] = audio[:usable]
    return padded.reshape(n_frames, hop)


def _smooth(target: np.ndarray, attack: float, release: float, start: float) -> np.ndarray:
    out = np.empty_like(target)
    value = start
    for i, goal in enumerate(target):
        value += (attack if goal > value else release) * (goal - value)
        out[i] = value
    return out


def mouth_from_audio(
    audio: np.ndarray, n_frames: int, *, sample_rate: int = MODEL_SAMPLE_RATE, fps: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (openness 0-1, width 0-1) for ``audio`` (float PCM)."""
    windows = frame_windows(np.asarray(audio, np.float32), n_frames, sample_rate, fps)
    rms = np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1))
    voiced = rms > SILENCE_RMS
    # Loud speech is the 90th percentile of the voiced frames, so espeak's level, or a quiet voice, opens
    # the mouth as wide as a loud one.
    reference = np.percentile(rms[voiced], 90) if voiced.any() else 1.0
    level_db = 20 * np.log10(np.maximum(rms, 1e-9) / reference)
    target_open = np.clip((level_db - LEVEL_FLOOR_DB) / LEVEL_RANGE_DB, 0.0, 1.0)
    target_open[~voiced] = 0.0
    openness = _smooth(target_open, ATTACK, RELEASE, 0.0)
    openness[openness < CLOSED_BELOW] = 0.0

    spectrum = np.abs(np.fft.rfft(windows * np.hanning(windows.shape[1]), axis=1)) ** 2
    freqs = np.fft.rfftfreq(windows.shape[1], 1.0 / sample_rate)
    band = (freqs >= 80) & (freqs <= 6000)
    power = spectrum[:, band]
    centroid = (power * freqs[band]).sum(axis=1) / np.maximum(power.sum(axis=1), 1e-12)
    target_width = np.clip(
        np.log(np.maximum(centroid, 1.0) / CENTROID_ROUNDED_HZ) / np.log(CENTROID_WIDE_HZ / CENTROID_ROUNDED_HZ),
        0.0, 1.0,
    )
    # Silence and near-silence relax to the neutral width rather than following noise.
    target_width[target_open <= 0.0] = NEUTRAL_WIDTH
    width = _smooth(target_width, 0.6, 0.35, NEUTRAL_WIDTH)
    return openness.astype(np.float32), width.astype(np.float32)


Box = tuple[int, int, int, int]


def _luminance(pixels: np.ndarray) -> np.ndarray:
    return pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114


def per_frame_boxes(layout: Mapping[str, Any] | np.ndarray | Box, key: str, n_frames: int) -> np.ndarray:
    """Per-frame boxes [T, ...] from a truth dict (its ``key``), an array of boxes, or one fixed box."""
    if isinstance(layout, Mapping):
        layout = layout[key]
    boxes = np.asarray(layout, np.int64)
    if boxes.ndim == 1 or (key == "eye_boxes" and boxes.ndim == 2):
        boxes = np.broadcast_to(boxes, (n_frames, *boxes.shape))
    if len(boxes) != n_frames:
        raise ValueError(f"{len(boxes)} boxes for {n_frames} frames")
    return boxes


def _mouth_darkness(frame: np.ndarray, box) -> np.ndarray:
    """Per-pixel darkness 0-1 in the mouth region, judged against the region's own skin."""
    x0, y0, x1, y1 = (int(v) for v in box)
    region = _luminance(frame[y0:y1, x0:x1].astype(np.float32))
    if region.size == 0:
        return np.zeros((0, 0), np.float32)
    skin = np.percentile(region, 80)
    return np.clip((0.5 * skin - region) / (0.3 * skin), 0.0, 1.0)


def measure_mouth_openness(frames: np.ndarray, truth_or_layout: Mapping[str, Any] | np.ndarray | Box) -> np.ndarray:
    """Per-frame mouth opening read from the pixels: the height of the dark mouth interior at its tallest
    columns, as a fraction of the mouth region's height (float32 [T]).

    ``frames`` is [T, H, W, 3] uint8 (or one frame [H, W, 3]); ``truth_or_layout`` is a clip's truth (its
    ``mouth_box``), per-frame boxes [T, 4] or one box (x0, y0, x1, y1). Darkness is judged against the region's
    own skin (its bright 80th percentile), so it works on every skin tone: a pixel counts fully when it is
    under a fifth of the skin's luminance (the open mouth's interior), not at all above half of it (lips,
    shading), and partially between (anti-aliased edges), which keeps the measure continuous. The tallest
    columns (the mean of the top three column sums) are used rather than the whole dark area because the area
    also grows with the mouth's width ("ee" vs "oo"), while the height does not. A closed mouth still shows
    its thin lip line, so the value is small but not 0.
    """
    def tallest_columns(darkness: np.ndarray) -> float:
        return float(np.sort(darkness.sum(axis=0))[-3:].mean() / darkness.shape[0])

    return _per_frame_mouth(frames, truth_or_layout, tallest_columns)


def measure_mouth_dark_area(frames: np.ndarray, truth_or_layout: Mapping[str, Any] | np.ndarray | Box) -> np.ndarray:
    """Per-frame dark area of the mouth region (same darkness as :func:`measure_mouth_openness`), as a
    fraction of the region: grows with both opening and width."""
    return _per_frame_mouth(frames, truth_or_layout, lambda darkness: float(darkness.mean()))


def _per_frame_mouth(frames: np.ndarray, truth_or_layout: Mapping[str, Any] | np.ndarray | Box,
                     reduce: Callable[[np.ndarray], float]) -> np.ndarray:
    """``reduce`` of each frame's mouth darkness (0 where the mouth region is empty)."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    boxes = per_frame_boxes(truth_or_layout, "mouth_box", len(frames))
    out = np.zeros(len(frames), np.float32)
    for i, (frame, box) in enumerate(zip(frames, boxes)):
        darkness = _mouth_darkness(frame, box)
        if darkness.size:
            out[i] = reduce(darkness)
    return out
