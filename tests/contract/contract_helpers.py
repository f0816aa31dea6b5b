"""Paths and helpers shared by the contract checks (the proto files, buf, compilers)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO_ROOT / "proto"
PUBLIC_PROTO_FILES = sorted((PROTO_DIR / "avatar" / "v1").glob("*.proto"))
BREAKING_BASELINE = PROTO_DIR / "breaking-baseline.binpb"


def run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs a tool to completion; stdout and stderr together in ``.stdout`` (compilers mix them)."""
    return subprocess.run(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300, check=False)


def copy_of_repo_protos(destination: Path) -> Path:
    """A copy of buf.yaml and proto/ to break on purpose; returns the copy's root."""
    shutil.copy2(REPO_ROOT / "buf.yaml", destination / "buf.yaml")
    shutil.copytree(PROTO_DIR, destination / "proto")
    return destination
