"""Meters of a conversation as a client sees it: when the frames of an utterance have all arrived, how far
each frame's pts is from the audio it was made from, and how well the mouth follows the voice.
``avatar-backend say``, the benchmark and the tests share them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from avatar_backend.media.mouth import measure_mouth_openness, mouth_from_audio
from avatar_backend.proto_gen import converse_pb2

__all__ = ["AvSyncCheck", "LipSync", "LipSyncMeter", "UtteranceWatch"]


class UtteranceWatch:
    """Decides when the frames covering the whole utterance have arrived.

    The utterance's end on the session clock comes from the server's UTTERANCE_COMPLETE event
    (``details["timeline_end"]``); until then it is estimated as the first speaking frame (the voice starts
    with its block) plus the voice sent. The watch is done once a received frame reaches that end.
    """

    def __init__(self, samples_per_frame: float) -> None:
        self.samples_per_frame = samples_per_frame
        self.voice_samples_sent: int | None = None  # set once the end of utterance has been sent
        self.voice_start: int | None = None
        self.reported_end: int | None = None
        self.covered_until = 0  # session clock sample just after the last frame received

    def end_sent(self, voice_samples_sent: int) -> None:
        self.voice_samples_sent = voice_samples_sent

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
        if self.voice_samples_sent is None or self.voice_start is None:
            return None
        return self.voice_start + self.voice_samples_sent

    @property
    def done(self) -> bool:
        end = self.utterance_end
        return self.voice_samples_sent is not None and end is not None and self.covered_until >= end


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


@dataclass(frozen=True)
class LipSync:
    """How the mouth on the received frames followed the echoed voice."""

    r: float                  # Pearson r: mouth opening measured on the frames vs the opening the voice implies
    frames: int               # frames scored
    speaking_frames: int      # of which the voice implies an open mouth
    opening_speaking: float   # mean measured opening while speaking ...
    opening_silent: float     # ... and in silence (a mouth that moves with the voice opens more while speaking)


class LipSyncMeter:
    """Scores lip sync with no ground truth but the voice: the opening the voice implies for each frame (the
    same function that drives the tiny model's training renderer) against the opening measured on the frame.

    ``mouth_region`` is the mouth's box (x0, y0, x1, y1) as fractions of the frame, as the character's
    neutral still shows it; it is grown by ``grow`` of its size to allow for head motion. Only that crop of
    each frame is kept, so the meter's memory stays small over a long session.
    """

    def __init__(self, mouth_region: tuple[float, float, float, float], width: int, height: int, fps: int,
                 session_rate: int, grow: float = 0.3):
        x0, y0, x1, y1 = mouth_region
        gx, gy = (x1 - x0) * grow, (y1 - y0) * grow
        self.box = (max(0, int((x0 - gx) * width)), max(0, int((y0 - gy) * height)),
                    min(width, int(np.ceil((x1 + gx) * width))), min(height, int(np.ceil((y1 + gy) * height))))
        self.fps, self.session_rate = fps, session_rate
        self._crops: dict[int, tuple[int, np.ndarray]] = {}   # frame index -> (pts, mouth crop)
        self._echo: dict[int, np.ndarray] = {}                # echo start (16 kHz samples) -> pcm

    def frame(self, frame: converse_pb2.VideoFrame, rgb: np.ndarray) -> None:
        x0, y0, x1, y1 = self.box
        self._crops[frame.index] = (frame.pts, rgb[y0:y1, x0:x1].copy())

    def echo(self, echo: converse_pb2.AudioEcho) -> None:
        start = round(echo.start * echo.sample_rate / self.session_rate)
        self._echo[start] = np.frombuffer(echo.pcm16, "<i2").astype(np.float32) / 32768.0
        self._echo_rate = echo.sample_rate

    def score(self) -> LipSync | None:
        """None until there are frames and voice to compare."""
        if not self._crops or not self._echo:
            return None
        rate = self._echo_rate
        end = max(start + len(pcm) for start, pcm in self._echo.items())
        voice = np.zeros(end, np.float32)
        for start, pcm in self._echo.items():
            voice[start: start + len(pcm)] = pcm
        indices = sorted(self._crops)
        first_pts = self._crops[indices[0]][0]
        offset = round(first_pts * rate / self.session_rate)
        # Frame i shows the voice from its pts on; frames a slow reader lost leave gaps in the indices.
        span = indices[-1] - indices[0] + 1
        implied_all, _ = mouth_from_audio(voice[offset:], span, sample_rate=rate, fps=self.fps)
        implied = implied_all[np.asarray(indices) - indices[0]]
        count = len(indices)
        crops = np.stack([self._crops[i][1] for i in indices])
        measured = measure_mouth_openness(crops, (0, 0, crops.shape[2], crops.shape[1]))
        speaking = implied > 0.1
        r = float(np.corrcoef(implied, measured)[0, 1]) if implied.std() > 0 and measured.std() > 0 else 0.0
        return LipSync(r=r, frames=count, speaking_frames=int(speaking.sum()),
                       opening_speaking=float(measured[speaking].mean()) if speaking.any() else 0.0,
                       opening_silent=float(measured[~speaking].mean()) if (~speaking).any() else 0.0)
