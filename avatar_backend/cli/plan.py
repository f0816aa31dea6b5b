"""``avatar-backend memory-plan``: what a model needs on its GPUs, printed before anything is loaded."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from avatar_backend.gateway.limits import parse_byte_size

from .common import CliError, parse_byte_size_argument

__all__ = ["add_memory_plan_arguments", "command_memory_plan"]


def add_memory_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="liveact-18b", metavar="NAME",
                        help="model config name or JSON file (default liveact-18b)")
    parser.add_argument("--gpu-memory", type=parse_byte_size_argument, default=parse_byte_size("80G"),
                        metavar="SIZE",
                        help="memory of each GPU (default 80G: an H100; 141G for an H200)")
    parser.add_argument("--workspace", type=parse_byte_size_argument, default=parse_byte_size("8G"),
                        metavar="SIZE",
                        help="kept free on every GPU for activations (default 8G)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the plan to this JSON file")


def command_memory_plan(args: argparse.Namespace) -> int:
    try:
        from avatar_backend.generator.memory_plan import format_plan, memory_plan
        from avatar_backend.generator.config import load_model_config
    except ImportError as error:
        raise CliError(f"the generator is not available in this installation ({error})") from None
    try:
        config = load_model_config(args.config)
    except (KeyError, ValueError) as error:
        raise CliError(f"config {args.config!r}: {error}") from None
    plan = memory_plan(config, args.gpu_memory, workspace_bytes=args.workspace)
    print(format_plan(plan))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = dataclasses.asdict(plan)
        record["encoders"] = [{**dataclasses.asdict(e), "dtype": str(e.dtype), "bytes": e.bytes}
                              for e in plan.encoders]
        args.json.write_text(json.dumps(record, indent=2))
    return 0
