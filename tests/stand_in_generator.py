"""The tests' stand-in for the generator: LiveActPipeline's GeneratorRunner surface in numpy, instantly.

The worker's unit tests drive the real engine, scheduler and memory pool with it, and worker processes started
by tests load it through ``AVATAR_TEST_GENERATOR`` (this file's path), so supervisor, gateway and client tests
run the real worker without torch models. Frames are a flat colour that encodes the frame index and whether the
block had voice: RGB (index % 256, index // 256 % 256, 255 if voiced else 0). Memories are small
JSON-plus-bytes files in the ``.npcmem`` place (not the real format).

``AVATAR_STAND_IN_BLOCK_DELAY_S`` (seconds per generator call) simulates a slow generator.
``AVATAR_STAND_IN_FOLLOWER_PID_FILE`` makes the worker start a stand-in for a follower rank, as rank 0 of a
multi-device worker starts its followers (a child in the worker's process group, on the worker's output), blocked
as one waiting in a collective for a rank 0 that is gone; its pid is appended to that file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avatar_backend.generator.config import ModelConfig, get_config
from avatar_backend.generator.runner import BlockInput
from avatar_backend.media.resample import MODEL_SAMPLE_RATE
from avatar_backend.store import atomic_write, now_ms
from avatar_backend.worker.memory_pool import MemoryCodec

__all__ = ["StandInMemory", "StandInGenerator", "read_stand_in_header"]

_MAGIC = b"STAND-IN-NPCMEM\n"
LOOKAHEAD_FRAMES = 2


@dataclass
class StandInMemory:
    npc_id: str
    character_id: str
    model_name: str
    width: int
    height: int
    fps: int
    seed: int
    state: np.ndarray = field(repr=False)
    blocks_generated: int = 0
    frames_generated: int = 0
    timeline_samples: int = 0
    prompt: str | None = None
    intensity: float = 1.0
    memory_layout: str = "stand-in"
    lineage: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    updated_unix_ms: int = field(default_factory=now_ms)

    def nbytes(self) -> int:
        return int(self.state.nbytes)

    def resume_token(self) -> str:
        return f"{self.lineage}-{self.blocks_generated}"

    def to(self, device: str) -> "StandInMemory":
        return self  # numpy state lives on the host already

    def host_copy(self) -> "StandInMemory":
        return dataclasses.replace(self, state=self.state.copy())

    def header(self) -> dict[str, Any]:
        return {
            "npc_id": self.npc_id, "character_id": self.character_id, "model_name": self.model_name,
            "width": self.width, "height": self.height, "fps": self.fps, "seed": self.seed,
            "blocks_generated": self.blocks_generated, "frames_generated": self.frames_generated,
            "timeline_samples": self.timeline_samples, "prompt": self.prompt, "intensity": self.intensity,
            "lineage": self.lineage,
            "updated_unix_ms": self.updated_unix_ms, "memory_bytes": self.nbytes(),
            "resume_token": self.resume_token(),
        }

    def save(self, path: Path | str) -> None:
        atomic_write(Path(path), _MAGIC + json.dumps(self.header()).encode() + b"\n" + self.state.tobytes())

    @classmethod
    def load(cls, path: Path | str, device: str = "cpu") -> "StandInMemory":
        data = Path(path).read_bytes()
        if not data.startswith(_MAGIC):
            raise ValueError(f"{path} is not a stand-in NPC memory")
        line_end = data.index(b"\n", len(_MAGIC))
        h = json.loads(data[len(_MAGIC):line_end])
        state = np.frombuffer(data[line_end + 1:], dtype=np.uint8).copy()
        return cls(npc_id=h["npc_id"], character_id=h["character_id"], model_name=h["model_name"],
                   width=h["width"], height=h["height"], fps=h["fps"], seed=h["seed"], state=state,
                   blocks_generated=h["blocks_generated"], frames_generated=h["frames_generated"],
                   timeline_samples=h["timeline_samples"], prompt=h.get("prompt"), intensity=h.get("intensity", 1.0),
                   lineage=h["lineage"],
                   updated_unix_ms=h["updated_unix_ms"])


def read_stand_in_header(path: Path | str) -> dict[str, Any]:
    with open(path, "rb") as f:
        if f.read(len(_MAGIC)) != _MAGIC:
            raise ValueError(f"{path} is not a stand-in NPC memory")
        return json.loads(f.readline())


class StandInGenerator:
    """Same surface as LiveActPipeline; see the module doc."""

    codec = MemoryCodec(load=StandInMemory.load, read_header=read_stand_in_header)

    def __init__(self, config: ModelConfig, device: str = "cpu", block_delay_s: float = 0.0):
        self.config = config
        self.device = device
        self.random_weights = True
        self.memory_layout = "stand-in"
        self.weights_sha256 = ""
        self.parameters = 0
        self.block_delay_s = block_delay_s
        self.prepared: list[tuple[str, int, int, int]] = []   # (character_id, revision, width, height) calls
        self.prompts: list[str | None] = []                   # prompt of every generated block
        self.intensities: list[float] = []                    # and its intensity
        self.prompt_guidances: list[float | None] = []        # and its NPC's prompt guidance (None: the config's)
        self.batch_sizes: list[int] = []                      # NPCs of every generate_blocks call

    @classmethod
    def from_config(cls, config_name_or_path: str, weights: str | None = None, device: str = "cpu") -> "StandInGenerator":
        if os.path.isfile(config_name_or_path):
            config = ModelConfig.from_json(Path(config_name_or_path).read_text())
        else:
            config = get_config(config_name_or_path)
        return cls(config, device, float(os.environ.get("AVATAR_STAND_IN_BLOCK_DELAY_S", "0") or 0))

    def memory_bytes(self, width: int, height: int) -> int:
        return (width // 8) * (height // 8) * 64

    def prepare_character(self, record: Any, reference_png: bytes, width: int, height: int) -> dict[str, Any]:
        self.prepared.append((record.character_id, record.revision, width, height))
        return {"character_id": record.character_id, "revision": record.revision,
                "image_sha256": hashlib.sha256(reference_png).hexdigest()}

    def new_memory(self, npc_id: str, character_id: str, width: int, height: int, fps: int, seed: int) -> StandInMemory:
        if fps <= 0 or fps > 60:
            raise ValueError(f"fps {fps} is not supported")
        return StandInMemory(npc_id=npc_id, character_id=character_id, model_name=self.config.name, width=width,
                          height=height, fps=fps, seed=seed,
                          state=np.zeros(self.memory_bytes(width, height), dtype=np.uint8))

    def activate(self, memory: StandInMemory) -> StandInMemory:
        return memory

    def park(self, memory: StandInMemory) -> StandInMemory:
        return memory

    def host_copy(self, memory: StandInMemory) -> StandInMemory:
        return memory.host_copy()

    def discard(self, memory: StandInMemory) -> None:
        pass

    def block_audio_samples(self, memory: StandInMemory) -> tuple[int, int]:
        per_frame = MODEL_SAMPLE_RATE // memory.fps
        return self.config.frames_per_block(memory.blocks_generated) * per_frame, LOOKAHEAD_FRAMES * per_frame

    def batch_key(self, memory: StandInMemory) -> Hashable:
        return (memory.width, memory.height, memory.fps, min(memory.blocks_generated, 2))

    def generate_blocks(self, inputs: Sequence[BlockInput]) -> list[np.ndarray]:
        if len({self.batch_key(item.memory) for item in inputs}) > 1:
            raise ValueError("NPCs at different block kinds or sizes in one batch")
        self.batch_sizes.append(len(inputs))
        if self.block_delay_s:
            time.sleep(self.block_delay_s)
        before = [dataclasses.replace(item.memory, state=item.memory.state.copy()) for item in inputs]
        self.prompt_guidances.extend(item.prompt_guidance for item in inputs)
        try:
            return [self.generate_block(item.memory, item.conditioning, item.audio, item.prompt,
                                        intensity=item.intensity) for item in inputs]
        except Exception:
            if len(inputs) > 1:  # as the generator does: a failed batch leaves its memories as they were
                for item, saved in zip(inputs, before):
                    item.memory.__dict__.update(saved.__dict__)
            raise

    def generate_block(self, memory: StandInMemory, conditioning: Any, audio: np.ndarray, prompt: str | None,
                       intensity: float = 1.0) -> np.ndarray:
        consume, lookahead = self.block_audio_samples(memory)
        if audio.dtype != np.float32 or audio.shape != (consume + lookahead,):
            raise ValueError(f"audio must be float32 [{consume + lookahead}], got {audio.dtype} {audio.shape}")
        frames_n = self.config.frames_per_block(memory.blocks_generated)
        frames = np.empty((frames_n, memory.height, memory.width, 3), dtype=np.uint8)
        loud = bool(np.any(audio[:consume] != 0))
        for i in range(frames_n):
            index = memory.frames_generated + i
            frames[i] = (index % 256, (index // 256) % 256, 255 if loud else 0)
        self.prompts.append(prompt)
        self.intensities.append(intensity)
        memory.state[memory.blocks_generated % memory.state.size] ^= 1
        memory.blocks_generated += 1
        memory.frames_generated += frames_n
        memory.timeline_samples += consume
        memory.updated_unix_ms = now_ms()
        return frames


def make_generator(model_config: str, weights: str | None, device: str) -> tuple[StandInGenerator, MemoryCodec]:
    """What a worker started with ``AVATAR_TEST_GENERATOR`` set to this file runs."""
    follower_pid_file = os.environ.get("AVATAR_STAND_IN_FOLLOWER_PID_FILE")
    if follower_pid_file:
        follower = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], stdin=subprocess.DEVNULL)
        with open(follower_pid_file, "a") as f:
            f.write(f"{follower.pid}\n")
    return StandInGenerator.from_config(model_config, weights, device), StandInGenerator.codec


# The environment of a worker process (WorkerProcessConfig.env) that runs this stand-in.
WORKER_ENV = {"AVATAR_TEST_GENERATOR": str(Path(__file__).resolve())}
