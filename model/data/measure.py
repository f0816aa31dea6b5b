"""Reading the truth back from pixels: how open the mouth is, how much eye white shows, how much a region
changed. The tests use these to prove that what is drawn matches the truth; lip-sync evaluation of generated
video will use the same mouth measure on frames the model made (with the truth's layout of the same clip).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Mapping

import numpy as np

Box = tuple[int, int, int, int]


def _luminance(pixels: np.ndarray) -> np.ndarray:
    return pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114


def _boxes(layout: Mapping[str, Any] | np.ndarray | Box, key: str, n_frames: int) -> np.ndarray:
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
    boxes = _boxes(truth_or_layout, "mouth_box", len(frames))
    out = np.zeros(len(frames), np.float32)
    for i, (frame, box) in enumerate(zip(frames, boxes)):
        darkness = _mouth_darkness(frame, box)
        if darkness.size:
            out[i] = reduce(darkness)
    return out


def measure_eye_whites(frames: np.ndarray, truth_or_layout: Mapping[str, Any] | np.ndarray) -> np.ndarray:
    """Per-frame visible eye white (near-white, unsaturated pixels) in both eye regions, as a fraction of
    their area (float32 [T]). Falls to about 0 when the lids close."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    boxes = _boxes(truth_or_layout, "eye_boxes", len(frames))
    out = np.zeros(len(frames), np.float32)
    for i, frame in enumerate(frames):
        white, area = 0.0, 0
        for x0, y0, x1, y1 in boxes[i]:
            region = frame[y0:y1, x0:x1].astype(np.float32)
            low = region.min(axis=-1)
            white += np.clip((low - 200.0) / 40.0, 0.0, 1.0).sum()
            area += region.shape[0] * region.shape[1]
        out[i] = white / max(area, 1)
    return out


def region_change(frame_a: np.ndarray, frame_b: np.ndarray, box: Box) -> float:
    """Mean absolute difference (0-255) of two frames inside ``box``."""
    x0, y0, x1, y1 = (int(v) for v in box)
    a = np.asarray(frame_a, np.float32)[y0:y1, x0:x1]
    b = np.asarray(frame_b, np.float32)[y0:y1, x0:x1]
    return float(np.abs(a - b).mean()) if a.size else 0.0
