"""The contract's timing promises and error details, end to end over real gRPC with the real tiny generator.

Live voice is never chopped (real-time paced speech gets no silence inside it, and what is echoed back is
the voice that was sent, aligned to the sample); a voice that stalls gets one AUDIO_GAP and loses nothing;
an interrupt replaces exactly what the player has not heard; errors carry machine-readable details; a
request that is not protobuf is INVALID_ARGUMENT; every end of a session carries the NPC's resume token.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from e2e_helpers import FPS, RATE, SENTENCE, SIZE, collect, espeak, events_of, frames_of, run

from avatar_backend.client import AvatarClient, AvatarError
from avatar_backend.media.opus import OpusDecoder, OpusEncoder
from avatar_backend.proto_gen import converse_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL_RATE = 16_000
SESSION_SAMPLES_PER_FRAME = RATE // FPS
OPUS_LOOKAHEAD_16K = 104  # 6.5 ms, what the server trims by default
STALL_S = 2.0
# The stall starts once the server holds less voice than this: the utterance is flowing, not a backlog.
QUEUE_LOW_MS = 2500


@pytest.fixture(scope="module")
def speech_16k(tmp_path_factory) -> np.ndarray:
    """The module's sentence at the generator's rate, to compare with the echo."""
    return espeak(SENTENCE, MODEL_RATE, tmp_path_factory.mktemp("speech16k"))


def echo_track(items) -> np.ndarray:
    """The echoed audio laid out on the session clock (16 kHz samples), as float."""
    echoes = [i for i in items if isinstance(i, converse_pb2.AudioEcho)]
    end = max(e.start // 3 + len(e.pcm16) // 2 for e in echoes)
    track = np.zeros(end, dtype=np.float64)
    for echo in echoes:
        assert echo.sample_rate == MODEL_RATE and echo.start % 3 == 0
        pcm = np.frombuffer(echo.pcm16, dtype="<i2").astype(np.float64)
        track[echo.start // 3: echo.start // 3 + pcm.size] = pcm
    return track


def best_lag(track: np.ndarray, start: int, reference: np.ndarray, search: int = 80) -> tuple[int, float]:
    """The shift of ``reference`` inside ``track`` around ``start`` with the highest normalised correlation."""
    best = (0, -1.0)
    ref = reference.astype(np.float64)
    for lag in range(-search, search + 1):
        segment = track[start + lag: start + lag + ref.size]
        if segment.size < ref.size:
            continue
        corr = float(segment @ ref / (np.linalg.norm(segment) * np.linalg.norm(ref) + 1e-9))
        if corr > best[1]:
            best = (lag, corr)
    return best


async def speak_in_real_time(conv, pcm: np.ndarray, *, stall_after_s: float | None = None, stall_s: float = 0.0):
    """Send ``pcm`` at the pace of the audio, as an engine's AudioSource would, then end the utterance."""
    if stall_after_s is None:
        await conv.send_audio_pcm(pcm, realtime=True)
    else:
        cut = int(stall_after_s * RATE) // 960 * 960
        await conv.send_audio_pcm(pcm[:cut], realtime=True)
        await asyncio.sleep(stall_s)
        await conv.send_audio_pcm(pcm[cut:], realtime=True)
    await conv.end_utterance()


async def until_utterance_done(conv) -> list:
    items = await collect(conv, lambda it: bool(events_of(it, converse_pb2.EVENT_CODE_UTTERANCE_COMPLETE)))
    end = int(events_of(items, converse_pb2.EVENT_CODE_UTTERANCE_COMPLETE)[0].details["timeline_end"])
    return items + await collect(conv, lambda it: any(f.audio_end >= end for f in frames_of(items + it)))


def opus_packets(pcm: np.ndarray) -> list[bytes]:
    """``pcm`` as 20 ms Opus packets from one encoder, plus one packet of silence that lets the encoder's
    look-ahead out (what the client library does at the end of an utterance)."""
    encoder = OpusEncoder(RATE, frame_ms=20)
    packets = encoder.encode_all(pcm)
    return packets + [encoder.encode(np.zeros(encoder.frame_samples, dtype=np.int16))]


def decoded_voice(packets: list[bytes]) -> np.ndarray:
    """What the server's decoder makes of ``packets`` at 16 kHz, less the look-ahead it trims, as echoed pcm16."""
    decoder = OpusDecoder(MODEL_RATE)
    pcm = np.concatenate([decoder.decode(p) for p in packets])[OPUS_LOOKAHEAD_16K:]
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).round()


def test_real_time_voice_is_never_chopped_and_echoes_sample_for_sample(server, speech, speech_16k):
    packets = opus_packets(speech)

    async def scenario():
        async with AvatarClient(server.address) as client:
            async with client.converse("paced", "default", width=SIZE, height=SIZE, fps=FPS) as conv:
                started = asyncio.get_running_loop().time()
                for k, packet in enumerate(packets):                 # 20 ms each, on time
                    await asyncio.sleep(max(0.0, started + k * 0.02 - asyncio.get_running_loop().time()))
                    await conv.send_opus_packet(packet)
                await conv.end_utterance()
                return await until_utterance_done(conv)

    items = run(scenario())
    assert not events_of(items, converse_pb2.EVENT_CODE_AUDIO_GAP), "silence went inside the utterance"
    voice = decoded_voice(packets)
    frames = frames_of(items)
    speaking = [f for f in frames if f.speaking]
    # Per frame, and contiguous: the voice covers exactly these frames.
    assert len(speaking) == -(-voice.size // (MODEL_RATE // FPS))
    assert [f.index for f in speaking] == list(range(speaking[0].index, speaking[0].index + len(speaking)))
    # The echo holds the decoded voice sample for sample from the first speaking frame on: nothing inserted,
    # nothing lost, nothing shifted.
    track = echo_track(items)
    start = speaking[0].pts // 3
    np.testing.assert_array_equal(track[start: start + voice.size], voice)
    assert not track[start + voice.size: start + voice.size + MODEL_RATE // FPS].any()
    # And that voice is the speech that was sent, at lag 0 (the decoder's look-ahead is trimmed).
    lag, corr = best_lag(track, start, speech_16k)
    assert lag == 0 and corr > 0.9, (lag, corr)


def test_a_voice_stall_is_one_gap_and_nothing_else_is_lost(server, speech):
    # Speech at real-time pace until the NPC is speaking it and has little of it queued (whatever this
    # machine's speed), then a 2 s stall, then two more seconds of it and the end of the utterance.
    packets = opus_packets(np.concatenate([speech] * 8))

    async def scenario():
        async with AvatarClient(server.address) as client:
            async with client.converse("staller", "default", width=SIZE, height=SIZE, fps=FPS,
                                       stats_interval_ms=100) as conv:
                speaking_seen, queue_low = asyncio.Event(), asyncio.Event()
                plan: dict[str, int] = {}

                async def speak() -> None:
                    loop = asyncio.get_running_loop()
                    started = loop.time()
                    for k, packet in enumerate(packets):
                        if speaking_seen.is_set() and queue_low.is_set() and "stall" not in plan:
                            plan["stall"] = k                    # mid-utterance, little voice queued
                            await asyncio.sleep(STALL_S)
                            started += STALL_S
                        if "stall" in plan and k == plan["stall"] + 100:
                            plan["end"] = k
                            break
                        await asyncio.sleep(max(0.0, started + k * 0.02 - loop.time()))
                        await conv.send_opus_packet(packet)
                    # Flush the encoder's look-ahead, as the client library does at an utterance's end.
                    await conv.send_opus_packet(packets[-1])
                    await conv.end_utterance()

                sender = asyncio.create_task(speak())
                items = await collect(conv, lambda it: any(f.speaking for f in frames_of(it)))
                speaking_seen.set()

                def queue_is_low(received: list) -> bool:
                    stats = [i for i in received if isinstance(i, converse_pb2.SessionStats)]
                    return bool(stats) and stats[-1].audio_queued_ms < QUEUE_LOW_MS or sender.done()

                items += await collect(conv, queue_is_low)
                queue_low.set()
                await sender
                return items + await until_utterance_done(conv), plan

    items, plan = run(scenario())
    assert "end" in plan, "the voice queue never ran low: is the generator slower than real time here?"
    gaps = events_of(items, converse_pb2.EVENT_CODE_AUDIO_GAP)
    assert len(gaps) == 1, [g.message for g in gaps]
    gap_ms = int(gaps[0].details["gap_ms"])
    # The silence is the stall less what the video made absorbed, plus the wait for a block of voice again.
    assert 0 < gap_ms < (STALL_S + 2 * 1.6) * 1000
    # The echo is the decoded voice with one run of silence, of the reported length, inside: the speaking
    # frames form two runs, and the second starts where the voice resumes.
    decoded = decoded_voice(packets[:plan["end"]] + [packets[-1]])
    track = echo_track(items)
    speaking = [f for f in frames_of(items) if f.speaking]
    breaks = [b for a, b in zip(speaking, speaking[1:]) if b.index != a.index + 1]
    assert len(breaks) == 1, [f.index for f in breaks]
    first_start, resumed_at = speaking[0].pts // 3, breaks[0].pts // 3
    gap = int(gaps[0].details["gap_samples"]) // 3           # session clock (48 kHz) to the echo's 16 kHz
    assert gap // 16 == gap_ms
    before = resumed_at - gap - first_start                  # voice samples before the silence
    assert 0 < before < decoded.size
    np.testing.assert_array_equal(track[first_start: first_start + before], decoded[:before])
    np.testing.assert_array_equal(track[resumed_at: resumed_at + decoded.size - before], decoded[before:])


def test_an_interrupt_replaces_what_the_player_has_not_heard(server, speech):
    async def scenario():
        async with AvatarClient(server.address) as client:
            async with client.converse("interrupted", "default", width=SIZE, height=SIZE, fps=FPS) as conv:
                await conv.send_audio_pcm(np.concatenate([speech] * 3))      # TTS: far ahead of playback
                await conv.end_utterance()
                before = await collect(conv, lambda it: len(frames_of(it)) >= 40)
                heard = frames_of(before)[10].pts + 5                   # the player is inside frame 10
                await conv.playback_progress(heard)
                ack = await conv.interrupt()                             # uses the latest progress
                after = await collect(conv, lambda it: sum(
                    f.index >= ack.next_frame_index for f in frames_of(it)) >= 5)
                return before, heard, ack, after

    before, heard, ack, after = run(scenario())
    frame_11 = 11 * SESSION_SAMPLES_PER_FRAME
    assert ack.played_until == ack.replace_from_pts == frame_11      # rounded up to the next frame
    assert ack.generated_until >= frames_of(before)[-1].audio_end > frame_11
    assert ack.unheard_samples == ack.generated_until - ack.replace_from_pts
    assert ack.dropped_samples > 0
    new = [f for f in frames_of(after) if f.index >= ack.next_frame_index]
    # The new video starts where the player is and continues on the clock from there, silent.
    assert new[0].index == ack.next_frame_index and new[0].pts == ack.replace_from_pts
    assert [f.pts for f in new] == [ack.replace_from_pts + k * SESSION_SAMPLES_PER_FRAME for k in range(len(new))]
    assert not any(f.speaking for f in new)
    echoes = [i for i in after if isinstance(i, converse_pb2.AudioEcho)]
    assert echoes and echoes[-1].start >= ack.replace_from_pts
    assert min(e.start for e in echoes if e.start >= ack.replace_from_pts) == ack.replace_from_pts


def raw_converse(channel: grpc.aio.Channel):
    """Converse with byte-level messages, to send what no protobuf library would."""
    return channel.stream_stream("/avatar.v1.AvatarService/Converse", request_serializer=lambda b: b,
                                 response_deserializer=converse_pb2.ServerMessage.FromString)


def config_bytes(npc_id: str) -> bytes:
    return converse_pb2.ClientMessage(config=converse_pb2.SessionConfig(
        npc_id=npc_id, character_id="default",
        video=converse_pb2.VideoFormat(width=SIZE, height=SIZE))).SerializeToString()


def test_errors_carry_details_and_bytes_that_are_not_protobuf_are_invalid_argument(server):
    invalid_utf8 = b"\x0a\x07\x0a\x05np\xff\xfec"                  # config.npc_id with bytes that are not UTF-8
    garbage_cases = {"garbage": b"\xff\xff\xff\xff", "truncated": config_bytes("cut")[:-3], "utf8": invalid_utf8}

    async def scenario():
        results = {}
        async with AvatarClient(server.address) as client:
            converse = raw_converse(client._channel)
            for name, payload in garbage_cases.items():          # as the first message
                call = converse()
                await call.write(payload)
                await call.done_writing()
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async for _ in call:
                        pass
                results[name] = AvatarError.from_rpc_error(caught.value)

            call = converse()                                    # as a later message, after a good config
            await call.write(config_bytes("later-garbage"))
            first = await call.read()
            assert first.WhichOneof("message") == "accepted"
            await call.write(b"\xff\xff\xff\xff")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                while await call.read() is not grpc.aio.EOF:
                    pass
            results["later"] = AvatarError.from_rpc_error(caught.value)
            results["later_npc"] = await client.get_npc("later-garbage")

            unary = client._channel.unary_unary("/avatar.v1.AvatarService/GetNpc", request_serializer=lambda b: b,
                                                response_deserializer=lambda b: b)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await unary(b"\x0a\x03\xff\xfe\xfd")
            results["unary"] = AvatarError.from_rpc_error(caught.value)

            for name, attempt in {
                "unknown_character": client.converse("x", "no-such-character", width=SIZE, height=SIZE),
                "bad_size": client.converse("y", "default", width=SIZE + 1, height=SIZE),
            }.items():
                with pytest.raises(AvatarError) as caught:
                    async with attempt:
                        pass
                results[name] = caught.value
            with pytest.raises(AvatarError) as caught:
                await client.get_npc("nobody-here")
            results["not_found"] = caught.value
            async with client.converse("busy", "default", width=SIZE, height=SIZE) as live:
                with pytest.raises(AvatarError) as caught:
                    async with client.converse("busy", "default", width=SIZE, height=SIZE):
                        pass
                results["aborted"] = caught.value
                await collect(live, lambda it: len(frames_of(it)) >= 1)
            results["ended"], results["busy_npc"] = live.ended, await client.get_npc("busy")
        return results

    results = run(scenario())
    for name in ("garbage", "truncated", "utf8", "later", "unary"):
        error = results[name]
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, (name, error)
        assert error.field == "request" and "not a valid" in error.details, (name, error)
    # A failed end of a session whose NPC was opened still says how to resume it.
    assert results["later"].resume_token and results["later"].resume_token == results["later_npc"].resume_token
    assert (results["unknown_character"].code, results["unknown_character"].field) == (
        grpc.StatusCode.INVALID_ARGUMENT, "character_id")
    assert results["bad_size"].field == "video.width"
    assert results["not_found"].code == grpc.StatusCode.NOT_FOUND
    assert (results["not_found"].resource.resource_type, results["not_found"].resource.resource_name) == (
        "avatar.v1.Npc", "nobody-here")
    assert results["aborted"].code == grpc.StatusCode.ABORTED
    assert results["aborted"].resource.resource_name == "busy"
    # A normal end sends SessionEnded with the token the NPC now has.
    ended, npc = results["ended"], results["busy_npc"]
    assert ended is not None and ended.resume_token == npc.resume_token
    assert ended.frames_generated == npc.frames_generated
