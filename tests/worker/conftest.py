"""Fixtures of the worker tests: the stand-in generator, a data directory with a character, a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from stand_in_generator import StandInGenerator
from worker_helpers import FakeClock, small_config

from avatar_backend.store import CharacterRecord, DataDir


@pytest.fixture
def pipeline() -> StandInGenerator:
    return StandInGenerator(small_config())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    d = DataDir(tmp_path / "data").ensure()
    d.write_character(CharacterRecord(character_id="villager", base_prompt="a villager",
                                      emotion_prompts={"happy": "a happy villager"}), b"\x89PNG fake")
    d.write_character(CharacterRecord(character_id="smith", base_prompt="a blacksmith"), b"\x89PNG smith")
    return d
