"""The evaluation's pictures, drawn with Pillow: a strip of frames and the per-minute curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def frame_strip(rows: dict[str, np.ndarray], indices: list[int], path: Path) -> None:
    """One row per entry of ``rows`` (label -> frames [T, H, W, 3]), the frames at ``indices`` side by side."""
    label_width = 90
    height, width = next(iter(rows.values())).shape[1:3]
    image = Image.new("RGB", (label_width + width * len(indices), height * len(rows)), "white")
    draw = ImageDraw.Draw(image)
    for r, (label, frames) in enumerate(rows.items()):
        draw.text((4, r * height + height // 2 - 6), label, fill="black")
        for c, index in enumerate(indices):
            image.paste(Image.fromarray(frames[min(index, len(frames) - 1)]), (label_width + c * width, r * height))
    image.save(path)


def curves(series: dict[str, list[float]], path: Path, title: str, size: tuple[int, int] = (640, 360)) -> None:
    """A line chart of named series over minutes (each scaled to its own min-max, labelled with its range)."""
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    width, height = size
    left, right, top, bottom = 40, 20, 30, 60
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), title, fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for i, (name, values) in enumerate(series.items()):
        values = np.asarray(values, np.float64)
        if not len(values):
            continue
        low, high = float(values.min()), float(values.max())
        span = high - low or 1.0
        xs = np.linspace(left, width - right, max(2, len(values)))[: len(values)]
        ys = height - bottom - (values - low) / span * (height - top - bottom) * 0.9 - 5
        colour = colours[i % len(colours)]
        draw.line(list(zip(xs, ys)), fill=colour, width=2)
        draw.text((left + 5, height - bottom + 8 + 14 * i), f"{name}: {low:.3f} .. {high:.3f}", fill=colour)
    draw.text((width - right - 60, height - bottom + 2), "minute ->", fill="black")
    image.save(path)
