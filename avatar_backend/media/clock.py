"""The session's A/V clock: video frame times on the audio timeline, in exact integer arithmetic.

The clock of a session is its audio sample count at the session's rate, from 0 at the session's first
sample. Frame ``n`` at ``fps`` frames per second starts at exactly ``n / fps`` seconds; each unit below is
that instant rounded down (``n * rate // fps`` samples, ``n * 1_000_000 // fps`` microseconds), so the error
never exceeds one unit and never accumulates, however long the session.

Derive every time from the frame index at the rate it is wanted in. Rescaling a time that was already
rounded (say 16 kHz samples to 48 kHz) is off by up to a few samples against the direct computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["FrameClock", "rescale_samples", "samples_to_us"]

_US_PER_SECOND: Final = 1_000_000


def samples_to_us(samples: int, sample_rate: int) -> int:
    """Microseconds at ``samples`` on a ``sample_rate`` clock, rounded down."""
    return samples * _US_PER_SECOND // sample_rate


def rescale_samples(samples: int, from_rate: int, to_rate: int) -> int:
    """The same instant on a ``to_rate`` clock, rounded down (exact when the rates divide evenly)."""
    return samples * to_rate // from_rate


@dataclass(frozen=True, slots=True)
class FrameClock:
    """Maps video frame indices to the audio clock of a session (``sample_rate`` Hz, ``fps`` frames/s)."""

    sample_rate: int
    fps: int

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.fps <= 0:
            raise ValueError(f"sample rate and fps must be positive, got {self.sample_rate} Hz, {self.fps} fps")

    def pts(self, frame_index: int) -> int:
        """Presentation time of the frame, in samples."""
        return frame_index * self.sample_rate // self.fps

    def pts_us(self, frame_index: int) -> int:
        """Presentation time of the frame, in microseconds."""
        return frame_index * _US_PER_SECOND // self.fps

    def audio_slice(self, frame_index: int) -> tuple[int, int]:
        """The samples ``[start, end)`` the frame was generated from: from its pts to the next frame's."""
        return self.pts(frame_index), self.pts(frame_index + 1)

    def frame_at(self, sample: int) -> int:
        """The frame on screen when the audio reaches ``sample``: the last frame with ``pts <= sample``."""
        # pts(n) <= s  <=>  n * rate // fps <= s  <=>  n * rate < (s + 1) * fps.
        return ((sample + 1) * self.fps - 1) // self.sample_rate

    def frames_before(self, sample: int) -> int:
        """How many frames start before ``sample`` (the frames that audio ``[0, sample)`` covers)."""
        # pts(n) < s  <=>  n * rate / fps < s  <=>  n * rate < s * fps.
        return (sample * self.fps + self.sample_rate - 1) // self.sample_rate
