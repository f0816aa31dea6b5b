"""`avatar-backend demo` end to end with the tests' stand-in generator in the worker (seconds instead of minutes).

It exercises what `demo` itself does: start `serve` as a subprocess, wait for it, run `say` with espeak-ng
speech, write the MP4 and stop the server. The real generator is covered by the end-to-end suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import av
import pytest
from stand_in_generator import WORKER_ENV

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_writes_a_talking_npc_video(tmp_path):
    pytest.importorskip("avatar_backend.gateway.server", reason="the gateway is not part of this checkout")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng); the demo speaks with it")
    out = tmp_path / "npc.mp4"
    result = subprocess.run(
        [sys.executable, "-m", "avatar_backend.cli", "demo", "--out", str(out), "--text", "Hello there, traveller."],
        env={**os.environ, **WORKER_ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert "avatar-backend serving on 127.0.0.1:" in text
    for label in ("frames received:", "first frame:", "A/V offset:", "dropped frames:", f"wrote {out}"):
        assert label in text
    with av.open(str(out)) as container:
        assert container.streams.video and container.streams.audio
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= 20
