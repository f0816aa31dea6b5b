"""The worker's typed configuration (what ``python -m avatar_backend.worker`` is started with)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from avatar_backend.generator.config import ExecutionConfig
from avatar_backend.store import (
    DEFAULT_MAX_PARKED_MEMORY_BYTES,
    DEFAULT_MAX_STORED_NPC_BYTES,
    DEFAULT_MAX_STORED_NPCS,
    DEFAULT_NPC_SNAPSHOT_INTERVAL_S,
    default_data_dir,
)

from .scheduler import SchedulerConfig

__all__ = ["WorkerConfig", "execution_flags"]


@dataclass(frozen=True)
class WorkerConfig:
    endpoint: str
    model_config: str = "tiny"                 # a named ModelConfig or a JSON file
    data_dir: Path = field(default_factory=default_data_dir)  # this worker's NPC memories
    device: str = "cpu"
    weights: str | None = None
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)  # attention backend, FP8 GEMM, compile
    parent_pid: int = 0                        # exit (saving memories) when this process is gone; 0: never
    resident_budget_bytes: int = DEFAULT_MAX_PARKED_MEMORY_BYTES  # parked NPC memories kept in host memory
    max_stored_npcs: int = DEFAULT_MAX_STORED_NPCS             # NPCs on disk; a new one beyond is refused (0: no cap)
    max_stored_npc_bytes: int = DEFAULT_MAX_STORED_NPC_BYTES   # their bytes on disk, likewise (0: no cap)
    npc_snapshot_interval_s: float = DEFAULT_NPC_SNAPSHOT_INTERVAL_S  # live memories saved this often (0: off)
    max_live_sessions: int = 0                 # 0: no limit (the gateway does admission)
    character_cache_size: int = 64             # prepared (character, size) conditionings kept
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    idle_poll_ms: int = 50                     # longest wait for messages when no block is due


def execution_flags(execution: ExecutionConfig) -> list[str]:
    """The worker's command-line flags that give it ``execution`` (the gateway starts it, rank 0 its followers)."""
    flags = ["--attention", execution.attention, "--gemm", execution.gemm,
             "--text-encoder-device", execution.text_encoder_device, "--decode-precision", execution.decode_precision]
    if execution.prompt_guidance is not None:
        flags += ["--prompt-guidance", str(execution.prompt_guidance)]
    if execution.prompt_onset_latents is not None:
        flags += ["--prompt-onset", str(execution.prompt_onset_latents)]
    return flags + (["--compile"] if execution.compile else [])
