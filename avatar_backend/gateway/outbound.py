"""The per-session outbound queue: drops the oldest video frames, never anything else.

A client that reads slower than frames are made must not slow the worker or other sessions, so frames are
put without waiting; when ``max_frames`` are already waiting, the oldest one is dropped. Audio echo, events,
stats and acks are never dropped (a gap in them would break the client's clock or hide an answer); their
backlog is bounded in bytes instead, and :class:`OutboundOverflow` tells the session to give up on a client
that stopped reading altogether.

Messages leave in the order they were put (minus dropped frames).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from typing import Generic, TypeVar

__all__ = ["OutboundOverflow", "OutboundQueue"]

T = TypeVar("T")


class OutboundOverflow(Exception):
    """More never-dropped bytes are waiting than the queue may hold."""


class OutboundQueue(Generic[T]):
    def __init__(self, max_frames: int, max_undroppable_bytes: int):
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.max_frames = max_frames
        self.max_undroppable_bytes = max_undroppable_bytes
        # Two lanes, merged by a shared sequence number: dropping the oldest frame is then O(1).
        self._frames: collections.deque[tuple[int, T]] = collections.deque()
        self._others: collections.deque[tuple[int, T, int]] = collections.deque()
        self._sequence = itertools.count()
        self._undroppable_bytes = 0
        self._wakeup = asyncio.Event()
        self._closed = False
        self.frames_dropped = 0

    def __len__(self) -> int:
        return len(self._frames) + len(self._others)

    @property
    def closed(self) -> bool:
        return self._closed

    def put_frame(self, message: T) -> bool:
        """Queue a video frame; returns True when the oldest waiting frame was dropped to make room."""
        if self._closed:
            return False
        dropped = len(self._frames) >= self.max_frames
        if dropped:
            self._frames.popleft()
            self.frames_dropped += 1
        self._frames.append((next(self._sequence), message))
        self._wakeup.set()
        return dropped

    def put(self, message: T, size: int = 0) -> None:
        """Queue a message that is never dropped; ``size`` (bytes) counts against the backlog bound."""
        if self._closed:
            return
        if self._undroppable_bytes + size > self.max_undroppable_bytes:
            raise OutboundOverflow(
                f"{self._undroppable_bytes + size} bytes of audio and events wait for a client that is not reading")
        self._others.append((next(self._sequence), message, size))
        self._undroppable_bytes += size
        self._wakeup.set()

    def close(self, *, discard_frames: bool = False) -> None:
        """No more messages; :meth:`get` returns what is queued (frames too, unless discarded), then None."""
        self._closed = True
        if discard_frames:
            self._frames.clear()
        self._wakeup.set()

    async def get(self) -> tuple[T, bool] | None:
        """The next message and whether it is a frame; None once closed and empty."""
        while True:
            item = self._pop()
            if item is not None:
                return item
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()

    def _pop(self) -> tuple[T, bool] | None:
        frames, others = self._frames, self._others
        if frames and (not others or frames[0][0] < others[0][0]):
            return frames.popleft()[1], True
        if others:
            _, message, size = others.popleft()
            self._undroppable_bytes -= size
            return message, False
        return None
