"""Write what a Converse stream sends back into an MP4: the frames at their pts, the echoed audio as sound.

Both tracks are placed on the session's audio clock (time 0 = the session's first sample), so the file plays
in sync exactly as an engine would show it: each VideoFrame at ``pts``, the AudioEcho samples back to back
with silence where none was echoed. Missing frames leave the previous frame on screen.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import simplejpeg

from avatar_backend.media.resample import MODEL_SAMPLE_RATE
from avatar_backend.proto_gen import converse_pb2

__all__ = ["Mp4Recorder", "RecordingSummary", "decode_frame", "preferred_video_encoder"]

#: AudioEcho carries 16 kHz PCM (converse.proto); the sound track keeps that rate.
ECHO_SAMPLE_RATE = MODEL_SAMPLE_RATE


def preferred_video_encoder() -> str:
    """H.264 (libx264) when PyAV's FFmpeg has it, else MPEG-4 Part 2, which every build has."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


@dataclass(frozen=True)
class RecordingSummary:
    path: Path
    frames_written: int
    frames_skipped: int       # frames whose pts was not after the previous frame's
    audio_seconds: float
    video_seconds: float
    width: int
    height: int
    fps: int
    video_encoder: str
    audio_encoder: str


def decode_frame(frame: converse_pb2.VideoFrame, h264_decoder: av.CodecContext | None = None) -> np.ndarray:
    """The frame's pixels as an RGB uint8 array (height, width, 3)."""
    if frame.codec in (converse_pb2.VIDEO_CODEC_JPEG, converse_pb2.VIDEO_CODEC_UNSPECIFIED):
        return simplejpeg.decode_jpeg(frame.data, colorspace="RGB")
    if frame.codec == converse_pb2.VIDEO_CODEC_RAW_RGB:
        return np.frombuffer(frame.data, dtype=np.uint8).reshape(frame.height, frame.width, 3)
    if frame.codec == converse_pb2.VIDEO_CODEC_H264:
        if h264_decoder is None:
            raise ValueError("an H.264 frame needs the stream's decoder")
        pictures = [p for packet in h264_decoder.parse(frame.data) for p in h264_decoder.decode(packet)]
        if not pictures:
            raise ValueError(f"H.264 access unit of frame {frame.index} decoded to no picture")
        return pictures[-1].to_ndarray(format="rgb24")
    raise ValueError(f"unknown video codec {frame.codec}")


class Mp4Recorder:
    """Streams received frames and echoed audio into an MP4 file as they arrive.

    ``session_sample_rate`` and ``fps`` are the session's (SessionAccepted.audio.sample_rate and
    .video.fps); ``width`` and ``height`` the video size. Feed every received item to :meth:`add` (items
    other than VideoFrame and AudioEcho are ignored), then call :meth:`close`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        session_sample_rate: int,
        fps: int,
        width: int,
        height: int,
        video_encoder: str | None = None,
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"MP4 video needs an even size, got {width}x{height}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.session_sample_rate = session_sample_rate
        self.fps = fps
        self.width = width
        self.height = height
        self.video_encoder = video_encoder or preferred_video_encoder()
        self._container = av.open(str(self.path), mode="w")
        options = {"preset": "veryfast", "crf": "20"} if self.video_encoder == "libx264" else {}
        self._video = self._container.add_stream(self.video_encoder, rate=fps, options=options)
        self._video.width = width
        self._video.height = height
        self._video.pix_fmt = "yuv420p"
        self._video.codec_context.time_base = Fraction(1, fps)
        if self.video_encoder == "mpeg4":
            self._video.codec_context.bit_rate = 2_000_000
        self._audio = self._container.add_stream("aac", rate=ECHO_SAMPLE_RATE, layout="mono")
        self._h264_decoder: av.CodecContext | None = None
        self._last_video_pts = -1
        self._frames_written = 0
        self._frames_skipped = 0
        self._audio_samples = 0  # written to the track, at ECHO_SAMPLE_RATE
        self._closed = False

    @classmethod
    def for_session(
        cls, path: str | Path, accepted: converse_pb2.SessionAccepted, video_encoder: str | None = None
    ) -> "Mp4Recorder":
        """A recorder with the size, fps and clock of an accepted session."""
        return cls(
            path,
            session_sample_rate=accepted.audio.sample_rate,
            fps=accepted.video.fps,
            width=accepted.video.width,
            height=accepted.video.height,
            video_encoder=video_encoder,
        )

    def __enter__(self) -> "Mp4Recorder":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add(self, item: object) -> np.ndarray | None:
        """Record a frame or an echo; for a frame written, its decoded RGB pixels (for other meters to reuse)."""
        if isinstance(item, converse_pb2.VideoFrame):
            return self.add_frame(item)
        if isinstance(item, converse_pb2.AudioEcho):
            self.add_audio(item)
        return None

    def add_frame(self, frame: converse_pb2.VideoFrame) -> np.ndarray | None:
        """Place the frame at its pts, rounded to the fps grid; a frame not after the last is skipped (None).
        Returns the decoded RGB pixels."""
        pts = round(frame.pts * self.fps / self.session_sample_rate)
        if pts <= self._last_video_pts:
            self._frames_skipped += 1
            return None
        if frame.codec == converse_pb2.VIDEO_CODEC_H264 and self._h264_decoder is None:
            self._h264_decoder = av.CodecContext.create("h264", "r")
        rgb = decode_frame(frame, self._h264_decoder)
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if (picture.width, picture.height) != (self.width, self.height):
            picture = picture.reformat(width=self.width, height=self.height)
        picture.pts = pts
        picture.time_base = Fraction(1, self.fps)
        self._mux(self._video.encode(picture))
        self._last_video_pts = pts
        self._frames_written += 1
        return rgb

    def add_audio(self, echo: converse_pb2.AudioEcho) -> None:
        """Append the echoed samples at their place; gaps become silence, overlaps are trimmed."""
        samples = np.frombuffer(echo.pcm16, dtype="<i2").astype(np.int16)
        rate = echo.sample_rate or ECHO_SAMPLE_RATE
        if rate != ECHO_SAMPLE_RATE and samples.size:
            length = round(samples.size * ECHO_SAMPLE_RATE / rate)
            positions = np.linspace(0, samples.size - 1, length)
            samples = np.interp(positions, np.arange(samples.size), samples).astype(np.int16)
        start = round(echo.start * ECHO_SAMPLE_RATE / self.session_sample_rate)
        if start > self._audio_samples:
            self._write_audio(np.zeros(start - self._audio_samples, dtype=np.int16))
        elif start < self._audio_samples:
            samples = samples[self._audio_samples - start :]
        if samples.size:
            self._write_audio(samples)

    def close(self) -> RecordingSummary:
        """Flush the encoders and finish the file."""
        if not self._closed:
            self._closed = True
            self._mux(self._video.encode(None))
            self._mux(self._audio.encode(None))
            self._container.close()
        return RecordingSummary(
            path=self.path,
            frames_written=self._frames_written,
            frames_skipped=self._frames_skipped,
            audio_seconds=self._audio_samples / ECHO_SAMPLE_RATE,
            video_seconds=(self._last_video_pts + 1) / self.fps if self._frames_written else 0.0,
            width=self.width,
            height=self.height,
            fps=self.fps,
            video_encoder=self.video_encoder,
            audio_encoder="aac",
        )

    def _write_audio(self, samples: np.ndarray) -> None:
        chunk = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        chunk.sample_rate = ECHO_SAMPLE_RATE
        chunk.pts = self._audio_samples
        chunk.time_base = Fraction(1, ECHO_SAMPLE_RATE)
        self._mux(self._audio.encode(chunk))
        self._audio_samples += samples.size

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            self._container.mux(packet)
