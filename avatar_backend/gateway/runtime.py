"""What every request handler of the gateway shares: the worker link and its state, the data directory,
the limits, the live sessions and the encoding threads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from avatar_backend.proto_gen import worker_pb2
from avatar_backend.store import DataDir

from .capabilities import ModelCapabilities
from .limits import Limits
from .status import NPC_RESOURCE, RpcFailure

__all__ = ["GatewayRuntime", "LiveSession", "SessionRegistry", "WorkerLinkLike", "WorkerStatus"]

log = logging.getLogger(__name__)

# How long a client should wait before retrying when every session slot is taken.
SESSIONS_FULL_RETRY_AFTER_MS = 2000


class WorkerLinkLike(Protocol):
    """The part of worker.link.GatewayLink the gateway uses (tests wrap the real one to see what was sent)."""

    async def request(self, msg: worker_pb2.ToWorker, payloads: Any = (), timeout: float | None = 10.0
                      ) -> tuple[worker_pb2.FromWorker, list[memoryview]]: ...

    def send(self, msg: worker_pb2.ToWorker, payloads: Any = ()) -> None: ...

    def subscribe(self, session_id: str) -> asyncio.Queue: ...

    def unsubscribe(self, session_id: str) -> None: ...


class LiveSession(Protocol):
    npc_id: str

    def drain(self) -> None: ...


@dataclass
class WorkerStatus:
    """Whether the worker can take sessions, and what its model accepts (None until it first answered)."""

    ready: bool = False
    info: worker_pb2.WorkerInfo | None = None
    capabilities: ModelCapabilities | None = None
    not_ready_reason: str = "the generator worker is starting"

    def set_ready(self, info: worker_pb2.WorkerInfo) -> None:
        self.info = info
        self.capabilities = ModelCapabilities.from_worker_info(info)
        self.ready = True

    def set_not_ready(self, reason: str) -> None:
        self.ready = False
        self.not_ready_reason = reason

    def require_ready(self) -> ModelCapabilities:
        """The model's capabilities; RpcFailure(UNAVAILABLE) while the worker is not ready."""
        if not self.ready or self.capabilities is None:
            raise RpcFailure(grpc.StatusCode.UNAVAILABLE, f"{self.not_ready_reason}; retry shortly",
                             retry_after_ms=1000)
        return self.capabilities


class SessionRegistry:
    """Live Converse sessions by NPC: one session per NPC, at most ``max_sessions``, none while draining."""

    def __init__(self, max_sessions: int):
        self.max_sessions = max_sessions
        self.draining = False
        self._by_npc: dict[str, LiveSession] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._by_npc)

    def is_live(self, npc_id: str) -> bool:
        return npc_id in self._by_npc

    def admit(self, session: LiveSession) -> None:
        if self.draining:
            raise RpcFailure(grpc.StatusCode.UNAVAILABLE, "server is draining", retry_after_ms=1000)
        if session.npc_id in self._by_npc:
            raise RpcFailure(grpc.StatusCode.ABORTED,
                             f"npc_id: NPC {session.npc_id!r} is already in a live session (one session per NPC)",
                             resource=(NPC_RESOURCE, session.npc_id))
        if len(self._by_npc) >= self.max_sessions:
            raise RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"all {self.max_sessions} session slots are in use; retry later",
                             retry_after_ms=SESSIONS_FULL_RETRY_AFTER_MS)
        self._by_npc[session.npc_id] = session
        self._empty.clear()

    def release(self, session: LiveSession) -> None:
        if self._by_npc.get(session.npc_id) is session:
            del self._by_npc[session.npc_id]
        if not self._by_npc:
            self._empty.set()

    def drain_all(self) -> int:
        """Refuse new sessions and tell every live one to end; returns how many were live."""
        self.draining = True
        sessions = list(self._by_npc.values())
        for session in sessions:
            session.drain()
        return len(sessions)

    async def wait_empty(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


@dataclass
class GatewayRuntime:
    link: WorkerLinkLike
    data_dir: DataDir
    limits: Limits
    worker: WorkerStatus
    sessions: SessionRegistry
    encode_pool: ThreadPoolExecutor
    version: str
    # Worker requests: most answer in milliseconds, but the worker only reads between blocks (about a
    # second on CPU), and opening an NPC may load its memory and encode the character first.
    request_timeout_s: float = 30.0
    open_timeout_s: float = 120.0
    background: set[asyncio.Task] = field(default_factory=set)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        """Run ``coro`` to completion even if the request that started it is cancelled."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def wait_background(self, timeout: float) -> None:
        if self.background:
            await asyncio.wait(set(self.background), timeout=timeout)
