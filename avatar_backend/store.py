"""The data directory: characters and parked NPC memories on disk.

Layout (one writer per kind of file: the gateway writes characters, the worker writes NPC memories)::

    <data_dir>/characters/<character_id>/character.json   CharacterRecord as JSON
    <data_dir>/characters/<character_id>/reference.png    the reference image (PNG, as registered)
    <data_dir>/npcs/<npc_id>.npcmem                        NPC memory snapshot (safetensors, see generator/memory.py)

Every write is atomic (temporary file, fsync, rename), so a crash never leaves a half-written file behind.
No torch here: the gateway reads this module too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
NPC_MEMORY_SUFFIX = ".npcmem"


def default_data_dir() -> Path:
    """The user's data directory for the server (e.g. ~/.local/share/avatar-backend on Linux)."""
    return Path(platformdirs.user_data_dir("avatar-backend", appauthor=False))


def valid_id(value: str) -> bool:
    """Character and NPC ids: 1-128 characters of [A-Za-z0-9_.-], never '.' or '..' (they name files)."""
    return bool(ID_PATTERN.match(value)) and value not in (".", "..")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_with(path: Path, write: Callable[[Path], object]) -> None:
    """Let ``write`` fill a temporary file beside ``path``, make it durable, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
        self.characters_dir.mkdir(parents=True, exist_ok=True)
        self.npcs_dir.mkdir(parents=True, exist_ok=True)
        return self

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
        if not self.npcs_dir.is_dir():
            return []
        return sorted(p.name[: -len(NPC_MEMORY_SUFFIX)] for p in self.npcs_dir.glob(f"*{NPC_MEMORY_SUFFIX}"))


def now_ms() -> int:
    return int(time.time() * 1000)
