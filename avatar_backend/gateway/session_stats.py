"""What a session counts and how it tells the client: SessionStats, and in-band events at a bounded rate.

Events that can repeat without limit (frames dropped, garbage audio) go through :class:`RateLimitedEvent`:
at most one SessionEvent per interval, carrying the count since the last one and the total.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from avatar_backend.media.jitter import JitterStats
from avatar_backend.media.resample import MODEL_SAMPLE_RATE
from avatar_backend.proto_gen import converse_pb2, worker_pb2

from .capabilities import public_devices

__all__ = ["EVENT_MIN_INTERVAL_S", "RateLimitedEvent", "SessionMeter", "session_event"]

EVENT_MIN_INTERVAL_S = 1.0


def session_event(code: int, message: str, **details: object) -> converse_pb2.ServerMessage:
    return converse_pb2.ServerMessage(event=converse_pb2.SessionEvent(
        code=code, message=message, details={k: str(v) for k, v in details.items()}))


class RateLimitedEvent:
    """Counts occurrences and turns them into at most one SessionEvent per interval."""

    def __init__(self, code: int, describe: Callable[[int, int], str]):
        self._code = code
        self._describe = describe  # (count since last event, total) -> message
        self._pending = 0
        self._total = 0
        self._last_sent = -math.inf

    def note(self, count: int = 1) -> None:
        self._pending += count
        self._total += count

    def take(self, now: float) -> converse_pb2.ServerMessage | None:
        if not self._pending or now - self._last_sent < EVENT_MIN_INTERVAL_S:
            return None
        count, self._pending, self._last_sent = self._pending, 0, now
        return session_event(self._code, self._describe(count, self._total), count=count, total=self._total)


class SessionMeter:
    """The numbers of SessionStats: frames made and sent, the last block's compute time, voice queued at the
    worker, device telemetry and the first frame's latency."""

    def __init__(self) -> None:
        self.config_received_at = 0.0
        self.first_frame_latency_ms = 0.0
        self.frames_sent = 0
        self.blocks_generated = 0
        self._frames_made_since_stats = 0
        self._window_start = time.monotonic()
        self._block_compute_ms = 0.0
        self._audio_queued_samples = 0
        self._devices: list[converse_pb2.DeviceTelemetry] = []

    def start_window(self) -> None:
        self._window_start = time.monotonic()

    def frame_sent(self) -> None:
        self.frames_sent += 1
        if self.frames_sent == 1:
            self.first_frame_latency_ms = (time.monotonic() - self.config_received_at) * 1000

    def block_made(self, block: worker_pb2.FrameBlock) -> None:
        self._frames_made_since_stats += block.num_frames
        self.blocks_generated = max(self.blocks_generated, block.block_index + 1)
        self._block_compute_ms = block.compute_ms
        self._audio_queued_samples = block.audio_queued_samples
        if block.devices:
            self._devices = public_devices(block.devices)

    def stats_message(self, audio: JitterStats, frames_dropped: int, queue_depth: int) -> converse_pb2.ServerMessage:
        """SessionStats for the window since the last call (generated_fps is per window)."""
        now = time.monotonic()
        fps = self._frames_made_since_stats / max(now - self._window_start, 1e-6)
        self._frames_made_since_stats, self._window_start = 0, now
        return converse_pb2.ServerMessage(stats=converse_pb2.SessionStats(
            generated_fps=fps, frames_sent=self.frames_sent, frames_dropped=frames_dropped,
            block_compute_ms=self._block_compute_ms, first_frame_latency_ms=self.first_frame_latency_ms,
            outbound_queue_depth=queue_depth, audio_queued_ms=self._audio_queued_samples * 1000 / MODEL_SAMPLE_RATE,
            audio=converse_pb2.AudioCounters(
                received=audio.received, duplicates=audio.duplicates, late=audio.late, lost=audio.lost,
                concealed_plc=audio.concealed_plc, recovered_fec=audio.recovered_fec, garbage=audio.garbage,
            ),
            devices=self._devices, blocks_generated=self.blocks_generated,
        ))
