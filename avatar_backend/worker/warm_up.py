"""Compiling before serving: a compiled generator runs one block of each kind before the worker says it is ready.

torch.compile builds a block kind's graphs the first time that kind runs: block 0, block 1 and the first block that
compresses its memory (block 2), each with and without audio, and the decoder's for a stream's first latent and the
passes after it. Without a warm-up the first NPC a player meets waits for all of them (69 s for the published model
on an H200, docs/PERFORMANCE.md); with it, that wait moves into the worker's start, and every NPC's first block
takes what it takes on a running server. The warm-up NPC is the embedded default character at the model's default
size, voiced with silence, and is discarded: nothing is stored. Batches of several NPCs and other frame sizes
compile the first time they run.
"""

from __future__ import annotations

import logging
import time
from importlib import resources

import numpy as np

from avatar_backend.generator.runner import BlockInput, GeneratorRunner
from avatar_backend.store import CharacterRecord

__all__ = ["WARM_UP_BLOCKS", "warm_up"]

log = logging.getLogger("avatar_backend.worker")

# One block of each kind: the first, the one after it, the first that compresses the NPC's memory.
WARM_UP_BLOCKS = 3


def warm_up(runner: GeneratorRunner) -> float:
    """Run a throwaway NPC's first blocks through ``runner``; the seconds it took."""
    started = time.perf_counter()
    config = runner.config
    reference_png = (resources.files("avatar_backend") / "assets" / "default_character.png").read_bytes()
    conditioning = runner.prepare_character(CharacterRecord("warm-up", "a person"), reference_png,
                                            config.width, config.height)
    memory = runner.new_memory("warm-up", "warm-up", config.width, config.height, config.fps, seed=0)
    try:
        for _ in range(WARM_UP_BLOCKS):
            consume, lookahead = runner.block_audio_samples(memory)
            silence = np.zeros(consume + lookahead, dtype=np.float32)
            runner.generate_blocks([BlockInput(memory, conditioning, silence)])
    finally:
        runner.discard(memory)
    seconds = time.perf_counter() - started
    log.info("warm-up: %d blocks of a throwaway NPC at %dx%d in %.1f s (graphs compiled before serving)",
             WARM_UP_BLOCKS, config.width, config.height, seconds)
    return seconds
