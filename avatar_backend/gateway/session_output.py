"""Media out of one session: the worker's output turned into the client's messages.

A frame block becomes the AudioEcho of its audio and one VideoFrame per frame, encoded in the thread pool,
in order. Times: the worker counts the session's timeline in 16 kHz samples, and every block starts on a
whole frame, so frames are numbered on the timeline and only frame numbers, never rounded sample counts, are
converted to the session's clock (exact integer arithmetic, see media/clock.py). After an interrupt the
timeline continues from the player's position, so the block's own start is what places its frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Executor

import numpy as np

from avatar_backend.media.clock import FrameClock
from avatar_backend.media.encoders import EncodedFrame, FrameEncoder
from avatar_backend.media.resample import MODEL_SAMPLE_RATE
from avatar_backend.proto_gen import converse_pb2, worker_pb2

from .session_stats import session_event

__all__ = ["MediaOutput"]


def _pcm16_bytes(pcm: np.ndarray) -> bytes:
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


class MediaOutput:
    """Builds a session's outgoing messages from the worker's output (one per session)."""

    def __init__(self, clock: FrameClock, encoder: FrameEncoder, encode_pool: Executor, video_codec: int):
        self.clock = clock
        self._encoder = encoder
        self._encode_pool = encode_pool
        self._video_codec = video_codec
        self._ratio = clock.sample_rate // MODEL_SAMPLE_RATE   # session samples per timeline sample (1 or 3)
        self.timeline_samples_per_frame = MODEL_SAMPLE_RATE // clock.fps
        self._gap_ms_total = 0

    # -- the clock ------------------------------------------------------------------------------------------

    def timeline_frame(self, timeline_sample: int) -> int:
        """The frame number on the session clock of a (frame-aligned) place on the worker's timeline."""
        return timeline_sample // self.timeline_samples_per_frame

    def timeline_pts(self, timeline_sample: int) -> int:
        return self.clock.pts(self.timeline_frame(timeline_sample))

    def session_samples(self, timeline_samples: int) -> int:
        """A count (not a place) of timeline samples in session samples."""
        return timeline_samples * self._ratio

    def played_until_on_timeline(self, played_until: int, max_frame: int) -> int:
        """The first whole frame the player has not seen yet, as a place on the worker's timeline."""
        frame = min(-(-played_until * self.clock.fps // self.clock.sample_rate), max_frame)
        return frame * self.timeline_samples_per_frame

    # -- messages -------------------------------------------------------------------------------------------

    def echo(self, block: worker_pb2.FrameBlock, pcm: memoryview) -> converse_pb2.ServerMessage:
        """The audio the block's frames were made from, where it starts on the session clock."""
        echo = converse_pb2.AudioEcho(start=self.timeline_pts(block.audio_start), sample_rate=MODEL_SAMPLE_RATE,
                                      pcm16=_pcm16_bytes(np.frombuffer(pcm, dtype=np.float32)))
        return converse_pb2.ServerMessage(audio_echo=echo)

    async def frames(self, block: worker_pb2.FrameBlock, rgb: memoryview) -> AsyncIterator[converse_pb2.ServerMessage]:
        """The block's frames as VideoFrame messages, in order, each as soon as it and those before it are
        encoded (all are encoded in the pool at once)."""
        n, height, width = block.num_frames, block.height, block.width
        frames = np.frombuffer(rgb, dtype=np.uint8).reshape(n, height, width, 3)
        loop = asyncio.get_running_loop()
        encoding = [loop.run_in_executor(self._encode_pool, self._encoder.encode, frames[k]) for k in range(n)]
        for k, pending in enumerate(encoding):
            yield self._frame_message(block, k, await pending)

    def _frame_message(self, block: worker_pb2.FrameBlock, k: int,
                       encoded: EncodedFrame) -> converse_pb2.ServerMessage:
        local = self.timeline_frame(block.audio_start) + k
        start, end = self.clock.audio_slice(local)
        # The block's voice comes first and silence after it, so a frame speaks when its slice starts in it,
        # unless there the voice part holds a pause between two utterances.
        offset = k * self.timeline_samples_per_frame
        sample = block.audio_start + offset
        speaking = offset < block.voice_samples and not any(p.start <= sample < p.end for p in block.pauses)
        return converse_pb2.ServerMessage(frame=converse_pb2.VideoFrame(
            index=block.first_frame_index + k, pts=start, pts_us=self.clock.pts_us(local), codec=self._video_codec,
            width=block.width, height=block.height, keyframe=encoded.keyframe, data=encoded.data,
            audio_start=start, audio_end=end, block_index=block.block_index, speaking=speaking,
        ))

    def gap_event(self, gap_samples: int) -> converse_pb2.ServerMessage:
        """AUDIO_GAP for silence the worker put inside an utterance (one per stall, so no rate limit)."""
        gap_ms = gap_samples * 1000 // MODEL_SAMPLE_RATE
        self._gap_ms_total += gap_ms
        return session_event(converse_pb2.EVENT_CODE_AUDIO_GAP,
                             f"the voice stalled beyond the jitter budget: {gap_ms} ms of silence went inside the "
                             f"utterance ({self._gap_ms_total} ms in this session)",
                             gap_ms=gap_ms, gap_samples=self.session_samples(gap_samples),
                             total_ms=self._gap_ms_total)

    def utterance_event(self, done: worker_pb2.UtteranceDone) -> converse_pb2.ServerMessage:
        return session_event(converse_pb2.EVENT_CODE_UTTERANCE_COMPLETE, "all audio of the utterance has been generated",
                             timeline_end=self.session_samples(done.timeline_end))

    def interrupt_ack(self, done: worker_pb2.InterruptDone, dropped_in_gateway: int) -> converse_pb2.ServerMessage:
        """The InterruptAck: which frames and echoed audio the new video replaces, on the session clock."""
        generated_until = self.timeline_pts(done.generated_until)
        replace_from = self.timeline_pts(done.replace_from)
        return converse_pb2.ServerMessage(interrupt_ack=converse_pb2.InterruptAck(
            generated_until=generated_until,
            dropped_samples=self.session_samples(done.dropped_samples + dropped_in_gateway),
            next_frame_index=done.next_frame_index, replace_from_pts=replace_from,
            played_until=self.timeline_pts(done.played_until), unheard_samples=generated_until - replace_from,
        ))
