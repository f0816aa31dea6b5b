"""The real server for the client tests: the gateway (avatar_backend.gateway.server.Gateway) on 127.0.0.1 in
front of the real worker engine in a thread of this process (InProcessWorker on a ZeroMQ inproc link: the real
link, engine, scheduler and memory pool), with the tests' stand-in generator (tests/stand_in_generator.py).

The model is the tiny config at 64x64 by default, so frames are small; the stand-in makes them at once, a flat
colour that encodes the frame index and whether the block had voice. Blocks are 21 frames, then 32, at 20 fps.
The worker's scheduler turns queued voice into video at once (an ended utterance is padded with silence) and
paces idle blocks on the wall clock, the first one 0.3 s after the session opened (see
avatar_backend/worker/scheduler.py).

The gateway and the worker run on an event loop of their own thread, because the tests' clients (asyncio and
SyncAvatarClient) each bring their own loop. ``@pytest.mark.server_options(max_sessions=1)`` gives a test's
server ServerOptions fields of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from PIL import Image
from stand_in_generator import StandInGenerator

from avatar_backend.gateway.server import Gateway, ServerOptions
from avatar_backend.generator.config import TINY
from avatar_backend.proto_gen import avatar_service_pb2, avatar_service_pb2_grpc
from avatar_backend.worker.config import WorkerConfig
from avatar_backend.worker.executor import InProcessExecutor
from avatar_backend.worker.in_process import InProcessWorker, inproc_link
from avatar_backend.worker.link import GatewayLink
from avatar_backend.worker.scheduler import SchedulerConfig, SessionState

# The tiny model at its smallest size: JPEG encoding and MP4 recording stay fast.
MODEL = dataclasses.replace(TINY, width=64, height=64)
START_TIMEOUT_S = 10.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "server_options(**fields): ServerOptions fields of the test's server")


def png_bytes(width: int = 64, height: int = 64, color: tuple[int, int, int] = (200, 120, 80)) -> bytes:
    """A real PNG: the gateway decodes and checks every reference image."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def worker_config(options: ServerOptions, endpoint: str, data_dir: Path) -> WorkerConfig:
    """The worker's configuration from the server's options, as `serve` passes them to its worker process."""
    return WorkerConfig(
        endpoint=endpoint, data_dir=data_dir, resident_budget_bytes=options.max_parked_memory_bytes,
        max_stored_npcs=options.max_stored_npcs, max_stored_npc_bytes=options.max_stored_npc_bytes,
        npc_snapshot_interval_s=options.npc_snapshot_interval_s,
        scheduler=SchedulerConfig(voice_jitter_budget_s=options.voice_jitter_budget_ms / 1000,
                                  max_batch=options.max_batch),
    )


@dataclass
class RealServer:
    target: str
    gateway: Gateway
    link: GatewayLink
    worker: InProcessWorker
    generator: StandInGenerator
    loop: asyncio.AbstractEventLoop

    def call(self, coroutine, timeout: float = START_TIMEOUT_S):
        """Run ``coroutine`` on the server's loop and wait for its result (from a test's thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def worker_session(self, npc_id: str) -> SessionState | None:
        """The worker scheduler's state of the NPC's live session (None when it has none)."""
        sessions = list(self.worker.engine.scheduler.sessions.values())
        return next((s for s in sessions if s.npc_id == npc_id), None)

    @staticmethod
    def wait_until(condition: Callable[[], object], timeout: float = 5.0) -> None:
        """Block until ``condition()`` is true; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"still false after {timeout} s")
            time.sleep(0.005)

    def kill_worker(self, reason: str = "killed by the test", *,
                    when: Callable[[], object] | None = None) -> concurrent.futures.Future:
        """Make the worker die as a worker process does, once ``when()`` is true (at once without it).

        Its live NPC memories are lost and nothing it makes afterwards reaches anyone; the link and the gateway
        are told as the supervisor tells them, so live sessions end UNAVAILABLE. Returns the kill's future.
        """
        return asyncio.run_coroutine_threadsafe(self._kill_worker(reason, when), self.loop)

    async def _kill_worker(self, reason: str, when: Callable[[], object] | None) -> None:
        while when is not None and not when():
            await asyncio.sleep(0.005)
        self.link.worker_lost(reason)
        self.gateway.worker_lost(reason)
        await self.worker.kill()   # after the call it is in; what that call makes finds nobody listening


async def _start(options: ServerOptions, generator: StandInGenerator, data_dir: Path,
                 loop: asyncio.AbstractEventLoop) -> RealServer:
    link = inproc_link()
    await link.start()
    worker = gateway = None
    try:
        worker = await InProcessWorker(link, InProcessExecutor(generator), StandInGenerator.codec,
                                       worker_config(options, link.endpoint, data_dir)).start(START_TIMEOUT_S)
        gateway = Gateway(options, link)
        await gateway.start()
        if not await gateway.wait_ready(START_TIMEOUT_S):
            raise RuntimeError("the gateway did not see its worker ready")
        return RealServer(gateway.address, gateway, link, worker, generator, loop)
    except BaseException:
        await _stop(gateway, worker, link)
        raise


async def _stop(gateway: Gateway | None, worker: InProcessWorker | None, link: GatewayLink) -> None:
    if gateway is not None:
        await gateway.stop(grace=0)
    if worker is not None:
        await worker.stop()
    await link.close()


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RealServer]:
    """The gateway and its in-process worker on an ephemeral port, with no character registered."""
    marker = request.node.get_closest_marker("server_options")
    data_dir = tmp_path / "server-data"
    options = ServerOptions(host="127.0.0.1", port=0, data_dir=data_dir, **(marker.kwargs if marker else {}))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server-loop", daemon=True)
    thread.start()
    try:
        started = asyncio.run_coroutine_threadsafe(_start(options, StandInGenerator(MODEL), data_dir, loop), loop)
        real = started.result(START_TIMEOUT_S * 3)
        try:
            yield real
        finally:
            real.call(_stop(real.gateway, real.worker, real.link), timeout=30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture
def registered(server: RealServer) -> RealServer:
    """The server with a character "default" registered through RegisterCharacter."""

    async def register() -> None:
        async with grpc.aio.insecure_channel(server.target) as channel:
            await avatar_service_pb2_grpc.AvatarServiceStub(channel).RegisterCharacter(
                avatar_service_pb2.RegisterCharacterRequest(
                    character_id="default", reference_image=png_bytes(), base_prompt="a villager",
                    emotion_prompts={"happy": "smiling"}, action_prompts={"wave": "waving"}))

    server.call(register())
    return server

