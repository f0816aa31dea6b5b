"""The Python client against the in-process fake service (conftest.py)."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import opuslib
import pytest

from avatar_backend.client import AvatarClient, AvatarError, SyncAvatarClient
from avatar_backend.proto_gen import converse_pb2

RATE = 48000
PACKET = RATE // 50  # 20 ms


def tone(seconds: float, frequency: float = 440.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_converse_sends_numbered_opus_packets_that_decode_back(registered):
    pcm = tone(0.5)  # 25 packets of 20 ms; 0.5 s is 2.5 blocks of the fake, so the last block is padded

    async def talk() -> list:
        async with AvatarClient(registered.target) as client:
            async with client.converse("npc-1", "default") as conv:
                assert conv.accepted.video.width == 16 and conv.accepted.audio.sample_rate == RATE
                # Two calls whose sizes are not multiples of a packet: the remainder is carried over.
                await conv.send_audio_pcm(pcm[:1000])
                await conv.send_audio_pcm(pcm[1000:].tobytes())
                await conv.end_utterance()
                # End of utterance flushes the encoder: one more packet lets its 6.5 ms look-ahead out.
                assert conv.samples_sent == pcm.size + PACKET
                items = []
                async for item in conv:
                    items.append(item)
                    if isinstance(item, converse_pb2.SessionEvent):
                        await conv.half_close()
                return items

    items = run(talk())
    session = registered.service.sessions[0]
    assert session.sequence_numbers == list(range(26))
    assert session.half_closed
    # The packets are real Opus: decoding them independently gives back the tone (after the codec delay).
    decoder = opuslib.Decoder(RATE, 1)
    decoded = np.concatenate(
        [np.frombuffer(decoder.decode(p, PACKET), dtype=np.int16) for p in session.payloads]
    ).astype(np.float64)
    assert decoded.size == pcm.size + PACKET
    # Past the look-ahead the decoded stream holds the whole tone and then the flush's silence.
    lookahead = RATE * 13 // 2000
    tail = decoded[lookahead + pcm.size - RATE // 100: lookahead + pcm.size]
    assert np.sqrt(np.mean(tail ** 2)) > 0.5 * 0.3 * 32767 / np.sqrt(2)
    spectrum = np.abs(np.fft.rfft(decoded[RATE // 10 :]))
    peak_hz = np.argmax(spectrum) * RATE / (decoded.size - RATE // 10)
    assert abs(peak_hz - 440) < 5
    tone_rms = 0.3 * 32767 / np.sqrt(2)
    assert np.sqrt(np.mean(decoded[RATE // 10 :] ** 2)) > 0.7 * tone_rms

    frames = [i for i in items if isinstance(i, converse_pb2.VideoFrame)]
    echoes = [i for i in items if isinstance(i, converse_pb2.AudioEcho)]
    assert len(frames) == 12 and [f.index for f in frames] == list(range(12))
    assert len(echoes) == 3
    assert any(isinstance(i, converse_pb2.SessionStats) for i in items)
    assert items[-1].code == converse_pb2.EVENT_CODE_UTTERANCE_COMPLETE


def test_control_events_and_interrupt_ack(registered):
    async def talk():
        async with AvatarClient(registered.target) as client:
            async with client.converse("npc-2", "default") as conv:
                await conv.emotion("happy", 0.5)
                await conv.action(preset="wave")
                await conv.action(free_text="juggles three apples")
                await conv.listening(True)
                await conv.send_audio_pcm(tone(0.05))  # 2 packets sent, 10 ms held back
                ack = await conv.interrupt()
                with pytest.raises(ValueError):
                    await conv.action()
                return ack, [item async for item in _until_ack(conv)]

    ack, items = run(talk())
    assert isinstance(ack, converse_pb2.InterruptAck)
    assert ack.dropped_samples == 2 * PACKET  # the fake had queued both packets; the held 10 ms was dropped
    assert items[-1] == ack  # the ack is also yielded in stream order
    kinds = [m.WhichOneof("message") for m in registered.service.sessions[0].controls]
    assert kinds == ["emotion", "action", "action", "listening", "interrupt"]
    controls = registered.service.sessions[0].controls
    assert controls[0].emotion.name == "happy" and controls[0].emotion.intensity == pytest.approx(0.5)
    assert controls[1].action.preset == "wave"
    assert controls[2].action.free_text == "juggles three apples"
    assert controls[3].listening.listening is True


async def _until_ack(conv):
    async for item in conv:
        yield item
        if isinstance(item, converse_pb2.InterruptAck):
            return


def test_refused_session_raises_with_the_status_code(registered):
    async def refused(npc_id: str, character_id: str):
        async with AvatarClient(registered.target) as client:
            async with client.converse(npc_id, character_id):
                pass

    with pytest.raises(AvatarError) as caught:
        run(refused("npc-3", "nobody"))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details == "character_id: unknown character 'nobody'"
    assert str(caught.value) == "INVALID_ARGUMENT: character_id: unknown character 'nobody'"

    with pytest.raises(AvatarError) as caught:
        run(refused("busy", "default"))
    assert caught.value.code_name == "ABORTED"


def test_realtime_pacing_sends_at_the_audio_rate(registered):
    async def talk() -> float:
        async with AvatarClient(registered.target) as client:
            async with client.converse("npc-4", "default") as conv:
                started = time.monotonic()
                await conv.send_audio_pcm(tone(0.4), realtime=True)
                return time.monotonic() - started

    elapsed = run(talk())
    # 20 packets, the first at once and each next one 20 ms later.
    assert 0.35 <= elapsed < 1.0


def test_unary_calls_and_their_errors(fake_server, tmp_path):
    image = tmp_path / "face.png"
    image.write_bytes(b"\x89PNG fake")
    with SyncAvatarClient(fake_server.target) as client:
        client.wait_ready(5)
        assert client.health() == "SERVING"
        character = client.register_character(
            "smith", image, "a dwarf blacksmith", emotion_prompts={"angry": "shouting"}
        )
        assert character.character_id == "smith" and dict(character.emotion_prompts) == {"angry": "shouting"}
        with pytest.raises(AvatarError) as caught:
            client.register_character("smith", b"bytes", "again")
        assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
        client.register_character("smith", b"bytes", "again", replace=True)
        assert client.get_character("smith").base_prompt == "again"
        assert [c.character_id for c in client.list_characters()] == ["smith"]
        with pytest.raises(AvatarError) as caught:
            client.get_character("elf")
        assert caught.value.code == grpc.StatusCode.NOT_FOUND

        with client.converse("smith-1", "smith") as conv:
            conv.send_audio_pcm(tone(0.2))
            conv.end_utterance()
            conv.half_close()
            items = list(conv)
        # 0.2 s of voice plus the encoder flush is just over one 4-frame block of the stand-in service.
        assert sum(isinstance(i, converse_pb2.VideoFrame) for i in items) == 8
        assert [n.npc_id for n in client.list_npcs()] == ["smith-1"]
        assert client.list_npcs("nobody") == []
        assert client.get_npc("smith-1").frames_generated == 8
        with pytest.raises(AvatarError) as caught:
            client.delete_character("smith")
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(AvatarError) as caught:
            client.reset_npc("crowded")
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.retry_after_ms == 250
        assert str(caught.value) == "RESOURCE_EXHAUSTED: too many sessions (retry after 250 ms)"
        assert client.reset_npc("smith-1").frames_generated == 0
        client.delete_npc("smith-1")
        assert client.delete_character("smith") == 0
        info = client.server_info()
        assert info.model.name == "fake" and info.worker_ready


def test_unreachable_server_is_unavailable():
    async def connect():
        await AvatarClient.connect("127.0.0.1:1", timeout=0.5)

    with pytest.raises(AvatarError) as caught:
        run(connect())
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_a_stream_error_surfaces_from_iteration_with_its_code(registered):
    async def talk():
        async with AvatarClient(registered.target) as client:
            async with client.converse("crash", "default") as conv:
                await conv.send_audio_pcm(tone(0.02))
                await conv.end_utterance()
                with pytest.raises(AvatarError) as caught:
                    async for _ in conv:
                        pass
                assert conv.done
                assert await conv.next_item() is None  # raised once, then the stream is just over
                return caught.value

    error = run(talk())
    assert error.code == grpc.StatusCode.UNAVAILABLE and error.retry_after_ms == 1000
    assert "worker stopped" in error.details


def test_next_item_times_out_and_interrupt_without_an_ack_fails_cleanly(registered):
    async def talk():
        async with AvatarClient(registered.target) as client:
            conv = client.converse("mute", "default")
            await conv.open()
            with pytest.raises(TimeoutError):
                await conv.next_item(timeout=0.1)
            with pytest.raises(AvatarError) as caught:
                await conv.interrupt(timeout=0.1)
            await conv.cancel()
            return caught.value

    assert run(talk()).code == grpc.StatusCode.DEADLINE_EXCEEDED
