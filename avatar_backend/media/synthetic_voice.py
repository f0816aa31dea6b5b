"""A speech-like voice for measurements (the benchmark, ``avatar-backend soak``): no speech synthesizer needed."""

from __future__ import annotations

import numpy as np

__all__ = ["speech_like_voice"]


def speech_like_voice(rate: int, seconds: float) -> np.ndarray:
    """Float32 samples of a voiced tone (170 Hz) whose loudness moves at a syllable rate (3 Hz): it opens and
    closes the mouth as speech does."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 170 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
