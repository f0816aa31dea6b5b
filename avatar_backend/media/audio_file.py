"""Audio files to PCM: any format FFmpeg decodes (through PyAV), as mono int16 at the rate asked for."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

__all__ = ["AudioFileError", "load_audio"]


class AudioFileError(ValueError):
    """The file is missing, holds no audio, or cannot be decoded."""


def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Decode any audio file to mono int16 at ``sample_rate`` (PyAV: FFmpeg's decoders and resampler)."""
    if not path.is_file():
        raise AudioFileError(f"audio file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioFileError(f"{path} has no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
            chunks = []
            for frame in container.decode(audio=0):
                chunks.extend(resampler.resample(frame))
            chunks.extend(resampler.resample(None))
    except av.error.FFmpegError as error:
        raise AudioFileError(f"cannot decode {path}: {error}") from None
    if not chunks:
        raise AudioFileError(f"{path} contains no audio")
    return np.concatenate([chunk.to_ndarray().reshape(-1) for chunk in chunks]).astype(np.int16)
