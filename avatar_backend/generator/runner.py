"""The generator as the worker drives it: the ``GeneratorRunner`` protocol and what one NPC's block is made of.

No torch here: the worker's engine, scheduler and memory pool program against this surface, which the real
pipeline (:class:`~avatar_backend.generator.pipeline.LiveActPipeline`) and the tests' stand-in both implement.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = ["BlockInput", "GeneratorRunner"]


@dataclass
class BlockInput:
    """What one NPC's next block is made from."""

    memory: Any                  # the NPC's memory (the runner's own type)
    conditioning: Any            # the character's conditioning (from ``prepare_character``)
    audio: np.ndarray            # float32 16 kHz: the block's samples, then its look-ahead
    prompt: str | None = None    # None: the character's base prompt
    intensity: float = 1.0       # how strongly ``prompt`` replaces the base prompt (0-1]
    # This NPC's prompt guidance factor (>= 1; 1: off); None: the model config's (SamplerConfig.prompt_guidance).
    prompt_guidance: float | None = None


class GeneratorRunner(Protocol):
    """Characters in, NPC memories kept, the next block of a batch of NPCs per call."""

    config: Any                  # the ModelConfig
    device: str
    memory_layout: str           # recorded in each memory; a memory made under another layout is not continued
    random_weights: bool
    weights_sha256: str
    parameters: int

    def prepare_character(self, record: Any, reference_png: bytes, width: int, height: int) -> Any:
        """The conditioning of a character at a frame size; ValueError when it cannot be used."""

    def new_memory(self, npc_id: str, character_id: str, width: int, height: int, fps: int, seed: int) -> Any:
        """A fresh NPC memory, live; ValueError for an unsupported format."""

    def memory_bytes(self, width: int, height: int) -> int:
        """One NPC's memory at a size, known before allocation."""

    # A memory is live (on the generator's device or devices) between activate and park or discard, and whole
    # on the host otherwise; snapshots are taken with host_copy.
    def activate(self, memory: Any) -> Any:
        """A parked memory goes live; returns it."""

    def park(self, memory: Any) -> Any:
        """A live memory goes back to the host, whole; returns it."""

    def host_copy(self, memory: Any) -> Any:
        """A whole copy on the host that later blocks do not change (what a snapshot is written from)."""

    def discard(self, memory: Any) -> None:
        """Forget a live memory without parking it (its NPC goes back to its last snapshot)."""

    def block_audio_samples(self, memory: Any) -> tuple[int, int]:
        """(16 kHz samples the memory's next block covers, samples of look-ahead it reads after them)."""

    def batch_key(self, memory: Any) -> Hashable:
        """Memories whose next blocks have equal keys can run in one :meth:`generate_blocks` call."""

    def generate_blocks(self, inputs: Sequence[BlockInput]) -> list[np.ndarray]:
        """Each NPC's next block as uint8 RGB frames [T, H, W, 3]; advances every memory."""
