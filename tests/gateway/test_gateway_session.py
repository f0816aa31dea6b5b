"""The Converse state machine over a real grpc.aio server, in front of the real worker engine (scheduler and
memory pool in a thread of this process, with the stand-in generator: frame k is the flat colour
(k % 256, k // 256 % 256, 255 if its block had voice else 0))."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import grpc
import numpy as np
import pytest
import simplejpeg
from gateway_harness import (
    ACTIONS,
    EMOTIONS,
    async_test,
    final_status,
    next_of,
    open_session,
    register_character,
    running_gateway,
    session_config,
)

from avatar_backend.client.errors import AvatarError
from avatar_backend.generator.config import TINY
from avatar_backend.media import encoders
from avatar_backend.media.encoders import JpegEncoder
from avatar_backend.media.opus import OpusEncoder
from avatar_backend.proto_gen import avatar_service_pb2 as pb
from avatar_backend.proto_gen import converse_pb2 as cv


def _kind(message) -> str:
    return message.WhichOneof("message")


PCM16_16K = cv.AudioFormat(codec=cv.AUDIO_CODEC_PCM16, sample_rate=16000)
# The model's blocks on its 16 kHz timeline (TINY at 20 fps: 800 samples a frame).
FIRST_BLOCK_SAMPLES = 21 * 800
BLOCK_SAMPLES = 32 * 800
LOOKAHEAD_SAMPLES = 2 * 800   # voice a block peeks at beyond its own
# A session's first block waits this long for voice instead of 0.3 s: no idle block goes before the voice, however
# slowly the test sends it.
VOICE_FIRST = {"start_grace_s": 10.0}


async def say(call, seq: int, samples: int, packet_samples: int = 4000) -> int:
    """Send ``samples`` of a 16 kHz PCM16 tone at once (as a TTS would); returns the next sequence number."""
    pcm = (8000 * np.sin(np.arange(samples) * 2 * np.pi * 220 / 16000)).astype("<i2")
    for start in range(0, samples, packet_samples):
        await call.write(cv.ClientMessage(audio=cv.AudioPacket(
            sequence_number=seq, payload=pcm[start:start + packet_samples].tobytes())))
        seq += 1
    return seq


async def next_frame(call, *, speaking: bool, events: list, timeout: float = 5.0):
    """The next frame that is (or is not) speaking; AUDIO_GAP events on the way go into ``events``."""
    seen: list = []
    deadline = time.monotonic() + timeout
    while True:
        message = await next_of(call, "frame", timeout=max(0.0, deadline - time.monotonic()), seen=seen)
        events += [m.event for m in seen if _kind(m) == "event" and m.event.code == cv.EVENT_CODE_AUDIO_GAP]
        seen.clear()
        if message.frame.speaking == speaking:
            return message.frame


# -- opening ------------------------------------------------------------------------------------------------


@async_test
async def test_first_message_must_be_a_config(tmp_path):
    async with running_gateway(tmp_path) as h:
        call = h.stub.Converse()
        await call.write(cv.ClientMessage(audio=cv.AudioPacket(sequence_number=0, payload=b"\x00\x00")))
        code, details, messages = await final_status(call)
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "SessionConfig" in details
        assert messages == []

        call = h.stub.Converse()
        await call.done_writing()
        code, _, _ = await final_status(call)
        assert code == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("fields, field_name", [
    ({"character_id": "nobody"}, "character_id"),
    ({"npc_id": "bad id!"}, "npc_id"),
    ({"video": cv.VideoFormat(width=300, height=300)}, "video.width"),
    ({"video": cv.VideoFormat(width=128, height=64)}, "video.height"),
    ({"video": cv.VideoFormat(width=128)}, "video.height"),
    ({"video": cv.VideoFormat(fps=25)}, "video.fps"),
    ({"video": cv.VideoFormat(codec=cv.VIDEO_CODEC_H264)}, "video.codec"),
    ({"video": cv.VideoFormat(codec=42)}, "video.codec"),
    ({"video": cv.VideoFormat(jpeg_quality=101)}, "video.jpeg_quality"),
    ({"audio": cv.AudioFormat(sample_rate=44100)}, "audio.sample_rate"),
    ({"audio": cv.AudioFormat(channels=2)}, "audio.channels"),
    ({"audio": cv.AudioFormat(codec=9)}, "audio.codec"),
    ({"stats_interval_ms": 50}, "stats_interval_ms"),
    ({"prompt_guidance": 0.5}, "prompt_guidance"),
    ({"prompt_guidance": 0.0}, "prompt_guidance"),
    ({"prompt_guidance": 10.5}, "prompt_guidance"),
    ({"prompt_guidance": float("nan")}, "prompt_guidance"),
    ({"prompt_guidance": float("inf")}, "prompt_guidance"),
])
@async_test
async def test_invalid_config_names_the_field(tmp_path, fields, field_name):
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        call = h.stub.Converse()
        await call.write(session_config(**fields))
        code, details, _ = await final_status(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith(f"{field_name}:"), details
        assert not h.link.requests_of("open_npc")


@async_test
async def test_a_sessions_prompt_guidance_reaches_its_blocks_and_is_reported(tmp_path):
    """A session that sets prompt_guidance runs every block with it and SessionAccepted says so; one that does not
    runs with the worker's (the tiny config's 3), and so does the NPC's next session."""
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        blocks_before = len(h.generator.prompt_guidances)
        call, accepted = await open_session(h.stub, session_config(npc_id="vivid", prompt_guidance=4.5))
        assert accepted.prompt_guidance == 4.5
        await next_of(call, "frame")
        await call.done_writing()
        await next_of(call, "ended", timeout=10.0)
        guided = h.generator.prompt_guidances[blocks_before:]
        assert guided and set(guided) == {4.5}, guided
        assert h.link.requests_of("open_npc")[-1].prompt_guidance == 4.5

        blocks_before = len(h.generator.prompt_guidances)
        call, accepted = await open_session(h.stub, session_config(npc_id="vivid", character_id=""))
        assert accepted.resumed and accepted.prompt_guidance == 3.0
        assert not h.link.requests_of("open_npc")[-1].HasField("prompt_guidance")
        await next_of(call, "frame")
        await call.done_writing()
        await next_of(call, "ended", timeout=10.0)
        assert set(h.generator.prompt_guidances[blocks_before:]) == {3.0}


@async_test
async def test_a_model_that_does_not_guide_lets_no_session_turn_guidance_on_unless_the_operator_does(tmp_path):
    """liveact-18b's guided pass needs a scratch copy of a step's cache per NPC: on a model whose default is 1 (off),
    sessions may not ask for more unless `serve --max-prompt-guidance` allows it."""
    unguided = dataclasses.replace(TINY, sampler=dataclasses.replace(TINY.sampler, prompt_guidance=1.0))
    async with running_gateway(tmp_path / "default", generator_config=unguided) as h:
        info = await h.stub.GetServerInfo(pb.GetServerInfoRequest())
        assert info.model.prompt_guidance == 1.0 and info.limits.max_prompt_guidance == 1.0
        await register_character(h.stub)
        call = h.stub.Converse()
        await call.write(session_config(prompt_guidance=2.0))
        code, details, _ = await final_status(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("prompt_guidance: 2 is refused") and "serve --max-prompt-guidance" in details
        call, accepted = await open_session(h.stub, session_config(prompt_guidance=1.0))
        assert accepted.prompt_guidance == 1.0
        await call.done_writing()
        await next_of(call, "ended", timeout=10.0)
    async with running_gateway(tmp_path / "allowed", generator_config=unguided, max_prompt_guidance=2.2) as h:
        info = await h.stub.GetServerInfo(pb.GetServerInfoRequest())
        assert info.limits.max_prompt_guidance == pytest.approx(2.2)
        await register_character(h.stub)
        # The limit as advertised (a float32 a little above 2.2) is within the limit.
        call, accepted = await open_session(h.stub, session_config(prompt_guidance=info.limits.max_prompt_guidance))
        assert accepted.prompt_guidance == pytest.approx(2.2)
        await call.done_writing()
        await next_of(call, "ended", timeout=10.0)
        call = h.stub.Converse()
        await call.write(session_config(npc_id="npc-2", prompt_guidance=2.5))
        code, details, _ = await final_status(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("prompt_guidance: 2.5 is out of range 1-2.2"), details
    # A server whose default is above the operator's limit still lets a session ask for its default.
    async with running_gateway(tmp_path / "below", max_prompt_guidance=1.5) as h:
        info = await h.stub.GetServerInfo(pb.GetServerInfoRequest())
        assert (info.model.prompt_guidance, info.limits.max_prompt_guidance) == (3.0, 3.0)


@async_test
async def test_unsupported_size_lists_the_supported_ones(tmp_path):
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        call = h.stub.Converse()
        await call.write(session_config(video=cv.VideoFormat(width=300, height=300)))
        _, details, _ = await final_status(call)
        assert details == ("video.width: 300 is not a supported size; supported: 128x128, 64x64, 192x192, 256x256")


@async_test
async def test_worker_refusals_keep_their_codes(tmp_path):
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        # A new NPC needs a character: the worker says so, the client sees INVALID_ARGUMENT.
        call = h.stub.Converse()
        await call.write(session_config(npc_id="fresh", character_id=""))
        code, details, _ = await final_status(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("character_id:")

        call, accepted = await open_session(h.stub)
        await call.done_writing()
        assert (await final_status(call))[0] == grpc.StatusCode.OK
        call = h.stub.Converse()
        await call.write(session_config(resume_token="stale"))
        code, _, _ = await final_status(call)
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        call = h.stub.Converse()
        await call.write(session_config(video=cv.VideoFormat(width=64, height=64)))
        code, details, _ = await final_status(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT  # the memory was made at the default 128x128
        # The worker's refusal names the field in the status details, as the gateway's own refusals do.
        error = AvatarError.from_status(code, details, await call.trailing_metadata())
        assert error.field == "video.width" and "made for 128x128" in details, details


@async_test
async def test_second_session_for_a_live_npc_is_aborted(tmp_path):
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        first, _ = await open_session(h.stub)
        second = h.stub.Converse()
        await second.write(session_config())
        code, details, _ = await final_status(second)
        assert code == grpc.StatusCode.ABORTED
        assert "npc-1" in details
        # The first session is untouched.
        await next_of(first, "frame")
        first.cancel()


@async_test
async def test_session_limit_is_resource_exhausted_with_retry_hint(tmp_path):
    async with running_gateway(tmp_path, max_sessions=1) as h:
        await register_character(h.stub)
        first, _ = await open_session(h.stub)
        second = h.stub.Converse()
        await second.write(session_config(npc_id="npc-2"))
        code, details, _ = await final_status(second)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = await second.trailing_metadata()
        assert int(dict(trailers)["retry-after-ms"]) > 0
        # The same hint as a google.rpc.RetryInfo detail, for clients that read the rich error model.
        error = AvatarError.from_status(code, details, trailers)
        assert error.retry_after_ms == int(dict(trailers)["retry-after-ms"])
        first.cancel()


@async_test
async def test_an_over_long_id_is_invalid_argument_with_a_bounded_message(tmp_path):
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        call = h.stub.Converse()
        await call.write(session_config(npc_id="n" * 200_000))
        code, details, _ = await final_status(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        error = AvatarError.from_status(code, details, await call.trailing_metadata())
        assert error.field == "npc_id" and len(details) <= 1024
        for bad in ("npc\n", "npc\r", " npc", "npc/../x"):
            call = h.stub.Converse()
            await call.write(session_config(npc_id=bad))
            code, _, _ = await final_status(call)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, repr(bad)


# -- live ---------------------------------------------------------------------------------------------------


@async_test
async def test_frames_echo_and_stats_on_the_session_clock(tmp_path):
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        call, accepted = await open_session(h.stub, session_config(
            video=cv.VideoFormat(width=64, height=64), audio=cv.AudioFormat(sample_rate=48000),
            stats_interval_ms=100))
        assert accepted.video.codec == cv.VIDEO_CODEC_JPEG and accepted.video.jpeg_quality == 85
        assert accepted.audio.codec == cv.AUDIO_CODEC_OPUS and accepted.audio.sample_rate == 48000
        assert (accepted.first_block_frames, accepted.block_frames, accepted.model) == (21, 32, "tiny")
        assert accepted.start_frame_index == 0 and not accepted.resumed

        seen: list = []
        frames = []
        while len(frames) < 40:
            message = await next_of(call, "frame", seen=seen)
            frames.append(message.frame)
        echo = [m.audio_echo for m in seen if _kind(m) == "audio_echo"]
        assert echo[0].start == 0 and echo[0].sample_rate == 16000
        # 21 frames at 20 fps = 1.05 s = 16800 samples at 16 kHz, echoed as PCM16.
        assert len(echo[0].pcm16) == 21 * 800 * 2
        assert echo[1].start == 21 * 2400  # the second block's echo, on the 48 kHz session clock
        for i, frame in enumerate(frames):
            assert frame.index == i
            assert frame.pts == i * 2400 and frame.pts_us == i * 50_000
            assert (frame.audio_start, frame.audio_end) == (i * 2400, (i + 1) * 2400)
            assert frame.block_index == (0 if i < 21 else 1)
            assert frame.keyframe and frame.codec == cv.VIDEO_CODEC_JPEG
            assert not frame.speaking  # nothing was said: idle blocks
        image = simplejpeg.decode_jpeg(frames[5].data)
        assert image.shape == (64, 64, 3)
        red, green, blue = (int(image[..., c].mean()) for c in range(3))
        assert abs(red - 5) <= 2 and green <= 2 and blue <= 2

        stats = (await next_of(call, "stats", timeout=2.0)).stats
        assert stats.frames_sent >= 40 and stats.blocks_generated >= 2
        assert list(stats.devices) == []  # the in-process worker has no NVML device to report
        assert stats.first_frame_latency_ms > 0

        await call.done_writing()
        code, _, _ = await final_status(call)
        assert code == grpc.StatusCode.OK
        assert [c.session_id for c in h.link.requests_of("close_npc")] == [accepted.session_id]
        assert not h.gateway.runtime.sessions.is_live("npc-1")
        assert not h.engine.pool.query("npc-1")[0].live


@async_test
async def test_audio_controls_and_interrupt_reach_the_worker(tmp_path):
    # Whatever the first interrupt finds was never turned into video.
    async with running_gateway(tmp_path, worker_options=VOICE_FIRST) as h:
        await register_character(h.stub)
        call, _ = await open_session(h.stub, session_config(
            video=cv.VideoFormat(width=64, height=64)))
        encoder = OpusEncoder(48000, frame_ms=20)
        voice = (0.3 * np.sin(np.arange(48000) * 2 * np.pi * 220 / 48000)).astype(np.float32)
        packets = encoder.encode_all(voice)  # one second, 50 packets
        for seq, packet in enumerate(packets):
            await call.write(cv.ClientMessage(audio=cv.AudioPacket(sequence_number=seq, payload=packet)))
        # Less than a block of voice, and the utterance goes on: the worker holds it, generating nothing.
        await call.write(cv.ClientMessage(emotion=cv.EmotionEvent(name="happy", intensity=0.5)))
        await call.write(cv.ClientMessage(emotion=cv.EmotionEvent(name="bored")))
        await call.write(cv.ClientMessage(action=cv.ActionEvent(preset="wave")))
        await call.write(cv.ClientMessage(action=cv.ActionEvent(preset="dance")))
        await call.write(cv.ClientMessage(action=cv.ActionEvent(free_text="x" * 5000)))
        await call.write(cv.ClientMessage(listening=cv.ListeningEvent(listening=True)))
        await call.write(cv.ClientMessage(interrupt=cv.InterruptRequest()))

        seen: list = []
        ack = (await next_of(call, "interrupt_ack", seen=seen)).interrupt_ack
        events = {m.event.code: m.event for m in seen if _kind(m) == "event"}
        assert events[cv.EVENT_CODE_UNKNOWN_EMOTION].details["name"] == "bored"
        assert events[cv.EVENT_CODE_UNKNOWN_ACTION].details["name"] == "dance"
        assert events[cv.EVENT_CODE_INVALID_EVENT].details["field"] == "action.free_text"
        assert not [m for m in seen if _kind(m) == "frame"]

        # One second of voice went to the worker at 16 kHz (Opus decodes straight to the model's rate), less
        # the encoder's look-ahead (6.5 ms, 104 samples) that the gateway trims so the voice lines up.
        assert sum(p.num_samples for p in h.link.requests_of("push_audio")) == 16000 - 104
        sent = h.link.requests_of("control")
        controls = [(c.WhichOneof("event"), getattr(c, c.WhichOneof("event"))) for c in sent]
        assert controls == [
            ("emotion_prompt", EMOTIONS["happy"]), ("action_prompt", ACTIONS["wave"]), ("listening", True),
            ("interrupt", True),
        ]
        assert sent[0].intensity == pytest.approx(0.5)
        # The worker's session took each of them (its reply to the interrupt came after them all).
        session = h.worker_session("npc-1")
        assert (session.prompt, session.intensity) == (EMOTIONS["happy"], pytest.approx(0.5))
        assert session.action_prompt == ACTIONS["wave"] and session.listening
        assert len(session.voice) == 0 and session.voice_consumed == 0 and session.blocks == 0
        # No block was made yet, so the whole second was dropped; on the session clock (48 kHz, the Opus
        # default).
        assert (ack.generated_until, ack.dropped_samples, ack.next_frame_index) == (0, (16000 - 104) * 3, 0)

        # The next utterance ends: the worker makes its video at once, with the action's prompt.
        for seq, packet in enumerate(encoder.encode_all(voice), start=len(packets)):
            await call.write(cv.ClientMessage(audio=cv.AudioPacket(sequence_number=seq, payload=packet)))
        await call.write(cv.ClientMessage(end_of_utterance=cv.EndOfUtterance()))
        seen = []
        while True:
            event = (await next_of(call, "event", seen=seen)).event
            if event.code == cv.EVENT_CODE_UTTERANCE_COMPLETE:
                break
        said = sum(p.num_samples for p in h.link.requests_of("push_audio")) - (16000 - 104)
        assert said <= 21 * 800  # all of it fits in the first block
        assert event.details["timeline_end"] == str(said * 3)
        frames = [m.frame for m in seen if _kind(m) == "frame"]
        assert [f.index for f in frames] == list(range(21))
        assert [f.speaking for f in frames] == [k * 800 < said for k in range(21)]
        assert h.generator.prompts[0] == ACTIONS["wave"]
        assert session.action_prompt is None  # an action conditions one block only
        assert controls + [("end_of_utterance", True)] == [
            (c.WhichOneof("event"), getattr(c, c.WhichOneof("event"))) for c in h.link.requests_of("control")]

        # A playback position far beyond anything made (here the largest a client can send) is clamped, and the
        # interrupt that uses it is still answered.
        await call.write(cv.ClientMessage(playback=cv.PlaybackProgress(played_until=(1 << 64) - 1)))
        await call.write(cv.ClientMessage(interrupt=cv.InterruptRequest()))
        ack = (await next_of(call, "interrupt_ack")).interrupt_ack
        assert ack.replace_from_pts == ack.played_until == ack.generated_until >= 21 * 2400
        assert ack.unheard_samples == 0
        call.cancel()


@async_test
async def test_an_interrupt_counts_the_packets_held_behind_a_lost_one_and_keeps_the_voice_count(tmp_path):
    """Packets held behind a missing one when an interrupt comes are dropped with the voice it replaced (in
    dropped_samples, the missing one lost), so the voice count that times events stays the client's."""
    async with running_gateway(tmp_path, worker_options=VOICE_FIRST) as h:
        await register_character(h.stub)
        call, _ = await open_session(h.stub, session_config(
            video=cv.VideoFormat(width=64, height=64), audio=PCM16_16K, stats_interval_ms=100))
        packet = 8000  # half a second per packet
        pcm = (8000 * np.sin(np.arange(packet) * 2 * np.pi * 220 / 16000)).astype("<i2").tobytes()
        for seq in (0, 2, 3):  # packet 1 is late: 2 and 3 wait for it
            await call.write(cv.ClientMessage(audio=cv.AudioPacket(sequence_number=seq, payload=pcm)))
        # Timed to a word in packet 2: voice the interrupt drops, so the event never shows.
        await call.write(cv.ClientMessage(emotion=cv.EmotionEvent(name="angry", at_voice_sample=2 * packet + 100)))
        await call.write(cv.ClientMessage(interrupt=cv.InterruptRequest()))
        ack = (await next_of(call, "interrupt_ack")).interrupt_ack
        assert sum(p.num_samples for p in h.link.requests_of("push_audio")) == packet, \
            "packets 2 and 3 were still held at the interrupt"
        # No block was made: packet 0 queued at the worker, and 1 (concealed), 2 and 3 in the gateway.
        assert ack.dropped_samples == 4 * packet
        session = h.worker_session("npc-1")
        assert session.timed_events == []
        # Sent after the interrupt, timed into the voice it dropped here (packet 3) or at the worker (packet 0):
        # never shown either.
        for point in (3 * packet + 100, 100):
            await call.write(cv.ClientMessage(emotion=cv.EmotionEvent(name="angry", at_voice_sample=point)))

        await call.write(cv.ClientMessage(audio=cv.AudioPacket(sequence_number=1, payload=pcm)))
        while (stats := (await next_of(call, "stats")).stats).audio.received < 4:
            pass
        assert (stats.audio.lost, stats.audio.late, stats.audio.duplicates) == (1, 1, 0)

        # The client counted every packet it sent: the next line starts at 4 packets. An emotion timed 6000
        # samples into its second block conditions that block.
        await call.write(cv.ClientMessage(emotion=cv.EmotionEvent(
            name="happy", at_voice_sample=4 * packet + FIRST_BLOCK_SAMPLES + 6000)))
        await say(call, 4, FIRST_BLOCK_SAMPLES + BLOCK_SAMPLES, packet_samples=packet)
        await call.write(cv.ClientMessage(end_of_utterance=cv.EndOfUtterance()))
        while (await next_of(call, "event")).event.code != cv.EVENT_CODE_UTTERANCE_COMPLETE:
            pass
        assert h.generator.prompts[:2] == [None, EMOTIONS["happy"]]
        assert EMOTIONS["angry"] not in h.generator.prompts and session.timed_events == []
        call.cancel()


@async_test
async def test_garbage_audio_is_counted_and_the_stream_goes_on(tmp_path):
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        call, _ = await open_session(h.stub, session_config(
            video=cv.VideoFormat(width=64, height=64), stats_interval_ms=100))
        encoder = OpusEncoder(48000, frame_ms=20)
        good = encoder.encode_all(np.zeros(960 * 4, dtype=np.float32))
        payloads = [good[0], b"\xff\xff\xff\xff garbage", good[1], b"", good[2], bytes(range(256)) * 3, good[3]]
        for seq, payload in enumerate(payloads):
            await call.write(cv.ClientMessage(audio=cv.AudioPacket(sequence_number=seq, payload=payload)))
        seen: list = []
        event = (await next_of(call, "event", seen=seen)).event
        assert event.code == cv.EVENT_CODE_AUDIO_GARBAGE
        deadline = time.monotonic() + 3
        while True:
            stats = (await next_of(call, "stats")).stats
            if stats.audio.garbage >= 2 or time.monotonic() > deadline:
                break
        assert stats.audio.received == len(payloads)
        assert stats.audio.garbage >= 2
        # Still live: frames keep coming.
        await next_of(call, "frame")
        await next_of(call, "frame")
        call.cancel()


@async_test
async def test_each_reported_gap_is_one_event_with_its_length(tmp_path):
    async with running_gateway(tmp_path, worker_options={**VOICE_FIRST, "voice_jitter_budget_s": 0.1}) as h:
        await register_character(h.stub)
        call, _ = await open_session(h.stub, session_config(video=cv.VideoFormat(width=64, height=64),
                                                            audio=PCM16_16K))
        # Each burst is one block of voice plus its look-ahead (2 frames): the block after it runs out of
        # voice, so the worker pads it with 30 frames of silence inside the utterance. The next burst is sent
        # once that silence shows, and the block that resumes the voice reports the gap: 24000 samples.
        seq = await say(call, 0, FIRST_BLOCK_SAMPLES + LOOKAHEAD_SAMPLES)
        events: list = []
        for _ in range(3):
            await next_frame(call, speaking=True, events=events)
            await next_frame(call, speaking=False, events=events)
            seq = await say(call, seq, BLOCK_SAMPLES + LOOKAHEAD_SAMPLES)
        await next_frame(call, speaking=True, events=events)  # a gap's event comes before the block's frames
        call.cancel()
        # One event per gap the worker reports (never merged away), each with its length and the running total.
        assert [(e.details["gap_ms"], e.details["gap_samples"], e.details["total_ms"]) for e in events] == [
            ("1500", "24000", "1500"), ("1500", "24000", "3000"), ("1500", "24000", "4500")]


@async_test
async def test_a_speakers_pause_between_utterances_is_not_speaking(tmp_path):
    # Two utterances at real-time pace (a microphone, a streaming TTS) 0.6 s apart: the worker keeps the pause
    # as silence between them, inside the voice it holds for the next utterance. Each frame is speaking exactly
    # when the echoed audio at its pts is voice, so the pause's frames are not.
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        call, _ = await open_session(h.stub, session_config(video=cv.VideoFormat(width=64, height=64),
                                                            audio=PCM16_16K))
        messages: list = []
        ends: list[int] = []            # UTTERANCE_COMPLETE's timeline_end, per utterance
        completed = asyncio.Event()

        async def read():
            while (message := await call.read()) is not grpc.aio.EOF:
                messages.append(message)
                if _kind(message) == "event" and message.event.code == cv.EVENT_CODE_UTTERANCE_COMPLETE:
                    ends.append(int(message.event.details["timeline_end"]))
                    if len(ends) == 2:
                        completed.set()

        reader = asyncio.create_task(read())
        packet = np.full(320, 4000, "<i2").tobytes()     # 20 ms of a constant voice: never a zero sample
        seq = 0
        for pause_s in (0.6, 0.0):
            started = time.monotonic()
            for n in range(50):                          # 1 s at real-time pace
                await call.write(cv.ClientMessage(audio=cv.AudioPacket(sequence_number=seq, payload=packet)))
                seq += 1
                await asyncio.sleep(max(0.0, started + 0.02 * (n + 1) - time.monotonic()))
            await call.write(cv.ClientMessage(end_of_utterance=cv.EndOfUtterance()))
            await asyncio.sleep(pause_s)
        await asyncio.wait_for(completed.wait(), 10)
        call.cancel()
        reader.cancel()

        echo = np.zeros(0, np.int16)
        for m in messages:
            if _kind(m) == "audio_echo":
                assert m.audio_echo.start == len(echo)
                echo = np.concatenate([echo, np.frombuffer(m.audio_echo.pcm16, "<i2")])
        frames = [m.frame for m in messages if _kind(m) == "frame"]
        voiced = [bool(echo[f.audio_start] != 0) for f in frames]
        assert [f.speaking for f in frames] == voiced
        # Both utterances spoke, the pause between them did not (at 20 fps, 0.6 s are 12 frames; the worker
        # measures the pause on its clock, from the held voice's due end to the next voice's arrival, so it may
        # come out a little shorter, or longer when this machine is busy).
        first, last = voiced.index(True), len(voiced) - 1 - voiced[::-1].index(True)
        between = voiced[first:last + 1]
        assert sum(between) == 40 and 8 <= len(between) - sum(between) <= 24
        # The pause is kept: the second utterance ends its own second and about the pause after the first.
        assert 1.45 <= (ends[1] - ends[0]) / 16000 <= 2.0


@async_test
async def test_oversized_message_ends_only_its_own_stream(tmp_path):
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        healthy, _ = await open_session(h.stub, session_config(npc_id="healthy",
                                                               video=cv.VideoFormat(width=64, height=64)))
        greedy, _ = await open_session(h.stub, session_config(npc_id="greedy",
                                                              video=cv.VideoFormat(width=64, height=64)))
        await next_of(greedy, "frame")
        await greedy.write(cv.ClientMessage(audio=cv.AudioPacket(payload=b"x" * (10 << 20))))
        code, details, _ = await final_status(greedy)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details

        before = (await next_of(healthy, "frame")).frame.index
        for _ in range(30):
            frame = (await next_of(healthy, "frame")).frame
        assert frame.index >= before + 30
        # The greedy session's NPC was closed (its memory saved) and can be opened again.
        for _ in range(50):
            if not h.gateway.runtime.sessions.is_live("greedy"):
                break
            await asyncio.sleep(0.02)
        again, accepted = await open_session(h.stub, session_config(npc_id="greedy"))
        assert accepted.resumed
        # No size asked: the NPC's own (its memory was made at 64x64), not the model's default.
        assert (accepted.video.width, accepted.video.height, accepted.video.fps) == (64, 64, 20)
        again.cancel()
        healthy.cancel()


@async_test
async def test_audio_packet_over_its_limit_is_resource_exhausted(tmp_path):
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        call, _ = await open_session(h.stub)
        await call.write(cv.ClientMessage(audio=cv.AudioPacket(payload=b"\x00" * (64 * 1024))))
        code, details, _ = await final_status(call)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details.startswith("audio.payload:")


@async_test
async def test_slow_reader_loses_oldest_frames_and_never_blocks_others(tmp_path):
    # Room for two blocks: a client that reads faster than the worker generates loses nothing, however far ahead
    # of the audio clock the worker runs. A block call takes 50 ms here (still many times real time), so that a
    # reader on a loaded 2-core machine stays the faster.
    async with running_gateway(tmp_path, outbound_queue_frames=64, block_delay_s=0.05,
                               worker_options=VOICE_FIRST) as h:
        await register_character(h.stub)
        big = cv.VideoFormat(width=256, height=256, codec=cv.VIDEO_CODEC_RAW_RGB)
        slow, _ = await open_session(h.stub, session_config(npc_id="slow", video=big, stats_interval_ms=100,
                                                            audio=PCM16_16K))
        fast, _ = await open_session(h.stub, session_config(npc_id="fast", video=cv.VideoFormat(width=64, height=64),
                                                            audio=PCM16_16K))
        # 17 s of voice each, sent at once as a TTS does: the worker makes the 341 frames back to back, far ahead
        # of the audio clock.
        voice = FIRST_BLOCK_SAMPLES + 10 * BLOCK_SAMPLES
        last_index = 21 + 10 * 32 - 1
        for call in (slow, fast):
            await say(call, 0, voice, packet_samples=8000)
            await call.write(cv.ClientMessage(end_of_utterance=cv.EndOfUtterance()))

        # The fast client reads everything while the slow one reads nothing.
        slow_worker = h.worker_session("slow")
        started = time.monotonic()
        slow_progress = [(started, slow_worker.blocks)]
        fast_indices = []
        while not fast_indices or fast_indices[-1] < last_index:
            fast_indices.append((await next_of(fast, "frame")).frame.index)
            if slow_worker.blocks != slow_progress[-1][1]:
                slow_progress.append((time.monotonic(), slow_worker.blocks))
        assert time.monotonic() - started < 5.0
        assert fast_indices == list(range(last_index + 1))
        # The slow NPC's video was made all the while, as fast as the other's: the worker never waited for its
        # client.
        for _ in range(100):
            if slow_worker.voice_consumed == voice:
                break
            await asyncio.sleep(0.01)
        assert slow_worker.voice_consumed == voice and slow_worker.memory.frames_generated == last_index + 1
        slow_progress.append((time.monotonic(), slow_worker.blocks))
        assert max(np.diff([t for t, _ in slow_progress])) < 0.5, "the worker waited for the slow client"

        indices, events, stats = [], [], []
        while not indices or indices[-1] < last_index:  # the newest frame is never the one dropped
            message = await asyncio.wait_for(slow.read(), 5.0)
            kind = _kind(message)
            if kind == "frame":
                indices.append(message.frame.index)
                assert len(message.frame.data) == 256 * 256 * 3
                assert message.frame.data[0] == message.frame.index % 256
            elif kind == "event":
                events.append(message.event)
            elif kind == "stats":
                stats.append(message.stats)
        assert indices == sorted(indices)
        assert indices[-1] - indices[0] > len(indices), "no frame was dropped"
        assert any(e.code == cv.EVENT_CODE_FRAMES_DROPPED for e in events)
        stats.append((await next_of(slow, "stats")).stats)
        assert stats[-1].frames_dropped > 0
        slow.cancel()
        fast.cancel()


# -- endings ------------------------------------------------------------------------------------------------


@async_test
async def test_worker_lost_ends_the_session_with_unavailable(tmp_path):
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        call, _ = await open_session(h.stub)
        await next_of(call, "frame")
        await h.kill_worker("worker pid 99 was killed by SIGKILL")
        code, details, _ = await final_status(call)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert details.startswith("generator worker stopped: worker pid 99 was killed by SIGKILL")
        assert "retry" in details
        # While it is down new sessions are refused with UNAVAILABLE; once back, accepted again.
        refused = h.stub.Converse()
        await refused.write(session_config(npc_id="npc-2"))
        assert (await final_status(refused))[0] == grpc.StatusCode.UNAVAILABLE
        await h.restart_worker()
        for _ in range(100):
            if h.gateway.runtime.worker.ready:
                break
            await asyncio.sleep(0.05)
        again, accepted = await open_session(h.stub)
        # The NPC was never saved before the worker died: it starts over.
        assert not accepted.resumed and accepted.start_frame_index == 0
        await next_of(again, "frame")
        again.cancel()


@async_test
async def test_draining_sends_the_event_then_unavailable(tmp_path):
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        call, accepted = await open_session(h.stub)
        await next_of(call, "frame")
        drain = asyncio.ensure_future(h.gateway.drain())
        code, details, messages = await final_status(call)
        await drain
        assert code == grpc.StatusCode.UNAVAILABLE and details == "server is draining"
        events = [m.event.code for m in messages if _kind(m) == "event"]
        assert cv.EVENT_CODE_DRAINING in events
        # The NPC was closed, so its memory is saved.
        assert [c.session_id for c in h.link.requests_of("close_npc")] == [accepted.session_id]
        npc = h.engine.pool.query("npc-1")[0]
        assert not npc.live and npc.blocks_generated >= 1
        # The failed end still says how to resume the NPC, and when to come back.
        error = AvatarError.from_status(code, details, await call.trailing_metadata())
        assert error.resume_token and error.resume_token == npc.resume_token
        assert error.retry_after_ms == 1000


@async_test
async def test_client_cancel_closes_the_npc(tmp_path):
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        call, accepted = await open_session(h.stub)
        await next_of(call, "frame")
        call.cancel()
        for _ in range(100):
            if h.link.requests_of("close_npc") and not h.gateway.runtime.sessions.is_live("npc-1"):
                break
            await asyncio.sleep(0.02)
        # A cancel may cut short a close that was finishing the voice: an immediate close follows it then.
        assert {c.session_id for c in h.link.requests_of("close_npc")} == {accepted.session_id}
        assert not h.gateway.runtime.sessions.is_live("npc-1")
        # Asked through the worker's own loop, which takes the close first (the link keeps the order): the pool
        # itself is the worker thread's, mid-save while the test would read it.
        assert not (await h.stub.GetNpc(pb.GetNpcRequest(npc_id="npc-1"))).live
        # The NPC continues in the next session.
        again, accepted = await open_session(h.stub)
        assert accepted.resumed and accepted.start_frame_index > 0
        frame = (await next_of(again, "frame")).frame
        assert frame.index == accepted.start_frame_index and frame.pts == 0
        again.cancel()


@async_test
async def test_a_failure_delivering_the_video_ends_the_session_with_internal_and_closes_the_npc(tmp_path, monkeypatch):
    """The encoder (anything between the worker's output and the client) raises: the stream ends INTERNAL
    instead of streaming stats without frames, and the NPC is closed, so it continues in the next session."""
    broken = [True]

    class BreakingEncoder(JpegEncoder):
        def encode(self, rgb):
            if broken[0]:
                raise RuntimeError("the encoder broke")
            return super().encode(rgb)

    monkeypatch.setitem(encoders._FACTORIES, "jpeg", lambda settings: BreakingEncoder())
    async with running_gateway(tmp_path) as h:
        await register_character(h.stub)
        call, accepted = await open_session(h.stub)
        code, details, messages = await final_status(call)
        assert code == grpc.StatusCode.INTERNAL and details == "the server failed to deliver the generated video"
        assert not [m for m in messages if _kind(m) == "frame"]
        assert [c.session_id for c in h.link.requests_of("close_npc")] == [accepted.session_id]
        assert not (await h.stub.GetNpc(pb.GetNpcRequest(npc_id="npc-1"))).live
        broken[0] = False
        again, accepted = await open_session(h.stub)
        assert accepted.resumed and accepted.start_frame_index > 0
        assert (await next_of(again, "frame")).frame.index == accepted.start_frame_index
        again.cancel()


@async_test
async def test_pcm16_at_48k_is_resampled_to_the_model_rate(tmp_path):
    async with running_gateway(tmp_path, worker_options=VOICE_FIRST) as h:
        await register_character(h.stub)
        call, accepted = await open_session(h.stub, session_config(
            audio=cv.AudioFormat(codec=cv.AUDIO_CODEC_PCM16, sample_rate=48000)))
        assert accepted.audio.sample_rate == 48000
        voice = (8000 * np.sin(np.arange(48000) * 2 * np.pi * 220 / 48000)).astype("<i2")
        for seq, chunk in enumerate(np.split(voice, 50)):
            await call.write(cv.ClientMessage(audio=cv.AudioPacket(sequence_number=seq, payload=chunk.tobytes())))
        await call.write(cv.ClientMessage(end_of_utterance=cv.EndOfUtterance()))
        await call.write(cv.ClientMessage(config=cv.SessionConfig(npc_id="again")))
        events = {}
        while len(events) < 2:
            event = (await next_of(call, "event")).event
            events[event.code] = event
        assert events[cv.EVENT_CODE_INVALID_EVENT].details["field"] == "config"
        # The worker turned the whole utterance, at 16 kHz, into video.
        session = h.worker_session("npc-1")
        sent = sum(p.num_samples for p in h.link.requests_of("push_audio"))
        assert abs(sent - 16000) <= 16 and session.voice_consumed == sent
        # On the 48 kHz session clock; the first block holds it all (no idle block went before the voice).
        assert events[cv.EVENT_CODE_UTTERANCE_COMPLETE].details["timeline_end"] == str(sent * 3)
        call.cancel()


@pytest.mark.parametrize("end_utterance", [True, False])
@async_test
async def test_half_close_right_after_the_voice_still_gets_its_video(tmp_path, end_utterance):
    """Say a line and hang up at once: the NPC finishes the line (frames, UTTERANCE_COMPLETE), then the stream
    ends OK. Without an end of utterance the half-close ends it."""
    async with running_gateway(tmp_path, block_delay_s=0.2, worker_options=VOICE_FIRST) as h:
        await register_character(h.stub)
        call, _ = await open_session(h.stub, session_config(
            video=cv.VideoFormat(width=64, height=64), audio=cv.AudioFormat(codec=cv.AUDIO_CODEC_PCM16,
                                                                             sample_rate=16000)))
        await say(call, 0, 3200)                     # 0.2 s, less than the first block
        if end_utterance:
            await call.write(cv.ClientMessage(end_of_utterance=cv.EndOfUtterance()))
        await call.done_writing()
        code, _, messages = await final_status(call, timeout=10.0)
        assert code == grpc.StatusCode.OK
        frames = [m.frame for m in messages if _kind(m) == "frame"]
        assert sum(f.speaking for f in frames) == 4, "0.2 s of voice is 4 speaking frames at 20 fps"
        completes = [m.event for m in messages
                     if _kind(m) == "event" and m.event.code == cv.EVENT_CODE_UTTERANCE_COMPLETE]
        assert len(completes) == 1 and completes[0].details["timeline_end"] == "3200"
        assert _kind(messages[-1]) == "ended" and messages[-1].ended.frames_generated == len(frames)
