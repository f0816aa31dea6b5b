"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The ``shared/`` folder beside the checkout (CI has it; a user's clone does not)."""
    return Path(os.environ.get("AVATAR_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Reference vectors computed by the published LiveAct code; skips when they are not present."""
    path = shared_dir() / "reference" / "golden"
    if not path.is_dir():
        pytest.skip(f"reference vectors not found at {path} (set AVATAR_SHARED_DIR to the shared/ folder)")
    return path
