"""The management commands: ``character add|list|rm``, ``npc list|reset|rm``, ``info`` and ``bench``."""

from __future__ import annotations

import argparse

from avatar_backend.proto_gen import converse_pb2

from .common import CliError, connect, format_bytes, format_fields, format_table, format_time_ms, plural, shorten


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
        ("prompt guidance", f"{model.prompt_guidance:g} by default; a session may ask for 1 to "
                            f"{info.limits.max_prompt_guidance:g}" if model.name else "-"),
        ("prompt onset", f"{model.prompt_onset_latents} latent frames" if model.name else "-"),
        ("voice", f"jitter budget {info.limits.voice_jitter_budget_ms} ms; up to "
                  f"{info.limits.max_timed_events} emotions/actions may wait for their point of the voice"),
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
