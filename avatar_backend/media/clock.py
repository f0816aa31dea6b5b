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

__all__ = ["FrameClock"]

_US_PER_SECOND: Final = 1_000_000


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
