"""The worker's engine in a thread of this process, on the gateway's link through a ZeroMQ inproc endpoint.

The real link, engine, scheduler and memory pool, without a second process: what the gateway and client tests
run behind a real server (with the tests' stand-in generator), and a way to embed a worker with a generator of
one's own. The engine thread owns its end of the link as a worker process would; both ends share one ZeroMQ
context, which inproc endpoints need.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from typing import Any

import zmq
import zmq.asyncio

from avatar_backend.proto_gen import worker_pb2

from .config import WorkerConfig
from .engine import Engine
from .executor import Executor
from .link import GatewayLink, WorkerLink, WorkerLinkError
from .memory_pool import MemoryCodec
from .telemetry import DeviceTelemetry

__all__ = ["InProcessWorker", "inproc_link"]

log = logging.getLogger(__name__)

_endpoints = itertools.count(1)


def inproc_link() -> GatewayLink:
    """A gateway link on a fresh inproc endpoint (start it, then start an InProcessWorker on it)."""
    return GatewayLink(f"inproc://avatar-worker-{next(_endpoints)}", context=zmq.asyncio.Context.instance())


class InProcessWorker:
    """An engine thread serving ``link`` (an inproc GatewayLink, already started)."""

    def __init__(self, link: GatewayLink, executor: Executor, codec: MemoryCodec, config: WorkerConfig, *,
                 telemetry: DeviceTelemetry | None = None):
        self.link = link
        self.executor = executor
        self.codec = codec
        self.config = config
        self.telemetry = telemetry or DeviceTelemetry(nvml_loader=_no_nvml)
        self.engine: Engine | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    async def start(self, timeout: float = 10.0) -> "InProcessWorker":
        """Start the engine thread and wait until the link has its hello."""
        if self._thread is not None:
            raise RuntimeError("the in-process worker is already started")
        self._thread = threading.Thread(target=self._run, name="in-process-worker", daemon=True)
        self._thread.start()
        await asyncio.get_running_loop().run_in_executor(None, self._started.wait, timeout)
        await self.link.wait_connected(timeout)
        return self

    def _run(self) -> None:
        context = zmq.Context.shadow(self.link.context.underlying)
        worker_link = WorkerLink(self.link.connect_endpoint, context=context)
        try:
            self.engine = Engine(self.config, self.executor, self.codec, worker_link, telemetry=self.telemetry)
            self._started.set()
            self.engine.run()
        except Exception:
            log.exception("the in-process worker failed")
        finally:
            self._started.set()
            worker_link.close(linger_ms=0)

    async def stop(self, timeout: float = 10.0) -> None:
        """Shut the engine down as the gateway does a worker process (it saves every NPC memory first)."""
        if self._thread is None:
            return
        if self._thread.is_alive():
            try:
                await self.link.request(worker_pb2.ToWorker(shutdown=worker_pb2.Shutdown()), timeout=timeout)
            except WorkerLinkError as err:
                log.warning("the in-process worker did not confirm shutdown: %s", err)
                if self.engine is not None:
                    self.engine.request_stop()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout)
        self._thread = None


    async def kill(self, timeout: float = 10.0) -> None:
        """The engine stops as a killed worker process would: after the call it is in, saving nothing and
        sending nothing more. The link is not told (the supervisor tells it, as it would of a dead process)."""
        if self._thread is None:
            return
        if self.engine is not None:
            self.engine.abort()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout)
        self._thread = None


def _no_nvml() -> Any:
    raise ImportError("the in-process worker reports no NVML devices")
