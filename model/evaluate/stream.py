"""Driving the serving pipeline block by block, as the worker does, from a clip's audio and events."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from avatar_backend.generator.pipeline import LiveActPipeline
from avatar_backend.store import CharacterRecord
from model.data.prompts import ACTION_PROMPTS, BASE_PROMPT, EMOTION_PROMPTS, BlockPrompt


def tiny_character(character_id: str = "eval") -> CharacterRecord:
    """A character record with the tiny model's prompts (those of the default character)."""
    return CharacterRecord(character_id=character_id, base_prompt=BASE_PROMPT, emotion_prompts=dict(EMOTION_PROMPTS),
                           action_prompts=dict(ACTION_PROMPTS))


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class StreamBlock:
    index: int
    frames: np.ndarray          # uint8 [T, H, W, 3]
    first_frame: int            # stream frame index of frames[0]
    seconds: float              # wall time of generate_block
    decode_seconds: float       # its streaming decode's share
    memory_bytes: int


def run_stream(pipeline: LiveActPipeline, still: np.ndarray, audio: np.ndarray,
               prompts: list[BlockPrompt] | None = None, *, seed: int = 0) -> Iterator[StreamBlock]:
    """Blocks of ``still`` saying ``audio`` (16 kHz float32) under per-block ``prompts``, until the audio ends.

    Each block gets its samples plus the look-ahead (zeros past the end), exactly as the worker's scheduler
    hands them over.
    """
    height, width = pipeline.config.height, pipeline.config.width
    record = tiny_character()
    conditioning = pipeline.prepare_character(record, png_bytes(still), width, height)
    memory = pipeline.new_memory("eval", record.character_id, width, height, pipeline.config.fps, seed)
    position, first_frame = 0, 0
    while True:
        consume, lookahead = pipeline.block_audio_samples(memory)
        if position + consume > len(audio):
            return
        chunk = np.zeros(consume + lookahead, np.float32)
        piece = audio[position: position + consume + lookahead]
        chunk[: len(piece)] = piece
        index = memory.blocks_generated
        prompt = prompts[index] if prompts and index < len(prompts) else BlockPrompt(None)
        started = time.perf_counter()
        frames = pipeline.generate_block(memory, conditioning, chunk, prompt.prompt, prompt.intensity)
        yield StreamBlock(index, frames, first_frame, time.perf_counter() - started,
                          pipeline.last_timings["decode_s"], memory.nbytes())
        position += consume
        first_frame += len(frames)


def generate(pipeline: LiveActPipeline, still: np.ndarray, audio: np.ndarray,
             prompts: list[BlockPrompt] | None = None, *, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """All frames of :func:`run_stream`, and the stream frame index where each block starts."""
    blocks = list(run_stream(pipeline, still, audio, prompts, seed=seed))
    return np.concatenate([b.frames for b in blocks]), [b.first_frame for b in blocks]
