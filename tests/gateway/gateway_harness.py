"""A real grpc.aio gateway on 127.0.0.1 (ephemeral port) in front of the real worker engine, plus small helpers.

The worker runs in a thread of the test process (InProcessWorker: the real link over ZeroMQ inproc, the real
engine, scheduler and memory pool) with the tests' stand-in generator, whose frames encode their index.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from PIL import Image
from stand_in_generator import StandInGenerator

from avatar_backend.gateway.server import Gateway, ServerOptions
from avatar_backend.generator.config import TINY, ModelConfig
from avatar_backend.proto_gen import avatar_service_pb2 as pb
from avatar_backend.proto_gen import avatar_service_pb2_grpc, converse_pb2, worker_pb2
from avatar_backend.worker.config import WorkerConfig
from avatar_backend.worker.engine import Engine
from avatar_backend.worker.executor import InProcessExecutor
from avatar_backend.worker.in_process import InProcessWorker, inproc_link
from avatar_backend.worker.link import GatewayLink
from avatar_backend.worker.scheduler import SchedulerConfig

TEST_TIMEOUT_S = 20.0

EMOTIONS = {"happy": "a test hero smiling", "angry": "a test hero frowning"}
ACTIONS = {"wave": "a test hero waving"}


def async_test(fn):
    """Run an async test in a fresh event loop, with a hard timeout."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT_S))

    return wrapper


class TappedLink:
    """The gateway's real link, with the messages the gateway sent to the worker kept for the test to read."""

    def __init__(self, link: GatewayLink):
        self.link = link
        self.sent: list[worker_pb2.ToWorker] = []

    async def request(self, msg, payloads=(), timeout=10.0):
        self.sent.append(msg)
        return await self.link.request(msg, payloads, timeout)

    def send(self, msg, payloads=()) -> None:
        self.sent.append(msg)
        self.link.send(msg, payloads)

    def subscribe(self, session_id: str) -> asyncio.Queue:
        return self.link.subscribe(session_id)

    def unsubscribe(self, session_id: str) -> None:
        self.link.unsubscribe(session_id)

    @property
    def connected(self) -> bool:
        return self.link.connected

    def requests_of(self, body: str) -> list:
        return [getattr(m, body) for m in self.sent if m.WhichOneof("body") == body]


@dataclass
class Harness:
    gateway: Gateway
    link: TappedLink
    worker: InProcessWorker
    generator: StandInGenerator
    channel: grpc.aio.Channel
    stub: avatar_service_pb2_grpc.AvatarServiceStub
    data_dir: Path
    restarts: list[InProcessWorker] = field(default_factory=list)

    @property
    def engine(self) -> Engine:
        assert self.worker.engine is not None
        return self.worker.engine

    def worker_session(self, npc_id: str):
        """The worker scheduler's state of the NPC's live session (None when it has none)."""
        return next((s for s in self.engine.scheduler.sessions.values() if s.npc_id == npc_id), None)

    async def kill_worker(self, reason: str) -> None:
        """The worker dies as a process would: nothing saved; the link and the gateway are told, as the
        supervisor tells them."""
        self.link.link.worker_lost(reason)
        self.gateway.worker_lost(reason)
        await self.worker.kill()   # after the call it is in; what that call makes finds nobody listening

    async def restart_worker(self, **worker_options) -> None:
        """A new worker on the same link (the supervisor's restart)."""
        self.worker = await start_worker(self.link.link, self.data_dir, self.generator, **worker_options)
        self.restarts.append(self.worker)


async def start_worker(link: GatewayLink, data_dir: Path, generator: StandInGenerator,
                       **scheduler_options) -> InProcessWorker:
    config = WorkerConfig(endpoint=link.endpoint, data_dir=data_dir, scheduler=SchedulerConfig(**scheduler_options),
                          idle_poll_ms=5)
    return await InProcessWorker(link, InProcessExecutor(generator), StandInGenerator.codec, config).start()


@contextlib.asynccontextmanager
async def running_gateway(tmp_path, *, block_delay_s: float = 0.0, worker_options: dict | None = None,
                          generator_config: ModelConfig = TINY, **options):
    """The gateway and its worker; ``block_delay_s`` makes each generator call take that long,
    ``worker_options`` are SchedulerConfig fields, ``generator_config`` the model the stand-in generator runs."""
    link = inproc_link()
    await link.start()
    generator = StandInGenerator(generator_config, block_delay_s=block_delay_s)
    worker = await start_worker(link, tmp_path, generator, **(worker_options or {}))
    tapped = TappedLink(link)
    gateway = Gateway(ServerOptions(host="127.0.0.1", port=0, data_dir=tmp_path, **options), tapped)
    harness = None
    try:
        await gateway.start()
        assert await gateway.wait_ready(5.0)
        # The client itself must not refuse big messages: the server's limit is under test.
        channel = grpc.aio.insecure_channel(gateway.address, options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        harness = Harness(gateway, tapped, worker, generator, channel,
                          avatar_service_pb2_grpc.AvatarServiceStub(channel), tmp_path)
        yield harness
    finally:
        if harness is not None:
            await harness.channel.close()
        await gateway.stop(grace=0)
        await (harness.worker if harness is not None else worker).stop()
        await link.close()


def png_bytes(width: int = 64, height: int = 64, color=(200, 120, 80), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format=fmt)
    return out.getvalue()


async def register_character(stub, character_id: str = "hero", **fields) -> pb.Character:
    request = pb.RegisterCharacterRequest(
        character_id=character_id, reference_image=fields.pop("reference_image", png_bytes()),
        base_prompt=fields.pop("base_prompt", "a test hero talking"),
        emotion_prompts=fields.pop("emotion_prompts", EMOTIONS), action_prompts=fields.pop("action_prompts", ACTIONS),
        **fields)
    return await stub.RegisterCharacter(request)


def session_config(npc_id: str = "npc-1", character_id: str = "hero", **fields) -> converse_pb2.ClientMessage:
    return converse_pb2.ClientMessage(config=converse_pb2.SessionConfig(
        npc_id=npc_id, character_id=character_id, **fields))


async def open_session(stub, config: converse_pb2.ClientMessage | None = None, metadata=None):
    """A Converse call past its SessionAccepted: (call, accepted)."""
    call = stub.Converse(metadata=metadata)
    await call.write(config or session_config())
    first = await call.read()
    assert first.WhichOneof("message") == "accepted", first
    return call, first.accepted


async def next_of(call, kind: str, timeout: float = 5.0, seen: list | None = None):
    """The next server message of ``kind`` (others are collected into ``seen``)."""

    async def scan():
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                raise AssertionError(f"the stream ended before a {kind} message")
            if message.WhichOneof("message") == kind:
                return message
            if seen is not None:
                seen.append(message)

    return await asyncio.wait_for(scan(), timeout)


async def final_status(call, timeout: float = 5.0) -> tuple[grpc.StatusCode, str, list]:
    """Read the stream to its end; (code, details, messages read)."""
    messages = []

    async def drain():
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    return
                messages.append(message)
        except grpc.aio.AioRpcError:
            return

    await asyncio.wait_for(drain(), timeout)
    return await call.code(), await call.details(), messages


async def expect_rpc_error(awaitable, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    try:
        await awaitable
    except grpc.aio.AioRpcError as err:
        assert err.code() == code, (err.code(), err.details())
        return err
    raise AssertionError(f"expected {code.name}")
