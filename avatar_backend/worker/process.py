"""The gateway's supervisor of one worker process: start it, know when it is ready, restart it when it dies.

The worker runs as ``python -m avatar_backend.worker ...`` in its own session and process group. A Ctrl-C in
the terminal therefore reaches the gateway alone, which stops the worker in order (``stop``: the worker saves
every NPC memory); the worker exits by itself if the gateway disappears (``--parent-pid``). Its stdout and
stderr go to this process's log, one record per line, prefixed with the worker's pid.

Killing a worker (hung, or not ready in time, or deaf to SIGTERM) kills its whole process group: the follower
ranks a multi-device worker started (``--devices cpu,cpu``) may be blocked in a collective that never returns
and would hold their devices. A worker that exits by any path has what is left of its group killed too, so a
restarted worker never meets its predecessor's followers.

When the worker dies unexpectedly the supervisor fails everything that depended on it (the link's
``worker_lost``: pending requests raise, session queues get a WorkerLost), calls ``on_lost(reason)`` so the
gateway can tell its sessions, and starts a new worker after a backoff. Restarts are rate limited
(``max_restarts_per_minute``); past the limit it waits rather than gives up, logging why.

No torch here: the gateway imports this module.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatar_backend.generator.config import ExecutionConfig
from avatar_backend.proto_gen import worker_pb2
from avatar_backend.store import (
    DEFAULT_MAX_PARKED_MEMORY_BYTES,
    DEFAULT_MAX_STORED_NPC_BYTES,
    DEFAULT_MAX_STORED_NPCS,
    DEFAULT_NPC_SNAPSHOT_INTERVAL_S,
)

from .config import execution_flags
from .link import GatewayLink, WorkerLinkError, WorkerUnavailableError
from .scheduler import DEFAULT_MAX_BATCH, DEFAULT_VOICE_JITTER_BUDGET_MS

# ``--weights`` value: untrained weights from a fixed seed, even for a config that has shipped weights.
RANDOM_WEIGHTS = "random"

__all__ = ["WorkerProcess", "WorkerProcessConfig", "WorkerStartError"]

log = logging.getLogger(__name__)

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding avatar_backend/
# How often the supervisor looks whether the worker has exited (see _exited).
_EXIT_POLL_S = 0.05


class WorkerStartError(RuntimeError):
    """The worker process exited or did not answer before it became ready."""


@dataclass(frozen=True)
class WorkerProcessConfig:
    data_dir: Path | str
    model_config: str = "tiny"                  # named config or JSON file
    device: str = "cpu"
    weights: str | None = None                 # a file or directory, RANDOM_WEIGHTS, or None: the shipped ones
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)  # attention backend, FP8 GEMM, compile
    python: str = sys.executable
    max_stored_npcs: int = DEFAULT_MAX_STORED_NPCS            # 0: no cap; a new NPC beyond it is refused
    max_stored_npc_bytes: int = DEFAULT_MAX_STORED_NPC_BYTES  # 0: no cap; likewise, in bytes on disk
    max_parked_memory_bytes: int = DEFAULT_MAX_PARKED_MEMORY_BYTES  # host RAM for idle memories; beyond: disk
    npc_snapshot_interval_s: float = DEFAULT_NPC_SNAPSHOT_INTERVAL_S  # live memories saved this often (0: off)
    voice_jitter_budget_ms: int = DEFAULT_VOICE_JITTER_BUDGET_MS  # an utterance's voice may stall this long
    max_batch: int = DEFAULT_MAX_BATCH         # NPCs whose blocks are generated in one call at most
    extra_args: Sequence[str] = ()              # more worker flags, e.g. ("--max-live", "4")
    env: Mapping[str, str] = field(default_factory=dict)   # added to this process's environment
    ready_timeout_s: float = 600.0              # spawn -> answers Ping (the 18B model loads for minutes)
    heartbeat_interval_s: float = 5.0           # Ping a running worker this often ...
    hang_timeout_s: float = 120.0               # ... and kill it when it has not answered for this long (0: never);
                                                # it reads the link between blocks, so keep this above a block's time
    max_restarts_per_minute: int = 5
    restart_backoff_s: float = 0.5              # first restart delay; doubles per recent restart
    restart_backoff_max_s: float = 15.0
    log_tail_lines: int = 40                    # worker output kept for error messages


OnLost = Callable[[str], Any]


class WorkerProcess:
    """Supervises one worker process connected to ``link`` (which must be started already)."""

    def __init__(self, link: GatewayLink, config: WorkerProcessConfig, on_lost: OnLost | None = None):
        self.link = link
        self.config = config
        self.on_lost = on_lost
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task | None = None
        self._watch: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._stopping = False
        self._restart_times: collections.deque[float] = collections.deque()
        self._tail: collections.deque[str] = collections.deque(maxlen=config.log_tail_lines)
        self._hang_reason = ""
        self.restarts = 0

    # -- state --------------------------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else 0

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def output_tail(self) -> list[str]:
        """The worker's last output lines (for error messages)."""
        return list(self._tail)

    def command(self) -> list[str]:
        c = self.config
        cmd = [c.python, "-m", "avatar_backend.worker", "--endpoint", self.link.connect_endpoint,
               "--config", str(c.model_config), "--data-dir", str(c.data_dir), "--device", c.device]
        if c.weights:
            cmd += ["--weights", str(c.weights)]
        cmd += execution_flags(c.execution)
        cmd += ["--max-stored-npcs", str(c.max_stored_npcs), "--max-stored-npc-bytes", str(c.max_stored_npc_bytes),
                "--max-parked-memory-bytes", str(c.max_parked_memory_bytes),
                "--npc-snapshot-interval-s", repr(float(c.npc_snapshot_interval_s)),
                "--voice-jitter-budget-ms", str(c.voice_jitter_budget_ms), "--max-batch", str(c.max_batch)]
        cmd += ["--parent-pid", str(os.getpid()), *c.extra_args]
        return cmd

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker and wait until it answers a Ping. WorkerStartError when it cannot."""
        if self._watch is not None:
            raise RuntimeError("the worker process is already started")
        self._stopping = False
        await self._launch()
        self._watch = asyncio.get_running_loop().create_task(self._supervise(), name="worker-supervisor")

    async def stop(self, timeout: float = 30.0) -> None:
        """Ask the worker to save every NPC memory and exit; terminate, then kill, what does not."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        proc = self._proc
        if proc is not None and proc.returncode is None:
            deadline = time.monotonic() + timeout
            if self._ready.is_set():
                try:
                    await self.link.request(worker_pb2.ToWorker(shutdown=worker_pb2.Shutdown()), timeout=timeout)
                except WorkerLinkError as err:
                    log.warning("worker did not confirm shutdown: %s", err)
            else:
                # Still loading (it only reads the link once ready): SIGTERM is the way to stop it.
                _signal(proc, signal.SIGTERM)
            if not await self._wait_exit(proc, max(0.5, deadline - time.monotonic())):
                log.warning("worker pid %d still running; terminating it", proc.pid)
                _signal(proc, signal.SIGTERM)
                if not await self._wait_exit(proc, 5.0):
                    log.error("worker pid %d ignored SIGTERM; killing it", proc.pid)
                    _kill_group(proc)
                    await self._wait_exit(proc, 5.0)
            _kill_group(proc)   # followers of a worker stopped before it could tell them to stop
        self._ready.clear()
        if self._pump is not None:
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None
        self.link.worker_lost("the worker was stopped")

    # -- internals ------------------------------------------------------------------------------------------------

    async def _launch(self) -> None:
        env = dict(os.environ)
        env.update(self.config.env)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
        cmd = self.command()
        log.info("starting worker: %s", " ".join(cmd))
        self._tail.clear()
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
        self._proc = proc
        self._pump = asyncio.get_running_loop().create_task(self._pump_output(proc), name=f"worker-{proc.pid}-log")
        started = time.monotonic()
        exited = asyncio.ensure_future(_exited(proc))
        ready = asyncio.ensure_future(self._until_ready(proc.pid, self.config.ready_timeout_s))
        try:
            await asyncio.wait({exited, ready}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (exited, ready):
                if not task.done():
                    task.cancel()
        if ready.done() and not ready.cancelled() and ready.exception() is None:
            self._ready.set()
            log.info("worker pid %d ready in %.1fs", proc.pid, time.monotonic() - started)
            return
        # A worker that dies while being pinged fails the ping first; its exit is the better explanation.
        if await self._wait_exit(proc, 1.0):
            reason = f"{_describe_exit(proc.pid, proc.returncode)} before it was ready"
        else:
            reason = f"worker pid {proc.pid} did not become ready: {ready.exception()}"
            _kill_group(proc)
            await self._wait_exit(proc, 5.0)
        _kill_group(proc)
        await asyncio.gather(self._pump, return_exceptions=True)
        tail = "\n".join(self._tail)
        raise WorkerStartError(f"{reason}; its last output:\n{tail}" if tail else reason)

    async def _until_ready(self, pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # The hello carries the pid: wait for ours, not a previous worker's late message.
        while self.link.worker_pid != pid:
            if time.monotonic() > deadline:
                raise WorkerStartError(f"no hello from worker pid {pid} within {timeout:.0f}s")
            await asyncio.sleep(0.02)
        while True:
            try:
                reply, _ = await self.link.request(worker_pb2.ToWorker(ping=worker_pb2.Ping()),
                                                   timeout=max(0.1, deadline - time.monotonic()))
                break
            except WorkerUnavailableError:
                # Connected but not reachable yet (or going away: then the exit wins the race in _launch).
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        if reply.pong.pid != pid:
            raise WorkerStartError(f"Ping answered by pid {reply.pong.pid}, expected {pid}")

    async def _supervise(self) -> None:
        while not self._stopping:
            proc = self._proc
            assert proc is not None
            self._hang_reason = ""
            heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(proc), name="worker-heartbeat")
            try:
                await _exited(proc)
            finally:
                heartbeat.cancel()
                await asyncio.gather(heartbeat, return_exceptions=True)
            if self._stopping:
                return
            _kill_group(proc)   # its follower ranks, which may wait for it in a collective
            self._ready.clear()
            await asyncio.gather(self._pump, return_exceptions=True)
            reason = self._hang_reason or _describe_exit(proc.pid, proc.returncode)
            log.error("%s unexpectedly; restarting it", reason)
            self.link.worker_lost(reason)
            await self._notify_lost(reason)
            await self._restart()

    async def _heartbeat(self, proc: asyncio.subprocess.Process) -> None:
        """Kill a worker that stopped answering (a hung CUDA call, a deadlock): the restart path takes over."""
        timeout = self.config.hang_timeout_s
        if timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        while proc.returncode is None:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            sent = loop.time()
            try:
                await self.link.request(worker_pb2.ToWorker(ping=worker_pb2.Ping()), timeout=timeout)
            except WorkerUnavailableError as err:
                if proc.returncode is not None or self._stopping:
                    return
                if loop.time() - sent < timeout:
                    continue  # unreachable rather than silent: it is exiting, and its exit tells why
                self._hang_reason = f"worker pid {proc.pid} did not answer for {timeout:.0f}s and was killed ({err})"
                log.error("%s", self._hang_reason)
                _kill_group(proc)
                return
            except WorkerLinkError:
                continue

    async def _restart(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            while self._restart_times and now - self._restart_times[0] > 60.0:
                self._restart_times.popleft()
            recent = len(self._restart_times)
            delay = min(self.config.restart_backoff_max_s, self.config.restart_backoff_s * (2 ** recent))
            if recent >= self.config.max_restarts_per_minute:
                delay = max(delay, 60.0 - (now - self._restart_times[0]))
                log.error("worker restarted %d times in the last minute; next attempt in %.0fs", recent, delay)
            await asyncio.sleep(delay)
            self._restart_times.append(time.monotonic())
            self.restarts += 1
            try:
                await self._launch()
                return
            except WorkerStartError as err:
                log.error("worker restart failed: %s", err)
                await self._notify_lost(str(err).splitlines()[0])

    async def _notify_lost(self, reason: str) -> None:
        if self.on_lost is None:
            return
        try:
            result = self.on_lost(reason)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_lost callback failed")

    async def _pump_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        prefix = f"[worker {proc.pid}]"
        while True:
            line = await proc.stdout.readline()
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            if not text:
                continue
            self._tail.append(text)
            log.log(_level_of(text), "%s %s", prefix, text)

    @staticmethod
    async def _wait_exit(proc: asyncio.subprocess.Process, timeout: float) -> bool:
        try:
            await asyncio.wait_for(_exited(proc), timeout)
        except asyncio.TimeoutError:
            return False
        return True


def _level_of(line: str) -> int:
    """The worker logs "LEVEL name: message"; keep its level in our log."""
    head = line.split(" ", 1)[0]
    return {"DEBUG": logging.DEBUG, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
            "CRITICAL": logging.CRITICAL}.get(head, logging.INFO)


def _describe_exit(pid: int, returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"worker pid {pid} was killed by {name}"
    return f"worker pid {pid} exited with code {returncode}"


def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """The worker's exit status once it has exited. Not ``proc.wait()``: that also waits for the worker's output
    pipe to close, and follower ranks inherit it, so a follower that outlives rank 0 would hide its death."""
    while proc.returncode is None:
        await asyncio.sleep(_EXIT_POLL_S)
    return proc.returncode


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the worker and every process left in its group (it leads the group: start_new_session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the worker exited and nothing of its group is left
