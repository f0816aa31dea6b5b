"""What a player sees, end to end over real gRPC with the shipped tiny weights at the default 128x128.

The server runs the weights it ships by default; frames are the JPEGs it sends. The mouth is read with the
same measure that validates the training data, in the default character's mouth region (its asset says where):
speech opens it in step with the voice, silence, listening and an interrupt close it, an emotion changes the
picture within a block (and one timed to a word of a line sent all at once changes it at that word's block,
not before), and a resumed NPC is still the same character.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import simplejpeg
from e2e_helpers import ASSETS, FPS, RATE, SENTENCE, Server, collect, espeak, events_of, frames_of, run

from avatar_backend.client import AvatarClient
from avatar_backend.client.meters import LipSyncMeter
from avatar_backend.media.mouth import measure_mouth_openness
from avatar_backend.proto_gen import converse_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SIZE = 128                      # the size the tiny model is trained at
BLOCK_FRAMES = 32
MOUTH_REGION = tuple(json.loads((ASSETS / "default_character.json").read_text())["mouth_region"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("data")).start()
    yield srv
    assert srv.stop() == 0, "".join(srv.output[-40:])


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory) -> np.ndarray:
    return espeak(f"{SENTENCE} {SENTENCE}", RATE, tmp_path_factory.mktemp("speech"))


def pictures(frames) -> np.ndarray:
    return np.stack([simplejpeg.decode_jpeg(f.data, colorspace="RGB") for f in frames])


def mouth_opening(images: np.ndarray) -> np.ndarray:
    meter = LipSyncMeter(MOUTH_REGION, SIZE, SIZE, FPS, RATE)
    x0, y0, x1, y1 = meter.box
    return measure_mouth_openness(images[:, y0:y1, x0:x1], (0, 0, x1 - x0, y1 - y0))


def lip_sync(items):
    meter = LipSyncMeter(MOUTH_REGION, SIZE, SIZE, FPS, RATE)
    for item in items:
        if isinstance(item, converse_pb2.VideoFrame):
            meter.frame(item, simplejpeg.decode_jpeg(item.data, colorspace="RGB"))
        elif isinstance(item, converse_pb2.AudioEcho):
            meter.echo(item)
    return meter.score()


async def utterance(conv, pcm, *, after_frames: int = 2 * BLOCK_FRAMES) -> list:
    """Send ``pcm`` as one utterance; the items until ``after_frames`` frames past its end."""
    await conv.send_audio_pcm(pcm)
    await conv.end_utterance()
    items = await collect(conv, lambda it: bool(events_of(it, converse_pb2.EVENT_CODE_UTTERANCE_COMPLETE)))
    end = int(events_of(items, converse_pb2.EVENT_CODE_UTTERANCE_COMPLETE)[0].details["timeline_end"])
    last = end // (RATE // FPS) + after_frames
    return items + await collect(conv, lambda it: any(f.index >= last for f in frames_of(items + it)))


def test_speech_moves_the_mouth_in_sync_and_silence_closes_it(server, long_speech):
    async def scenario():
        async with AvatarClient(server.address) as client:
            info = await client.server_info()
            assert not info.model.random_weights
            async with client.converse("talker", "default", width=SIZE, height=SIZE, fps=FPS, sample_rate=RATE) as conv:
                return await utterance(conv, long_speech)

    items = run(scenario())
    score = lip_sync(items)
    assert score is not None and score.speaking_frames > 40
    assert score.r >= 0.6, score
    frames = frames_of(items)
    opening = mouth_opening(pictures(frames))
    speaking = np.array([f.speaking for f in frames])
    last_speaking = int(np.nonzero(speaking)[0][-1])
    silent_after = opening[last_speaking + 10:]            # 0.5 s for the mouth to close
    assert len(silent_after) >= BLOCK_FRAMES
    assert silent_after.mean() < 0.5 * opening[speaking].mean(), (silent_after.mean(), opening[speaking].mean())


def face_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference (0-255) of two frame stacks' mean pictures in the upper body's box."""
    top, bottom, left, right = SIZE // 8, SIZE, SIZE // 8, SIZE - SIZE // 8
    return float(np.abs(a.mean(0)[top:bottom, left:right] - b.mean(0)[top:bottom, left:right]).mean())


def test_listening_keeps_the_mouth_closed_and_an_emotion_changes_the_picture_within_a_block(server, long_speech):
    async def frames_until(conv, index):
        return frames_of(await collect(conv, lambda it: any(f.index >= index for f in frames_of(it))))

    async def scenario():
        async with AvatarClient(server.address) as client:
            async with client.converse("listener", "default", width=SIZE, height=SIZE, fps=FPS, sample_rate=RATE) as conv:
                idle = await frames_until(conv, 3 * BLOCK_FRAMES)
                await conv.listening(True)
                listening = await frames_until(conv, idle[-1].index + 3 * BLOCK_FRAMES)
                await conv.listening(False)
                await conv.emotion("surprised", 1.0)
                surprised = await frames_until(conv, listening[-1].index + 3 * BLOCK_FRAMES)
                await conv.emotion("", 1.0)
                speech_items = await utterance(conv, long_speech, after_frames=0)
                return idle, listening, surprised, frames_of(speech_items)

    idle, listening, surprised, speaking = run(scenario())
    speaking_opening = mouth_opening(pictures([f for f in speaking if f.speaking])).mean()
    # Listening: the mouth stays as closed as when idle, well below speech.
    listening_opening = mouth_opening(pictures(listening[BLOCK_FRAMES:])).mean()
    assert listening_opening < 0.5 * speaking_opening, (listening_opening, speaking_opening)

    # An emotion shows within a block (the next block is made with it): its frames differ from the idle ones
    # more than two stretches of idle differ from each other.
    idle_pictures = pictures(idle[BLOCK_FRAMES:])
    baseline = face_change(idle_pictures[:BLOCK_FRAMES], idle_pictures[BLOCK_FRAMES:2 * BLOCK_FRAMES])
    emotion = face_change(pictures(surprised[BLOCK_FRAMES: 2 * BLOCK_FRAMES]), idle_pictures)
    assert emotion > 1.2 * baseline, (baseline, emotion)
    # Actions (a wave) do not show yet with the shipped weights: the evaluation's control response says so.


def test_an_interrupt_closes_the_mouth_within_a_block_and_a_resumed_npc_is_the_same_character(server, long_speech):
    async def scenario():
        async with AvatarClient(server.address) as client:
            async with client.converse("speaker", "default", width=SIZE, height=SIZE, fps=FPS, sample_rate=RATE) as conv:
                await conv.send_audio_pcm(np.concatenate([long_speech] * 3))
                talking = await collect(conv, lambda it: sum(f.speaking for f in frames_of(it)) >= 2 * BLOCK_FRAMES)
                ack = await conv.interrupt()
                after = await collect(conv, lambda it: any(
                    f.index >= ack.next_frame_index + 3 * BLOCK_FRAMES for f in frames_of(it)))
            async with client.converse("speaker", width=SIZE, height=SIZE, fps=FPS, sample_rate=RATE) as conv:
                assert conv.accepted.resumed
                resumed = frames_of(await collect(conv, lambda it: len(frames_of(it)) >= 2 * BLOCK_FRAMES))
            return frames_of(talking), ack, frames_of(after), resumed

    talking, ack, after, resumed = run(scenario())
    speaking_opening = mouth_opening(pictures([f for f in talking if f.speaking])).mean()
    replaced = [f for f in after if f.index >= ack.next_frame_index]
    closed = mouth_opening(pictures(replaced[BLOCK_FRAMES:]))          # one block after the interrupt
    assert closed.mean() < 0.5 * speaking_opening, (closed.mean(), speaking_opening)
    # The resumed NPC: same colours (hair, skin, clothes, background) as before it was parked.
    before, again = pictures(after[-BLOCK_FRAMES:]), pictures(resumed[:BLOCK_FRAMES])
    assert face_change(again, before) < 12.0


def first_frame_of_block_nearest(frames, position: int) -> int:
    """The index of the first frame of the block that starts nearest to a timeline ``position`` (the block
    holding it when it lies in the block's first half, else the next one)."""
    blocks: dict[int, list] = {}
    for frame in frames:
        blocks.setdefault(frame.block_index, []).append(frame)
    starts = sorted(blocks)
    for k, block in enumerate(starts):
        begin, end = blocks[block][0].audio_start, blocks[block][-1].audio_end
        if begin <= position < end:
            nearest = block if position - begin < (end - begin) / 2 else starts[k + 1]
            return blocks[nearest][0].index
    raise AssertionError(f"no block holds position {position}")


def test_an_emotion_timed_to_a_word_changes_the_picture_at_the_block_nearest_it_not_before(server, long_speech):
    # TTS: the whole line is sent at once, with the emotion timed 4.5 s into it.
    at_seconds = 4.5

    async def speak(npc_id: str, timed: bool) -> list:
        async with AvatarClient(server.address) as client:
            async with client.converse(npc_id, "default", width=SIZE, height=SIZE, fps=FPS, sample_rate=RATE,
                                       seed=7) as conv:
                if timed:
                    await conv.emotion("surprised", 1.0, at_voice_sample=conv.voice_samples_sent + int(at_seconds * RATE))
                await conv.send_audio_pcm(long_speech)
                await conv.end_utterance()
                # Far enough for the event's block and the next one, whichever block the voice starts in.
                return frames_of(await collect(conv, lambda it: any(f.index >= 21 + 5 * BLOCK_FRAMES
                                                                    for f in frames_of(it))))

    async def scenario():
        # One after the other: the same seed and voice then make the same blocks until the prompt differs, as long
        # as the voice starts in the same block (it misses block 0 when it reaches a busy server after 0.3 s).
        for attempt in range(3):
            plain = await speak(f"plain-line-{attempt}", timed=False)
            timed = await speak(f"timed-line-{attempt}", timed=True)
            if next(f.index for f in plain if f.speaking) == next(f.index for f in timed if f.speaking):
                return plain, timed
        raise AssertionError("the voice started in different blocks in three attempts")

    plain, timed = run(scenario())
    voice_start = next(f for f in plain if f.speaking).audio_start
    expected = first_frame_of_block_nearest(plain, voice_start + int(at_seconds * RATE))
    count = min(len(plain), len(timed), expected + BLOCK_FRAMES)
    plain_pictures, timed_pictures = pictures(plain[:count]), pictures(timed[:count])
    changed = [k for k in range(count) if not np.array_equal(plain_pictures[k], timed_pictures[k])]
    assert changed and changed[0] == expected, (expected, changed[:5])
    change = face_change(timed_pictures[expected:], plain_pictures[expected:])
    assert change > 1.0, change


def test_a_sessions_prompt_guidance_sets_how_strongly_its_emotion_shows(server, long_speech):
    """NPCs with one seed say the same line, with the same emotion timed into it, in sessions that ask for prompt
    guidance 1 (off), nothing (the server's, 3) and 5: until the emotion's block their frames are a plain line's
    byte for byte (guidance acts under a prompt only), from it the emotion moves the picture further from the
    plain line's the higher the session's factor."""
    at_seconds = 2.0
    sessions = {"plain": None, "off": 1.0, "default": None, "strong": 5.0}

    async def speak(name: str, attempt: int):
        async with AvatarClient(server.address) as client:
            async with client.converse(f"guided-{name}-{attempt}", "default", width=SIZE, height=SIZE, fps=FPS,
                                       sample_rate=RATE, seed=7, prompt_guidance=sessions[name]) as conv:
                if name != "plain":
                    await conv.emotion("surprised", 1.0, at_voice_sample=conv.voice_samples_sent + int(at_seconds * RATE))
                await conv.send_audio_pcm(long_speech)
                await conv.end_utterance()
                frames = frames_of(await collect(conv, lambda it: any(f.index >= 21 + 4 * BLOCK_FRAMES
                                                                      for f in frames_of(it))))
                return conv.accepted.prompt_guidance, frames

    async def scenario():
        # As in the timed-emotion test: the same seed and voice make the same blocks while the voice starts in the
        # same block (a busy server may start it a block later).
        for attempt in range(3):
            runs = {name: await speak(name, attempt) for name in sessions}
            if len({next(f.index for f in frames if f.speaking) for _, frames in runs.values()}) == 1:
                return runs
        raise AssertionError("the voice started in different blocks in three attempts")

    runs = run(scenario())
    assert {name: factor for name, (factor, _) in runs.items()} == {"plain": 3.0, "off": 1.0, "default": 3.0,
                                                                    "strong": 5.0}
    plain = runs["plain"][1]
    voice_start = next(f for f in plain if f.speaking).audio_start
    expected = first_frame_of_block_nearest(plain, voice_start + int(at_seconds * RATE))
    plain_pictures = pictures(plain[:expected + BLOCK_FRAMES])
    change = {}
    for name in ("off", "default", "strong"):
        guided = pictures(runs[name][1][:expected + BLOCK_FRAMES])
        np.testing.assert_array_equal(guided[:expected], plain_pictures[:expected], err_msg=name)
        change[name] = face_change(guided[expected:], plain_pictures[expected:])
    assert 0 < change["off"] < change["default"] < change["strong"], change
