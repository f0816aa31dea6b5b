"""The ZeroMQ link between the gateway and one generator worker: both ends.

Wire format (see proto/avatar/internal/v1/worker.proto): every message is multipart
``[envelope, payload_0, payload_1, ...]``; the envelope is a serialised ToWorker / FromWorker and bulk data
(PCM, RGB frames) travels in the payload parts, sent with ``copy=False`` and received as memoryviews over
ZeroMQ's own buffers, so neither end copies a frame block.

Sockets: the gateway binds a ROUTER, the worker connects a DEALER with a routing id unique to its process.
The worker announces itself with an unsolicited Pong (request_id 0) as soon as it connects; the gateway
routes everything to the most recent worker that said hello. A restarted worker is therefore just a new
hello on the same endpoint: the gateway fails whatever belonged to the previous one and carries on without
rebinding. ROUTER_MANDATORY turns "no worker connected" into an immediate error instead of a silent drop.

The default endpoint is ``ipc://<tmp>/avatar-backend-ipc-<gateway pid>-<random>/worker.sock``, in a private
folder the gateway removes when its link closes. A gateway killed with SIGKILL cannot; the next gateway that
starts removes such folders whose owner pid is no longer running (never a live gateway's).

No torch here: the gateway imports this module.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from avatar_backend.proto_gen import worker_pb2
from avatar_backend.store import process_alive

__all__ = [
    "GatewayLink",
    "Payload",
    "SessionItem",
    "WorkerLink",
    "WorkerLinkError",
    "WorkerLost",
    "WorkerRequestError",
    "WorkerUnavailableError",
    "connectable_endpoint",
]

log = logging.getLogger(__name__)

# Anything exposing the buffer protocol: numpy arrays, bytes, memoryviews.
Payload = Any

# Bodies of FromWorker that belong to a session's event stream when they are not a request's reply.
_SESSION_BODIES = frozenset({"frame_block", "interrupt_done", "utterance_done", "error", "npc_closed", "npc_opened"})

# The gateway may queue this many messages for a worker that reads slowly before send() reports it stuck.
_GATEWAY_SNDHWM = 20_000
# The worker's frame blocks can be tens of MB each; a small bound keeps a stalled gateway from eating RAM.
_WORKER_SNDHWM = 64

IPC_DIR_PREFIX = "avatar-backend-ipc-"
IPC_SOCKET_NAME = "worker.sock"
_IPC_DIR_NAME = re.compile(re.escape(IPC_DIR_PREFIX) + r"(\d+)-[A-Za-z0-9_]+")
# What builds before the pid was in the name created: tempfile.mkdtemp(prefix="avatar-").
_LEGACY_IPC_DIR_NAME = re.compile(r"avatar-[A-Za-z0-9_]{8}")


class WorkerLinkError(Exception):
    """Base of the link's errors."""


class WorkerUnavailableError(WorkerLinkError):
    """The worker is not connected, died, or did not answer in time. Sessions end with UNAVAILABLE."""


class WorkerBusyError(WorkerUnavailableError):
    """The worker is alive but its input queue is full: back off, it is not being restarted."""


class WorkerRequestError(WorkerLinkError):
    """The worker answered a request with a WorkerError. ``code`` is a grpc.StatusCode name."""

    def __init__(self, code: str, message: str, session_id: str = ""):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.session_id = session_id


@dataclass(frozen=True)
class WorkerLost:
    """The last item of a session queue when the worker went away; the session should end UNAVAILABLE."""

    reason: str


# What a session queue yields: (FromWorker, payload memoryviews), and finally possibly a WorkerLost.
SessionItem = tuple[worker_pb2.FromWorker, list[memoryview]] | WorkerLost


def default_ipc_endpoint() -> str:
    """A fresh ipc:// endpoint in a private temporary directory (short, since ipc paths max out near 100)."""
    folder = tempfile.mkdtemp(prefix=f"{IPC_DIR_PREFIX}{os.getpid()}-")
    return f"ipc://{folder}/{IPC_SOCKET_NAME}"


def remove_stale_ipc_dirs(parent: str | None = None) -> list[str]:
    """Remove the ipc endpoint folders that killed gateways left in ``parent`` (default: the temp dir).

    A folder goes only when it is this user's, the pid in its name no longer runs and nothing listens on its
    socket (the second check covers a gateway whose pid this process cannot see, e.g. in another container
    sharing the temp dir). A folder of an older build (no pid in the name) goes when it holds only its socket
    and nothing listens on it. Returns the removed paths.
    """
    parent = parent or tempfile.gettempdir()
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            owned = _IPC_DIR_NAME.fullmatch(entry.name)
            if owned:
                stale = not process_alive(int(owned.group(1))) and not _listening(entry.path)
            elif _LEGACY_IPC_DIR_NAME.fullmatch(entry.name):
                # Not ours, or not only ours, unless it holds just the socket.
                stale = os.listdir(entry.path) == [IPC_SOCKET_NAME] and not _listening(entry.path)
            else:
                continue
        except OSError:
            continue
        if stale:
            shutil.rmtree(entry.path, ignore_errors=True)
            if not os.path.exists(entry.path):
                removed.append(entry.path)
    if removed:
        log.info("removed %d ipc folder(s) of gateways that are no longer running", len(removed))
    return removed


def _listening(folder: str) -> bool:
    """Whether something accepts connections on the folder's socket (anything unclear counts as yes)."""
    sock_path = os.path.join(folder, IPC_SOCKET_NAME)
    try:
        if not stat.S_ISSOCK(os.lstat(sock_path).st_mode):
            return True  # not a socket: not what a gateway leaves, so not ours to judge
    except FileNotFoundError:
        return False     # killed before it bound
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(sock_path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True
    finally:
        probe.close()
    return True


def connectable_endpoint(bound: str) -> str:
    """The address a local worker connects to for an endpoint the gateway bound (wildcard hosts -> loopback)."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if bound.startswith(wildcard):
            return "tcp://127.0.0.1:" + bound[len(wildcard):]
    if bound.startswith("tcp://[::]:"):
        return "tcp://[::1]:" + bound[len("tcp://[::]:"):]
    return bound


def _body_name(msg: Any) -> str:
    return msg.WhichOneof("body") or ""


def _frames(envelope: bytes, payloads: Iterable[Payload]) -> list[Any]:
    parts: list[Any] = [envelope]
    for p in payloads:
        # Non-contiguous arrays cannot be sent without a copy; make that copy explicit here, not in zmq.
        if isinstance(p, np.ndarray) and not p.flags["C_CONTIGUOUS"]:
            p = np.ascontiguousarray(p)
        parts.append(p)
    return parts


# ---------------------------------------------------------------------------------------------------------
# Gateway end
# ---------------------------------------------------------------------------------------------------------


class GatewayLink:
    """The gateway's end: requests with replies, one-way messages, and per-session event queues.

    Use inside one asyncio loop::

        link = GatewayLink()            # ipc:// in a temporary directory; or GatewayLink("tcp://*:5555")
        await link.start()
        queue = link.subscribe(session_id)          # before OpenNpc, so no early frame is missed
        reply, _ = await link.request(ToWorker(open_npc=...), timeout=30)
        link.send(ToWorker(push_audio=...), [pcm])  # one-way
        item = await queue.get()                    # (FromWorker, payloads) or WorkerLost
    """

    def __init__(self, endpoint: str | None = None, *, context: zmq.asyncio.Context | None = None):
        if not endpoint:
            remove_stale_ipc_dirs()
        self._requested_endpoint = endpoint or default_ipc_endpoint()
        self._owned_ipc_dir = None if endpoint else os.path.dirname(self._requested_endpoint[len("ipc://"):])
        self._context = context or zmq.asyncio.Context.instance()
        self._socket: zmq.asyncio.Socket | None = None
        self._endpoint = ""
        self._reader: asyncio.Task | None = None
        self._request_ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._sessions: dict[str, asyncio.Queue] = {}
        self._peer: bytes | None = None
        self._peer_pid = 0
        self._lost_reason = ""
        self._connected = asyncio.Event()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> "GatewayLink":
        if self._socket is not None:
            return self
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, _GATEWAY_SNDHWM)
        sock.setsockopt(zmq.RCVHWM, 0)  # never drop a frame block on the floor; the reader drains constantly
        sock.bind(self._requested_endpoint)
        self._socket = sock
        self._endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._reader = asyncio.get_running_loop().create_task(self._read_loop(), name="worker-link-reader")
        log.info("worker link listening on %s", self._endpoint)
        return self

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.worker_lost("the gateway closed the worker link")
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        if self._socket is not None:
            self._socket.close(linger=0)
        if self._owned_ipc_dir:
            shutil.rmtree(self._owned_ipc_dir, ignore_errors=True)

    async def __aenter__(self) -> "GatewayLink":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def endpoint(self) -> str:
        """The bound endpoint (a tcp port of 0 or * resolved), for logs."""
        return self._endpoint or self._requested_endpoint

    @property
    def context(self) -> zmq.asyncio.Context:
        """The ZeroMQ context of the gateway's socket (a worker on an inproc endpoint must use it too)."""
        return self._context

    @property
    def connect_endpoint(self) -> str:
        """The address a worker on this host connects to."""
        return connectable_endpoint(self.endpoint)

    @property
    def connected(self) -> bool:
        return self._peer is not None

    @property
    def worker_pid(self) -> int:
        """Process id the connected worker announced (0 when none)."""
        return self._peer_pid

    async def wait_connected(self, timeout: float | None = None) -> int:
        """Wait until a worker said hello; returns its pid. WorkerUnavailableError on timeout."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except asyncio.TimeoutError:
            raise WorkerUnavailableError(f"no worker connected to {self.endpoint} within {timeout:.1f}s") from None
        return self._peer_pid

    # -- sending --------------------------------------------------------------------------------------------

    def send(self, msg: worker_pb2.ToWorker, payloads: Sequence[Payload] = ()) -> None:
        """Send a one-way message now (never blocks). WorkerUnavailableError when no worker can take it."""
        self._send_now(msg, payloads)

    async def request(
        self, msg: worker_pb2.ToWorker, payloads: Sequence[Payload] = (), timeout: float | None = 10.0,
    ) -> tuple[worker_pb2.FromWorker, list[memoryview]]:
        """Send a request and wait for its reply.

        Raises WorkerUnavailableError (no worker, worker lost, or no reply within ``timeout`` seconds) and
        WorkerRequestError when the worker answered with a WorkerError.
        """
        request_id = next(self._request_ids)
        msg.request_id = request_id
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._send_now(msg, payloads)
            try:
                reply, parts = await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                raise WorkerUnavailableError(
                    f"the worker did not answer {_body_name(msg) or 'a request'} within {timeout:.1f}s") from None
        finally:
            self._pending.pop(request_id, None)
        if reply.WhichOneof("body") == "error":
            raise WorkerRequestError(reply.error.code, reply.error.message, reply.error.session_id)
        return reply, parts

    def _send_now(self, msg: worker_pb2.ToWorker, payloads: Sequence[Payload]) -> None:
        if self._socket is None or self._closed:
            raise WorkerUnavailableError("the worker link is not open")
        peer = self._peer
        if peer is None:
            # Why the last worker went, until the next one says hello: the same words as its sessions' end.
            raise WorkerUnavailableError(self._lost_reason or "no worker is connected")
        parts = [peer, *_frames(msg.SerializeToString(), payloads)]
        # DONTWAIT: the asyncio socket then completes (or fails) the send before returning, so one stuck
        # worker can never block the gateway's loop.
        future = self._socket.send_multipart(parts, flags=zmq.DONTWAIT, copy=False)
        if future.done() and future.exception() is not None:
            err = future.exception()
            if isinstance(err, zmq.Again):
                raise WorkerBusyError("the generator worker is not keeping up (its input queue is full)") from err
            if isinstance(err, zmq.ZMQError) and err.errno == zmq.EHOSTUNREACH:
                raise WorkerUnavailableError("the worker is not connected") from err
            raise WorkerUnavailableError(f"sending to the worker failed: {err}") from err

    # -- sessions -------------------------------------------------------------------------------------------

    def subscribe(self, session_id: str) -> asyncio.Queue:
        """The queue of a session's events: (FromWorker, payloads) items, a WorkerLost last if the worker dies.

        Unbounded on purpose: the worker must never wait for one slow session; the gateway's session task
        drains it and applies its own per-client limits.
        """
        queue = self._sessions.get(session_id)
        if queue is None:
            queue = self._sessions[session_id] = asyncio.Queue()
        return queue

    def unsubscribe(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    # -- failure ----------------------------------------------------------------------------------------------

    def worker_lost(self, reason: str) -> None:
        """Fail every pending request and end every session queue; the worker's state is gone.

        Idempotent. The link stays bound: the next worker that says hello is used from then on.
        """
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(WorkerUnavailableError(reason))
        sessions, self._sessions = self._sessions, {}
        for queue in sessions.values():
            queue.put_nowait(WorkerLost(reason))
        if pending or sessions:
            log.warning("worker lost (%s): failed %d request(s) and %d session(s)", reason, len(pending),
                        len(sessions))
        self._peer = None
        self._peer_pid = 0
        self._lost_reason = reason
        self._connected.clear()

    # -- receiving --------------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        assert self._socket is not None
        while True:
            try:
                frames = await self._socket.recv_multipart(copy=False)
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as err:
                if self._closed:
                    return
                log.error("worker link receive failed: %s", err)
                await asyncio.sleep(0.1)
                continue
            try:
                self._dispatch(frames)
            except Exception:
                log.exception("dropping a malformed message from the worker")

    def _dispatch(self, frames: list[zmq.Frame]) -> None:
        if len(frames) < 2:
            raise ValueError(f"expected [identity, envelope, ...], got {len(frames)} frame(s)")
        identity = frames[0].bytes
        msg = worker_pb2.FromWorker.FromString(frames[1].bytes)
        payloads = [f.buffer for f in frames[2:]]
        body = _body_name(msg)

        if msg.request_id == 0 and body == "pong":
            self._hello(identity, msg.pong.pid)
            return
        if identity != self._peer:
            # A message from a worker we already declared lost (or never heard say hello): its sessions and
            # requests are gone, so nothing can use it.
            log.debug("ignoring %s from a previous worker", body)
            return
        if msg.request_id:
            future = self._pending.pop(msg.request_id, None)
            if future is not None and not future.done():
                future.set_result((msg, payloads))
            else:
                log.debug("reply %d (%s) arrived after its request gave up", msg.request_id, body)
            return
        if body in _SESSION_BODIES:
            session_id = getattr(msg, body).session_id
            queue = self._sessions.get(session_id)
            if queue is not None:
                queue.put_nowait((msg, payloads))
            elif body == "error":
                # NOT_FOUND here is the normal race of audio sent just before a session closed.
                level = logging.DEBUG if msg.error.code == "NOT_FOUND" else logging.WARNING
                log.log(level, "worker error for the unsubscribed session %r: %s %s", session_id, msg.error.code,
                        msg.error.message)
            return
        log.debug("ignoring unsolicited %s from the worker", body)

    def _hello(self, identity: bytes, pid: int) -> None:
        if self._peer is not None and identity != self._peer:
            self.worker_lost(f"the worker restarted (pid {self._peer_pid} replaced by pid {pid})")
        if identity != self._peer:
            log.info("worker pid %d connected on %s", pid, self.endpoint)
        self._peer = identity
        self._peer_pid = pid
        self._lost_reason = ""
        self._connected.set()


# ---------------------------------------------------------------------------------------------------------
# Worker end
# ---------------------------------------------------------------------------------------------------------


class WorkerLink:
    """The worker's end (synchronous): poll for requests between blocks, reply, emit session output."""

    def __init__(self, endpoint: str, *, context: zmq.Context | None = None, send_timeout_s: float = 10.0):
        self.endpoint = endpoint
        self._context = context or zmq.Context.instance()
        self._send_timeout_ms = int(send_timeout_s * 1000)
        self._stalled = False  # the gateway stopped reading: drop output at once until it reads again
        sock = self._context.socket(zmq.DEALER)
        # Unique per process: the gateway tells a restarted worker from the one before by this id.
        sock.setsockopt(zmq.ROUTING_ID, f"w{os.getpid()}-{secrets.token_hex(4)}".encode())
        sock.setsockopt(zmq.LINGER, 2000)  # let the last replies (Shutdown's Ack) leave before exit
        sock.setsockopt(zmq.SNDHWM, _WORKER_SNDHWM)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(endpoint)
        self._socket = sock
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        # Hello: queued until the connection is up, then tells the gateway who we are.
        self.emit(worker_pb2.FromWorker(pong=worker_pb2.Pong(pid=os.getpid())))

    def poll(self, timeout_ms: int = 0) -> list[tuple[worker_pb2.ToWorker, list[memoryview]]]:
        """Every message already waiting, after waiting up to ``timeout_ms`` for the first one."""
        received: list[tuple[worker_pb2.ToWorker, list[memoryview]]] = []
        if not self._poller.poll(max(0, int(timeout_ms))):
            return received
        while True:
            try:
                frames = self._socket.recv_multipart(flags=zmq.DONTWAIT, copy=False)
            except zmq.Again:
                return received
            try:
                msg = worker_pb2.ToWorker.FromString(frames[0].bytes)
            except Exception:
                log.error("dropping a malformed message from the gateway (%d frames)", len(frames))
                continue
            received.append((msg, [f.buffer for f in frames[1:]]))

    def reply(self, request_id: int, msg: worker_pb2.FromWorker, payloads: Sequence[Payload] = ()) -> None:
        """Answer a request (a ``request_id`` of 0 makes this the same as emit)."""
        msg.request_id = request_id
        self._send(msg, payloads)

    def emit(self, msg: worker_pb2.FromWorker, payloads: Sequence[Payload] = ()) -> None:
        """Session output (frames, utterance/interrupt events, session errors): request_id 0."""
        msg.request_id = 0
        self._send(msg, payloads)

    def _send(self, msg: worker_pb2.FromWorker, payloads: Sequence[Payload]) -> None:
        parts = _frames(msg.SerializeToString(), payloads)
        deadline = time.monotonic() + (0 if self._stalled else self._send_timeout_ms / 1000)
        while True:
            try:
                self._socket.send_multipart(parts, flags=zmq.DONTWAIT, copy=False)
                if self._stalled:
                    log.warning("the gateway reads again")
                    self._stalled = False
                return
            except zmq.Again:
                # The gateway is not reading (or not there). Wait a bounded time, once: a worker must not
                # hang on a dead gateway, and output is only dropped when nobody reads it anyway.
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if not self._stalled:
                        log.error("the gateway has not read for %.0fs; dropping output until it does",
                                  self._send_timeout_ms / 1000)
                        self._stalled = True
                    return
                self._socket.poll(min(100, int(remaining * 1000) + 1), zmq.POLLOUT)

    def close(self, linger_ms: int = 2000) -> None:
        self._socket.close(linger=linger_ms)
