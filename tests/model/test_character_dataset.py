"""The dataset writer and reader, the CLI, the default character, and the package boundary."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from character_helpers import REPO_ROOT

from model.data import (
    DEFAULT_IDENTITY,
    Event,
    describe_identity,
    identity_from_seed,
    render_still,
)
from model.data.__main__ import main as cli_main
from model.data.dataset import (
    iter_clips,
    make_clip,
    random_events,
    read_manifest,
    write_dataset,
)
from model.data.timeline import ACTIONS, EMOTIONS


def test_dataset_round_trips_and_is_reproducible(needs_espeak, tmp_path):
    manifest = write_dataset(tmp_path / "a", 2, size=64, seconds=2.0, seed=5)
    assert read_manifest(tmp_path / "a")["clips"] == json.loads(json.dumps(manifest["clips"]))
    clips = list(iter_clips(tmp_path / "a"))
    assert len(clips) == 2 and clips[0][0]["seed"] != clips[1][0]["seed"]
    entry, frames, audio, truth = clips[0]
    assert frames.shape == (40, 64, 64, 3) and frames.dtype == np.uint8 and len(audio) == 2 * 16000
    assert set(entry) >= {"file", "seed", "identity", "speech", "events"}
    assert entry["speech"]["language"] and entry["speech"]["voice"]
    assert all(len(v) == 40 for v in truth.values())
    # Everything needed to make a clip again is in its seed.
    clip, _ = make_clip(entry["seed"], size=64, seconds=2.0)
    assert np.array_equal(clip.frames, frames) and np.array_equal(clip.truth["mouth_open"], truth["mouth_open"])
    assert [Event.from_dict(e) for e in entry["events"]] == clip.events


def test_cli_writes_a_dataset(needs_espeak, tmp_path, capsys):
    arguments = ["--out", str(tmp_path / "d"), "--clips", "1", "--size", "64", "--seconds", "1", "--seed", "2"]
    assert cli_main(arguments) == 0
    assert "clips/s" in capsys.readouterr().out
    assert (tmp_path / "d" / "clip_00000.npz").is_file() and read_manifest(tmp_path / "d")["size"] == 64


def test_random_events_are_valid_and_actions_do_not_overlap():
    rng = np.random.default_rng(1)
    for _ in range(30):
        events = random_events(rng, 8.0, [(0.2, 2.0), (3.5, 5.0)])
        assert events[0].kind == "emotion" and events[0].time == 0.0
        actions = [e for e in events if e.kind == "action"]
        for a, b in zip(actions, actions[1:]):
            assert a.time + a.seconds <= b.time
        assert all(a.time + a.seconds <= 8.0 for a in actions)
        assert all(e.name in EMOTIONS for e in events if e.kind == "emotion")
        assert all(e.name in ACTIONS for e in actions)


def test_events_at_block_starts_start_where_serving_shows_them():
    """The control stage's clips: an emotion change or an action only at a block start, one at most there, as the
    worker applies them from the first frame of the block they condition."""
    starts = (0.0, 1.05, 2.65, 4.25, 5.85)
    rng = np.random.default_rng(2)
    seen = {"emotion": 0, "action": 0}
    for _ in range(60):
        events = random_events(rng, 6.0, [(0.2, 2.0), (3.5, 5.0)], block_starts=starts)
        assert events[0].kind == "emotion" and events[0].time == 0.0
        changes = [e for e in events[1:] if e.kind in ("emotion", "action")]
        assert all(e.time in starts for e in changes)
        assert len({e.time for e in changes if e.time > 0}) == len([e for e in changes if e.time > 0])
        actions = [e for e in events if e.kind == "action"]
        assert all(a.time + a.seconds <= b.time for a, b in zip(actions, actions[1:]))
        emotions = [e for e in events if e.kind == "emotion"]
        assert all(a.name != b.name for a, b in zip(emotions, emotions[1:]))
        for e in changes:
            seen[e.kind] += 1
    assert seen["emotion"] > 30 and seen["action"] > 30


def test_the_shipped_default_character_is_the_renderers_neutral_still_and_its_spec(monkeypatch, tmp_path):
    from PIL import Image

    from model.make_default_character import DEFAULT_OUT, character_spec, main

    shipped = Image.open(DEFAULT_OUT)
    assert shipped.size == (256, 256)
    assert np.array_equal(np.asarray(shipped.convert("RGB")), render_still(DEFAULT_IDENTITY, 256))
    assert json.loads(DEFAULT_OUT.with_suffix(".json").read_text()) == character_spec(DEFAULT_OUT.name)
    # The shipped file is refused another character or size however its path is written.
    monkeypatch.chdir(DEFAULT_OUT.parents[2])
    relative = str(DEFAULT_OUT.relative_to(DEFAULT_OUT.parents[2]))
    for argv in (["--seed", "12", "--out", relative], ["--size", "128"]):
        with pytest.raises(SystemExit):
            main(argv)
    assert np.array_equal(np.asarray(Image.open(DEFAULT_OUT).convert("RGB")), np.asarray(shipped.convert("RGB")))


def test_descriptions_name_what_is_drawn():
    assert describe_identity(DEFAULT_IDENTITY).startswith("a cartoon character with short dark brown hair")
    people = [identity_from_seed(s) for s in range(40)]
    assert all(("glasses" in describe_identity(p)) == (p.glasses != "none") for p in people)
    assert all(describe_identity(p).startswith("a bald") == (p.hair_style == "bald") for p in people)
    assert len({describe_identity(p) for p in people}) > 30


def test_the_serving_package_never_imports_model():
    pattern = re.compile(r"^\s*(from|import)\s+model(\.|\s|$)", re.MULTILINE)
    offenders = [str(p) for p in (REPO_ROOT / "avatar_backend").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
