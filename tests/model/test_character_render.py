"""The procedural renderer draws what its truth says: mouth, blinks, emotions, actions, listening, identity,
determinism and anti-aliasing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from character_helpers import SAMPLE_RATE, synthetic_voice

from model.data import (
    ACTION_SECONDS,
    ACTIONS,
    DEFAULT_IDENTITY,
    EMOTIONS,
    Event,
    identity_from_seed,
    measure_eye_whites,
    measure_mouth_dark_area,
    measure_mouth_openness,
    neutral_state,
    region_change,
    render_clip,
    render_still,
)
from model.data.render import CharacterPainter
from model.data.speech import random_utterance


def closed_mouth_level(seed: int, size: int) -> float:
    """The mouth measure of the same character with its lips closed (the lip line alone)."""
    painter = CharacterPainter(identity_from_seed(seed), size)
    frame, layout = painter.draw(neutral_state())
    return float(measure_mouth_openness(frame, layout.mouth_box)[0])


def test_mouth_measure_follows_truth_on_real_speech(needs_espeak):
    utterance = random_utterance(np.random.default_rng(7), 5.0)
    clip = render_clip(11, utterance.audio, size=128)
    truth = clip.truth["mouth_open"]
    measured = measure_mouth_openness(clip.frames, clip.truth)
    assert truth.max() > 0.8 and (truth == 0).sum() > 5, "the clip must hold both speech and silence"
    assert np.corrcoef(measured, truth)[0, 1] >= 0.95
    # The dark area grows with the opening too (it also grows with width, so less tightly).
    assert np.corrcoef(measure_mouth_dark_area(clip.frames, clip.truth), truth)[0, 1] >= 0.85


def test_silence_keeps_the_mouth_closed():
    silence = np.zeros(int(1.5 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([silence, synthetic_voice(1.0), silence])
    clip = render_clip(3, audio, size=96)
    truth = clip.truth["mouth_open"]
    before, speaking, after = slice(0, 30), slice(30, 50), slice(60, 90)   # 20 fps; 10 frames of release
    assert (truth[before] == 0).all() and (truth[after] == 0).all()
    assert truth[speaking].max() > 0.7
    measured = measure_mouth_openness(clip.frames, clip.truth)
    closed = closed_mouth_level(3, 96)
    assert np.abs(measured[before] - closed).max() < 0.02
    assert np.abs(measured[after] - closed).max() < 0.02
    assert measured[speaking].max() > closed + 0.15


def test_mouth_width_follows_the_spectrum_and_is_drawn():
    rounded = render_clip(5, synthetic_voice(1.0, f0=110, formant=300), size=96, idle_motion=False)
    wide = render_clip(5, synthetic_voice(1.0, f0=220, formant=3000), size=96, idle_motion=False)
    speaking = rounded.truth["mouth_open"] > 0.3
    assert rounded.truth["mouth_width"][speaking].mean() < 0.3
    assert wide.truth["mouth_width"][wide.truth["mouth_open"] > 0.3].mean() > 0.7
    painter = CharacterPainter(identity_from_seed(5), 96)
    oo, layout = painter.draw(neutral_state(mouth_open=0.6, mouth_width=0.0))
    ee, _ = painter.draw(neutral_state(mouth_open=0.6, mouth_width=1.0))
    # Same opening, so the same height; the wide mouth has the larger dark area.
    assert abs(measure_mouth_openness(oo, layout.mouth_box)[0] - measure_mouth_openness(ee, layout.mouth_box)[0]) < 0.05
    assert measure_mouth_dark_area(ee, layout.mouth_box)[0] > 1.2 * measure_mouth_dark_area(oo, layout.mouth_box)[0]


def test_blinks_close_the_eyes_briefly_every_few_seconds():
    clip = render_clip(21, None, seconds=13.0, size=96)
    blink = clip.truth["blink"]
    shut = np.flatnonzero(blink == 1.0)
    assert len(shut) >= 2
    gaps = np.diff(shut) / clip.fps
    assert ((gaps >= 2.9) & (gaps <= 6.1)).all()
    assert (blink > 0).sum() <= 3 * len(shut), "a blink lasts about 150 ms (3 frames at 20 fps)"
    whites = measure_eye_whites(clip.frames, clip.truth)
    open_level = np.median(whites[blink == 0])
    assert open_level > 0.04
    assert (whites[shut] < 0.1 * open_level).all()


@pytest.mark.parametrize("emotion", [e for e in EMOTIONS if e != "neutral"])
def test_emotions_change_brows_and_mouth_with_intensity(emotion):
    painter = CharacterPainter(identity_from_seed(8), 96)
    neutral, layout = painter.draw(neutral_state())

    def change(intensity: float) -> float:
        frame, _ = painter.draw(neutral_state(emotion=emotion, emotion_intensity=intensity))
        return region_change(frame, neutral, layout.brow_box) + region_change(frame, neutral, layout.mouth_box)

    quarter, half, full = change(0.25), change(0.5), change(1.0)
    assert quarter > 0.5
    assert half > 1.15 * quarter and full > 1.15 * half


def test_emotion_changes_fade_and_report_what_is_drawn():
    events = [Event.emotion(0.0, "happy", 1.0), Event.emotion(1.0, "sad", 0.6)]
    clip = render_clip(2, None, events, seconds=2.0, size=64, idle_motion=False)
    names = [EMOTIONS[i] for i in clip.truth["emotion"]]
    intensity = clip.truth["emotion_intensity"]
    assert names[10] == "happy" and names[19] == "happy" and names[25] == "sad" and names[-1] == "sad"
    assert intensity[19] == pytest.approx(1.0) and intensity[-1] == pytest.approx(0.6)
    assert 0.0 <= intensity[21] < 1.0, "the old emotion fades out"


@pytest.mark.parametrize("action", ACTIONS[1:])
def test_actions_move_over_their_duration_and_end_where_they_started(action):
    start, duration = 0.5, ACTION_SECONDS[action]
    clip = render_clip(4, None, [Event.action(start, action)], seconds=start + duration + 0.5, size=64,
                       idle_motion=False)
    truth, frames = clip.truth, clip.frames
    running = np.flatnonzero(truth["action"] == ACTIONS.index(action))
    assert running[0] == round(start * clip.fps) and len(running) == round(duration * clip.fps)
    phase = truth["action_phase"][running]
    assert phase[0] == 0.0 and (np.diff(phase) > 0).all() and phase[-1] > 0.9
    motion = (np.abs(truth["yaw"]) + np.abs(truth["pitch"]) + truth["arm_raise"] + truth["hand_chin"])[running]
    assert motion.max() > 0.1, "the head or an arm moves"
    moved = max(np.abs(frames[i].astype(int) - frames[0]).mean() for i in running)
    assert moved > 1.0
    after = running[-1] + 1
    assert np.array_equal(frames[after], frames[0]), "back where it started"


def test_listening_keeps_the_mouth_closed_and_nods():
    audio = synthetic_voice(4.0)
    events = [Event.listening(1.0, True), Event.listening(3.0, False)]
    clip = render_clip(6, audio, events, size=96, idle_motion=False)
    listening = clip.truth["listening"]
    assert listening[20:60].all() and not listening[:20].any() and not listening[60:].any()
    assert (clip.truth["mouth_open"][listening] == 0).all()
    measured = measure_mouth_openness(clip.frames, clip.truth)
    closed = closed_mouth_level(6, 96)
    assert measured[listening].max() < closed + 0.02
    assert measured[~listening].max() > closed + 0.15, "the same voice opens the mouth when not listening"
    assert clip.truth["pitch"][listening].max() > 0.03, "small nods"


def test_same_seed_is_identical_and_seeds_differ():
    audio = synthetic_voice(1.0)
    events = [Event.action(0.2, "nod")]
    a = render_clip(31, audio, events, size=64)
    b = render_clip(31, audio, events, size=64)
    c = render_clip(32, audio, events, size=64)
    assert np.array_equal(a.frames, b.frames)
    assert all(np.array_equal(a.truth[k], b.truth[k]) for k in a.truth)
    assert a.identity != c.identity
    assert np.abs(a.frames.astype(int) - c.frames).mean() > 10
    looks = {dataclasses.astuple(identity_from_seed(s))[1:] for s in range(20)}
    assert len(looks) == 20


def test_edges_are_anti_aliased():
    flat = (120, 140, 160)
    identity = dataclasses.replace(DEFAULT_IDENTITY, background="vertical", background_colours=(flat, flat, flat))
    frame = render_still(identity, 128).astype(np.float32)
    clothes = np.array(identity.clothes, np.float32)
    # Pixels on the segment between the flat background and the clothes colour: the shoulder edge's coverage.
    span = clothes - np.array(flat, np.float32)
    t = ((frame - flat) @ span) / (span @ span)
    on_segment = np.linalg.norm(frame - (flat + t[..., None] * span), axis=-1) < 3.0
    partial = on_segment & (t > 0.15) & (t < 0.85)
    assert partial.sum() > 30


@pytest.mark.parametrize("size", [64, 192, 256])
def test_every_model_size_renders(size):
    clip = render_clip(9, None, seconds=0.1, size=size)
    assert clip.frames.shape == (2, size, size, 3) and clip.frames.dtype == np.uint8
    x0, y0, x1, y1 = clip.truth["mouth_box"][0]
    assert 0.4 * size < (x0 + x1) / 2 < 0.6 * size and 0.5 * size < (y0 + y1) / 2 < 0.7 * size
