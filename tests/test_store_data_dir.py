"""The data directory: ids that name files, private permissions, and no temporary files left by killed writers."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avatar_backend.store import (
    STALE_TEMP_AGE_S,
    CharacterRecord,
    DataDir,
    atomic_write,
    valid_id,
)

# A writer that is killed in the middle of an atomic write: it fills the temporary file, says so, and waits.
_STUCK_WRITER = """
import sys, time
from pathlib import Path
from avatar_backend.store import atomic_write_with

def write(tmp: Path) -> None:
    tmp.write_bytes(b"x" * 1_000_000)
    print("writing", flush=True)
    time.sleep(600)

atomic_write_with(Path(sys.argv[1]), write)
"""


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask():
    # The modes under test must not depend on the umask of whoever runs the tests.
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def start_stuck_writer(target: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _STUCK_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("bad", ["npc\n", "npc\r\n", "\nnpc", "np c", "", ".", "..", "a" * 129, "npc/1", "npc\x00"])
def test_ids_with_a_trailing_newline_or_other_extra_characters_are_refused(bad):
    assert not valid_id(bad)
    with pytest.raises(ValueError):
        DataDir("/nonexistent").npc_memory_path(bad)


def test_valid_ids_still_pass():
    assert all(valid_id(v) for v in ("npc", "npc-1.v2_x", "a" * 128, "..."))


def test_a_new_data_dir_is_private_and_so_is_every_file_written_into_it(tmp_path, usual_umask):
    data = DataDir(tmp_path / "data").ensure()
    data.write_character(CharacterRecord(character_id="hero", base_prompt="a hero"), b"\x89PNG image")
    atomic_write(data.npc_memory_path("guard"), b"memory")
    for folder in (data.root, data.characters_dir, data.npcs_dir, data.character_dir("hero")):
        assert mode_of(folder) == 0o700, folder
    for file in (data.character_dir("hero") / "character.json", data.reference_image_path("hero"),
                 data.npc_memory_path("guard")):
        assert mode_of(file) == 0o600, file


def test_a_real_snapshot_file_is_private(tmp_path, usual_umask):
    pytest.importorskip("torch")
    from avatar_backend.generator.pipeline import LiveActPipeline

    data = DataDir(tmp_path / "data").ensure()
    memory = LiveActPipeline.from_config("tiny").new_memory("guard", "hero", 64, 64, 20, seed=1)
    memory.save(data.npc_memory_path("guard"))
    assert mode_of(data.npc_memory_path("guard")) == 0o600


def test_start_up_makes_an_opened_up_data_dir_private_again(tmp_path, usual_umask, caplog):
    data = DataDir(tmp_path / "data").ensure()
    data.write_character(CharacterRecord(character_id="hero", base_prompt="a hero"), b"\x89PNG image")
    atomic_write(data.npc_memory_path("guard"), b"memory")
    # As an older build (or a careless chmod -R) left it: world-readable folders and files.
    opened = [data.root, data.characters_dir, data.npcs_dir, data.character_dir("hero")]
    for folder in opened:
        folder.chmod(0o755)
    files = [data.reference_image_path("hero"), data.character_dir("hero") / "character.json",
             data.npc_memory_path("guard")]
    for file in files:
        file.chmod(0o644)

    with caplog.at_level("WARNING", logger="avatar_backend.store"):
        DataDir(data.root).prepare()
    assert all(mode_of(folder) == 0o700 for folder in opened)
    assert all(mode_of(file) == 0o600 for file in files)
    assert any("readable by other users" in r.getMessage() for r in caplog.records)
    assert data.read_reference_image("hero") == b"\x89PNG image"   # contents untouched


def test_start_up_removes_the_temporary_files_of_killed_writers_only(tmp_path):
    data = DataDir(tmp_path / "data").ensure()
    killed = start_stuck_writer(data.npc_memory_path("guard"))
    killed.kill()                                  # SIGKILL: no cleanup handler runs
    killed.wait()
    live = start_stuck_writer(data.npc_memory_path("smith"))
    try:
        leftovers = temp_files(data.npcs_dir)
        assert len(leftovers) == 2 and all(p.stat().st_size == 1_000_000 for p in leftovers)
        # A temporary file of an older build (no pid in its name), untouched for long: stale by its age.
        old = data.characters_dir / ".character.json.abcd1234.tmp"
        old.write_bytes(b"y" * 1000)
        long_ago = time.time() - STALE_TEMP_AGE_S - 60
        os.utime(old, (long_ago, long_ago))
        recent_unknown = data.characters_dir / ".character.json.efgh5678.tmp"
        recent_unknown.write_bytes(b"z")

        DataDir(data.root).prepare()

        remaining = temp_files(data.npcs_dir)
        assert [p.name.split(".")[3] for p in remaining] == [str(live.pid)], "only the live writer's file stays"
        assert not old.exists() and recent_unknown.exists()
    finally:
        live.kill()
        live.wait()
    DataDir(data.root).prepare()
    assert temp_files(data.npcs_dir) == []


def test_npc_memory_sizes_lists_snapshots_only(tmp_path):
    data = DataDir(tmp_path / "data").ensure()
    atomic_write(data.npc_memory_path("guard"), b"m" * 100)
    atomic_write(data.npc_memory_path("smith"), b"m" * 30)
    (data.npcs_dir / ".guard.npcmem.123.abcdefgh.tmp").write_bytes(b"partial")
    (data.npcs_dir / "notes.txt").write_bytes(b"x")
    assert data.npc_memory_sizes() == {"guard": 100, "smith": 30}
    assert data.list_npc_ids() == ["guard", "smith"]
