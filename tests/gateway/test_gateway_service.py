"""AvatarService's unary calls (characters, NPCs, server info), health, reflection and the API key, in front of
the real worker engine (in a thread of this process, with the stand-in generator)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
from gateway_harness import (
    async_test,
    expect_rpc_error,
    final_status,
    next_of,
    open_session,
    png_bytes,
    register_character,
    running_gateway,
    session_config,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from avatar_backend.proto_gen import avatar_service_pb2 as pb
from avatar_backend.proto_gen import converse_pb2 as cv
from avatar_backend.store import DataDir

# -- characters ---------------------------------------------------------------------------------------------


@async_test
async def test_register_stores_a_png_and_refuses_duplicates(tmp_path):
    async with running_gateway(tmp_path) as h:
        character = await register_character(h.stub, reference_image=png_bytes(80, 60, fmt="JPEG"))
        assert (character.reference_width, character.reference_height) == (80, 60)
        assert character.emotion_prompts["happy"] and character.npc_count == 0
        stored = DataDir(tmp_path)
        with Image.open(stored.reference_image_path("hero")) as image:
            assert image.format == "PNG" and image.size == (80, 60)
        assert stored.read_character("hero").revision == 1

        await expect_rpc_error(register_character(h.stub), grpc.StatusCode.ALREADY_EXISTS)
        replaced = await register_character(h.stub, base_prompt="a new look", replace=True)
        assert replaced.base_prompt == "a new look"
        assert stored.read_character("hero").revision == 2
        await h.gateway.runtime.wait_background(2.0)
        assert [r.character_id for r in h.link.requests_of("drop_character")] == ["hero"]

        listed = await h.stub.ListCharacters(pb.ListCharactersRequest())
        assert [c.character_id for c in listed.characters] == ["hero"]
        got = await h.stub.GetCharacter(pb.GetCharacterRequest(character_id="hero"))
        assert got.base_prompt == "a new look"
        await expect_rpc_error(h.stub.GetCharacter(pb.GetCharacterRequest(character_id="ghost")),
                               grpc.StatusCode.NOT_FOUND)


@async_test
async def test_register_validates_every_field(tmp_path):
    async with running_gateway(tmp_path, max_reference_image_bytes=100_000, max_prompt_chars=50) as h:
        cases = [
            ({"character_id": "bad/id"}, grpc.StatusCode.INVALID_ARGUMENT, "character_id:"),
            ({"reference_image": b""}, grpc.StatusCode.INVALID_ARGUMENT, "reference_image:"),
            ({"reference_image": b"GIF89a not an image"}, grpc.StatusCode.INVALID_ARGUMENT, "reference_image:"),
            ({"reference_image": png_bytes(fmt="GIF")}, grpc.StatusCode.INVALID_ARGUMENT, "reference_image: GIF"),
            ({"reference_image": png_bytes()[:100]}, grpc.StatusCode.INVALID_ARGUMENT, "reference_image:"),
            ({"reference_image": png_bytes(8, 8)}, grpc.StatusCode.INVALID_ARGUMENT, "reference_image:"),
            ({"reference_image": b"\x89PNG" + b"\x00" * 200_000}, grpc.StatusCode.RESOURCE_EXHAUSTED,
             "reference_image:"),
            ({"base_prompt": "x" * 51}, grpc.StatusCode.INVALID_ARGUMENT, "base_prompt:"),
            ({"emotion_prompts": {"sad": ""}}, grpc.StatusCode.INVALID_ARGUMENT, "emotion_prompts[sad]:"),
            ({"action_prompts": {" wave": "waving"}}, grpc.StatusCode.INVALID_ARGUMENT, "action_prompts:"),
        ]
        for fields, code, prefix in cases:
            err = await expect_rpc_error(register_character(h.stub, **fields), code)
            assert err.details().startswith(prefix), (fields.keys(), err.details())
        assert not (tmp_path / "characters").exists() or not any((tmp_path / "characters").iterdir())


@async_test
async def test_delete_character_in_use(tmp_path):
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        call, _ = await open_session(h.stub)
        await next_of(call, "frame")
        got = await h.stub.GetCharacter(pb.GetCharacterRequest(character_id="hero"))
        assert got.npc_count == 1
        err = await expect_rpc_error(h.stub.DeleteCharacter(pb.DeleteCharacterRequest(character_id="hero")),
                                     grpc.StatusCode.FAILED_PRECONDITION)
        assert "npc-1" in err.details() and "delete_npcs" in err.details()
        await expect_rpc_error(h.stub.DeleteCharacter(pb.DeleteCharacterRequest(character_id="hero", delete_npcs=True)),
                               grpc.StatusCode.ABORTED)
        await call.done_writing()
        await final_status(call)
        deleted = await h.stub.DeleteCharacter(pb.DeleteCharacterRequest(character_id="hero", delete_npcs=True))
        assert deleted.npcs_deleted == 1
        assert not DataDir(tmp_path).has_character("hero")
        assert (await h.stub.ListNpcs(pb.ListNpcsRequest())).npcs == []
        await expect_rpc_error(h.stub.DeleteCharacter(pb.DeleteCharacterRequest(character_id="hero")),
                               grpc.StatusCode.NOT_FOUND)


# -- NPCs ---------------------------------------------------------------------------------------------------


@async_test
async def test_npc_calls(tmp_path):
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        await expect_rpc_error(h.stub.GetNpc(pb.GetNpcRequest(npc_id="npc-1")), grpc.StatusCode.NOT_FOUND)
        await expect_rpc_error(h.stub.GetNpc(pb.GetNpcRequest(npc_id="")), grpc.StatusCode.INVALID_ARGUMENT)

        call, _ = await open_session(h.stub)
        await next_of(call, "frame")
        npc = await h.stub.GetNpc(pb.GetNpcRequest(npc_id="npc-1"))
        assert npc.live and npc.character_id == "hero" and npc.blocks_generated >= 1
        await expect_rpc_error(h.stub.ResetNpc(pb.ResetNpcRequest(npc_id="npc-1")), grpc.StatusCode.ABORTED)
        await expect_rpc_error(h.stub.DeleteNpc(pb.DeleteNpcRequest(npc_id="npc-1")), grpc.StatusCode.ABORTED)
        await call.done_writing()
        await final_status(call)

        listed = await h.stub.ListNpcs(pb.ListNpcsRequest(character_id="hero"))
        assert [n.npc_id for n in listed.npcs] == ["npc-1"] and not listed.npcs[0].live
        reset = await h.stub.ResetNpc(pb.ResetNpcRequest(npc_id="npc-1"))
        assert reset.blocks_generated == 0
        await h.stub.DeleteNpc(pb.DeleteNpcRequest(npc_id="npc-1"))
        await expect_rpc_error(h.stub.GetNpc(pb.GetNpcRequest(npc_id="npc-1")), grpc.StatusCode.NOT_FOUND)


@async_test
async def test_an_npc_with_an_unreadable_snapshot_is_data_loss_listed_apart_and_can_be_deleted(tmp_path):
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        call, _ = await open_session(h.stub)
        await next_of(call, "frame")
        await call.done_writing()
        await final_status(call)
        DataDir(h.data_dir).npc_memory_path("broken").write_bytes(b"\x00 not an NPC memory \xff" * 10)

        err = await expect_rpc_error(h.stub.GetNpc(pb.GetNpcRequest(npc_id="broken")), grpc.StatusCode.DATA_LOSS)
        assert "'broken'" in err.details() and "is not a stand-in NPC memory" in err.details()
        # The same answer as opening a session on it.
        opening = h.stub.Converse()
        await opening.write(session_config(npc_id="broken"))
        code, details, _ = await final_status(opening)
        assert (code, details) == (grpc.StatusCode.DATA_LOSS, err.details())
        # A listing leaves it out and keeps the others; counts skip it.
        assert [n.npc_id for n in (await h.stub.ListNpcs(pb.ListNpcsRequest())).npcs] == ["npc-1"]
        assert (await h.stub.GetCharacter(pb.GetCharacterRequest(character_id="hero"))).npc_count == 1
        await expect_rpc_error(h.stub.GetNpc(pb.GetNpcRequest(npc_id="ghost")), grpc.StatusCode.NOT_FOUND)

        await expect_rpc_error(h.stub.ResetNpc(pb.ResetNpcRequest(npc_id="broken")), grpc.StatusCode.DATA_LOSS)
        await h.stub.DeleteNpc(pb.DeleteNpcRequest(npc_id="broken"))
        assert not DataDir(h.data_dir).npc_memory_path("broken").exists()
        await expect_rpc_error(h.stub.DeleteNpc(pb.DeleteNpcRequest(npc_id="broken")), grpc.StatusCode.NOT_FOUND)


@async_test
async def test_npc_calls_while_the_worker_is_down_are_unavailable(tmp_path):
    async with running_gateway(tmp_path) as h:
        await h.kill_worker("worker pid 7 exited with code 1")
        err = await expect_rpc_error(h.stub.ListNpcs(pb.ListNpcsRequest()), grpc.StatusCode.UNAVAILABLE)
        assert "generator worker stopped" in err.details()


# -- server info, health, reflection, auth -----------------------------------------------------------------


@async_test
async def test_server_info(tmp_path):
    async with running_gateway(tmp_path, max_sessions=3) as h:
        info = await h.stub.GetServerInfo(pb.GetServerInfoRequest())
        assert info.worker_ready and info.worker_device == "cpu"
        assert info.model.name == "tiny" and info.model.random_weights
        assert (info.model.first_block_frames, info.model.block_frames, info.model.denoising_steps) == (21, 32, 3)
        assert (info.model.default_width, info.model.default_height, info.model.default_fps) == (128, 128, 20)
        assert [(s.width, s.height) for s in info.video_sizes][0] == (128, 128)
        assert list(info.fps) == [20]
        assert list(info.video_codecs) == [cv.VIDEO_CODEC_JPEG, cv.VIDEO_CODEC_RAW_RGB]
        assert list(info.audio_codecs) == [cv.AUDIO_CODEC_OPUS, cv.AUDIO_CODEC_PCM16]
        assert list(info.audio_sample_rates) == [16000, 48000]
        assert info.limits.max_sessions == 3 and info.limits.max_message_bytes == 4 << 20
        assert info.model.prompt_guidance == 3.0 and info.limits.max_prompt_guidance == 10.0
        assert info.model.prompt_onset_latents == 3


@async_test
async def test_health_and_reflection(tmp_path):
    async with running_gateway(tmp_path) as h:
        health = health_pb2_grpc.HealthStub(h.channel)
        for service in ("", "avatar.v1.AvatarService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        reflection = reflection_pb2_grpc.ServerReflectionStub(h.channel)
        call = reflection.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
        names = {s.name for s in reply.list_services_response.service}
        assert {"avatar.v1.AvatarService", "grpc.health.v1.Health"} <= names

        await h.kill_worker("gone")
        for _ in range(40):
            reply = await health.Check(health_pb2.HealthCheckRequest(service="avatar.v1.AvatarService"))
            if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.05)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


@async_test
async def test_api_key(tmp_path):
    async with running_gateway(tmp_path, api_key="s3cret") as h:
        err = await expect_rpc_error(h.stub.ListCharacters(pb.ListCharactersRequest()),
                                     grpc.StatusCode.UNAUTHENTICATED)
        assert "Bearer" in err.details()
        await expect_rpc_error(h.stub.ListCharacters(pb.ListCharactersRequest(),
                                                     metadata=(("authorization", "Bearer wrong"),)),
                               grpc.StatusCode.UNAUTHENTICATED)
        call = h.stub.Converse()
        await call.write(session_config())
        assert (await final_status(call))[0] == grpc.StatusCode.UNAUTHENTICATED

        authorized = (("authorization", "Bearer s3cret"),)
        await h.stub.ListCharacters(pb.ListCharactersRequest(), metadata=authorized)
        # Health stays open for load balancers.
        reply = await health_pb2_grpc.HealthStub(h.channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_the_gateway_never_imports_torch():
    code = ("import sys, avatar_backend.gateway.server, avatar_backend.gateway.session; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
