"""Fixtures of the contract checks: the buf that ./buildall.sh installs."""

from __future__ import annotations

import os
import shutil

import pytest
from contract_helpers import REPO_ROOT


@pytest.fixture(scope="session")
def buf() -> str:
    """The buf binary: $BUF, else the one ./buildall.sh installs into .tools/, else one on PATH."""
    candidates = [os.environ.get("BUF"), str(REPO_ROOT / ".tools" / "node_modules" / ".bin" / "buf"),
                  shutil.which("buf")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("buf is not installed: ./buildall.sh test (or lint) installs it into .tools/ from npm")
