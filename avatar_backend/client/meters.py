"""Meters of a conversation as a client sees it: when the frames of an utterance have all arrived, and how
far each frame's pts is from the audio it was made from. ``avatar-backend say``, the benchmark and the tests
share them."""

from __future__ import annotations

from collections.abc import Mapping

from avatar_backend.proto_gen import converse_pb2

__all__ = ["AvSyncCheck", "UtteranceWatch"]


class UtteranceWatch:
    """Decides when the frames covering the whole utterance have arrived.

    The utterance's end on the session clock comes from the server's UTTERANCE_COMPLETE event
    (``details["timeline_end"]``); until then it is estimated as the first speaking frame (the voice starts
    with its block) plus the voice sent. The watch is done once a received frame reaches that end.
    """

    def __init__(self, samples_per_frame: float) -> None:
        self.samples_per_frame = samples_per_frame
        self.samples_sent: int | None = None  # set once the end of utterance has been sent
        self.voice_start: int | None = None
        self.reported_end: int | None = None
        self.covered_until = 0  # session clock sample just after the last frame received

    def end_sent(self, samples_sent: int) -> None:
        self.samples_sent = samples_sent

    def frame(self, frame: converse_pb2.VideoFrame) -> None:
        if frame.speaking and self.voice_start is None:
            self.voice_start = frame.pts
        self.covered_until = max(self.covered_until, round(frame.pts + self.samples_per_frame))

    def utterance_complete(self, details: Mapping[str, str]) -> None:
        try:
            self.reported_end = round(float(details["timeline_end"]))
        except (KeyError, ValueError):
            pass

    @property
    def utterance_end(self) -> int | None:
        if self.reported_end is not None:
            return self.reported_end
        if self.samples_sent is None or self.voice_start is None:
            return None
        return self.voice_start + self.samples_sent

    @property
    def done(self) -> bool:
        end = self.utterance_end
        return self.samples_sent is not None and end is not None and self.covered_until >= end


class AvSyncCheck:
    """Measures how far each frame's pts is from the audio it was generated from.

    A block's AudioEcho arrives before its frames and starts where the block's audio starts, so frame k of
    the block was made from the audio at ``echo.start + k * samples_per_frame``. The pts comes from the
    gateway's frame clock; the two agree when A/V is in sync.
    """

    def __init__(self, samples_per_frame: float) -> None:
        self.samples_per_frame = samples_per_frame
        self._last_echo_start: int | None = None
        self._block_origin: dict[int, tuple[int, int]] = {}  # block_index -> (echo start, first frame index)

    def echo(self, echo: converse_pb2.AudioEcho) -> None:
        self._last_echo_start = echo.start

    def offset_samples(self, frame: converse_pb2.VideoFrame) -> float:
        if self._last_echo_start is None:
            return float(frame.pts) - float(frame.audio_start)  # no echo: the frame's own audio slice
        origin_start, origin_index = self._block_origin.setdefault(
            frame.block_index, (self._last_echo_start, frame.index)
        )
        return float(frame.pts) - (origin_start + (frame.index - origin_index) * self.samples_per_frame)
