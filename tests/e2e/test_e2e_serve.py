"""End to end over real gRPC on 127.0.0.1: `avatar-backend serve` as a subprocess with the real tiny generator.

Real speech (espeak-ng) is sent as real Opus packets; frames come back as JPEG on the audio clock. These are
the behaviours an engine developer relies on: frames decode, pts only grow, the NPC talks for as long as the
audio lasts, interrupts answer, NPC memory resumes across sessions and server restarts, and bad clients get
named errors without disturbing a healthy session.
"""

from __future__ import annotations

import os

import grpc
import numpy as np
import pytest
import simplejpeg
from e2e_helpers import ASSETS, FPS, RATE, SIZE, Server, collect, events_of, frames_of, run
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from avatar_backend.client import AvatarClient, AvatarError
from avatar_backend.proto_gen import avatar_service_pb2_grpc, converse_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_health_reflection_and_server_info(server):
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "avatar.v1.AvatarService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
                health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in answer.list_services_response.service}
        assert "avatar.v1.AvatarService" in names and "grpc.health.v1.Health" in names

    async def info():
        async with AvatarClient(server.address) as client:
            return await client.server_info()

    info = run(info())
    assert info.model.name == "tiny" and not info.model.random_weights  # the shipped weights
    assert info.worker_ready and info.worker_device == "cpu"
    assert any(s.width == SIZE and s.height == SIZE and s.npc_memory_bytes > 0 for s in info.video_sizes)


def test_speech_becomes_frames_then_interrupt_then_resume(server, speech):
    async def scenario():
        async with AvatarClient(server.address) as client:
            await client.register_character("smith", (ASSETS / "default_character.png").read_bytes(),
                                            "a blacksmith talking", emotion_prompts={"happy": "a smiling blacksmith"})

            # 1. One utterance, sent as fast as TTS would.
            async with client.converse("smith-1", "smith", width=SIZE, height=SIZE, fps=FPS, sample_rate=RATE) as conv:
                accepted = conv.accepted
                assert not accepted.resumed and accepted.start_frame_index == 0
                await conv.send_audio_pcm(speech)
                await conv.emotion("happy", 0.5)
                await conv.end_utterance()
                items = await collect(conv, lambda it: bool(events_of(it, converse_pb2.EVENT_CODE_UTTERANCE_COMPLETE)))
                done = events_of(items, converse_pb2.EVENT_CODE_UTTERANCE_COMPLETE)[0]
                utterance_end = int(done.details["timeline_end"])
                items += await collect(conv, lambda it: any(f.audio_end >= utterance_end for f in frames_of(it)))
                duration_s = conv.voice_samples_sent / RATE
            frames = frames_of(items)
            for frame in frames:
                assert frame.codec == converse_pb2.VIDEO_CODEC_JPEG and frame.keyframe
                assert simplejpeg.decode_jpeg(frame.data).shape == (SIZE, SIZE, 3)
            pts = [f.pts for f in frames]
            assert all(b > a for a, b in zip(pts, pts[1:])), "pts must strictly increase"
            assert [f.index for f in frames] == list(range(len(frames)))
            assert all(f.pts == f.index * RATE // FPS and f.audio_end == (f.index + 1) * RATE // FPS for f in frames)
            speaking = sum(f.speaking for f in frames)
            assert abs(speaking - duration_s * FPS) <= 32, (speaking, duration_s)
            echoes = [i for i in items if isinstance(i, converse_pb2.AudioEcho)]
            assert echoes and echoes[0].start == 0 and echoes[0].sample_rate == 16000
            sent = len(frames)

            # 2. A resumed session continues the NPC; an interrupt mid-utterance drops the rest of the voice.
            async with client.converse("smith-1", width=SIZE, height=SIZE, fps=FPS, sample_rate=RATE) as conv:
                assert conv.accepted.resumed and conv.accepted.blocks_generated >= 2
                assert conv.accepted.start_frame_index >= sent
                long_speech = np.concatenate([speech] * 4)
                await conv.send_audio_pcm(long_speech)
                first = await collect(conv, lambda it: len(frames_of(it)) >= 1)
                ack = await conv.interrupt()
                assert 0 < ack.generated_until < conv.voice_samples_sent
                assert ack.dropped_samples > 0 and ack.next_frame_index > frames_of(first)[0].index
                after = await collect(conv, lambda it: any(f.index >= ack.next_frame_index for f in frames_of(it)))
                resumed_frames = frames_of(first + after)
                assert resumed_frames[0].index == conv.accepted.start_frame_index
                silent = [f for f in resumed_frames if f.index >= ack.next_frame_index]
                assert silent and not any(f.speaking for f in silent)

            npc = await client.get_npc("smith-1")
            assert npc.character_id == "smith" and not npc.live
            assert npc.memory_bytes == accepted.memory_bytes and npc.frames_generated >= resumed_frames[-1].index + 1

    run(scenario())


def test_bad_clients_get_named_errors_while_a_healthy_session_streams(server):
    async def healthy_frames(conv, count):
        return await collect(conv, lambda it: len(frames_of(it)) >= count)

    async def scenario():
        async with AvatarClient(server.address) as client:
            async with client.converse("healthy", "default", width=SIZE, height=SIZE, fps=FPS) as healthy:
                await healthy_frames(healthy, 1)

                stub = avatar_service_pb2_grpc.AvatarServiceStub(client._channel)  # raw calls for malformed streams

                async def first_message(message):
                    call = stub.Converse()
                    await call.write(message)
                    await call.done_writing()
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        async for _ in call:
                            pass
                    return err.value

                err = await first_message(converse_pb2.ClientMessage(end_of_utterance=converse_pb2.EndOfUtterance()))
                assert err.code() == grpc.StatusCode.FAILED_PRECONDITION

                with pytest.raises(AvatarError) as unknown:
                    async with client.converse("stranger", "no-such-character", width=SIZE, height=SIZE):
                        pass
                assert unknown.value.code == grpc.StatusCode.INVALID_ARGUMENT
                assert "character_id" in unknown.value.details

                with pytest.raises(AvatarError) as busy:
                    async with client.converse("healthy", "default", width=SIZE, height=SIZE):
                        pass
                assert busy.value.code == grpc.StatusCode.ABORTED

                huge = converse_pb2.ClientMessage(audio=converse_pb2.AudioPacket(payload=b"\0" * 10_000_000))
                err = await first_message(huge)
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

                async with client.converse("noisy", "default", width=SIZE, height=SIZE, fps=FPS,
                                           stats_interval_ms=200) as noisy:
                    for _ in range(5):
                        await noisy.send_opus_packet(b"\x03\x00" + os.urandom(40))  # code 3 with zero frames: never valid
                    items = await collect(noisy, lambda it: any(
                        isinstance(i, converse_pb2.SessionStats) and i.audio.garbage >= 5 for i in it))
                    assert events_of(items, converse_pb2.EVENT_CODE_AUDIO_GARBAGE)

                before = len(frames_of(await healthy_frames(healthy, 1)))
                assert before >= 1  # the healthy session kept streaming through all of the above

    run(scenario())


def test_npc_memory_survives_a_server_restart(tmp_path, speech):
    async def talk(address):
        async with AvatarClient(address) as client:
            async with client.converse("keeper", "default", width=SIZE, height=SIZE, fps=FPS) as conv:
                await conv.send_audio_pcm(speech[: RATE])
                await conv.end_utterance()
                await collect(conv, lambda it: len(frames_of(it)) >= 21)
            return await client.get_npc("keeper")

    async def look(address):
        async with AvatarClient(address) as client:
            return await client.get_npc("keeper"), await client.list_npcs()

    first = Server(tmp_path).start()
    try:
        before = run(talk(first.address))
    finally:
        assert first.stop() == 0
    assert (tmp_path / "npcs" / "keeper.npcmem").is_file()

    second = Server(tmp_path).start()
    try:
        after, listed = run(look(second.address))
    finally:
        second.stop()
    assert after.blocks_generated == before.blocks_generated >= 1
    assert after.resume_token == before.resume_token and after.memory_bytes == before.memory_bytes
    assert [n.npc_id for n in listed] == ["keeper"]
