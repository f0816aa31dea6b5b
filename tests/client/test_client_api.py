"""The Python client against the real server: the gateway in front of the real worker engine with the tests'
stand-in generator (conftest.py)."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
import simplejpeg
from PIL import Image

from avatar_backend.client import AvatarClient, AvatarError, SyncAvatarClient
from avatar_backend.client.errors import ResourceInfo
from avatar_backend.proto_gen import converse_pb2

RATE = 48000
PACKET = RATE // 50  # 20 ms
ECHO_RATE = 16000
FIRST_BLOCK_FRAMES, BLOCK_FRAMES = 21, 32
SAMPLES_PER_FRAME = RATE // 20


def tone(seconds: float, frequency: float = 440.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def of_type(items: list, kind: type) -> list:
    return [item for item in items if isinstance(item, kind)]


def frames_per_block(frames: list[converse_pb2.VideoFrame]) -> list[int]:
    blocks: dict[int, int] = {}
    for frame in frames:
        blocks[frame.block_index] = blocks.get(frame.block_index, 0) + 1
    return [blocks[index] for index in sorted(blocks)]


def test_converse_sends_numbered_opus_packets_that_decode_back(registered):
    pcm = tone(0.5)  # 25 packets of 20 ms: shorter than a block, so it waits for its end of utterance

    async def talk():
        async with AvatarClient(registered.target) as client:
            async with client.converse("npc-1", "default") as conv:
                accepted = conv.accepted
                assert accepted.video.width == 64 and accepted.audio.sample_rate == RATE
                assert (accepted.first_block_frames, accepted.block_frames) == (FIRST_BLOCK_FRAMES, BLOCK_FRAMES)
                # Two calls whose sizes are not multiples of a packet: the remainder is carried over.
                await conv.send_audio_pcm(pcm[:1000])
                await conv.send_audio_pcm(pcm[1000:].tobytes())
                await conv.end_utterance()
                # End of utterance flushes the encoder: one more packet lets its 6.5 ms look-ahead out.
                assert conv.voice_samples_sent == pcm.size + PACKET
                items = []
                async for item in conv:
                    items.append(item)
                    if isinstance(item, converse_pb2.SessionEvent):
                        await conv.half_close()
                return accepted, items, conv.ended

    accepted, items, ended = run(talk())
    # The half-closed stream ended OK: the last stats, then SessionEnded.
    assert isinstance(items[-1], converse_pb2.SessionEnded) and items[-1] == ended
    assert isinstance(items[-2], converse_pb2.SessionStats)
    audio = items[-2].audio
    # 26 packets numbered 0..25: all received, none missing, repeated, late or undecodable.
    assert (audio.received, audio.lost, audio.duplicates, audio.late, audio.garbage) == (26, 0, 0, 0, 0)

    (event,) = of_type(items, converse_pb2.SessionEvent)
    assert event.code == converse_pb2.EVENT_CODE_UTTERANCE_COMPLETE
    echoes = of_type(items, converse_pb2.AudioEcho)
    assert all(e.sample_rate == ECHO_RATE for e in echoes)
    (voiced,) = [e for e in echoes if np.any(np.frombuffer(e.pcm16, "<i2"))]
    # The server heard all that was sent but the Opus pre-skip (the encoder's look-ahead), which it trims.
    voice_samples = pcm.size + PACKET - accepted.audio.opus_pre_skip
    assert int(event.details["timeline_end"]) == voiced.start + voice_samples
    # The echo is that voice on the session timeline: the tone, then the flush packet's silence, then the
    # silence that pads the block.
    echo = np.frombuffer(voiced.pcm16, "<i2").astype(np.float64)
    voice_end = voice_samples // (RATE // ECHO_RATE)
    assert not np.any(echo[voice_end:])
    tone_rms = 0.3 * 32767 / np.sqrt(2)
    tone_end = pcm.size // (RATE // ECHO_RATE)
    tail = echo[tone_end - ECHO_RATE // 100: tone_end]
    assert np.sqrt(np.mean(tail ** 2)) > 0.5 * tone_rms
    decoded = echo[ECHO_RATE // 10: tone_end]
    assert np.sqrt(np.mean(decoded ** 2)) > 0.7 * tone_rms
    spectrum = np.abs(np.fft.rfft(decoded))
    assert abs(np.argmax(spectrum) * ECHO_RATE / decoded.size - 440) < 5

    frames = of_type(items, converse_pb2.VideoFrame)
    assert [f.index for f in frames] == list(range(len(frames)))
    counts = frames_per_block(frames)
    assert counts == [FIRST_BLOCK_FRAMES] + [BLOCK_FRAMES] * (len(counts) - 1)
    assert len(echoes) == len(counts)  # one echo per block, before its frames
    # The voiced block's frames start where its echo starts.
    block_index = next(f.block_index for f in frames if f.pts == voiced.start)
    block = [f for f in frames if f.block_index == block_index]
    assert block[0].pts == voiced.start
    speaking = -(-voice_samples // SAMPLES_PER_FRAME)  # frames whose audio starts inside the voice
    assert [f.speaking for f in block] == [True] * speaking + [False] * (len(block) - speaking)
    # The stand-in paints each frame with its index, blue for a block with voice.
    pixels = simplejpeg.decode_jpeg(block[0].data, colorspace="RGB")
    assert pixels.shape == (64, 64, 3)
    assert np.allclose(pixels.reshape(-1, 3).mean(axis=0), (block[0].index % 256, 0, 255), atol=4)
    assert ended.frames_generated == len(frames)


def test_control_events_and_interrupt_ack(registered):
    async def talk():
        async with AvatarClient(registered.target) as client:
            async with client.converse("npc-2", "default") as conv:
                await conv.emotion("happy", 0.5)
                await conv.emotion("furious")
                await conv.action(preset="wave")
                await conv.action(preset="dance")
                await conv.action(free_text="juggles three apples")
                await conv.listening(True)
                await conv.send_audio_pcm(tone(0.05))  # 2 packets sent, 10 ms held back
                ack = await conv.interrupt()
                assert conv.voice_samples_sent == 2 * PACKET  # the held 10 ms was dropped, never sent
                with pytest.raises(ValueError):
                    await conv.action()
                items = [item async for item in _until_ack(conv)]
                # The worker applied the controls before it answered the interrupt (one ordered link).
                state = registered.worker_session("npc-2")
                worker_saw = (state.prompt, state.intensity, state.listening, state.action_prompt)
                return conv.accepted, ack, items, worker_saw

    accepted, ack, items, (prompt, intensity, listening, action_prompt) = run(talk())
    assert isinstance(ack, converse_pb2.InterruptAck)
    assert items[-1] == ack  # the ack is also yielded in stream order
    # Both packets were queued as voice (less the Opus pre-skip) and are dropped.
    assert ack.dropped_samples == 2 * PACKET - accepted.audio.opus_pre_skip
    assert ack.next_frame_index == len(of_type(items, converse_pb2.VideoFrame))
    # Names the character does not have are answered in band; known ones silently take effect.
    events = [(e.code, dict(e.details)) for e in of_type(items, converse_pb2.SessionEvent)]
    assert events == [
        (converse_pb2.EVENT_CODE_UNKNOWN_EMOTION, {"name": "furious", "known": "happy"}),
        (converse_pb2.EVENT_CODE_UNKNOWN_ACTION, {"name": "dance", "known": "wave"}),
    ]
    assert (prompt, intensity, listening) == ("smiling", pytest.approx(0.5), True)
    # An action conditions the next block only: the latest one is still pending, or a block has shown it.
    assert action_prompt == "juggles three apples" or "juggles three apples" in registered.generator.prompts


def test_events_timed_to_the_voice_show_with_their_words_however_early_the_voice_was_sent(registered):
    # A TTS flow: the events go with points of a clip (its word timings), sent before the clip, all of it at once.
    async def talk():
        async with AvatarClient(registered.target) as client:
            async with client.converse("npc-3", "default") as conv:
                start = conv.voice_samples_sent
                await conv.action(preset="wave", at_voice_sample=start + int(1.3 * RATE))
                await conv.emotion("happy", 0.5, at_voice_sample=start + int(2.8 * RATE))
                await conv.send_audio_pcm(tone(4.0))
                await conv.emotion("", at_voice_sample=conv.voice_samples_sent)  # back to the base prompt at its end
                await conv.end_utterance()
                items = []
                async for item in conv:
                    items.append(item)
                    if isinstance(item, converse_pb2.SessionEvent):
                        break
                # Late arrivals: the end of the clip is on video, so the base prompt holds from the next block.
                while len(registered.generator.prompts) < 5:
                    items.append(await conv.next_item(timeout=5))
                await conv.cancel()
                return items

    items = run(talk())
    (event,) = of_type(items, converse_pb2.SessionEvent)
    assert event.code == converse_pb2.EVENT_CODE_UTTERANCE_COMPLETE
    # Blocks on the voice: 0 holds [0, 1.05 s), 1 [1.05, 2.65), 2 [2.65, 4.25): the wave shows in block 1,
    # the smile from block 2, which also holds the clip's end; the block after it is back to the base prompt.
    assert registered.generator.prompts[:4] == [None, "waving", "smiling", None]
    assert registered.generator.intensities[2] == pytest.approx(0.5)


def test_raw_opus_packets_count_their_duration_in_the_voice_sent(registered):
    from avatar_backend.media.opus import OpusEncoder

    async def talk():
        async with AvatarClient(registered.target) as client:
            async with client.converse("npc-5", "default") as conv:
                for ms in (20, 40):
                    voice = tone(ms / 1000).astype(np.float32) / 32768
                    await conv.send_opus_packet(OpusEncoder(RATE, frame_ms=ms).encode_all(voice)[0])
                after_valid = conv.voice_samples_sent
                # Not Opus: the server conceals its slot with as much audio as the packet before it.
                await conv.send_opus_packet(b"\xff\xff\xff\xff not opus")
                return after_valid, conv.voice_samples_sent

    after_valid, after_garbage = run(talk())
    assert (after_valid, after_garbage) == (PACKET + 2 * PACKET, 5 * PACKET)


@pytest.mark.server_options(max_timed_events=2)
def test_timed_events_beyond_the_limits_are_refused_by_name(registered):
    async def talk():
        async with AvatarClient(registered.target) as client:
            async with client.converse("npc-4", "default") as conv:
                await conv.emotion("happy", at_voice_sample=200 * RATE)      # 200 s ahead of any voice
                for second in (1, 2, 3):                                     # the third is one too many
                    await conv.action(preset="wave", at_voice_sample=second * RATE)
                await conv.send_audio_pcm(tone(1.5))                         # the first one's voice arrives
                await conv.action(preset="wave", at_voice_sample=4 * RATE)   # room for one again
                ack = await conv.interrupt()
                items = [item async for item in _until_ack(conv)]
                return ack, items, registered.worker_session("npc-4")

    ack, items, state = run(talk())
    events = [(e.code, e.details["field"]) for e in of_type(items, converse_pb2.SessionEvent)]
    assert events == [(converse_pb2.EVENT_CODE_INVALID_EVENT, "emotion.at_voice_sample"),
                      (converse_pb2.EVENT_CODE_INVALID_EVENT, "action.at_voice_sample")]
    messages = [e.message for e in of_type(items, converse_pb2.SessionEvent)]
    assert "200 s of voice beyond the voice received" in messages[0]
    assert "max_timed_events" in messages[1]
    assert not state.timed_events  # the interrupt cancelled those that waited


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
    details = "character_id: no character 'nobody' is registered (see RegisterCharacter / ListCharacters)"
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details == details and caught.value.field == "character_id"
    assert str(caught.value) == f"INVALID_ARGUMENT: {details}"

    async def twice():
        # The second session for the same NPC opens while the first is live.
        async with (AvatarClient(registered.target) as client, client.converse("npc-busy", "default"),
                    client.converse("npc-busy", "default")):
            pass

    with pytest.raises(AvatarError) as caught:
        run(twice())
    assert caught.value.code_name == "ABORTED"
    assert caught.value.details == "npc_id: NPC 'npc-busy' is already in a live session (one session per NPC)"
    assert caught.value.resource == ResourceInfo("avatar.v1.Npc", "npc-busy")


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


@pytest.mark.server_options(max_sessions=1)
def test_unary_calls_and_their_errors(server, tmp_path):
    image = tmp_path / "face.png"
    Image.new("RGB", (48, 64), (90, 60, 30)).save(image)
    with SyncAvatarClient(server.target) as client:
        client.wait_ready(5)
        assert client.health() == "SERVING"
        character = client.register_character(
            "smith", image, "a dwarf blacksmith", emotion_prompts={"angry": "shouting"}
        )
        assert character.character_id == "smith" and dict(character.emotion_prompts) == {"angry": "shouting"}
        assert (character.reference_width, character.reference_height) == (48, 64)
        with pytest.raises(AvatarError) as caught:
            client.register_character("smith", image, "again")
        assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
        with pytest.raises(AvatarError) as caught:
            client.register_character("elf", b"not an image", "an elf")
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and caught.value.field == "reference_image"
        client.register_character("smith", image.read_bytes(), "again", replace=True)
        assert client.get_character("smith").base_prompt == "again"
        assert [c.character_id for c in client.list_characters()] == ["smith"]
        with pytest.raises(AvatarError) as caught:
            client.get_character("elf")
        assert caught.value.code == grpc.StatusCode.NOT_FOUND

        with client.converse("smith-1", "smith") as conv:
            conv.send_audio_pcm(tone(0.2))
            conv.end_utterance()
            items = []
            for item in conv:
                items.append(item)
                if isinstance(item, converse_pb2.SessionEvent):
                    # The one session slot is taken: another NPC's session is refused, with when to retry.
                    with pytest.raises(AvatarError) as caught, client.converse("smith-2", "smith"):
                        pass
                    conv.half_close()
        assert items[-1] == conv.ended
        crowded = caught.value
        assert crowded.code == grpc.StatusCode.RESOURCE_EXHAUSTED and crowded.retry_after_ms == 2000
        assert str(crowded) == (
            "RESOURCE_EXHAUSTED: all 1 session slots are in use; retry later (retry after 2000 ms)"
        )
        # 0.2 s of voice plus the encoder flush fits in the first block of 21 frames; the NPC made what was sent.
        frames = sum(isinstance(i, converse_pb2.VideoFrame) for i in items)
        assert frames >= FIRST_BLOCK_FRAMES and (frames - FIRST_BLOCK_FRAMES) % BLOCK_FRAMES == 0
        assert [n.npc_id for n in client.list_npcs()] == ["smith-1"]
        assert client.list_npcs("nobody") == []
        npc = client.get_npc("smith-1")
        assert (npc.frames_generated, npc.live, npc.width, npc.height) == (frames, False, 64, 64)
        with pytest.raises(AvatarError) as caught:
            client.delete_character("smith")
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert client.reset_npc("smith-1").frames_generated == 0
        client.delete_npc("smith-1")
        with pytest.raises(AvatarError) as caught:
            client.get_npc("smith-1")
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert client.delete_character("smith") == 0
        info = client.server_info()
        assert info.model.name == "tiny" and info.model.random_weights and info.worker_ready
        assert (info.model.default_width, info.model.default_height, info.model.default_fps) == (64, 64, 20)
        assert info.worker_device == "cpu" and info.limits.max_sessions == 1


def test_unreachable_server_is_unavailable():
    async def connect():
        await AvatarClient.connect("127.0.0.1:1", timeout=0.5)

    with pytest.raises(AvatarError) as caught:
        run(connect())
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_a_stream_error_surfaces_from_iteration_with_its_code(registered):
    async def talk():
        async with AvatarClient(registered.target) as client:
            async with client.converse("npc-crash", "default") as conv:
                await conv.send_audio_pcm(tone(0.02))
                await conv.end_utterance()
                # The worker dies once the client has stopped writing: a write that races the end of a stream
                # can turn the status into INTERNAL (grpc/grpc#36066).
                await asyncio.wrap_future(registered.kill_worker("test"))
                with pytest.raises(AvatarError) as caught:
                    async for _ in conv:
                        pass
                assert conv.done
                assert await conv.next_item() is None  # raised once, then the stream is just over
                return caught.value

    error = run(talk())
    assert error.code == grpc.StatusCode.UNAVAILABLE and error.retry_after_ms == 1000
    assert error.details == "generator worker stopped: test; it is being restarted, retry"


def test_next_item_times_out_and_interrupt_without_an_ack_fails_cleanly(registered):
    # The worker reads requests only between generator calls: inside a slow one it answers nothing.
    registered.generator.block_delay_s = 1.0

    async def talk():
        async with AvatarClient(registered.target) as client:
            conv = client.converse("npc-mute", "default")
            await conv.open()
            # Nothing comes before the first idle block (0.3 s) or the first stats (1 s).
            with pytest.raises(TimeoutError):
                await conv.next_item(timeout=0.1)
            registered.wait_until(lambda: registered.generator.batch_sizes)  # the worker is in its first call
            with pytest.raises(AvatarError) as caught:
                await conv.interrupt(timeout=0.1)
            await conv.cancel()
            return caught.value

    assert run(talk()).code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_an_interrupt_after_one_that_timed_out_gets_its_own_ack(registered):
    # Both interrupts reach the worker inside one slow generator call, so the first one's ack comes only after its
    # caller gave up; the second caller must get the second ack, not the first one's positions and voice.
    registered.generator.block_delay_s = 1.0
    heard = 10 * SAMPLES_PER_FRAME

    async def talk():
        async with AvatarClient(registered.target) as client:
            conv = client.converse("npc-acks", "default")
            await conv.open()
            registered.wait_until(lambda: registered.generator.batch_sizes)  # the worker is in its first call
            await conv.send_audio_pcm(tone(0.5))
            with pytest.raises(AvatarError):
                await conv.interrupt(played_until=heard, timeout=0.1)
            second = await conv.interrupt()
            acks = []
            async for item in conv:  # both acks, in stream order
                if isinstance(item, converse_pb2.InterruptAck):
                    acks.append(item)
                    if len(acks) == 2:
                        break
            await conv.cancel()
            return second, acks

    second, (first_ack, second_ack) = run(talk())
    # The first interrupt dropped the voice and replaced the first block's frames from the position heard.
    assert first_ack.dropped_samples > 0 and first_ack.generated_until > first_ack.replace_from_pts == heard
    # The second found nothing more made or queued since.
    assert second == second_ack
    assert second.dropped_samples == 0 and second.generated_until == second.replace_from_pts == heard
