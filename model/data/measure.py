"""Reading the truth back from pixels: how open the mouth is, how much eye white shows, how much a region
changed. The tests use these to prove that what is drawn matches the truth; lip-sync evaluation of generated
video will use the same mouth measure on frames the model made (with the truth's layout of the same clip).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from avatar_backend.media.mouth import Box, measure_mouth_dark_area, measure_mouth_openness, per_frame_boxes

__all__ = ["measure_eye_whites", "measure_mouth_dark_area", "measure_mouth_openness", "region_change"]

def measure_eye_whites(frames: np.ndarray, truth_or_layout: Mapping[str, Any] | np.ndarray) -> np.ndarray:
    """Per-frame visible eye white (near-white, unsaturated pixels) in both eye regions, as a fraction of
    their area (float32 [T]). Falls to about 0 when the lids close."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    boxes = per_frame_boxes(truth_or_layout, "eye_boxes", len(frames))
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
