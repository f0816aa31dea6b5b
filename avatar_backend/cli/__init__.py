"""The ``avatar-backend`` command: run the server, make an NPC talk, manage characters and NPCs.

    avatar-backend serve                      the gateway with one worker (the embedded tiny model on CPU)
    avatar-backend demo                       serve + say with a synthesized sentence, writes out/npc.mp4
    avatar-backend say --audio speech.wav     stream a voice to a running server, record the video as MP4
    avatar-backend character add|list|rm      the characters (looks) NPCs are made from
    avatar-backend npc list|reset|rm          the NPCs and their memories
    avatar-backend info                       what the server runs and accepts
    avatar-backend bench                      the benchmark
    avatar-backend memory-plan                what a model needs on its GPUs, before anything is loaded
    avatar-backend soak                       a server under talking NPCs for an hour: its memory, frames, lateness

Every client command talks gRPC to ``--server`` (default 127.0.0.1:50051) and exits with status 1 and the
gRPC status name and message when the server refuses.

On a network: ``serve`` refuses a non-loopback ``--host`` unless clients must authenticate (an API key from
``--api-key-file`` or $AVATAR_API_KEY, or client certificates with ``--tls-client-ca``) or
``--insecure-no-auth-on-network`` is given; ``--tls-cert``/``--tls-key`` serve TLS. Client commands take the
same key options and ``--tls``, ``--tls-ca``, ``--tls-cert``/``--tls-key`` (or a ``grpcs://HOST:PORT`` server).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from avatar_backend import __version__
from avatar_backend.client import AvatarError

from .common import (
    API_KEY_ENV,
    DEFAULT_PORT,
    CliError,
    add_api_key_arguments,
    add_server_arguments,
    format_error,
    parse_named_prompt,
)
from .demo import command_demo
from .manage import (
    command_bench,
    command_character_add,
    command_character_list,
    command_character_rm,
    command_info,
    command_npc_list,
    command_npc_reset,
    command_npc_rm,
)
from .plan import add_memory_plan_arguments, command_memory_plan
from .say import add_say_arguments, command_say
from .serve import add_execution_arguments, add_model_arguments, add_storage_arguments, command_serve
from .soak import add_soak_arguments, command_soak

__all__ = ["API_KEY_ENV", "CliError", "build_parser", "main"]


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
    add_execution_arguments(serve)
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

    soak = commands.add_parser(
        "soak", help="run a server under talking NPCs for a long time and report its memory",
        description="Start `serve` on a free port, let NPCs talk to it at real-time pace (sessions ending and "
                    "resuming), and report per window each server process's resident memory, the frames received "
                    "and how late they came (Linux).")
    add_soak_arguments(soak)
    add_model_arguments(soak)
    soak.set_defaults(handler=command_soak)

    plan = commands.add_parser(
        "memory-plan", help="print what a model needs on its GPUs (nothing is loaded)",
        description="Weights per device, one NPC's memory per frame size in bf16 and FP8 KV caches on one and two "
                    "GPUs, and how many NPCs fit on a GPU of the given size. Computed from the config alone.")
    add_memory_plan_arguments(plan)
    plan.set_defaults(handler=command_memory_plan)
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
