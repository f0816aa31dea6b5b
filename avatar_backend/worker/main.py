"""The worker process's entry point: parse the flags, build the generator and its executor, run the engine.

Run as ``python -m avatar_backend.worker --endpoint E --config NAME_OR_PATH --data-dir D --device DEV
[--weights FILE] [--parent-pid PID]``; the gateway's :class:`~avatar_backend.worker.process.WorkerProcess`
does that. ``AVATAR_FAKE_PIPELINE=1`` (tests only) swaps the generator for a numpy stand-in.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avatar_backend.store import (
    DEFAULT_MAX_PARKED_MEMORY_BYTES,
    DEFAULT_MAX_STORED_NPC_BYTES,
    DEFAULT_MAX_STORED_NPCS,
    DEFAULT_NPC_SNAPSHOT_INTERVAL_S,
    default_data_dir,
)

from .config import WorkerConfig
from .engine import Engine
from .executor import InProcessExecutor
from .link import WorkerLink
from .memory_pool import MemoryCodec
from .process import RANDOM_WEIGHTS
from .scheduler import DEFAULT_VOICE_JITTER_BUDGET_MS, SchedulerConfig

__all__ = ["build_runner", "main", "parse_args"]

log = logging.getLogger("avatar_backend.worker")

FAKE_PIPELINE_ENV = "AVATAR_FAKE_PIPELINE"


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------


def build_runner(model_config: str, weights: str | None, device: str) -> tuple[Any, MemoryCodec]:
    """The generator and its snapshot codec (the numpy stand-in when AVATAR_FAKE_PIPELINE=1, tests only)."""
    if os.environ.get(FAKE_PIPELINE_ENV) == "1":
        from .fake_pipeline import FakePipeline

        log.warning("%s=1: running the TEST-ONLY fake pipeline, not the generator", FAKE_PIPELINE_ENV)
        return FakePipeline.from_config(model_config, weights, device), FakePipeline.codec
    from avatar_backend.generator.memory import NpcMemory, read_memory_header
    from avatar_backend.generator.pipeline import LiveActPipeline, shipped_weights

    if weights is None:
        weights = shipped_weights(model_config)
    elif weights == RANDOM_WEIGHTS:
        weights = None
    pipeline = LiveActPipeline.from_config(model_config, weights=weights, device=device)
    return pipeline, MemoryCodec(load=NpcMemory.load, read_header=read_memory_header)


def parse_args(argv: Sequence[str] | None = None) -> WorkerConfig:
    parser = argparse.ArgumentParser(prog="python -m avatar_backend.worker",
                                     description="LiveAct generator worker (started by the gateway)")
    parser.add_argument("--endpoint", required=True, help="ZeroMQ endpoint the gateway bound (ipc://... or tcp://...)")
    parser.add_argument("--config", default="tiny", help="model config name or JSON file (default: tiny)")
    parser.add_argument("--data-dir", default=None, help="data directory (characters, NPC memories)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--weights", default=None,
                        help="weights file, or 'random' (default: the config's shipped weights, random without them)")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process (the gateway) is gone")
    parser.add_argument("--max-parked-memory-bytes", type=int, default=DEFAULT_MAX_PARKED_MEMORY_BYTES,
                        help="host memory for parked NPC memories; beyond it they stay on disk only")
    parser.add_argument("--max-stored-npcs", type=int, default=DEFAULT_MAX_STORED_NPCS,
                        help="NPCs kept on disk; a new NPC beyond this is refused (0: no limit)")
    parser.add_argument("--max-stored-npc-bytes", type=int, default=DEFAULT_MAX_STORED_NPC_BYTES,
                        help="bytes of NPC memories on disk; a new NPC beyond this is refused (0: no limit)")
    parser.add_argument("--npc-snapshot-interval-s", type=float, default=DEFAULT_NPC_SNAPSHOT_INTERVAL_S,
                        help="save live NPC memories this often, in seconds (0: only when sessions end)")
    parser.add_argument("--voice-jitter-budget-ms", type=int, default=DEFAULT_VOICE_JITTER_BUDGET_MS,
                        help="how long an utterance's voice may stall before silence goes inside it")
    parser.add_argument("--max-live", type=int, default=0, help="live sessions at most (default: no limit)")
    parser.add_argument("--max-batch", type=int, default=SchedulerConfig.max_batch,
                        help="NPCs whose blocks are generated in one call at most (1: no batching)")
    parser.add_argument("--log-level", default=os.environ.get("AVATAR_WORKER_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    return WorkerConfig(
        endpoint=args.endpoint, model_config=args.config,
        data_dir=Path(args.data_dir).expanduser() if args.data_dir else default_data_dir(),
        device=args.device, weights=args.weights, parent_pid=args.parent_pid,
        resident_budget_bytes=args.max_parked_memory_bytes, max_live_sessions=args.max_live,
        max_stored_npcs=args.max_stored_npcs, max_stored_npc_bytes=args.max_stored_npc_bytes,
        npc_snapshot_interval_s=args.npc_snapshot_interval_s,
        scheduler=SchedulerConfig(voice_jitter_budget_s=args.voice_jitter_budget_ms / 1000, max_batch=args.max_batch),
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    # Connect first: the hello tells the gateway this process is up while the model loads.
    link = WorkerLink(config.endpoint)
    linger_ms = 2000  # let the last replies (Shutdown's Ack) leave before exiting
    try:
        try:
            runner, codec = build_runner(config.model_config, config.weights, config.device)
        except Exception:
            log.exception("could not build the generator (config %s, device %s)", config.model_config, config.device)
            return 2
        engine = Engine(config, InProcessExecutor(runner), codec, link)
        # SIGTERM: leave the loop and save every memory (SIGINT does the same through KeyboardInterrupt).
        signal.signal(signal.SIGTERM, lambda *_: engine.request_stop())
        code = engine.run()
        if engine.gateway_gone:
            linger_ms = 0  # nobody is left to read what is still queued
        return code
    finally:
        link.close(linger_ms)
