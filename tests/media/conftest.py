"""Fixtures of the media tests: real speech made at test time with espeak-ng."""

from __future__ import annotations

import shutil
import subprocess
import wave
from dataclasses import dataclass

import numpy as np
import pytest

SPEECH_TEXT = (
    "The old lighthouse keeper said the storm would pass before dawn, "
    "but nobody in the village believed him."
)


@dataclass(frozen=True)
class Speech:
    samples: np.ndarray  # float32 mono
    sample_rate: int


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    """About five seconds of synthetic speech from espeak-ng (22.05 kHz)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng, or ./buildall.sh); it makes the speech")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run([espeak, "-w", str(path), SPEECH_TEXT], check=True, capture_output=True, timeout=60)
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2, "espeak-ng is expected to write 16-bit mono"
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return Speech(pcm.astype(np.float32) / 32768.0, rate)
