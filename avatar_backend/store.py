"""The data directory: characters and parked NPC memories on disk.

Layout (one writer per kind of file: the gateway writes characters, the worker writes NPC memories)::

    <data_dir>/characters/<character_id>/character.json   CharacterRecord as JSON
    <data_dir>/characters/<character_id>/reference.png    the reference image (PNG, as registered)
    <data_dir>/npcs/<npc_id>.npcmem                        NPC memory snapshot (safetensors, see generator/memory.py)

Every write is atomic (temporary file, fsync, rename), so a crash never leaves a half-written file behind.
A temporary file carries its writer's pid in its name (``.<name>.<pid>.<random>.tmp``); one whose writer was
killed mid-write (kill -9, power loss) is removed by :meth:`DataDir.prepare` at the next start-up, while a
live process's write in progress is never touched.

The directory is private: folders are created 0700 and files 0600 (snapshots carry the last voice an NPC
heard; records and images may be unreleased content); :meth:`DataDir.prepare` tightens a data directory made
readable by others and says so in the log.
No torch here: the gateway reads this module too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,128}")
NPC_MEMORY_SUFFIX = ".npcmem"
TEMP_SUFFIX = ".tmp"
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# Defaults of the NPC storage limits (``serve`` flags, published in ServerInfo.limits). One tiny-model NPC
# at 192x192 is about 24 MB; one liveact-18b NPC is 33-51 GiB, so that model needs the byte caps raised.
DEFAULT_MAX_STORED_NPCS = 1000
DEFAULT_MAX_STORED_NPC_BYTES = 64 << 30
DEFAULT_MAX_PARKED_MEMORY_BYTES = 1 << 30
DEFAULT_NPC_SNAPSHOT_INTERVAL_S = 60
# A temporary file untouched this long is stale even if a process of its writer's pid runs (a reused pid);
# no single write takes anywhere near this long.
STALE_TEMP_AGE_S = 3600.0


def default_data_dir() -> Path:
    """The user's data directory for the server (e.g. ~/.local/share/avatar-backend on Linux)."""
    return Path(platformdirs.user_data_dir("avatar-backend", appauthor=False))


def valid_id(value: str) -> bool:
    """Character and NPC ids: 1-128 characters of [A-Za-z0-9_.-], never '.' or '..' (they name files)."""
    # fullmatch: with match and "$", "npc\n" would pass ("$" also matches before a final newline).
    return bool(ID_PATTERN.fullmatch(value)) and value not in (".", "..")


def process_alive(pid: int) -> bool:
    """Whether a process of this pid runs on this host (a zombie, killed but not yet reaped, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        # Linux: "pid (comm) S ...": the state letter follows the last ")".
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_with(path: Path, write: Callable[[Path], object]) -> None:
    """Let ``write`` fill a temporary file beside ``path``, make it durable, then rename it over ``path``."""
    # Missing parents (above the data directory) get the default mode, like mkdir -p; the folder itself is private.
    path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    # mkstemp creates the file 0600; the rename keeps that mode.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class CharacterRecord:
    """A registered character: its look (reference image, stored beside this record) and its prompts."""

    character_id: str
    base_prompt: str
    emotion_prompts: dict[str, str] = field(default_factory=dict)
    action_prompts: dict[str, str] = field(default_factory=dict)
    reference_width: int = 0
    reference_height: int = 0
    created_unix_ms: int = 0
    # Changes whenever the character is replaced, so cached conditioning of an older version is never used.
    revision: int = 1

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CharacterRecord":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class DataDir:
    """Paths and file operations of one data directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser()
        self.characters_dir = self.root / "characters"
        self.npcs_dir = self.root / "npcs"

    def ensure(self) -> "DataDir":
        self.root.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        self.characters_dir.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        self.npcs_dir.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        return self

    def prepare(self) -> "DataDir":
        """Start-up: create the directory, make it private again if it was opened up, and remove temporary
        files that crashed writers left behind. Safe while other processes use the directory."""
        self.ensure()
        tightened = self.tighten_permissions()
        if tightened:
            log.warning("data directory %s was readable by other users: made %d path(s) private (folders 0700, "
                        "files 0600)", self.root, tightened)
        removed, freed = self.remove_stale_temp_files()
        if removed:
            log.warning("removed %d temporary file(s) (%d bytes) of interrupted writes from %s", removed, freed,
                        self.root)
        return self

    def tighten_permissions(self) -> int:
        """Remove group and other access from every folder and file of the data directory; returns how many
        paths changed (one this process cannot change is logged and left)."""
        changed = 0
        for path in [self.root, *self._walk()]:
            try:
                mode = path.lstat().st_mode
                if stat.S_ISLNK(mode) or not mode & 0o077:
                    continue
                path.chmod(PRIVATE_DIR_MODE if stat.S_ISDIR(mode) else stat.S_IMODE(mode) & PRIVATE_FILE_MODE)
                changed += 1
            except FileNotFoundError:
                continue
            except OSError as err:
                log.warning("cannot make %s private: %s", path, err)
        return changed

    def remove_stale_temp_files(self) -> tuple[int, int]:
        """Delete the temporary files of atomic writes whose writer is gone; returns (files, bytes)."""
        removed = freed = 0
        now = time.time()
        for path in self._walk():
            if not _is_temp_name(path.name):
                continue
            try:
                info = path.lstat()
                if not stat.S_ISREG(info.st_mode):
                    continue
                # A name without a pid (an older build wrote it) is stale by age only.
                owner = _temp_owner_pid(path.name)
                writer_gone = owner is not None and not process_alive(owner)
                if not writer_gone and now - info.st_mtime < STALE_TEMP_AGE_S:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue  # its writer finished (renamed it) meanwhile
            except OSError as err:
                log.warning("cannot remove the stale temporary file %s: %s", path, err)
                continue
            removed += 1
            freed += info.st_size
        return removed, freed

    def _walk(self) -> list[Path]:
        """Every folder and file under the root (not following links); the layout is two levels deep."""
        found: list[Path] = []
        for top in (self.characters_dir, self.npcs_dir):
            if not top.is_dir():
                continue
            found.append(top)
            for dirpath, dirnames, filenames in os.walk(top):
                base = Path(dirpath)
                found.extend(base / name for name in dirnames)
                found.extend(base / name for name in filenames)
        return found

    # -- characters -------------------------------------------------------------------------------------

    def character_dir(self, character_id: str) -> Path:
        if not valid_id(character_id):
            raise ValueError(f"invalid character_id {character_id!r}")
        return self.characters_dir / character_id

    def reference_image_path(self, character_id: str) -> Path:
        return self.character_dir(character_id) / "reference.png"

    def has_character(self, character_id: str) -> bool:
        return valid_id(character_id) and (self.character_dir(character_id) / "character.json").is_file()

    def read_character(self, character_id: str) -> CharacterRecord:
        """The character's record; FileNotFoundError when it does not exist."""
        return CharacterRecord.from_json((self.character_dir(character_id) / "character.json").read_text())

    def read_reference_image(self, character_id: str) -> bytes:
        return self.reference_image_path(character_id).read_bytes()

    def write_character(self, record: CharacterRecord, reference_png: bytes) -> None:
        """Image first, record last: a character exists once its record does, and then its image does too."""
        folder = self.character_dir(record.character_id)
        atomic_write(folder / "reference.png", reference_png)
        atomic_write(folder / "character.json", record.to_json().encode())

    def delete_character(self, character_id: str) -> bool:
        folder = self.character_dir(character_id)
        if not folder.exists():
            return False
        # Record first, so a crash half-way leaves no character that points at a missing image.
        (folder / "character.json").unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        return True

    def list_characters(self) -> list[CharacterRecord]:
        if not self.characters_dir.is_dir():
            return []
        records = []
        for folder in sorted(self.characters_dir.iterdir()):
            try:
                records.append(self.read_character(folder.name))
            except (FileNotFoundError, ValueError, json.JSONDecodeError):
                continue
        return records

    # -- NPC memories -----------------------------------------------------------------------------------

    def npc_memory_path(self, npc_id: str) -> Path:
        if not valid_id(npc_id):
            raise ValueError(f"invalid npc_id {npc_id!r}")
        return self.npcs_dir / f"{npc_id}{NPC_MEMORY_SUFFIX}"

    def list_npc_ids(self) -> list[str]:
        return sorted(self.npc_memory_sizes())

    def npc_memory_sizes(self) -> dict[str, int]:
        """Bytes on disk of every NPC memory snapshot, by NPC id."""
        if not self.npcs_dir.is_dir():
            return {}
        sizes = {}
        for entry in os.scandir(self.npcs_dir):
            npc_id = entry.name[: -len(NPC_MEMORY_SUFFIX)]
            if not entry.name.endswith(NPC_MEMORY_SUFFIX) or not valid_id(npc_id):
                continue
            try:
                sizes[npc_id] = entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
        return sizes


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def _temp_owner_pid(name: str) -> int | None:
    """The writer's pid in ``.<name>.<pid>.<random>.tmp``; None for a name without one."""
    parts = name[: -len(TEMP_SUFFIX)].rsplit(".", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return int(parts[1])
    return None


def now_ms() -> int:
    return int(time.time() * 1000)
