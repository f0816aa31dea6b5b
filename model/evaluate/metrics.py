"""The measures of the evaluation: lip sync, seams, image similarity. Plain numpy on uint8 frames."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from model.data.measure import measure_mouth_openness
from model.train.clips import latent_first_frames


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() < 1e-9 or b.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def mean_interval(values, level: float = 0.9, resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Where the mean of per-clip ``values`` falls when as many clips are drawn again (a percentile bootstrap over
    the clips): the range holding ``level`` of the resampled means. A few clips with long emotions move an
    accuracy a lot, so a number's distance from a target inside this range is not evidence; two sets of weights
    on the same clips differ far less than this (pass the per-clip differences to compare them)."""
    v = np.asarray(values, np.float64)
    means = v[np.random.default_rng(seed).integers(0, len(v), (resamples, len(v)))].mean(axis=1)
    low, high = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def steady_mouth_boxes(truth_boxes: np.ndarray, grow: int = 3, radius: int = 6) -> np.ndarray:
    """Per-frame mouth boxes for generated frames: the truth's box, widened to cover where it was over the
    frames around (a generated head sways on its own, not exactly like the truth's) and grown a little."""
    boxes = np.asarray(truth_boxes, np.int64)
    out = boxes.copy()
    for i in range(len(boxes)):
        window = boxes[max(0, i - radius): i + radius + 1]
        out[i] = (window[:, 0].min() - grow, window[:, 1].min() - grow, window[:, 2].max() + grow,
                  window[:, 3].max() + grow)
    return np.clip(out, 0, None)


def lip_sync(frames: np.ndarray, truth: dict[str, np.ndarray], reference_frames: np.ndarray | None = None) -> dict:
    """Pearson r between the truth's mouth openness and the openness measured on ``frames``; with
    ``reference_frames`` (the ground-truth render) also the amplitude ratio of the two measured curves."""
    n = len(frames)
    boxes = steady_mouth_boxes(truth["mouth_box"][:n])
    measured = measure_mouth_openness(frames, boxes)
    result = {"r": pearson(truth["mouth_open"][:n], measured), "measured": measured}
    if reference_frames is not None:
        true_measured = measure_mouth_openness(reference_frames[:n], boxes)
        speaking = truth["mouth_open"][:n] > 0.1
        result["amplitude_ratio"] = float(measured[speaking].mean() - measured[~speaking].mean()) / max(
            1e-6, float(true_measured[speaking].mean() - true_measured[~speaking].mean()))
    return result


def frame_changes(frames: np.ndarray) -> np.ndarray:
    """Mean absolute change from each frame to the next: element t - 1 is the change into frame t."""
    return np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))


def seam_ratio(frames: np.ndarray, block_start_frames: list[int],
               counted: Collection[int] | None = None) -> float | None:
    """Mean frame-to-frame change at block boundaries over the mean change inside blocks (1.0: no seam).

    ``counted``: the block starts whose boundaries are measured (default all of them; None when none of them is
    inside the frames); the inside of the blocks leaves out every boundary either way."""
    diffs = frame_changes(frames)
    seams = [s - 1 for s in block_start_frames if 0 < s < len(frames)]
    inside = np.ones(len(diffs), bool)
    inside[seams] = False
    if counted is None:
        return float(diffs[seams].mean() / max(1e-6, diffs[inside].mean())) if seams else 1.0
    measured = [s - 1 for s in block_start_frames if 0 < s < len(frames) and s in counted]
    return float(diffs[measured].mean() / max(1e-6, diffs[inside].mean())) if measured else None


def latent_seam_ratio(frames: np.ndarray, block_start_frames: list[int], frames_per_latent: int = 4) -> float:
    """Mean frame-to-frame change at block boundaries over the mean change at the latent boundaries inside
    blocks: what the DiT's block seams add to the step that every latent boundary shows (1.0: none). A stream's
    first latent is one frame, so latent boundaries fall on frames 1 + k * ``frames_per_latent``."""
    diffs = frame_changes(frames)
    starts = {s for s in block_start_frames if 0 < s < len(frames)}
    # Frame 1 left out: the step from frame 0 (a latent alone) into it is unlike the other latent boundaries.
    latent = [t - 1 for t in latent_first_frames(len(frames), frames_per_latent)[1:] if t not in starts]
    seams = [s - 1 for s in sorted(starts)]
    return float(diffs[seams].mean() / max(1e-6, diffs[latent].mean())) if seams and latent else 1.0


def latent_changes(frames: np.ndarray, frames_per_latent: int = 4) -> tuple[float, float]:
    """Mean frame-to-frame change (levels of 255) into the frames inside latents and into each latent's first frame
    (frames 1 + k * ``frames_per_latent``): a decoder whose error moves with each latent steps at the second."""
    diffs = frame_changes(frames)
    boundary = np.zeros(len(diffs), bool)
    boundary[latent_first_frames(len(frames), frames_per_latent) - 1] = True
    return float(diffs[~boundary].mean()), float(diffs[boundary].mean())


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None) -> float:
    """PSNR of uint8 frames [T, H, W, 3]; over the pixels where ``region`` ([T, H, W]) is non-zero if given."""
    error = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=-1)
    mse = float(error.mean() if region is None else error[region[: len(error)] > 0].mean())
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean SSIM of the luminance of two frame stacks [T, H, W, 3], box-filtered windows."""
    def lum(x):
        return x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])

    def box(x):
        kernel = np.ones(window) / window
        x = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), -1, x)
        return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="valid"), -2, x)

    x, y = lum(a), lum(b)
    mx, my = box(x), box(y)
    vx, vy, cxy = box(x * x) - mx**2, box(y * y) - my**2, box(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    value = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(value.mean())


def colour_similarity(frames: np.ndarray, reference: np.ndarray, bins: int = 8) -> float:
    """Identity proxy for flat-shaded characters: histogram intersection (0-1) of the RGB colours of the frames
    and of the reference image (hair, skin, clothes and background keep their colours)."""
    def histogram(x):
        q = (x.reshape(-1, 3) // (256 // bins)).astype(np.int64)
        h = np.bincount(q[:, 0] * bins * bins + q[:, 1] * bins + q[:, 2], minlength=bins**3).astype(np.float64)
        return h / h.sum()

    return float(np.minimum(histogram(frames), histogram(reference)).sum())
