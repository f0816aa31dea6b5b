"""Shared helpers of the worker tests (a module with a unique name, unlike conftest)."""

from __future__ import annotations

import dataclasses

from avatar_backend.generator.config import ModelConfig, get_config

SAMPLES_PER_FRAME = 800          # 16 kHz / 20 fps
BLOCK0 = 21 * SAMPLES_PER_FRAME  # 16800
BLOCK = 32 * SAMPLES_PER_FRAME   # 25600
LOOKAHEAD = 2 * SAMPLES_PER_FRAME


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def small_config() -> ModelConfig:
    """The tiny config with small sizes first, so fake frames stay cheap."""
    return dataclasses.replace(get_config("tiny"), width=64, height=64)
