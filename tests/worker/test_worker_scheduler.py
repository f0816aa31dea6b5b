"""The scheduling policy with a fake clock and the fake pipeline (no model, no I/O)."""

from __future__ import annotations

import numpy as np
import pytest
from worker_helpers import BLOCK, BLOCK0, LOOKAHEAD, FakeClock

from avatar_backend.worker.fake_pipeline import FakePipeline
from avatar_backend.worker.scheduler import PcmQueue, Scheduler, SchedulerConfig

RATE = 16_000


def voice(samples: int, value: float = 0.5) -> np.ndarray:
    return np.full(samples, value, dtype=np.float32)


def open_session(sched: Scheduler, pipe: FakePipeline, name: str = "s1"):
    memory = pipe.new_memory(f"npc-{name}", "villager", 64, 64, 20, seed=1)
    return sched.open_session(name, f"npc-{name}", memory, conditioning=None)


def run_one(sched: Scheduler, pipe: FakePipeline, clock: FakeClock, compute_s: float = 0.0):
    """Generate the block the scheduler picks now (None when none is due)."""
    plan = sched.next_block()
    if plan is None:
        return None, []
    pipe.generate_block(plan.session.memory, None, plan.audio, plan.prompt)
    clock.advance(compute_s)
    return plan, sched.complete_block(plan, compute_s)


def ahead_s(state, clock: FakeClock) -> float:
    return state.video_end(RATE) - clock.t


def test_pcm_queue_peek_drop_across_chunks():
    q = PcmQueue()
    q.push(np.arange(5, dtype=np.float32))
    q.push(np.arange(5, 12, dtype=np.float32))
    assert len(q) == 12
    np.testing.assert_array_equal(q.peek(7), np.arange(7))
    assert q.drop(6) == 6
    np.testing.assert_array_equal(q.peek(100), np.arange(6, 12))
    assert q.clear() == 6 and len(q) == 0


def test_tts_faster_than_real_time_generates_back_to_back(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    sched.push_voice("s1", voice(5 * RATE))          # 5 s of TTS at once
    reasons = []
    while True:
        plan, _ = run_one(sched, pipeline, clock)
        if plan is None:
            break
        reasons.append(plan.reason)
        assert plan.speaking and plan.voice_samples == plan.consume
    # 80000 samples cover block 0 (16800 + look-ahead) and two more blocks without waiting for the clock.
    assert reasons == ["voice", "voice", "voice"]
    assert s.timeline_pos == BLOCK0 + 2 * BLOCK
    assert clock.t == 0.0
    assert s.queued_samples == 5 * RATE - BLOCK0 - 2 * BLOCK


def test_idle_paces_at_wall_clock_and_never_stalls(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    blocks = 0
    while clock.t < 20.0:
        ahead_before = ahead_s(s, clock)
        plan, _ = run_one(sched, pipeline, clock, compute_s=0.05)
        if plan is None:
            assert ahead_s(s, clock) >= 0, "the idle video ran out"
            clock.advance(0.01)
            continue
        blocks += 1
        lead = plan.consume / RATE
        assert plan.reason == "idle" and not plan.speaking
        assert not plan.audio.any()
        assert ahead_before < lead + 1e-9, "a block started while the video was already a block ahead"
        assert ahead_s(s, clock) <= 2 * lead
    generated_s = s.timeline_pos / RATE
    assert 20.0 <= generated_s <= 20.0 + 2 * BLOCK / RATE
    assert blocks == 1 + (s.timeline_pos - BLOCK0) // BLOCK


def test_end_of_utterance_pads_with_silence_and_reports_the_end(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    sched.push_voice("s1", voice(19_200))             # 1.2 s
    assert sched.end_of_utterance("s1") == []          # still queued: reported when generated
    plan, ended = run_one(sched, pipeline, clock)
    assert plan.reason == "voice" and ended == []
    plan, ended = run_one(sched, pipeline, clock)
    assert plan.reason == "end_of_utterance"
    assert plan.voice_samples == 19_200 - BLOCK0
    assert plan.audio[: plan.voice_samples].all() and not plan.audio[plan.voice_samples:].any()
    assert [e.timeline_end for e in ended] == [19_200]
    assert s.queued_samples == 0
    # Then idle: silence, paced by the clock (two blocks made at t=0 are 2.65 s of video).
    assert sched.next_block() is None


def test_end_of_utterance_with_nothing_left_is_reported_at_once(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    open_session(sched, pipeline)
    sched.push_voice("s1", voice(BLOCK0 + LOOKAHEAD))
    run_one(sched, pipeline, clock)                   # consumes BLOCK0, LOOKAHEAD stays queued
    sched.interrupt("s1")
    ended = sched.end_of_utterance("s1")
    assert [e.timeline_end for e in ended] == [BLOCK0]


def test_two_utterances_queued_back_to_back_report_both_ends(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    open_session(sched, pipeline)
    sched.push_voice("s1", voice(10_000))
    sched.end_of_utterance("s1")
    sched.push_voice("s1", voice(20_000, 0.25))
    sched.end_of_utterance("s1")
    plan, ended = run_one(sched, pipeline, clock)      # 30000 >= 18400: voice
    assert [e.timeline_end for e in ended] == [10_000]
    plan, ended = run_one(sched, pipeline, clock)
    assert plan.reason == "end_of_utterance" and [e.timeline_end for e in ended] == [30_000]


def test_interrupt_drops_queued_voice_with_the_right_numbers(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    sched.push_voice("s1", voice(5 * RATE))
    run_one(sched, pipeline, clock)
    run_one(sched, pipeline, clock)
    result = sched.interrupt("s1")
    assert result.generated_until == BLOCK0 + BLOCK
    assert result.dropped_samples == 5 * RATE - BLOCK0 - BLOCK
    assert result.next_frame_index == 21 + 32
    assert s.queued_samples == 0
    # The next block starts from silence, when the idle pacing wants it.
    clock.advance(s.video_end(RATE) - BLOCK / RATE)
    plan, _ = run_one(sched, pipeline, clock)
    assert plan.reason == "idle" and not plan.speaking and plan.audio_start == result.generated_until


def test_slow_voice_is_padded_only_when_the_video_would_underrun(pipeline, clock):
    config = SchedulerConfig(underrun_margin_s=0.2)
    sched = Scheduler(pipeline, config, clock=clock)
    s = open_session(sched, pipeline)
    run_one(sched, pipeline, clock)
    run_one(sched, pipeline, clock)                   # idle: 2.65 s of video made at t=0
    assert s.timeline_pos == BLOCK0 + BLOCK
    pushed = 0
    clock.t = 0.5
    padded = None
    while clock.t < 6.0:
        # Voice at half real time, in 50 ms packets.
        chunk = int(0.05 * RATE / 2)
        sched.push_voice("s1", voice(chunk))
        pushed += chunk
        plan, _ = run_one(sched, pipeline, clock)
        if plan is not None:
            padded = plan
            break
        assert ahead_s(s, clock) > 0, "the video ran out while waiting for voice"
        clock.advance(0.05)
    assert padded is not None and padded.reason == "underrun"
    # It waited until the video was about to run out, not earlier.
    deadline = (BLOCK0 + BLOCK) / RATE - 0.2
    assert deadline - 0.06 <= clock.t <= deadline
    assert padded.speaking and padded.voice_samples == pushed
    assert not padded.audio[pushed:].any()


def test_voice_that_arrives_in_time_is_not_padded(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    run_one(sched, pipeline, clock)
    run_one(sched, pipeline, clock)
    sched.push_voice("s1", voice(1000))                # an utterance starts: wait for more
    clock.t = 1.0
    assert sched.next_block() is None
    sched.push_voice("s1", voice(BLOCK + LOOKAHEAD - 1000))
    plan, _ = run_one(sched, pipeline, clock)
    assert plan.reason == "voice" and plan.voice_samples == BLOCK
    assert s.queued_samples == LOOKAHEAD


def test_idle_sessions_take_turns(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    open_session(sched, pipeline, "a")
    open_session(sched, pipeline, "b")
    order = []
    while clock.t < 10.0:
        plan, _ = run_one(sched, pipeline, clock)
        if plan is None:
            clock.advance(0.01)
        else:
            order.append(plan.session.session_id)
    assert order[:4] == ["a", "b", "a", "b"]
    assert abs(order.count("a") - order.count("b")) <= 1


def test_busy_voice_session_does_not_starve_an_idle_one(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    talker = open_session(sched, pipeline, "talker")
    idler = open_session(sched, pipeline, "idler")
    sched.push_voice("talker", voice(120 * RATE))     # two minutes of TTS, always ready
    while clock.t < 15.0:
        plan, _ = run_one(sched, pipeline, clock, compute_s=0.3)
        if plan is None:
            clock.advance(0.01)
        if idler.blocks:  # its very first block can only come after one compute time
            assert ahead_s(idler, clock) >= 0, "the idle session's video ran out"
    # The talker used the rest of the time: ~3 blocks per 1.6 s of the idle one's 1.
    assert talker.timeline_pos > 2 * idler.timeline_pos


def test_two_talking_sessions_progress_evenly(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    a = open_session(sched, pipeline, "a")
    b = open_session(sched, pipeline, "b")
    sched.push_voice("a", voice(60 * RATE))
    sched.push_voice("b", voice(60 * RATE))
    for _ in range(30):
        plan, _ = run_one(sched, pipeline, clock, compute_s=0.1)
        assert plan is not None and plan.reason == "voice"
        assert abs(a.timeline_pos - b.timeline_pos) <= BLOCK


def test_prompt_and_listening_state(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    open_session(sched, pipeline)
    sched.set_prompt("s1", "smiling", 0.5)
    sched.set_listening("s1", True)
    plan = sched.next_block()
    assert plan.prompt == "smiling" and plan.session.listening and plan.session.intensity == 0.5
    sched.set_prompt("s1", None)
    assert sched.next_block().prompt is None
    with pytest.raises(KeyError):
        sched.push_voice("nope", voice(10))


def test_seconds_until_ready(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    assert sched.seconds_until_ready() is None
    open_session(sched, pipeline)
    assert sched.seconds_until_ready() == 0.0
    run_one(sched, pipeline, clock)
    run_one(sched, pipeline, clock)
    assert sched.seconds_until_ready() == pytest.approx((BLOCK0 + BLOCK) / RATE - BLOCK / RATE)
