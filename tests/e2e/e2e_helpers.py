"""What the end-to-end tests share: `avatar-backend serve` in a subprocess, real speech, and readers."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from avatar_backend.media.audio_file import load_audio
from avatar_backend.proto_gen import converse_pb2

SIZE = 64            # the smallest size the tiny model serves: keeps CI's CPU time down
FPS = 20
RATE = 48000
ASSETS = Path(__file__).resolve().parents[2] / "avatar_backend" / "assets"
SENTENCE = "Welcome, traveller. The forge is hot and the iron is ready."


class Server:
    """`avatar-backend serve` in a subprocess; the port is read from its "serving on" line."""

    def __init__(self, data_dir: Path, *extra_args: str, port: int = 0):
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.port = port      # 0: any free port; a fixed one lets a restarted server come back where it was
        self.process: subprocess.Popen | None = None
        self.address = ""
        self.output: list[str] = []

    def start(self, timeout: float = 300) -> "Server":
        command = [sys.executable, "-m", "avatar_backend.cli", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
                   *self.extra_args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            match = re.search(r"serving on (\S+:\d+)", line)
            if match:
                self.address = match.group(1)
                # Keep draining the output so the server never blocks on a full pipe.
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        self.stop()
        raise RuntimeError("server did not start:\n" + "".join(self.output[-40:]))

    def _drain(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def espeak(text: str, rate: int, directory: Path) -> np.ndarray:
    """``text`` spoken by espeak-ng, as int16 mono at ``rate``; skips the test without espeak-ng."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    wav = directory / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
    return load_audio(wav, rate)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=600))


async def collect(conv, until, timeout: float = 300) -> list:
    """Read items until ``until(items)`` is true."""
    items: list = []
    deadline = time.monotonic() + timeout
    while not until(items):
        item = await conv.next_item(timeout=max(0.1, deadline - time.monotonic()))
        if item is None:
            break
        items.append(item)
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {len(items)} items")
    return items


def frames_of(items) -> list[converse_pb2.VideoFrame]:
    return [i for i in items if isinstance(i, converse_pb2.VideoFrame)]


def events_of(items, code) -> list[converse_pb2.SessionEvent]:
    return [i for i in items if isinstance(i, converse_pb2.SessionEvent) and i.code == code]
