"""The ``avatar-backend`` command: run the server, make an NPC talk, manage characters and NPCs.

    avatar-backend serve                      the gateway with one worker (the embedded tiny model on CPU)
    avatar-backend demo                       serve + say with a synthesized sentence, writes out/npc.mp4
    avatar-backend say --audio speech.wav     stream a voice to a running server, record the video as MP4
    avatar-backend character add|list|rm      the characters (looks) NPCs are made from
    avatar-backend npc list|reset|rm          the NPCs and their memories
    avatar-backend info                       what the server runs and accepts
    avatar-backend bench                      the benchmark

Every client command talks gRPC to ``--server`` (default 127.0.0.1:50051) and exits with status 1 and the
gRPC status name and message when the server refuses.

On a network: ``serve`` refuses a non-loopback ``--host`` unless clients must authenticate (an API key from
``--api-key-file`` or $AVATAR_API_KEY, or client certificates with ``--tls-client-ca``) or
``--insecure-no-auth-on-network`` is given; ``--tls-cert``/``--tls-key`` serve TLS. Client commands take the
same key options and ``--tls``, ``--tls-ca``, ``--tls-cert``/``--tls-key`` (or a ``grpcs://HOST:PORT`` server).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import av
import numpy as np

from avatar_backend import DEFAULT_CHARACTER_ID, __version__
from avatar_backend.client import AvatarClient, AvatarError, Conversation, Mp4Recorder, ServerItem, SyncAvatarClient
from avatar_backend.client.channels import channel_target_and_credentials
from avatar_backend.gateway.limits import Limits, parse_byte_size
from avatar_backend.proto_gen import converse_pb2
from avatar_backend.store import default_data_dir

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_PORT = 50051
DEFAULT_NPC_ID = "cli-npc"
DEFAULT_OUT = "out/npc.mp4"
SESSION_SAMPLE_RATE = 48000
DEMO_SENTENCE = (
    "Hello, traveller! Welcome to our village. The blacksmith is just past the well, "
    "and the inn serves a fine stew tonight."
)
API_KEY_ENV = "AVATAR_API_KEY"
#: How long `demo` waits for its server to load the model and start the worker.
SERVER_START_TIMEOUT_S = 300.0

log = logging.getLogger("avatar_backend.cli")


class CliError(Exception):
    """A problem the user can fix (a missing file, a missing program); printed without a traceback."""


# ---------------------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces, with a header line."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def format_fields(rows: Sequence[tuple[str, object]]) -> str:
    """``name:  value`` lines with the values aligned."""
    width = max((len(name) for name, _ in rows), default=0) + 1
    return "\n".join(f"{(name + ':').ljust(width)}  {value}" for name, value in rows)


def format_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def format_time_ms(unix_ms: int) -> str:
    if unix_ms <= 0:
        return "-"
    return datetime.fromtimestamp(unix_ms / 1000).strftime("%Y-%m-%d %H:%M")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_error(error: BaseException) -> str:
    """The one-line message printed for a failed command: ``error: NOT_FOUND: character 'x' ...``."""
    return f"error: {error}"


def display_path(path: Path) -> str:
    """A path with the home directory written as ~, as people type it."""
    try:
        return "~/" + str(path.expanduser().resolve().relative_to(Path.home()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------------
# Argument parsing
# ---------------------------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """``"256x256"`` -> (256, 256)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 256x256), got {text!r}") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return width, height


def parse_named_prompt(text: str) -> tuple[str, str]:
    """``"angry=frowning, shouting"`` -> ("angry", "frowning, shouting")."""
    name, sep, prompt = text.partition("=")
    if not sep or not name.strip() or not prompt.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PROMPT, got {text!r}")
    return name.strip(), prompt.strip()


def add_api_key_arguments(parser: argparse.ArgumentParser, purpose: str) -> None:
    """``--api-key-file`` / ``--api-key`` (and $AVATAR_API_KEY): read by :func:`resolve_api_key`."""
    parser.add_argument(
        "--api-key-file", type=Path, metavar="FILE",
        help=f"{purpose}, read from the first line of FILE (default: ${API_KEY_ENV})",
    )
    parser.add_argument(
        "--api-key", metavar="KEY",
        help="the key itself; every user of this machine can read it in the process list, prefer --api-key-file",
    )


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", default=DEFAULT_SERVER, metavar="HOST:PORT",
        help=f"the server (default {DEFAULT_SERVER}); grpcs://HOST:PORT for TLS",
    )
    add_api_key_arguments(parser, "the API key of a server that requires one")
    parser.add_argument(
        "--tls", action="store_true",
        help="connect with TLS, checking the server against the system's trusted CAs (or --tls-ca)",
    )
    parser.add_argument(
        "--tls-ca", type=Path, metavar="FILE", help="TLS: trust this CA certificate (PEM); implies --tls"
    )
    parser.add_argument(
        "--tls-cert", type=Path, metavar="FILE",
        help="TLS: this client certificate (PEM), for a server that requires one; needs --tls-key",
    )
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="TLS: the private key of --tls-cert (PEM)")


def add_say_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `say` and `demo` share: what to say and how to record it."""
    parser.add_argument(
        "--out", type=Path, default=Path(DEFAULT_OUT), metavar="FILE", help=f"MP4 to write (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--text", default=DEMO_SENTENCE, metavar="TEXT", help="sentence spoken by espeak-ng when no --audio is given"
    )
    parser.add_argument(
        "--character", default=DEFAULT_CHARACTER_ID, metavar="ID", help="character of a new NPC (default: default)"
    )
    parser.add_argument(
        "--npc", default=DEFAULT_NPC_ID, metavar="ID", help=f"NPC id; its memory persists (default {DEFAULT_NPC_ID})"
    )
    parser.add_argument("--size", type=parse_size, metavar="WxH", help="video size (default: the model's)")
    parser.add_argument("--fps", type=int, default=0, metavar="N", help="video frame rate (default: the model's)")
    parser.add_argument("--reset", action="store_true", help="start the NPC from a fresh memory")
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="noise seed of a new NPC (default: from the NPC id)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, metavar="SECONDS", help="give up after this many seconds (default 600)"
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """What the server's worker runs (`serve` and `demo`)."""
    parser.add_argument(
        "--config", default="tiny", metavar="NAME", help="model config name or JSON file (default tiny)"
    )
    parser.add_argument(
        "--device", default="cpu", metavar="DEVICE", help="where the generator runs: cpu, cuda, cuda:N (default cpu)"
    )
    parser.add_argument(
        "--weights", type=Path, metavar="FILE", help="model weights file (safetensors; default: random weights, and the server says so)"
    )


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """How many NPCs `serve` keeps, where, and how often it saves them (published in ServerInfo.limits)."""

    def byte_size(text: str) -> int:
        try:
            return parse_byte_size(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parser.add_argument(
        "--max-stored-npcs", type=int, default=Limits.max_stored_npcs, metavar="N",
        help=f"NPCs kept on disk; creating one more is refused until NPCs are deleted "
             f"(default {Limits.max_stored_npcs}; 0: no limit)",
    )
    parser.add_argument(
        "--max-stored-npc-bytes", type=byte_size, default=Limits.max_stored_npc_bytes, metavar="SIZE",
        help=f"disk space for NPC memories, e.g. 64G; creating an NPC beyond it is refused "
             f"(default {Limits.max_stored_npc_bytes >> 30}G; 0: no limit)",
    )
    parser.add_argument(
        "--max-parked-memory-bytes", type=byte_size, default=Limits.max_parked_memory_bytes, metavar="SIZE",
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
        "--npc-snapshot-interval-s", type=float, default=Limits.npc_snapshot_interval_s, metavar="SECONDS",
        help=f"save the memories of NPCs in a session this often, so a worker crash loses at most that much "
             f"(default {Limits.npc_snapshot_interval_s}; 0: only when a session ends)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avatar-backend",
        description="Real-time generative avatar backend for games: serve it, talk to its NPCs, manage them.",
    )
    parser.add_argument("--version", action="version", version=f"avatar-backend {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the gateway and one generator worker",
        description="Run the gRPC gateway with one generator worker until interrupted (Ctrl-C drains it).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    serve.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="characters and NPC memories (default: the user data dir)"
    )
    add_model_arguments(serve)
    add_storage_arguments(serve)
    add_api_key_arguments(serve, "the API key clients must send")
    serve.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve TLS with this certificate chain (PEM)")
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="the private key of --tls-cert (PEM)")
    serve.add_argument(
        "--tls-client-ca", type=Path, metavar="FILE",
        help="require client certificates signed by this CA (PEM; mutual TLS, which counts as authentication)",
    )
    serve.add_argument(
        "--insecure-no-auth-on-network", action="store_true",
        help="allow a non-loopback --host with neither an API key nor client certificates (anyone who can "
             "reach the port can use and change everything)",
    )
    serve.set_defaults(handler=command_serve)

    say = commands.add_parser(
        "say",
        help="make an NPC say a recording and save the video as MP4",
        description=(
            "Stream a voice to an NPC on a running server, receive its video until the whole utterance is "
            "on screen, write frames and audio to an MP4 and print frame rate, latency and A/V sync. "
            "Without --audio, speech is synthesized with espeak-ng."
        ),
    )
    say.add_argument(
        "--audio", type=Path, metavar="FILE", help="speech to send: any audio file (wav, mp3, ...; any rate)"
    )
    say.add_argument(
        "--fast",
        action="store_true",
        help="send the audio as fast as possible, as TTS does (default: real-time pace, as a microphone)",
    )
    add_say_arguments(say)
    add_server_arguments(say)
    say.set_defaults(handler=command_say)

    demo = commands.add_parser(
        "demo",
        help="start a server, make the default NPC talk, write the MP4",
        description=(
            "Start `serve` on a free port with a temporary data dir, make the default character say a "
            "sentence synthesized by espeak-ng, write the MP4, print the summary and stop the server."
        ),
    )
    add_say_arguments(demo)
    demo.add_argument("--data-dir", type=Path, metavar="DIR", help="data dir of the server (default: a temporary one)")
    add_model_arguments(demo)
    demo.add_argument("--audio", type=Path, metavar="FILE", help="speech to send instead of the synthesized sentence")
    demo.add_argument(
        "--realtime",
        action="store_true",
        help="send the audio at real-time pace, as a microphone (default: as fast as possible, as TTS)",
    )
    demo.add_argument("--verbose", action="store_true", help="show the server's log")
    demo.set_defaults(handler=command_demo)

    character = commands.add_parser(
        "character", help="add, list or remove characters", description="Characters: the looks NPCs are made from."
    )
    character_commands = character.add_subparsers(dest="character_command", metavar="ACTION", required=True)
    add = character_commands.add_parser(
        "add",
        help="register a character from an image and prompts",
        description="Register a character: a reference image (PNG/JPEG of face and upper body) and prompts.",
    )
    add.add_argument("name", metavar="NAME", help="character id: 1-128 of [A-Za-z0-9_.-]")
    add.add_argument("--image", type=Path, required=True, metavar="FILE", help="reference image (PNG or JPEG)")
    add.add_argument("--prompt", required=True, metavar="TEXT", help="what the character is and does, in words")
    add.add_argument(
        "--emotion", type=parse_named_prompt, action="append", default=[], metavar="NAME=PROMPT",
        help="an emotion prompt (repeatable)",
    )
    add.add_argument(
        "--action", type=parse_named_prompt, action="append", default=[], metavar="NAME=PROMPT",
        help="an action prompt (repeatable)",
    )
    add.add_argument("--replace", action="store_true", help="overwrite an existing character of this id")
    add_server_arguments(add)
    add.set_defaults(handler=command_character_add)
    listing = character_commands.add_parser("list", help="list the characters")
    add_server_arguments(listing)
    listing.set_defaults(handler=command_character_list)
    remove = character_commands.add_parser("rm", help="remove a character")
    remove.add_argument("name", metavar="NAME", help="character id")
    remove.add_argument("--with-npcs", action="store_true", help="also remove the NPCs that use it")
    add_server_arguments(remove)
    remove.set_defaults(handler=command_character_rm)

    npc = commands.add_parser("npc", help="list, reset or remove NPCs", description="NPCs and their memories.")
    npc_commands = npc.add_subparsers(dest="npc_command", metavar="ACTION", required=True)
    npc_list = npc_commands.add_parser("list", help="list the NPCs")
    npc_list.add_argument("--character", default="", metavar="ID", help="only NPCs of this character")
    add_server_arguments(npc_list)
    npc_list.set_defaults(handler=command_npc_list)
    npc_reset = npc_commands.add_parser("reset", help="forget an NPC's memory")
    npc_reset.add_argument("npc_id", metavar="ID", help="NPC id")
    add_server_arguments(npc_reset)
    npc_reset.set_defaults(handler=command_npc_reset)
    npc_remove = npc_commands.add_parser("rm", help="remove an NPC and its memory")
    npc_remove.add_argument("npc_id", metavar="ID", help="NPC id")
    add_server_arguments(npc_remove)
    npc_remove.set_defaults(handler=command_npc_rm)

    info = commands.add_parser("info", help="show what the server runs and accepts")
    add_server_arguments(info)
    info.set_defaults(handler=command_info)

    bench = commands.add_parser(
        "bench",
        help="run the benchmark",
        description="Run the benchmark (avatar_backend.bench); options not listed here are passed on to it.",
    )
    bench.add_argument("--json", type=Path, metavar="FILE", help="also write the results to this JSON file")
    bench.set_defaults(handler=command_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``avatar-backend`` command; returns the exit status."""
    parser = build_parser()
    # The benchmark's own options pass through to it; every other command takes only its own.
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.handler(args) or 0
    except (AvatarError, CliError) as error:
        print(format_error(error), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------------------------------------------------
# Client commands
# ---------------------------------------------------------------------------------------------------------


def read_api_key_file(path: Path) -> str:
    """The key on the first line of ``path``, stripped; CliError when it cannot be read or is empty."""
    try:
        text = path.expanduser().read_text()
    except (OSError, UnicodeError) as error:
        raise CliError(f"cannot read the API key file {path}: {getattr(error, 'strerror', None) or error}") from None
    key = text.splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise CliError(f"the API key file {path} is empty (its first line must be the key)")
    if os.name == "posix" and path.expanduser().stat().st_mode & 0o077:
        log.warning("the API key file %s can be read by other users of this machine: chmod 600 %s", path, path)
    return key


def resolve_api_key(args: argparse.Namespace) -> str | None:
    """The API key from --api-key-file, --api-key or $AVATAR_API_KEY (in that order); None for none."""
    key_file, given = getattr(args, "api_key_file", None), getattr(args, "api_key", None)
    if key_file is not None and given is not None:
        raise CliError("give the API key with --api-key-file or with --api-key, not both")
    if key_file is not None:
        return read_api_key_file(key_file)
    if given is not None:
        log.warning(
            "--api-key puts the key on the command line, where every user of this machine can read it in the "
            "process list; use --api-key-file FILE or $%s instead", API_KEY_ENV,
        )
        return given or None
    return os.environ.get(API_KEY_ENV) or None


def client_tls_options(args: argparse.Namespace) -> dict[str, object]:
    """The TLS keyword arguments of AvatarClient from --tls, --tls-ca, --tls-cert and --tls-key."""
    options: dict[str, object] = {}
    if getattr(args, "tls", False):
        options["tls"] = True
    for flag, name in (("tls_ca", "root_certificates"), ("tls_cert", "client_certificate"),
                       ("tls_key", "client_key")):
        if getattr(args, flag, None) is not None:
            options[name] = getattr(args, flag)
    try:
        # Checked here so that a missing file or a lone --tls-cert is a one-line error, not a traceback.
        channel_target_and_credentials(getattr(args, "server", DEFAULT_SERVER), **options)  # type: ignore[arg-type]
    except ValueError as error:
        raise CliError(str(error)) from None
    return options


def connect(args: argparse.Namespace) -> SyncAvatarClient:
    client = SyncAvatarClient(args.server, api_key=resolve_api_key(args), **client_tls_options(args))
    try:
        try:
            client.wait_ready(timeout=10.0)
        except AvatarError:
            # "No server reachable" also covers a refused TLS handshake: one call raises grpc's own reason
            # (and answers if the server came up meanwhile).
            client.health(timeout=5.0)
    except BaseException:
        client.close()
        raise
    return client


def command_character_add(args: argparse.Namespace) -> int:
    if not args.image.is_file():
        raise CliError(f"image not found: {args.image}")
    with connect(args) as client:
        character = client.register_character(
            args.name,
            args.image,
            args.prompt,
            emotion_prompts=dict(args.emotion),
            action_prompts=dict(args.action),
            replace=args.replace,
        )
    print(
        f"character {character.character_id} registered ({character.reference_width}x"
        f"{character.reference_height} reference, {plural(len(character.emotion_prompts), 'emotion')}, "
        f"{plural(len(character.action_prompts), 'action')})"
    )
    return 0


def command_character_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        characters = client.list_characters()
    if not characters:
        print("no characters")
        return 0
    rows = [
        (
            c.character_id,
            c.npc_count,
            f"{c.reference_width}x{c.reference_height}",
            ",".join(sorted(c.emotion_prompts)) or "-",
            ",".join(sorted(c.action_prompts)) or "-",
            format_time_ms(c.created_unix_ms),
            shorten(c.base_prompt, 48),
        )
        for c in characters
    ]
    print(format_table(("ID", "NPCS", "IMAGE", "EMOTIONS", "ACTIONS", "CREATED", "PROMPT"), rows))
    return 0


def command_character_rm(args: argparse.Namespace) -> int:
    with connect(args) as client:
        npcs_deleted = client.delete_character(args.name, delete_npcs=args.with_npcs)
    suffix = f" and {plural(npcs_deleted, 'NPC')}" if npcs_deleted else ""
    print(f"removed character {args.name}{suffix}")
    return 0


def command_npc_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        npcs = client.list_npcs(args.character)
    if not npcs:
        print("no NPCs")
        return 0
    rows = [
        (
            n.npc_id,
            n.character_id,
            "yes" if n.live else "no",
            n.blocks_generated,
            n.frames_generated,
            format_bytes(n.memory_bytes),
            f"{n.width}x{n.height}" if n.width else "-",
            format_time_ms(n.updated_unix_ms),
        )
        for n in npcs
    ]
    print(format_table(("ID", "CHARACTER", "LIVE", "BLOCKS", "FRAMES", "MEMORY", "SIZE", "UPDATED"), rows))
    return 0


def command_npc_reset(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.reset_npc(args.npc_id)
    print(f"NPC {args.npc_id} reset: its next session starts from a fresh memory")
    return 0


def command_npc_rm(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.delete_npc(args.npc_id)
    print(f"removed NPC {args.npc_id}")
    return 0


def command_info(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.server_info()
    model = info.model
    sizes = ", ".join(f"{s.width}x{s.height}" for s in info.video_sizes) or "-"
    codecs = ", ".join(
        converse_pb2.VideoCodec.Name(c).removeprefix("VIDEO_CODEC_").lower() for c in info.video_codecs
    )
    lines = [
        ("version", info.version),
        ("model", f"{model.name} ({'random weights' if model.random_weights else 'trained weights'}"
                  + (f", {model.parameters:,} parameters)" if model.parameters else ")")),
        ("worker", f"{info.worker_device or '-'} ({'ready' if info.worker_ready else 'not ready'})"),
        ("video sizes", sizes),
        ("fps", ", ".join(str(f) for f in info.fps) or "-"),
        ("video codecs", codecs or "-"),
        ("audio rates", ", ".join(str(r) for r in info.audio_sample_rates) or "-"),
        ("max sessions", info.limits.max_sessions),
        ("devices", ", ".join(d.name for d in info.devices) or "none"),
    ]
    print(format_fields(lines))
    return 0


def command_bench(args: argparse.Namespace) -> int:
    try:
        from avatar_backend.bench import main as bench_main
    except ImportError as error:
        raise CliError(f"the benchmark is not available in this installation ({error})") from None
    bench_argv = list(args.bench_args)
    if args.json is not None:
        bench_argv = ["--json", str(args.json), *bench_argv]
    return bench_main(bench_argv) or 0


# ---------------------------------------------------------------------------------------------------------
# Audio input
# ---------------------------------------------------------------------------------------------------------


def load_audio(path: Path, sample_rate: int = SESSION_SAMPLE_RATE) -> np.ndarray:
    """Decode any audio file to mono int16 at ``sample_rate`` (PyAV: FFmpeg's decoders and resampler)."""
    if not path.is_file():
        raise CliError(f"audio file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise CliError(f"{path} has no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
            chunks = []
            for frame in container.decode(audio=0):
                chunks.extend(resampler.resample(frame))
            chunks.extend(resampler.resample(None))
    except av.error.FFmpegError as error:
        raise CliError(f"cannot decode {path}: {error}") from None
    if not chunks:
        raise CliError(f"{path} contains no audio")
    return np.concatenate([chunk.to_ndarray().reshape(-1) for chunk in chunks]).astype(np.int16)


def synthesize_speech(text: str, folder: Path) -> Path:
    """Speak ``text`` with espeak-ng into a wav file in ``folder``."""
    program = shutil.which("espeak-ng")
    if program is None:
        raise CliError(
            "espeak-ng is not installed (it makes the demo's speech): `apt-get install espeak-ng`, "
            "`brew install espeak-ng`, or pass --audio FILE"
        )
    path = folder / "speech.wav"
    result = subprocess.run([program, "-w", str(path), text], capture_output=True, text=True)
    if result.returncode != 0 or not path.is_file():
        raise CliError(f"espeak-ng failed: {result.stderr.strip() or result.returncode}")
    return path


# ---------------------------------------------------------------------------------------------------------
# say
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SayOptions:
    """What `say` does: which server, NPC and character, the video wanted, and how the voice is sent."""

    server: str
    out: Path
    npc_id: str = DEFAULT_NPC_ID
    character_id: str = DEFAULT_CHARACTER_ID
    fast: bool = False
    width: int = 0
    height: int = 0
    fps: int = 0
    reset_memory: bool = False
    seed: int = 0
    api_key: str | None = None
    timeout_s: float = 600.0
    tls: Mapping[str, object] = field(default_factory=dict)  # TLS keyword arguments of AvatarClient


@dataclass
class SayReport:
    """What `say` measured; times are wall-clock seconds on this machine."""

    audio_seconds: float
    packets_sent: int
    realtime: bool
    frames_received: int = 0
    frames_written: int = 0
    wall_seconds: float = 0.0                          # session accepted -> last frame received
    time_to_first_frame_s: float | None = None         # session start -> first frame
    first_speaking_frame_s: float | None = None        # first audio packet sent -> first speaking frame
    generated_fps: float | None = None                 # SessionStats.generated_fps, mean over the session
    block_compute_ms: float | None = None              # server's last SessionStats.block_compute_ms
    av_offsets_ms: list[float] = field(default_factory=list)
    frames_dropped: int = 0                            # server's SessionStats.frames_dropped
    missing_frame_indices: int = 0
    utterance_complete: bool = False
    timed_out: bool = False
    width: int = 0
    height: int = 0
    fps: int = 0
    model: str = ""
    video_encoder: str = ""
    video_seconds: float = 0.0
    events: list[str] = field(default_factory=list)    # SessionEvents, as "CODE: message"
    voice_gaps_ms: list[int] = field(default_factory=list)   # silence the server put inside utterances

    @property
    def received_fps(self) -> float:
        return self.frames_received / self.wall_seconds if self.wall_seconds > 0 else 0.0


class UtteranceWatch:
    """Decides when the frames covering the whole utterance have arrived.

    The utterance's end on the session clock comes from the server's UTTERANCE_COMPLETE event
    (``details["timeline_end"]``); until then it is estimated as the first speaking frame (the voice starts
    with its block) plus the voice sent. The watch is done once a received frame reaches that end.
    """

    def __init__(self, samples_per_frame: float) -> None:
        self.samples_per_frame = samples_per_frame
        self.samples_sent: int | None = None  # set once the end of utterance has been sent
        self.voice_start: int | None = None
        self.reported_end: int | None = None
        self.covered_until = 0  # session clock sample just after the last frame received

    def end_sent(self, samples_sent: int) -> None:
        self.samples_sent = samples_sent

    def frame(self, frame: converse_pb2.VideoFrame) -> None:
        if frame.speaking and self.voice_start is None:
            self.voice_start = frame.pts
        self.covered_until = max(self.covered_until, round(frame.pts + self.samples_per_frame))

    def utterance_complete(self, details: Mapping[str, str]) -> None:
        try:
            self.reported_end = round(float(details["timeline_end"]))
        except (KeyError, ValueError):
            pass

    @property
    def utterance_end(self) -> int | None:
        if self.reported_end is not None:
            return self.reported_end
        if self.samples_sent is None or self.voice_start is None:
            return None
        return self.voice_start + self.samples_sent

    @property
    def done(self) -> bool:
        end = self.utterance_end
        return self.samples_sent is not None and end is not None and self.covered_until >= end


class AvSyncCheck:
    """Measures how far each frame's pts is from the audio it was generated from.

    A block's AudioEcho arrives before its frames and starts where the block's audio starts, so frame k of
    the block was made from the audio at ``echo.start + k * samples_per_frame``. The pts comes from the
    gateway's frame clock; the two agree when A/V is in sync.
    """

    def __init__(self, samples_per_frame: float) -> None:
        self.samples_per_frame = samples_per_frame
        self._last_echo_start: int | None = None
        self._block_origin: dict[int, tuple[int, int]] = {}  # block_index -> (echo start, first frame index)

    def echo(self, echo: converse_pb2.AudioEcho) -> None:
        self._last_echo_start = echo.start

    def offset_samples(self, frame: converse_pb2.VideoFrame) -> float:
        if self._last_echo_start is None:
            return float(frame.pts) - float(frame.audio_start)  # no echo: the frame's own audio slice
        origin_start, origin_index = self._block_origin.setdefault(
            frame.block_index, (self._last_echo_start, frame.index)
        )
        return float(frame.pts) - (origin_start + (frame.index - origin_index) * self.samples_per_frame)


class SayMeter:
    """Turns the received items into the numbers of a :class:`SayReport`."""

    def __init__(
        self,
        report: SayReport,
        accepted: converse_pb2.SessionAccepted,
        session_start: float,
        log: Callable[[str], object],
    ) -> None:
        self.report = report
        self.log = log
        self.session_start = session_start
        self.accepted_at = time.monotonic()
        self.first_audio_at: float | None = None
        self.rate = accepted.audio.sample_rate
        samples_per_frame = self.rate / accepted.video.fps
        self.watch = UtteranceWatch(samples_per_frame)
        self.sync = AvSyncCheck(samples_per_frame)
        self.frame_indices: set[int] = set()
        self.generated_fps: list[float] = []
        report.width, report.height, report.fps = accepted.video.width, accepted.video.height, accepted.video.fps

    def add(self, item: object) -> None:
        report, now = self.report, time.monotonic()
        if isinstance(item, converse_pb2.VideoFrame):
            report.frames_received += 1
            report.wall_seconds = now - self.accepted_at
            self.frame_indices.add(item.index)
            if report.time_to_first_frame_s is None:
                report.time_to_first_frame_s = now - self.session_start
            if item.speaking and report.first_speaking_frame_s is None and self.first_audio_at is not None:
                report.first_speaking_frame_s = now - self.first_audio_at
            report.av_offsets_ms.append(self.sync.offset_samples(item) * 1000.0 / self.rate)
            self.watch.frame(item)
        elif isinstance(item, converse_pb2.AudioEcho):
            self.sync.echo(item)
        elif isinstance(item, converse_pb2.SessionStats):
            # Every interval counts, idle ones too: the mean is then frames made per second of session.
            self.generated_fps.append(item.generated_fps)
            if item.block_compute_ms > 0:
                report.block_compute_ms = item.block_compute_ms
            report.frames_dropped = max(report.frames_dropped, item.frames_dropped)
        elif isinstance(item, converse_pb2.SessionEvent):
            name = converse_pb2.EventCode.Name(item.code).removeprefix("EVENT_CODE_")
            report.events.append(f"{name}: {item.message}" if item.message else name)
            if item.code == converse_pb2.EVENT_CODE_UTTERANCE_COMPLETE:
                report.utterance_complete = True
                self.watch.utterance_complete(item.details)
            elif item.code == converse_pb2.EVENT_CODE_AUDIO_GAP:
                report.voice_gaps_ms.append(int(item.details.get("gap_ms", "0")))
            elif item.code == converse_pb2.EVENT_CODE_FRAMES_DROPPED:
                self.log(f"warning: {item.message or 'frames dropped: this client read too slowly'}")

    def finish(self) -> None:
        report = self.report
        report.generated_fps = sum(self.generated_fps) / len(self.generated_fps) if self.generated_fps else None
        if self.frame_indices:
            span = max(self.frame_indices) - min(self.frame_indices) + 1
            report.missing_frame_indices = span - len(self.frame_indices)


async def say(pcm: np.ndarray, options: SayOptions, log: Callable[[str], object] = print) -> SayReport:
    """Make an NPC say ``pcm`` (mono int16 at 48 kHz) and record its video into ``options.out``.

    Sends the voice (paced or not) and the end of utterance while receiving; once the frames reach the end
    of the utterance, half-closes and receives what is still coming until the server ends the stream.
    """
    report = SayReport(audio_seconds=pcm.size / SESSION_SAMPLE_RATE, packets_sent=0, realtime=not options.fast)
    async with AvatarClient(options.server, api_key=options.api_key, **options.tls) as client:
        await client.wait_ready(timeout=10.0)
        info = await client.server_info()
        report.model = f"{info.model.name}{' (random weights)' if info.model.random_weights else ''}"
        session_start = time.monotonic()
        conversation = client.converse(
            options.npc_id,
            options.character_id,
            width=options.width,
            height=options.height,
            fps=options.fps,
            sample_rate=SESSION_SAMPLE_RATE,
            reset_memory=options.reset_memory,
            seed=options.seed,
        )
        async with conversation as conv:
            meter = SayMeter(report, conv.accepted, session_start, log)
            recorder = Mp4Recorder.for_session(options.out, conv.accepted)
            report.video_encoder = recorder.video_encoder

            async def send_voice() -> None:
                meter.first_audio_at = time.monotonic()
                await conv.send_audio_pcm(pcm, realtime=report.realtime)
                await conv.end_utterance()
                report.packets_sent = conv.packets_sent
                meter.watch.end_sent(conv.samples_sent)

            sender = asyncio.create_task(send_voice())
            deadline = meter.accepted_at + options.timeout_s
            try:
                while (item := await next_before(conv, deadline)) is not None:
                    if sender.done() and sender.exception() is not None:
                        raise sender.exception()  # type: ignore[misc]
                    recorder.add(item)
                    meter.add(item)
                    if meter.watch.done and not conv.half_closed:
                        await conv.half_close()
            except TimeoutError:
                report.timed_out = True
                log(f"warning: stopped waiting after {options.timeout_s:.0f} s; the video may be incomplete")
                await conv.cancel()
            finally:
                if not sender.done():
                    sender.cancel()
                (sending_failure,) = await asyncio.gather(sender, return_exceptions=True)
                summary = recorder.close()
            if isinstance(sending_failure, Exception):
                raise sending_failure
            report.frames_written = summary.frames_written
            report.video_seconds = summary.video_seconds
            meter.finish()
    return report


async def next_before(conv: Conversation, deadline: float) -> ServerItem | None:
    """The conversation's next item; TimeoutError once ``deadline`` (monotonic) has passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return await conv.next_item(timeout=remaining)


def print_say_report(report: SayReport, out: Path) -> None:
    sent_as = "at real-time pace" if report.realtime else "faster than real time"
    pacing = f"{sent_as}, as a microphone" if report.realtime else f"{sent_as}, as TTS"
    generated = (
        f"{report.generated_fps:.1f} fps generated (server stats)" if report.generated_fps is not None
        else "no server stats"
    )
    if report.time_to_first_frame_s is None:
        first = "no frame received"
    else:
        first = f"{report.time_to_first_frame_s * 1000:.0f} ms after session start"
        if report.first_speaking_frame_s is not None:
            first += (
                f"; first speaking frame {report.first_speaking_frame_s * 1000:.0f} ms after the first audio "
                f"packet (audio sent {sent_as})"
            )
    codec = "H.264" if report.video_encoder == "libx264" else "MPEG-4"
    rows = [
        ("model", f"{report.model}, {report.width}x{report.height} at {report.fps} fps"),
        ("audio sent", f"{report.audio_seconds:.2f} s in {report.packets_sent} Opus packets ({pacing})"),
        (
            "frames received",
            f"{report.frames_received} in {report.wall_seconds:.1f} s ({report.received_fps:.1f} fps received, "
            f"{generated})",
        ),
        ("first frame", first),
    ]
    if report.block_compute_ms is not None:
        rows.append(("block compute", f"{report.block_compute_ms:.0f} ms (the server's last block)"))
    if report.av_offsets_ms:
        offsets = report.av_offsets_ms
        rows.append((
            "A/V offset",
            f"mean {sum(offsets) / len(offsets):+.1f} ms, max {max(abs(o) for o in offsets):.1f} ms "
            "(frame pts minus the audio position it was made from)",
        ))
    rows.append((
        "dropped frames",
        f"{report.frames_dropped} (server), {report.missing_frame_indices} missing frame indices",
    ))
    rows.append((
        "voice gaps",
        f"{len(report.voice_gaps_ms)} ({sum(report.voice_gaps_ms)} ms of silence inside the utterance: the voice "
        "stalled beyond the server's jitter budget)" if report.voice_gaps_ms else "none (no silence inside the utterance)",
    ))
    unusual = [e for e in report.events if not e.startswith("UTTERANCE_COMPLETE")]
    if unusual:
        rows.append(("events", "; ".join(unusual)))
    if report.timed_out:
        rows.append(("note", "stopped waiting at the timeout; the video may miss the end of the utterance"))
    elif not report.utterance_complete:
        rows.append(("note", "the server did not report the utterance complete"))
    if report.frames_written:
        video = f"{out} ({report.frames_written} frames, {report.video_seconds:.1f} s, {codec} + AAC)"
    else:
        video = "none written (no frames received)"
    rows.append(("video", video))
    print(format_fields(rows))


def say_options_from_args(args: argparse.Namespace, server: str) -> SayOptions:
    width, height = args.size or (0, 0)
    return SayOptions(
        server=server,
        out=args.out,
        npc_id=args.npc,
        character_id=args.character,
        fast=args.fast if "fast" in args else not args.realtime,
        width=width,
        height=height,
        fps=args.fps,
        reset_memory=args.reset,
        seed=args.seed,
        api_key=resolve_api_key(args),
        tls=client_tls_options(args),
        timeout_s=args.timeout,
    )


def speech_for(args: argparse.Namespace, folder: Path) -> np.ndarray:
    if args.audio is not None:
        return load_audio(args.audio)
    print(f'no --audio given: speaking "{args.text}" with espeak-ng')
    return load_audio(synthesize_speech(args.text, folder))


def command_say(args: argparse.Namespace) -> int:
    options = say_options_from_args(args, args.server)  # a bad key or TLS option fails before any work
    with tempfile.TemporaryDirectory(prefix="avatar-say-") as folder:
        pcm = speech_for(args, Path(folder))
    report = asyncio.run(say(pcm, options))
    print_say_report(report, args.out)
    return 0 if report.frames_received else 1


# ---------------------------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------------------------


def command_serve(args: argparse.Namespace) -> int:
    try:
        from avatar_backend.gateway.server import ServerOptions, StartupRefused, check_startup, run_server
    except ImportError as error:
        raise CliError(f"the server is not available in this installation ({error})") from None
    data_dir = (args.data_dir or default_data_dir()).expanduser()
    if args.weights is not None and not args.weights.is_file():
        raise CliError(f"weights file not found: {args.weights}")
    api_key = resolve_api_key(args)
    options = ServerOptions(
        host=args.host,
        port=args.port,
        data_dir=data_dir,
        model_config=args.config,
        device=args.device,
        weights=args.weights,
        api_key=api_key,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        insecure_no_auth_on_network=args.insecure_no_auth_on_network,
        max_stored_npcs=args.max_stored_npcs,
        max_stored_npc_bytes=args.max_stored_npc_bytes,
        max_parked_memory_bytes=args.max_parked_memory_bytes,
        npc_snapshot_interval_s=args.npc_snapshot_interval_s,
        voice_jitter_budget_ms=args.voice_jitter_budget_ms,
    )
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


# ---------------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`avatar-backend serve` as a child process, its output kept (and shown with ``verbose``)."""

    def __init__(self, serve_args: list[str], verbose: bool) -> None:
        self.verbose = verbose
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "avatar_backend.cli", "serve", *serve_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            # Its own process group: Ctrl-C reaches only the demo, which then stops the server once, cleanly.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_output, name="serve-output", daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            if line.startswith("avatar-backend "):
                # The server's own announcements (listening, serving, model): always worth showing.
                print(line, flush=True)
            elif self.verbose:
                print(f"  server | {line}", file=sys.stderr, flush=True)

    def output_tail(self) -> str:
        return "\n".join(f"  server | {line}" for line in self.tail)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the server to drain and stop (SIGINT, as Ctrl-C); kill it if it does not."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)


async def wait_for_server(target: str, server: ServerProcess, timeout: float) -> None:
    """Until the server answers and its worker is ready; CliError when the process exits first."""
    deadline = time.monotonic() + timeout
    # The child server inherits $AVATAR_API_KEY and then requires it.
    async with AvatarClient(target, api_key=os.environ.get(API_KEY_ENV) or None) as client:
        while True:
            if server.process.poll() is not None:
                raise CliError(
                    f"the server exited with status {server.process.returncode}:\n{server.output_tail()}"
                )
            if time.monotonic() > deadline:
                raise CliError(f"the server did not become ready within {timeout:.0f} s:\n{server.output_tail()}")
            try:
                await client.wait_ready(timeout=1.0)
                info = await client.server_info()
                if info.worker_ready:
                    return
            except AvatarError:
                pass
            await asyncio.sleep(0.5)


def command_demo(args: argparse.Namespace) -> int:
    # A SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the server child is stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    host = "127.0.0.1"
    port = free_port(host)
    with tempfile.TemporaryDirectory(prefix="avatar-demo-") as scratch:
        scratch_dir = Path(scratch)
        pcm = speech_for(args, scratch_dir)
        data_dir = args.data_dir or scratch_dir / "data"
        serve_args = ["--host", host, "--port", str(port), "--data-dir", str(data_dir),
                      "--config", args.config, "--device", args.device]
        if args.weights is not None:
            serve_args += ["--weights", str(args.weights)]
        print(f"starting avatar-backend serve on {host}:{port} (data {display_path(Path(data_dir))})", flush=True)
        started = time.monotonic()
        server = ServerProcess(serve_args, verbose=args.verbose)
        try:
            asyncio.run(wait_for_server(f"{host}:{port}", server, SERVER_START_TIMEOUT_S))
            print(f"server ready after {time.monotonic() - started:.1f} s; NPC {args.npc} is talking...", flush=True)
            report = asyncio.run(say(pcm, say_options_from_args(args, f"{host}:{port}")))
        except AvatarError:
            if not args.verbose:
                print(f"the server's last output:\n{server.output_tail()}", file=sys.stderr)
            raise
        finally:
            server.stop()
    print_say_report(report, args.out)
    if report.frames_written:
        print(f"wrote {args.out.resolve()}")
    return 0 if report.frames_received else 1


if __name__ == "__main__":
    sys.exit(main())
