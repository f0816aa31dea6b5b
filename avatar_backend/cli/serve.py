"""``avatar-backend serve``: the gateway and its worker, configured from the command line."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from avatar_backend.client import AvatarClient, AvatarError
from avatar_backend.generator.config import (ATTENTION_BACKENDS, DECODE_PRECISIONS, GEMM_FORMATS, ExecutionConfig,
                                             config_for_weights, load_model_config)
from avatar_backend.gateway.limits import Limits
from avatar_backend.store import default_data_dir
from avatar_backend.worker.process import RANDOM_WEIGHTS
from avatar_backend.worker.scheduler import DEFAULT_MAX_BATCH

from .common import CliError, display_path, parse_byte_size_argument, parse_positive_int, resolve_api_key


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """What the server's worker runs (`serve` and `demo`)."""
    parser.add_argument(
        "--config", default="tiny", metavar="NAME", help="model config name or JSON file (default tiny)"
    )
    parser.add_argument(
        "--device", "--devices", dest="device", default="cpu", metavar="DEVICE",
        help="where the generator runs: cpu, cuda, cuda:N (default cpu); several, comma-separated (cuda:0,cuda:1), "
        "run every block sequence-parallel on all of them, one process per device"
    )
    parser.add_argument(
        "--weights", metavar="PATH", help="model weights: a safetensors file, the directory of the published "
        "LiveAct files (README: 'The published model'), or 'random' for untrained weights from a fixed seed "
        "(default: the weights shipped for the config, random when it has none)"
    )


def add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    """How the worker runs the model (`serve`): none of these changes the weights or the NPC memory format."""
    parser.add_argument(
        "--attention", default=ExecutionConfig.attention, choices=ATTENTION_BACKENDS,
        help=f"attention backend of the DiT: sdpa (torch), flash (flash_attn), sage (sageattention), math "
             f"(exact, slow) (default {ExecutionConfig.attention})",
    )
    parser.add_argument(
        "--gemm", default=ExecutionConfig.gemm, choices=GEMM_FORMATS,
        help="the DiT's linear layers in the model's dtype (model), or as FP8 GEMMs with half the weight memory "
             "(fp8: Ada, Hopper or Blackwell GPUs) (default model)",
    )
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the DiT's transformer blocks and the VAE decoder (minutes at start, faster "
                             "blocks on GPUs)")
    parser.add_argument(
        "--decode-precision", default=ExecutionConfig.decode_precision, choices=DECODE_PRECISIONS,
        help="what the VAE decoder computes in (weights and NPC memories stay float32): auto takes bfloat16 on "
             "CPUs with AMX or AVX512-BF16, float32 elsewhere (default auto)",
    )
    parser.add_argument(
        "--prompt-guidance", type=float, default=None, metavar="FACTOR",
        help="how far an NPC under an emotion's or action's prompt is pushed away from its character's base prompt "
             "(one more DiT pass per block for those NPCs; 1: off; default: the model config's, 2 for tiny); a "
             "session may ask for its own (SessionConfig.prompt_guidance)",
    )
    parser.add_argument(
        "--prompt-onset", type=int, default=None, metavar="LATENTS",
        help="over how many latent frames (4 video frames each) an emotion's or action's prompt sets in and goes "
             "again at the start of its block, rather than at the block's first frame (0: at once; default: the "
             "model config's, 3 for tiny, 0 for liveact-18b)",
    )
    parser.add_argument(
        "--max-prompt-guidance", type=float, default=None, metavar="FACTOR",
        help="the largest prompt guidance a session may ask for, never below the server's default (1: sessions "
             "cannot turn it on; default 10 where the server guides by default, as for tiny, else 1: liveact-18b's "
             "guided pass needs an 11.7 GB scratch copy of a step's cache per NPC at 512x512)",
    )
    parser.add_argument(
        "--text-encoder-device", default=ExecutionConfig.text_encoder_device, metavar="DEVICE",
        help="where the published model's umT5 text encoder runs; each prompt is encoded once "
             f"(default {ExecutionConfig.text_encoder_device}: keeps 11 GB off the GPU)",
    )


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """How many NPCs `serve` keeps, where, and how often it saves them (published in ServerInfo.limits)."""

    parser.add_argument(
        "--max-stored-npcs", type=int, default=Limits.max_stored_npcs, metavar="N",
        help=f"NPCs kept on disk; creating one more is refused until NPCs are deleted "
             f"(default {Limits.max_stored_npcs}; 0: no limit)",
    )
    parser.add_argument(
        "--max-stored-npc-bytes", type=parse_byte_size_argument, default=Limits.max_stored_npc_bytes,
        metavar="SIZE",
        help=f"disk space for NPC memories, e.g. 64G; creating an NPC beyond it is refused "
             f"(default {Limits.max_stored_npc_bytes >> 30}G; 0: no limit)",
    )
    parser.add_argument(
        "--max-parked-memory-bytes", type=parse_byte_size_argument, default=Limits.max_parked_memory_bytes,
        metavar="SIZE",
        help=f"host memory for the memories of NPCs not in a session; beyond it the least recently used are "
             f"read back from disk when needed (default {Limits.max_parked_memory_bytes >> 30}G)",
    )
    parser.add_argument(
        "--voice-jitter-budget-ms", type=int, default=Limits.voice_jitter_budget_ms, metavar="MS",
        help=f"how long an utterance's voice may stall (arrive later than real time) before silence goes "
             f"inside it; real-time voice waits this much beyond a block before it starts "
             f"(default {Limits.voice_jitter_budget_ms})",
    )
    parser.add_argument(
        "--max-sessions", type=parse_positive_int, default=Limits.max_sessions, metavar="N",
        help=f"NPC sessions live at once; one more is refused with RESOURCE_EXHAUSTED until one ends "
             f"(default {Limits.max_sessions}; on a GPU keep it to the NPCs that fit: `avatar-backend memory-plan`)",
    )
    parser.add_argument(
        "--max-batch", type=parse_positive_int, default=DEFAULT_MAX_BATCH, metavar="N",
        help=f"NPCs whose next blocks the worker generates in one call at most, when they are due together and "
             f"none of them is made late by it (default {DEFAULT_MAX_BATCH}; 1: one NPC per call)",
    )
    parser.add_argument(
        "--npc-snapshot-interval-s", type=float, default=Limits.npc_snapshot_interval_s, metavar="SECONDS",
        help=f"save the memories of NPCs in a session this often, so a worker crash loses at most that much "
             f"(default {Limits.npc_snapshot_interval_s}; 0: only when a session ends)",
    )


def command_serve(args: argparse.Namespace) -> int:
    try:
        from avatar_backend.gateway.server import StartupRefused, check_startup, run_server
    except ImportError as error:
        raise CliError(f"the server is not available in this installation ({error})") from None
    data_dir = (args.data_dir or default_data_dir()).expanduser()
    if args.weights not in (None, RANDOM_WEIGHTS) and not Path(args.weights).exists():
        raise CliError(f"weights not found: {args.weights}")
    try:
        model_config = load_model_config(args.config)
    except (KeyError, ValueError) as error:
        raise CliError(f"config {args.config!r}: {error}") from None
    if args.weights not in (None, RANDOM_WEIGHTS) and Path(args.weights).is_file():
        try:
            config_for_weights(model_config, Path(args.weights))  # weights for another model: refused before starting
        except ValueError as error:
            raise CliError(str(error)) from None
    if args.weights in (None, RANDOM_WEIGHTS) and model_config.runs_published_encoders:
        raise CliError(f"model {model_config.name!r} runs the published encoders and needs the published files: "
                       "--weights <directory> (README: 'The published model')")
    api_key = resolve_api_key(args)
    try:
        options = server_options(args, data_dir, api_key)
        options.limits()  # checked here: a value out of range is a usage error, not a traceback from the server
        options.execution.serving(model_config)   # and a serving choice this model cannot take
    except ValueError as error:
        raise CliError(str(error)) from None
    try:
        check_startup(options)  # refuse before the data dir is touched or anything is bound
    except StartupRefused as error:
        raise CliError(str(error)) from None

    def on_ready(port: int) -> None:
        # Called on the server's event loop: ask the server itself what it loaded, without blocking it.
        # Not over TLS: the server's certificate may not name the loopback address, nor can this process
        # present a client certificate.
        if options.tls_cert is None:
            target = local_target(args.host, port)
            asyncio.get_running_loop().create_task(print_served_model(target, data_dir, api_key))

    return run_server(options, ready_callback=on_ready) or 0


def server_options(args: argparse.Namespace, data_dir: Path, api_key: str | None):
    """`serve`'s ServerOptions from its arguments (ValueError for a value out of range)."""
    from avatar_backend.gateway.server import ServerOptions

    return ServerOptions(
        host=args.host,
        port=args.port,
        data_dir=data_dir,
        model_config=args.config,
        device=args.device,
        weights=args.weights,
        execution=ExecutionConfig(attention=args.attention, gemm=args.gemm, compile=args.compile,
                                  text_encoder_device=args.text_encoder_device,
                                  decode_precision=args.decode_precision, prompt_guidance=args.prompt_guidance,
                                  prompt_onset_latents=args.prompt_onset),
        api_key=api_key,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        insecure_no_auth_on_network=args.insecure_no_auth_on_network,
        max_stored_npcs=args.max_stored_npcs,
        max_stored_npc_bytes=args.max_stored_npc_bytes,
        max_parked_memory_bytes=args.max_parked_memory_bytes,
        max_prompt_guidance=args.max_prompt_guidance,
        npc_snapshot_interval_s=args.npc_snapshot_interval_s,
        voice_jitter_budget_ms=args.voice_jitter_budget_ms,
        max_batch=args.max_batch,
        max_sessions=args.max_sessions,
    )


def local_target(host: str, port: int) -> str:
    """Where a client on this machine reaches a server listening on ``host``."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        return f"127.0.0.1:{port}"
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


async def print_served_model(target: str, data_dir: Path, api_key: str | None) -> None:
    try:
        async with AvatarClient(target, api_key=api_key) as client:
            info = await client.server_info()
    except AvatarError as error:
        print(f"avatar-backend could not read its own server info: {error}", flush=True)
        return
    weights = "random weights" if info.model.random_weights else f"weights {info.model.weights_sha256[:12]}"
    print(
        f"avatar-backend model {info.model.name} ({weights}) on {info.worker_device}, "
        f"data {display_path(data_dir)}",
        flush=True,
    )
