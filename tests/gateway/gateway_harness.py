"""A real grpc.aio gateway on 127.0.0.1 (ephemeral port) in front of the fake worker, plus small helpers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
from dataclasses import dataclass

import grpc
from PIL import Image

from avatar_backend.gateway.server import Gateway, ServerOptions
from avatar_backend.proto_gen import avatar_service_pb2 as pb
from avatar_backend.proto_gen import avatar_service_pb2_grpc, converse_pb2

from gateway_fake_worker import FakeWorkerLink

TEST_TIMEOUT_S = 20.0

EMOTIONS = {"happy": "a test hero smiling", "angry": "a test hero frowning"}
ACTIONS = {"wave": "a test hero waving"}


def async_test(fn):
    """Run an async test in a fresh event loop, with a hard timeout."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT_S))

    return wrapper


@dataclass
class Harness:
    gateway: Gateway
    worker: FakeWorkerLink
    channel: grpc.aio.Channel
    stub: avatar_service_pb2_grpc.AvatarServiceStub


@contextlib.asynccontextmanager
async def running_gateway(tmp_path, *, block_interval_s: float = 0.05, metadata_key: str | None = None,
                          **options):
    worker = FakeWorkerLink(block_interval_s=block_interval_s)
    gateway = Gateway(ServerOptions(host="127.0.0.1", port=0, data_dir=tmp_path, **options), worker)
    await gateway.start()
    assert await gateway.wait_ready(5.0)
    # The client itself must not refuse big messages: the server's limit is under test.
    channel = grpc.aio.insecure_channel(gateway.address, options=[
        ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    try:
        yield Harness(gateway, worker, channel, avatar_service_pb2_grpc.AvatarServiceStub(channel))
    finally:
        await channel.close()
        await gateway.stop(grace=0)


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
