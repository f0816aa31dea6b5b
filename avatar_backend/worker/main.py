"""The worker process's entry point: parse the flags, build the generator and its executor, run the engine.

Run as ``python -m avatar_backend.worker --endpoint E --config NAME_OR_PATH --data-dir D --device DEV
[--weights FILE_OR_DIR] [--attention A --gemm G --compile --text-encoder-device D --decode-precision P] [--parent-pid PID]``;
the gateway's :class:`~avatar_backend.worker.process.WorkerProcess` does that. ``AVATAR_TEST_GENERATOR=FILE``
(tests) runs the generator that FILE's ``make_generator(config, weights, device) -> (runner, codec)`` returns
instead of the model.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avatar_backend.generator.config import ATTENTION_BACKENDS, DECODE_PRECISIONS, GEMM_FORMATS, ExecutionConfig
from avatar_backend.store import (
    DEFAULT_MAX_PARKED_MEMORY_BYTES,
    DEFAULT_MAX_STORED_NPC_BYTES,
    DEFAULT_MAX_STORED_NPCS,
    DEFAULT_NPC_SNAPSHOT_INTERVAL_S,
    default_data_dir,
)

from .config import WorkerConfig, execution_flags
from .engine import Engine
from .executor import Executor, InProcessExecutor
from .link import WorkerLink
from .memory_pool import MemoryCodec
from .process import RANDOM_WEIGHTS
from .scheduler import DEFAULT_VOICE_JITTER_BUDGET_MS, SchedulerConfig
from .warm_up import warm_up

__all__ = ["build_runner", "main", "parse_args"]

log = logging.getLogger("avatar_backend.worker")

TEST_GENERATOR_ENV = "AVATAR_TEST_GENERATOR"


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------


def _weights_file(model_config: str, weights: str | None) -> str | None:
    """``--weights`` resolved: the config's shipped weights by default, None for random ones."""
    from avatar_backend.generator.pipeline import shipped_weights

    if weights is None:
        found = shipped_weights(model_config)
        return str(found) if found else None
    return None if weights == RANDOM_WEIGHTS else weights


def build_executor(config: WorkerConfig) -> tuple[Executor, MemoryCodec]:
    """The executor of this worker's devices and the snapshot codec (a test generator when AVATAR_TEST_GENERATOR
    names its file). Several devices: this process becomes rank 0 and starts the others. A compiled model
    (``--compile``) has compiled its graphs when this returns (:mod:`.warm_up`)."""
    test_generator = os.environ.get(TEST_GENERATOR_ENV)
    if test_generator:
        log.warning("%s: running the test generator %s, not the model", TEST_GENERATOR_ENV, test_generator)
        runner, codec = _load_test_generator(test_generator)(config.model_config, config.weights, config.device)
        return InProcessExecutor(runner), codec
    from avatar_backend.generator.memory import NpcMemory, read_memory_header
    from avatar_backend.generator.pipeline import LiveActPipeline

    from .ranks import LeaderRunner, RankExecutor, RankGroup, parse_devices

    codec = MemoryCodec(load=NpcMemory.load, read_header=read_memory_header)
    devices = parse_devices(config.device)
    weights = _weights_file(config.model_config, config.weights)
    if len(devices) == 1:
        pipeline = LiveActPipeline.from_config(config.model_config, weights, devices[0], execution=config.execution)
        executor = InProcessExecutor(pipeline)
    else:
        model_args = ["--config", config.model_config, "--device", config.device, "--weights",
                      weights or RANDOM_WEIGHTS, *execution_flags(config.execution),
                      "--log-level", logging.getLevelName(logging.getLogger().level)]
        group = RankGroup(devices, model_args)
        pipeline = LiveActPipeline.from_config(config.model_config, weights, devices[0], parallel=group.parallel,
                                               execution=config.execution)
        executor = RankExecutor(LeaderRunner(pipeline, group))
    if config.execution.compile:
        warm_up(executor.runner)
    return executor, codec


def _load_test_generator(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("avatar_test_generator", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{TEST_GENERATOR_ENV}: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # before it runs: its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.make_generator


def build_runner(model_config: str, weights: str | None, device: str) -> tuple[Any, MemoryCodec]:
    """The generator of one device and its snapshot codec."""
    executor, codec = build_executor(WorkerConfig(endpoint="", model_config=model_config, weights=weights,
                                                  device=device))
    return executor.runner, codec


def follow_main(args: argparse.Namespace) -> int:
    """A follower rank (``--follow-rank R``): no link, no engine; rank 0's commands until it stops."""
    from avatar_backend.generator.pipeline import LiveActPipeline

    from .ranks import follow, parse_devices

    weights = _weights_file(args.config, args.weights)

    def pipeline_factory(device: str, parallel):
        return LiveActPipeline.from_config(args.config, weights, device, parallel=parallel,
                                           execution=_execution_of(args), dit_only=True)

    return follow(args.follow_rank, args.init_method, parse_devices(args.device), pipeline_factory, args.parent_pid)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m avatar_backend.worker",
                                     description="LiveAct generator worker (started by the gateway)")
    parser.add_argument("--endpoint", help="ZeroMQ endpoint the gateway bound (ipc://... or tcp://...)")
    parser.add_argument("--config", default="tiny", help="model config name or JSON file (default: tiny)")
    parser.add_argument("--data-dir", default=None, help="data directory (characters, NPC memories)")
    parser.add_argument("--device", "--devices", dest="device", default="cpu",
                        help="torch device, e.g. cpu or cuda:0; several, comma-separated (cuda:0,cuda:1), run each "
                             "block sequence-parallel on all of them")
    parser.add_argument("--weights", default=None,
                        help="weights file or directory of the published files, or 'random' (default: the config's "
                             "shipped weights, random without them)")
    parser.add_argument("--attention", default=ExecutionConfig.attention, choices=ATTENTION_BACKENDS,
                        help="attention backend of the DiT")
    parser.add_argument("--gemm", default=ExecutionConfig.gemm, choices=GEMM_FORMATS,
                        help="the DiT's linear layers in the model's dtype, or as FP8 GEMMs")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the DiT's transformer blocks and the VAE decoder")
    parser.add_argument("--text-encoder-device", default=ExecutionConfig.text_encoder_device,
                        help="where the published text encoder (umT5) runs")
    parser.add_argument("--decode-precision", default=ExecutionConfig.decode_precision, choices=DECODE_PRECISIONS,
                        help="what the VAE decoder computes in")
    parser.add_argument("--prompt-guidance", type=float, default=None,
                        help="the prompt guidance of a session that asks for none (default: the model config's; "
                             "1: off)")
    parser.add_argument("--prompt-onset", type=int, default=None,
                        help="latent frames over which a block's new prompt sets in (default: the model config's; "
                             "0: at its first frame)")
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
    # Set by rank 0 for the follower ranks it starts.
    parser.add_argument("--follow-rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--init-method", default="", help=argparse.SUPPRESS)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> WorkerConfig:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.endpoint:
        parser.error("--endpoint is required")
    if args.max_batch < 1:
        parser.error(f"--max-batch must be at least 1, got {args.max_batch}")
    _configure_logging(args.log_level)
    return _config_of(args)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def _config_of(args: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(
        endpoint=args.endpoint, model_config=args.config,
        data_dir=Path(args.data_dir).expanduser() if args.data_dir else default_data_dir(),
        device=args.device, weights=args.weights, execution=_execution_of(args), parent_pid=args.parent_pid,
        resident_budget_bytes=args.max_parked_memory_bytes, max_live_sessions=args.max_live,
        max_stored_npcs=args.max_stored_npcs, max_stored_npc_bytes=args.max_stored_npc_bytes,
        npc_snapshot_interval_s=args.npc_snapshot_interval_s,
        scheduler=SchedulerConfig(voice_jitter_budget_s=args.voice_jitter_budget_ms / 1000, max_batch=args.max_batch),
    )


def _execution_of(args: argparse.Namespace) -> ExecutionConfig:
    return ExecutionConfig(attention=args.attention, gemm=args.gemm, compile=args.compile,
                           text_encoder_device=args.text_encoder_device, decode_precision=args.decode_precision,
                           prompt_guidance=args.prompt_guidance, prompt_onset_latents=args.prompt_onset)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.follow_rank:
        _configure_logging(args.log_level)
        return follow_main(args)
    config = parse_args(argv)
    # Connect first: the hello tells the gateway this process is up while the model loads.
    link = WorkerLink(config.endpoint)
    linger_ms = 2000  # let the last replies (Shutdown's Ack) leave before exiting
    try:
        try:
            executor, codec = build_executor(config)
        except Exception:
            log.exception("could not build the generator (config %s, device %s)", config.model_config, config.device)
            return 2
        engine = Engine(config, executor, codec, link)
        # SIGTERM: leave the loop and save every memory (SIGINT does the same through KeyboardInterrupt).
        signal.signal(signal.SIGTERM, lambda *_: engine.request_stop())
        code = engine.run()
        if engine.gateway_gone:
            linger_ms = 0  # nobody is left to read what is still queued
        return code
    finally:
        link.close(linger_ms)
