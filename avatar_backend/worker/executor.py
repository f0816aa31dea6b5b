"""Executors: where the engine's batches of blocks run.

The engine hands an executor the inputs of one batch and gets each NPC's frames back; it does not know how
many processes or devices make them. :class:`InProcessExecutor` runs the generator in the engine's own process
on one device; :class:`~avatar_backend.worker.ranks.RankExecutor` runs every batch on several ranks at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from avatar_backend.generator.runner import BlockInput, GeneratorRunner

__all__ = ["Executor", "ExecutorLost", "InProcessExecutor"]


class ExecutorLost(RuntimeError):
    """Part of the executor (another rank) is gone: the worker cannot go on and exits; it is restarted."""


class Executor(Protocol):
    runner: GeneratorRunner     # the generator of rank 0: characters, memories, sizes

    def execute(self, inputs: Sequence[BlockInput]) -> list[np.ndarray]:
        """Each NPC's next block (uint8 [T, H, W, 3]); advances their memories. A batch of more than one NPC
        that raises leaves their memories as they were; ExecutorLost when ranks can no longer agree on them."""

    def check(self) -> None:
        """Between batches: ExecutorLost when part of the executor is gone."""

    def lost(self) -> None:
        """After ExecutorLost: forget what only the lost part held (live memories' shards)."""

    def shutdown(self) -> None:
        """Stop whatever the executor started (other ranks)."""


class InProcessExecutor:
    """One rank: the generator runs in this process."""

    def __init__(self, runner: GeneratorRunner):
        self.runner = runner

    def execute(self, inputs: Sequence[BlockInput]) -> list[np.ndarray]:
        return self.runner.generate_blocks(inputs)

    def check(self) -> None:
        pass

    def lost(self) -> None:
        pass

    def shutdown(self) -> None:
        pass
