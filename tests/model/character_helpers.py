"""Shared helpers of the training-data tests (a module with a unique name, unlike conftest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_RATE = 16000


def synthetic_voice(seconds: float, *, f0: float = 140.0, syllables_per_second: float = 4.0,
                    formant: float = 700.0) -> np.ndarray:
    """A buzzy vowel-like signal (harmonics of ``f0`` shaped around ``formant``) pulsing in syllables."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    harmonics = np.arange(1, 30)
    gains = np.exp(-(((harmonics * f0) - formant) / 600.0) ** 2) + 0.05
    voice = (gains[:, None] * np.sin(2 * np.pi * f0 * harmonics[:, None] * t)).sum(axis=0)
    syllables = np.sin(np.pi * syllables_per_second * t) ** 2
    return (0.3 * voice / np.abs(voice).max() * syllables).astype(np.float32)
