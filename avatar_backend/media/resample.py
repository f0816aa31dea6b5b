"""Streaming sample-rate conversion of mono audio to the model's 16 kHz (or any other rate).

The filtering is libswresample's, through PyAV. A :class:`Resampler` keeps the filter state between calls,
so feeding a stream in chunks of any size gives the same samples as converting it in one call; only the
filter's latency is held back until :meth:`Resampler.flush`.
"""

from __future__ import annotations

from typing import Final

import av
import numpy as np

__all__ = ["MODEL_SAMPLE_RATE", "Resampler", "resample"]

#: The rate the generator's audio front end expects.
MODEL_SAMPLE_RATE: Final = 16000

_INT16_SCALE: Final = np.float32(1.0 / 32768.0)


def _as_float32_mono(pcm: np.ndarray, *, copy: bool = False) -> np.ndarray:
    pcm = np.asarray(pcm)
    if pcm.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got shape {pcm.shape}")
    if pcm.dtype == np.int16:
        return pcm.astype(np.float32) * _INT16_SCALE
    if copy:
        return np.array(pcm, dtype=np.float32)
    return np.ascontiguousarray(pcm, dtype=np.float32)


class Resampler:
    """Converts one mono stream from ``input_rate`` to ``output_rate`` (float32 out; float or int16 in).

    Not thread-safe: one resampler per stream.
    """

    def __init__(self, input_rate: int, output_rate: int = MODEL_SAMPLE_RATE) -> None:
        if input_rate <= 0 or output_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {input_rate} -> {output_rate}")
        self.input_rate = input_rate
        self.output_rate = output_rate
        self._swr = (
            None
            if input_rate == output_rate
            else av.AudioResampler(format="flt", layout="mono", rate=output_rate)
        )

    @property
    def is_identity(self) -> bool:
        """True when the rates are equal and samples pass through unchanged."""
        return self._swr is None

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """Convert the next chunk of the stream; returns what is ready (a little is held back)."""
        if self._swr is None:
            # A copy, so that the caller may reuse its buffer.
            return _as_float32_mono(pcm, copy=True)
        pcm = _as_float32_mono(pcm)
        if pcm.size == 0:
            return np.zeros(0, dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(pcm[np.newaxis, :], format="flt", layout="mono")
        frame.sample_rate = self.input_rate
        return self._collect(self._swr.resample(frame))

    def flush(self) -> np.ndarray:
        """End of stream: return the samples still held in the filter. The resampler can then start a new
        stream."""
        if self._swr is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._collect(self._swr.resample(None))
        # libswresample cannot take input after a flush; a fresh context starts the next stream.
        self._swr = av.AudioResampler(format="flt", layout="mono", rate=self.output_rate)
        return tail

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, dtype=np.float32)
        chunks = [frame.to_ndarray()[0] for frame in frames]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def resample(pcm: np.ndarray, input_rate: int, output_rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """Convert a whole signal in one call (float32 out)."""
    resampler = Resampler(input_rate, output_rate)
    head = resampler.process(pcm)
    tail = resampler.flush()
    return np.concatenate([head, tail]) if tail.size else head
