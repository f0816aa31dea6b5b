"""Shared helpers of the worker tests (a module with a unique name, unlike conftest)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from avatar_backend.generator.config import ModelConfig, get_config
from avatar_backend.proto_gen import worker_pb2
from avatar_backend.store import DataDir
from avatar_backend.worker.character_spec import spec_from_record

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


def open_npc(data_dir: DataDir, character: str, request_id: int = 0,
             **fields: object) -> tuple[worker_pb2.ToWorker, list[bytes]]:
    """OpenNpc as the gateway sends it: the NPC's character (``character``, registered in ``data_dir``) with
    its reference image as the payload."""
    spec = spec_from_record(data_dir.read_character(character))
    message = worker_pb2.ToWorker(request_id=request_id, open_npc=worker_pb2.OpenNpc(character=spec, **fields))
    return message, [data_dir.read_reference_image(character)]


def process_gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for whoever adopted it counts as exited); reads /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def until_process_gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether the process exits within ``timeout`` (a SIGKILL takes a moment to land)."""
    for _ in range(int(timeout / 0.05)):
        if process_gone(pid):
            return True
        await asyncio.sleep(0.05)
    return process_gone(pid)
