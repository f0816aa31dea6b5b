"""A small in-process AvatarService for the client tests.

It behaves like the real server where the client depends on it: SessionAccepted first; the voice decoded
from numbered Opus packets; blocks of frames with an AudioEcho before them, pts on the session clock and
``speaking`` set; UTTERANCE_COMPLETE with ``timeline_end``; InterruptAck; status codes with details and the
retry-after trailer. Blocks here are 4 frames of 16x16 JPEG, so tests run in milliseconds.

NPC ids with a behaviour: "busy" is refused with ABORTED, "mute" never answers after SessionAccepted,
"crash" ends the stream with UNAVAILABLE at its end of utterance (when the client has stopped writing:
a write that races the end of a stream can turn the status into INTERNAL, grpc/grpc#36066).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import opuslib
import pytest
import simplejpeg
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from avatar_backend.proto_gen import avatar_service_pb2, avatar_service_pb2_grpc, converse_pb2

FRAME_SIZE = 16
FPS = 20
BLOCK_FRAMES = 4
ECHO_RATE = 16000


@dataclass
class SessionRecord:
    """What one Converse stream received."""

    config: converse_pb2.SessionConfig
    sequence_numbers: list[int] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    voice: list[np.ndarray] = field(default_factory=list)
    controls: list[converse_pb2.ClientMessage] = field(default_factory=list)
    half_closed: bool = False


def jpeg_of(value: int) -> bytes:
    image = np.full((FRAME_SIZE, FRAME_SIZE, 3), value % 256, dtype=np.uint8)
    return simplejpeg.encode_jpeg(image, quality=90, colorspace="RGB")


class FakeAvatarService(avatar_service_pb2_grpc.AvatarServiceServicer):
    def __init__(self) -> None:
        self.characters: dict[str, avatar_service_pb2.Character] = {}
        self.npcs: dict[str, avatar_service_pb2.Npc] = {}
        self.sessions: list[SessionRecord] = []

    # -- Converse -------------------------------------------------------------------------------------

    async def Converse(self, request_iterator, context):  # noqa: N802 (gRPC method name)
        first = await anext(request_iterator)
        if first.WhichOneof("message") != "config":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the first message must be a SessionConfig")
        config = first.config
        if config.npc_id == "busy":
            await context.abort(grpc.StatusCode.ABORTED, "NPC 'busy' is already in a live session")
        if config.character_id not in self.characters:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"character_id: unknown character {config.character_id!r}"
            )
        record = SessionRecord(config)
        self.sessions.append(record)
        rate = config.audio.sample_rate or 48000
        ratio = rate // ECHO_RATE
        samples_per_frame = rate // FPS
        block_samples = samples_per_frame * BLOCK_FRAMES
        yield converse_pb2.ServerMessage(accepted=converse_pb2.SessionAccepted(
            session_id="s-1", npc_id=config.npc_id, character_id=config.character_id,
            video=converse_pb2.VideoFormat(width=FRAME_SIZE, height=FRAME_SIZE, fps=FPS,
                                           codec=converse_pb2.VIDEO_CODEC_JPEG),
            audio=converse_pb2.AudioFormat(codec=converse_pb2.AUDIO_CODEC_OPUS, sample_rate=rate, channels=1),
            first_block_frames=BLOCK_FRAMES, block_frames=BLOCK_FRAMES, model="fake",
        ))
        decoder = opuslib.Decoder(rate, 1)
        pending = np.zeros(0, dtype=np.int16)
        state = {"timeline": 0, "frame_index": 0, "block_index": 0}

        def block(samples: np.ndarray, speaking: bool) -> list[converse_pb2.ServerMessage]:
            start = state["timeline"]
            messages = [converse_pb2.ServerMessage(audio_echo=converse_pb2.AudioEcho(
                start=start, sample_rate=ECHO_RATE, pcm16=samples[::ratio].astype("<i2").tobytes()))]
            for k in range(BLOCK_FRAMES):
                pts = start + k * samples_per_frame
                messages.append(converse_pb2.ServerMessage(frame=converse_pb2.VideoFrame(
                    index=state["frame_index"], pts=pts, pts_us=pts * 1_000_000 // rate,
                    codec=converse_pb2.VIDEO_CODEC_JPEG, width=FRAME_SIZE, height=FRAME_SIZE, keyframe=True,
                    data=jpeg_of(state["frame_index"] * 10), audio_start=pts,
                    audio_end=pts + samples_per_frame, block_index=state["block_index"], speaking=speaking,
                )))
                state["frame_index"] += 1
            messages.append(converse_pb2.ServerMessage(stats=converse_pb2.SessionStats(
                generated_fps=20.0, frames_sent=state["frame_index"], block_compute_ms=5.0,
                blocks_generated=state["block_index"] + 1,
            )))
            state["timeline"] += block_samples
            state["block_index"] += 1
            return messages

        async for message in request_iterator:
            kind = message.WhichOneof("message")
            if config.npc_id == "mute":
                continue  # accepts everything, answers nothing
            if config.npc_id == "crash" and kind == "end_of_utterance":
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "generator worker stopped: test; it is being restarted, retry",
                    (("retry-after-ms", "1000"),),
                )
            if kind == "audio":
                record.sequence_numbers.append(message.audio.sequence_number)
                record.payloads.append(message.audio.payload)
                pcm = np.frombuffer(decoder.decode(message.audio.payload, samples_per_frame), dtype=np.int16)
                record.voice.append(pcm)
                pending = np.concatenate([pending, pcm])
                while pending.size >= block_samples:
                    for out in block(pending[:block_samples], speaking=True):
                        yield out
                    pending = pending[block_samples:]
            elif kind == "end_of_utterance":
                if pending.size:
                    end = state["timeline"] + pending.size
                    padded = np.zeros(block_samples, dtype=np.int16)
                    padded[: pending.size] = pending
                    pending = np.zeros(0, dtype=np.int16)
                    for out in block(padded, speaking=True):
                        yield out
                else:
                    end = state["timeline"]
                yield converse_pb2.ServerMessage(event=converse_pb2.SessionEvent(
                    code=converse_pb2.EVENT_CODE_UTTERANCE_COMPLETE, message="all audio generated",
                    details={"timeline_end": str(end)},
                ))
            elif kind == "interrupt":
                record.controls.append(message)
                dropped = pending.size
                pending = np.zeros(0, dtype=np.int16)
                yield converse_pb2.ServerMessage(interrupt_ack=converse_pb2.InterruptAck(
                    generated_until=state["timeline"], dropped_samples=dropped,
                    next_frame_index=state["frame_index"],
                ))
            else:
                record.controls.append(message)
                if kind == "emotion" and message.emotion.name not in self.characters[
                    config.character_id
                ].emotion_prompts:
                    yield converse_pb2.ServerMessage(event=converse_pb2.SessionEvent(
                        code=converse_pb2.EVENT_CODE_UNKNOWN_EMOTION, message="unknown emotion",
                        details={"name": message.emotion.name},
                    ))
        record.half_closed = True
        self.npcs[config.npc_id] = avatar_service_pb2.Npc(
            npc_id=config.npc_id, character_id=config.character_id, memory_bytes=123456,
            blocks_generated=state["block_index"], frames_generated=state["frame_index"],
            width=FRAME_SIZE, height=FRAME_SIZE,
        )

    # -- unary calls ----------------------------------------------------------------------------------

    async def RegisterCharacter(self, request, context):  # noqa: N802
        if not request.character_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "character_id: must not be empty")
        if request.character_id in self.characters and not request.replace:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"character {request.character_id!r} already exists"
            )
        character = avatar_service_pb2.Character(
            character_id=request.character_id, base_prompt=request.base_prompt,
            emotion_prompts=dict(request.emotion_prompts), action_prompts=dict(request.action_prompts),
            reference_width=256, reference_height=256, created_unix_ms=1_700_000_000_000,
        )
        self.characters[request.character_id] = character
        return character

    async def GetCharacter(self, request, context):  # noqa: N802
        if request.character_id not in self.characters:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"character {request.character_id!r} does not exist")
        return self.characters[request.character_id]

    async def ListCharacters(self, request, context):  # noqa: N802
        return avatar_service_pb2.ListCharactersResponse(
            characters=[self.characters[k] for k in sorted(self.characters)]
        )

    async def DeleteCharacter(self, request, context):  # noqa: N802
        if request.character_id not in self.characters:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"character {request.character_id!r} does not exist")
        users = [n for n in self.npcs.values() if n.character_id == request.character_id]
        if users and not request.delete_npcs:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"character {request.character_id!r} is used by {len(users)} NPCs",
            )
        for npc in users:
            del self.npcs[npc.npc_id]
        del self.characters[request.character_id]
        return avatar_service_pb2.DeleteCharacterResponse(npcs_deleted=len(users))

    async def GetNpc(self, request, context):  # noqa: N802
        if request.npc_id not in self.npcs:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"NPC {request.npc_id!r} does not exist")
        return self.npcs[request.npc_id]

    async def ListNpcs(self, request, context):  # noqa: N802
        npcs = [self.npcs[k] for k in sorted(self.npcs)
                if not request.character_id or self.npcs[k].character_id == request.character_id]
        return avatar_service_pb2.ListNpcsResponse(npcs=npcs)

    async def ResetNpc(self, request, context):  # noqa: N802
        if request.npc_id == "crowded":
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "too many sessions", (("retry-after-ms", "250"),)
            )
        if request.npc_id not in self.npcs:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"NPC {request.npc_id!r} does not exist")
        npc = self.npcs[request.npc_id]
        npc.blocks_generated = 0
        npc.frames_generated = 0
        return npc

    async def DeleteNpc(self, request, context):  # noqa: N802
        if request.npc_id not in self.npcs:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"NPC {request.npc_id!r} does not exist")
        del self.npcs[request.npc_id]
        return avatar_service_pb2.DeleteNpcResponse()

    async def GetServerInfo(self, request, context):  # noqa: N802
        return avatar_service_pb2.ServerInfo(
            version="test",
            model=avatar_service_pb2.ModelInfo(name="fake", random_weights=True, default_width=FRAME_SIZE,
                                               default_height=FRAME_SIZE, default_fps=FPS),
            video_sizes=[avatar_service_pb2.VideoSize(width=FRAME_SIZE, height=FRAME_SIZE)],
            fps=[FPS], video_codecs=[converse_pb2.VIDEO_CODEC_JPEG],
            audio_codecs=[converse_pb2.AUDIO_CODEC_OPUS], audio_sample_rates=[16000, 48000],
            worker_device="cpu", worker_ready=True,
        )


@dataclass
class FakeServer:
    target: str
    service: FakeAvatarService


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """The fake service on 127.0.0.1, served by an event loop on its own thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    service = FakeAvatarService()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        avatar_service_pb2_grpc.add_AvatarServiceServicer_to_server(service, server)
        health_servicer = health.aio.HealthServicer()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield FakeServer(f"127.0.0.1:{port}", service)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture
def registered(fake_server: FakeServer) -> FakeServer:
    """The fake server with a character named "default" registered."""
    fake_server.service.characters["default"] = avatar_service_pb2.Character(
        character_id="default", base_prompt="a villager", emotion_prompts={"happy": "smiling"},
        action_prompts={"wave": "waving"}, reference_width=256, reference_height=256,
    )
    return fake_server
