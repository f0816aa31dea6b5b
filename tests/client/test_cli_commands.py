"""The `avatar-backend` command: argument parsing, output and error formatting, the default character.

The commands that call a server run against the real one: the gateway in front of the real worker engine with the
tests' stand-in generator (conftest.py)."""

from __future__ import annotations

import argparse
import json

import grpc
import pytest
from PIL import Image

from avatar_backend import cli
from avatar_backend.cli import common
from avatar_backend.cli import say as say_command
from avatar_backend.client import AvatarError, SyncAvatarClient
from avatar_backend.gateway.characters import (
    default_character_files,
    ensure_default_character,
)
from avatar_backend.store import DataDir

SUBCOMMANDS = [
    ["serve"], ["say"], ["demo"], ["character"], ["character", "add"], ["character", "list"],
    ["character", "rm"], ["npc"], ["npc", "list"], ["npc", "reset"], ["npc", "rm"], ["info"], ["bench"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_every_command_has_help(words, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([*words, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: avatar-backend {' '.join(words)}")


def test_parsing_of_serve_say_and_character_add():
    parser = cli.build_parser()
    serve = parser.parse_args(["serve"])
    assert (serve.host, serve.port, serve.config, serve.device, serve.data_dir) == (
        "127.0.0.1", 50051, "tiny", "cpu", None
    )
    say = parser.parse_args(["say", "--audio", "a.wav", "--out", "x.mp4", "--fast", "--size", "320x240", "--fps", "25"])
    assert say.size == (320, 240) and say.fps == 25 and say.fast and say.server == "127.0.0.1:50051"
    options = say_command.say_options_from_args(say, say.server)
    assert (options.width, options.height, options.fast, options.npc_id) == (320, 240, True, "cli-npc")
    assert options.controls == []
    timed = parser.parse_args(["say", "--emotion", "happy:0.8@2.5", "--action", "wave@1.2", "--emotion", "sad",
                               "--emotion", "@4"])
    assert say_command.say_options_from_args(timed, "h:1").controls == [
        say_command.VoiceControl("emotion", "happy", 0.8, 2.5), say_command.VoiceControl("action", "wave", 1.0, 1.2),
        say_command.VoiceControl("emotion", "sad", 1.0, None), say_command.VoiceControl("emotion", "", 1.0, 4.0)]
    demo = parser.parse_args(["demo"])
    assert say_command.say_options_from_args(demo, "h:1").fast  # the demo sends like TTS unless --realtime
    assert not say_command.say_options_from_args(parser.parse_args(["demo", "--realtime"]), "h:1").fast
    add = parser.parse_args([
        "character", "add", "smith", "--image", "s.png", "--prompt", "a smith",
        "--emotion", "angry=shouting, red face", "--emotion", "sad=crying", "--action", "wave=waves",
    ])
    assert add.emotion == [("angry", "shouting, red face"), ("sad", "crying")]
    assert add.action == [("wave", "waves")]


def test_bench_passes_its_json_and_unknown_options_on(monkeypatch):
    import sys
    import types

    received = []
    module = types.ModuleType("avatar_backend.bench")
    module.main = lambda argv: received.append(argv) or 0
    monkeypatch.setitem(sys.modules, "avatar_backend.bench", module)
    assert cli.main(["bench", "--json", "b.json", "--sessions", "4"]) == 0
    assert received == [["--json", "b.json", "--sessions", "4"]]


@pytest.mark.parametrize("argv", [
    ["say", "--size", "big"],
    ["say", "--size", "0x10"],
    ["say", "--emotion", "happy:1.5@2"],
    ["say", "--emotion", "happy@soon"],
    ["say", "--action", "wave:0.5"],
    ["demo", "--action", "@3"],
    ["character", "add", "x", "--image", "i.png", "--prompt", "p", "--emotion", "no-equals"],
    ["character", "add", "x", "--prompt", "p"],
    ["frobnicate"],
    [],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_grpc_errors_print_the_status_name_and_message(registered, capsys):
    assert cli.main(["npc", "rm", "ghost", "--server", registered.target]) == 1
    assert capsys.readouterr().err.strip() == "error: NOT_FOUND: no NPC 'ghost'"
    error = AvatarError(grpc.StatusCode.UNAVAILABLE, "draining", retry_after_ms=1000)
    assert common.format_error(error) == "error: UNAVAILABLE: draining (retry after 1000 ms)"


def test_info_prints_what_the_server_runs_and_its_limits(registered, capsys):
    assert cli.main(["info", "--server", registered.target]) == 0
    out = capsys.readouterr().out
    assert "tiny (random weights" in out and "64x64" in out
    assert "jitter budget 500 ms; up to 64 emotions/actions may wait for their point of the voice" in out
    assert "prompt guidance:  3 by default; a session may ask for 1 to 10" in out
    assert "prompt onset:     3 latent frames" in out


def test_character_and_npc_commands(registered, tmp_path, capsys):
    image = tmp_path / "smith.png"
    Image.new("RGB", (32, 32)).save(image)
    server = ["--server", registered.target]
    assert cli.main(["character", "add", "smith", "--image", str(image), "--prompt", "a dwarf smith",
                     "--emotion", "angry=shouting", *server]) == 0
    assert "character smith registered (32x32 reference, 1 emotion, 0 actions)" in capsys.readouterr().out
    assert cli.main(["character", "add", "smith", "--image", str(image), "--prompt", "p", *server]) == 1
    assert capsys.readouterr().err.startswith("error: ALREADY_EXISTS: ")
    assert cli.main(["character", "add", "elf", "--image", str(tmp_path / "missing.png"), "--prompt", "p",
                     *server]) == 1
    assert "image not found" in capsys.readouterr().err

    assert cli.main(["character", "list", *server]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "NPCS", "IMAGE", "EMOTIONS", "ACTIONS", "CREATED", "PROMPT"]
    assert lines[1].startswith("default ") and lines[2].startswith("smith ")
    assert "angry" in lines[2]

    assert cli.main(["npc", "list", *server]) == 0
    assert capsys.readouterr().out.strip() == "no NPCs"
    npc = create_npc(registered.target, "guard", "smith")
    assert cli.main(["npc", "list", "--character", "smith", *server]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "CHARACTER", "LIVE", "BLOCKS", "FRAMES", "MEMORY", "SIZE", "UPDATED"]
    # The stand-in's memory of a 64x64 NPC is 4096 bytes.
    assert lines[1].split()[:8] == [
        "guard", "smith", "no", str(npc.blocks_generated), str(npc.frames_generated), "4.0", "KiB", "64x64"
    ]
    assert cli.main(["character", "rm", "smith", *server]) == 1
    assert capsys.readouterr().err.startswith("error: FAILED_PRECONDITION: ")
    assert cli.main(["character", "rm", "smith", "--with-npcs", *server]) == 0
    assert capsys.readouterr().out.strip() == "removed character smith and 1 NPC"
    assert cli.main(["info", *server]) == 0
    out = capsys.readouterr().out
    assert "tiny (random weights" in out and "cpu (ready)" in out and "64x64" in out


def create_npc(target: str, npc_id: str, character_id: str):
    """An NPC is made by its first session: open one, end it, and return the NPC as the server keeps it."""
    with SyncAvatarClient(target) as client:
        with client.converse(npc_id, character_id):
            pass
        return client.get_npc(npc_id)


def test_format_table_aligns_columns():
    text = common.format_table(("ID", "N"), [("a", 1), ("longer", 22)])
    assert text.splitlines() == ["ID      N", "a       1", "longer  22"]


def test_default_character_is_written_once(tmp_path):
    store = DataDir(tmp_path).ensure()
    assert ensure_default_character(store)
    record = store.read_character("default")
    assert record.reference_width == 256 and record.reference_height == 256
    assert "happy" in record.emotion_prompts and record.action_prompts
    assert store.read_reference_image("default")[:8] == b"\x89PNG\r\n\x1a\n"
    assert not ensure_default_character(store)


def test_default_character_asset_matches_its_json():
    spec, png = default_character_files()
    assert spec["character_id"] == "default" and spec["base_prompt"]
    assert json.dumps(spec)  # plain JSON types only
    assert png[:4] == b"\x89PNG"


def test_bench_without_the_module_is_a_clear_error(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_bench(name, *args, **kwargs):
        if name == "avatar_backend.bench":
            raise ImportError("No module named 'avatar_backend.bench'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bench)
    assert cli.main(["bench"]) == 1
    assert "benchmark is not available" in capsys.readouterr().err


def test_named_prompt_and_size_parsers():
    assert common.parse_named_prompt(" happy = big smile ") == ("happy", "big smile")
    assert common.parse_size("640X360") == (640, 360)
    with pytest.raises(argparse.ArgumentTypeError):
        common.parse_named_prompt("=x")


def test_serve_refuses_the_published_model_without_its_files_before_starting(tmp_path, capsys):
    data_dir = tmp_path / "data"
    assert cli.main(["serve", "--config", "liveact-18b", "--data-dir", str(data_dir)]) == 1
    assert "needs the published files: --weights <directory>" in capsys.readouterr().err
    assert cli.main(["serve", "--config", "liveact-18b", "--weights", str(tmp_path / "nowhere")]) == 1
    assert "weights not found" in capsys.readouterr().err
    assert cli.main(["serve", "--config", "no-such-model", "--data-dir", str(data_dir)]) == 1
    assert "unknown model config 'no-such-model'" in capsys.readouterr().err
    assert not data_dir.exists()


def test_serve_refuses_weights_trained_for_another_model_before_starting(tmp_path, capsys):
    import numpy as np
    from safetensors.numpy import save_file

    from avatar_backend.generator.config import TINY

    data_dir = tmp_path / "data"
    weights = tmp_path / "tiny.safetensors"
    save_file({"dit.head": np.zeros(2, np.float32)}, str(weights), metadata={"config": TINY.to_json()})
    assert cli.main(["serve", "--config", "liveact-18b", "--weights", str(weights), "--data-dir", str(data_dir)]) == 1
    err = capsys.readouterr().err
    assert "was trained for config 'tiny', not 'liveact-18b'; serve it with --config tiny" in err
    weights.write_bytes(b"not weights")
    assert cli.main(["serve", "--weights", str(weights), "--data-dir", str(data_dir)]) == 1
    err = capsys.readouterr().err
    assert "is not a safetensors weights file" in err and "Traceback" not in err
    assert not data_dir.exists()


@pytest.mark.parametrize("flags, message", [
    (["--max-prompt-guidance", "0.5"], "max_prompt_guidance must be a factor >= 1, got 0.5"),
    (["--prompt-guidance", "0"], "prompt_guidance must be a finite factor >= 1 (1 turns it off), got 0.0"),
    (["--prompt-guidance", "inf"], "prompt_guidance must be a finite factor >= 1 (1 turns it off), got inf"),
    (["--max-stored-npcs", "-1"], "max_stored_npcs must be 0 or more, got -1"),
    (["--prompt-onset", "-1"], "prompt_onset_latents must be a whole number of latent frames >= 0 (0 turns it off), "
                               "got -1"),
    (["--prompt-onset", "9"], "prompt_onset_latents must be 0-8 latent frames, got 9"),
])
def test_serve_names_a_value_out_of_range_before_starting(tmp_path, capsys, flags, message):
    data_dir = tmp_path / "data"
    assert cli.main(["serve", "--data-dir", str(data_dir), *flags]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not data_dir.exists()
