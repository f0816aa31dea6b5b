"""The scheduling policy with a fake clock and the stand-in generator (no model, no I/O)."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest
from stand_in_generator import StandInGenerator
from worker_helpers import BLOCK, BLOCK0, LOOKAHEAD, FakeClock

from avatar_backend.worker.scheduler import (
    PcmQueue,
    Scheduler,
    SchedulerConfig,
    VoiceQueueFull,
)

RATE = 16_000
GRACE = SchedulerConfig().start_grace_s      # 0.3 s
MARGIN = SchedulerConfig().idle_margin_s     # 0.5 s


def voice(samples: int, value: float = 0.5) -> np.ndarray:
    return np.full(samples, value, dtype=np.float32)


def open_session(sched: Scheduler, pipe: StandInGenerator, name: str = "s1"):
    memory = pipe.new_memory(f"npc-{name}", "villager", 64, 64, 20, seed=1)
    return sched.open_session(name, f"npc-{name}", memory, conditioning=None)


def run_one(sched: Scheduler, pipe: StandInGenerator, clock: FakeClock, compute_s: float = 0.0):
    """Generate the block the scheduler picks now (None when none is due)."""
    plan = sched.next_block()
    if plan is None:
        return None, []
    pipe.generate_block(plan.session.memory, None, plan.audio, plan.prompt, intensity=plan.intensity)
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


@pytest.mark.parametrize("margin, computes", [(0.5, (0.05,)), (0.5, (0.05, 0.3, 0.12)), (0.2, (0.1, 0.25))])
def test_idle_paces_just_in_time_and_never_stalls(pipeline, clock, margin, computes):
    config = SchedulerConfig(idle_margin_s=margin)
    sched = Scheduler(pipeline, config, clock=clock)
    s = open_session(sched, pipeline)
    step = 0.01
    compute_times = itertools.cycle(computes)
    starts = []
    while clock.t < 20.0:
        estimate = sched.busy_estimate_s()     # the lead the scheduler keeps (one session: one block's time)
        ahead_before = ahead_s(s, clock)
        plan = sched.next_block()
        if plan is None:
            if s.blocks:
                assert ahead_before > 0, "the idle video ran out"
                assert ahead_before > estimate + margin, "an idle block was due but did not run"
            clock.advance(step)
            continue
        starts.append(clock.t)
        assert plan.reason == "idle" and not plan.speaking and plan.gap_samples == 0
        assert not plan.audio.any()
        if s.blocks:
            # Just in time: at most the expected compute time plus the margin ahead, and not a step earlier.
            assert estimate + margin - step - 1e-9 < ahead_before <= estimate + margin + 1e-9
        compute = next(compute_times)
        pipeline.generate_block(plan.session.memory, None, plan.audio, plan.prompt, intensity=plan.intensity)
        clock.advance(compute)
        sched.complete_block(plan, compute)
        if len(starts) > 1:
            # The new block was made before the wall clock passed the old video end: no stall.
            assert ahead_before - compute > 0, "the block came too late: the video stalled"
        assert ahead_s(s, clock) <= plan.consume / RATE + estimate + margin + 1e-9
    # The first block waited the start grace (no voice came), from silence at timeline 0.
    assert GRACE - 1e-9 <= starts[0] < GRACE + step
    assert s.blocks == len(starts) == 1 + (s.timeline_pos - BLOCK0) // BLOCK
    # Over 20 s the video stayed just ahead of the clock, never a block more.
    assert 0 < ahead_s(s, clock) <= BLOCK / RATE + sched.compute_estimate_s + margin


def test_first_block_waits_the_start_grace_for_voice(pipeline, clock):
    clock.t = 100.0                                    # any clock: the grace counts from the session's opening
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    assert sched.seconds_until_ready() == pytest.approx(GRACE)
    clock.t = 100.0 + GRACE - 0.001
    assert sched.next_block() is None
    clock.t = 100.0 + GRACE
    assert sched.seconds_until_ready() == 0.0
    plan, _ = run_one(sched, pipeline, clock)
    assert plan.reason == "idle" and not plan.speaking and plan.audio_start == 0 and s.blocks == 1


def test_voice_inside_the_start_grace_makes_block_0_speaking(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    clock.advance(0.05)
    assert sched.next_block() is None                  # in the grace, nothing queued
    sched.push_voice("s1", voice(BLOCK0 + LOOKAHEAD))
    assert sched.seconds_until_ready() == 0.0          # rule (a): at once, not at the end of the grace
    plan, _ = run_one(sched, pipeline, clock)
    assert plan.reason == "voice" and plan.speaking and plan.gap_samples == 0
    assert plan.audio_start == 0 and plan.voice_samples == BLOCK0 and plan.audio.all()
    assert clock.t == 0.05 and s.queued_samples == LOOKAHEAD


def test_voice_streamed_in_small_packets_inside_the_grace_fills_block_0(pipeline, clock):
    # TTS 8x faster than real time in 20 ms packets: the first packet alone must not start a padded block 0.
    sched = Scheduler(pipeline, clock=clock)
    open_session(sched, pipeline)
    packet = 320
    pushed = 0
    plan = None
    while plan is None:
        assert clock.t < GRACE, "block 0 did not run when its voice was complete"
        sched.push_voice("s1", voice(packet))
        pushed += packet
        plan, _ = run_one(sched, pipeline, clock)
        if plan is None:
            assert pushed < BLOCK0 + LOOKAHEAD
            clock.advance(packet / RATE / 8)
    assert plan.reason == "voice" and plan.voice_samples == BLOCK0 and plan.gap_samples == 0
    assert pushed >= BLOCK0 + LOOKAHEAD > pushed - packet


def test_voice_slower_than_the_grace_waits_while_block_0_idles(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    sched.push_voice("s1", voice(4000))                # an utterance starts, too slowly for block 0
    assert sched.next_block() is None
    assert sched.seconds_until_ready() == pytest.approx(GRACE)
    clock.t = GRACE - 0.001
    assert sched.next_block() is None
    clock.t = GRACE
    plan, _ = run_one(sched, pipeline, clock)
    # The delay goes before the utterance: block 0 is silent and the voice stays queued, whole.
    assert plan.reason == "idle" and not plan.speaking and plan.voice_samples == 0
    assert s.queued_samples == 4000 and not plan.audio.any()


def index_of(plans, plan) -> int:
    return next(i for i, p in enumerate(plans) if p is plan)


def real_time_voice(sched, pipeline, clock, *, seconds: float, stall_at: float | None = None,
                    stall_s: float = 0.0, compute_s: float = 0.1, end_of_utterance: bool = True):
    """Voice at exactly real-time pace in 20 ms packets from t = 0 (with an optional stall), blocks run as
    the scheduler says; returns every plan until the voice is generated and the video is 6 s past it."""
    packet, step = 320, 0.02
    total = int(seconds * RATE)
    pushed, plans, t_voice = 0, [], 0.0
    s = sched.get("s1")
    while clock.t < seconds + stall_s + 6.0:
        while pushed < total and t_voice <= clock.t + 1e-9:
            in_stall = stall_at is not None and stall_at <= t_voice < stall_at + stall_s
            if not in_stall:
                sched.push_voice("s1", voice(min(packet, total - pushed)))
                pushed += min(packet, total - pushed)
                if pushed == total and end_of_utterance:
                    sched.end_of_utterance("s1")
            t_voice += step
        plan, _ = run_one(sched, pipeline, clock, compute_s)
        if plan is not None:
            plans.append(plan)
            continue
        if s.blocks:
            assert ahead_s(s, clock) > 0, "the video ran out"
        clock.advance(0.01)
    assert pushed == total
    return plans


def test_real_time_voice_starts_after_a_block_and_is_never_chopped(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    plans = real_time_voice(sched, pipeline, clock, seconds=8.0)
    speaking = [p for p in plans if p.speaking]
    assert sum(p.voice_samples for p in speaking) == 8 * RATE      # all of it, once
    assert all(p.reason != "underrun" and p.gap_samples == 0 for p in plans)
    # The speaking blocks are back to back and full but the last: no silence inside the utterance.
    first = index_of(plans, speaking[0])
    assert [id(p) for p in plans[first:first + len(speaking)]] == [id(p) for p in speaking]
    assert all(p.voice_samples == p.consume for p in speaking[:-1])
    # The NPC idled first: the wait went before the utterance.
    assert first >= 1 and speaking[0].audio_start >= BLOCK0
    assert s.queued_samples == 0


def test_a_voice_stall_beyond_the_budget_inserts_silence_once_and_reports_it_on_resume(pipeline, clock):
    budget = SchedulerConfig().voice_jitter_budget_s
    sched = Scheduler(pipeline, clock=clock)
    open_session(sched, pipeline)
    plans = real_time_voice(sched, pipeline, clock, seconds=8.0, stall_at=4.0, stall_s=2.0)
    assert sum(p.voice_samples for p in plans) == 8 * RATE          # nothing lost
    underruns = [p for p in plans if p.reason == "underrun"]
    gaps = [p for p in plans if p.gap_samples]
    assert len(underruns) == 1 and len(gaps) == 1
    resumed = gaps[0]
    assert resumed.speaking and index_of(plans, resumed) > index_of(plans, underruns[0])
    # The reported gap is exactly the silence between the stalled voice and the resumed voice.
    stalled_end = underruns[0].audio_start + underruns[0].voice_samples
    assert resumed.gap_samples == resumed.audio_start - stalled_end
    # Silence went in once the voice was later than the budget allows; the video made already absorbs the rest.
    assert 0 < resumed.gap_samples <= (2.0 - budget) * RATE + BLOCK
    # After the resume the voice runs back to back again.
    after = [p for p in plans[index_of(plans, resumed):] if p.speaking]
    assert all(p.voice_samples == p.consume for p in after[:-1])


def test_a_short_stall_within_the_budget_inserts_nothing(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    open_session(sched, pipeline)
    plans = real_time_voice(sched, pipeline, clock, seconds=8.0, stall_at=4.0, stall_s=0.3)
    assert sum(p.voice_samples for p in plans) == 8 * RATE
    assert all(p.reason != "underrun" and p.gap_samples == 0 for p in plans)


def conversation(sched, pipeline, clock, *, utterances: int, utterance_s: float, pause_s: float,
                 jitter_s: float = 0.0):
    """``utterances`` utterances of real-time voice in 20 ms packets, each followed by its end of utterance and
    ``pause_s`` of nothing, blocks made as the scheduler says (0.1 s each); each packet is held back up to
    ``jitter_s`` (a network's jitter; packets keep their order). Returns every plan, the utterance ends
    reported and the clock time of each utterance's first packet. Asserts that the video never ran out."""
    packet, step = 320, 0.02
    rng = np.random.default_rng(0)
    s = sched.get("s1")
    plans, ends, started_at = [], [], []
    t_next, sent, done = 0.0, 0, 0
    held_until = 0.0
    while done < utterances or s.queued_samples:
        while done < utterances and t_next <= clock.t + 1e-9:
            held_until = max(held_until, t_next + rng.uniform(0.0, jitter_s))
            if held_until > clock.t + 1e-9:
                break
            if sent == 0:
                started_at.append(clock.t)
            sched.push_voice("s1", voice(packet))
            sent += packet
            t_next += step
            if sent >= int(utterance_s * RATE):
                ends += sched.end_of_utterance("s1")
                sent, done = 0, done + 1
                t_next += pause_s
        ahead_before = ahead_s(s, clock)
        plan, ended = run_one(sched, pipeline, clock, compute_s=0.1)
        if plan is None:
            clock.advance(0.01)
            continue
        if s.blocks > 1:
            assert ahead_before > 0, "the video ran out"
        plans.append(plan)
        ends += ended
    return plans, ends, started_at


@pytest.mark.parametrize("utterance_s", [3.3, 2.5])
def test_a_real_time_conversation_keeps_its_pauses_and_its_delay_stays_flat(pipeline, clock, utterance_s):
    # 60 utterances at real-time pace with 0.8 s pauses, as a streaming TTS or a microphone sends them. Padding
    # each utterance's last block to a whole block (1.6 s; 3.3 s of voice take 3 blocks) would make the
    # timeline longer than the clock at each utterance: each reply later than the one before.
    pause_s = 0.8
    sched = Scheduler(pipeline, clock=clock)
    open_session(sched, pipeline)
    plans, ends, started_at = conversation(sched, pipeline, clock, utterances=60, utterance_s=utterance_s,
                                           pause_s=pause_s)
    assert all(p.reason != "underrun" and p.gap_samples == 0 for p in plans), "voice was chopped"
    # The pauses are kept: most utterances end their own length plus the pause after the one before on the
    # timeline, as on the clock (within the clock's steps: a generator call moves it 0.1 s).
    gaps = np.diff([e.timeline_end for e in ends]) / RATE
    assert len(ends) == 60 and abs(np.median(gaps) - (utterance_s + pause_s)) <= 0.12
    # Each utterance's delay, from its first packet to its voice on the timeline, does not grow: pauses measured
    # on a clock that moves in steps come out a little short, so it shrinks while utterances share held blocks,
    # until the next one has to wait for its block and jitter reserve. It stays under two blocks and the budget
    # (plus the generator's time and the margins).
    delays = np.array([e.timeline_end / RATE - utterance_s for e in ends]) - started_at
    budget = SchedulerConfig().voice_jitter_budget_s
    assert delays[-20:].max() <= delays[:20].max() + 0.02 and delays.max() <= 2 * BLOCK / RATE + budget + 0.5


@pytest.mark.parametrize("pause_s", np.arange(0.05, 2.4, 0.15).round(2).tolist())
def test_the_next_utterance_joins_a_held_block_or_waits_never_chopped(pipeline, clock, pause_s):
    # Whenever the next utterance comes (inside the held block's time, at its very end, or after it was made),
    # and with its packets up to 0.3 s late, neither utterance gets silence inside it, and every sample of voice
    # is made once. (Joining as a speaking utterance, without the reserve a waiting one holds, chopped the next
    # utterance at pauses under 0.25 s.)
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    plans, ends, _ = conversation(sched, pipeline, clock, utterances=8, utterance_s=2.9, pause_s=pause_s,
                                  jitter_s=0.3)
    assert all(p.reason != "underrun" and p.gap_samples == 0 for p in plans), "voice was chopped"
    assert len(ends) == 8 and s.queued_samples == 0
    voiced = sum(int(np.count_nonzero(p.consumed_audio)) for p in plans)
    assert voiced == 8 * int(2.9 * RATE)
    # The speaker's pauses inside a block's voice part are named, sample for sample (the voice is never 0):
    # their frames are not speaking.
    for p in plans:
        silent = np.flatnonzero(p.consumed_audio[: p.voice_samples] == 0) + p.audio_start
        named = np.concatenate([np.arange(start, end) for start, end in p.pauses] or [np.zeros(0, np.int64)])
        assert np.array_equal(silent, named)
        assert p.speaking == (p.voice_samples > len(named))


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
    s = open_session(sched, pipeline)
    sched.push_voice("s1", voice(BLOCK0 + LOOKAHEAD))
    run_one(sched, pipeline, clock)                   # consumes BLOCK0, LOOKAHEAD stays queued
    clock.t = s.video_end(RATE)                       # no more voice came: the rest went on video, padded
    plan, _ = run_one(sched, pipeline, clock)
    assert plan.reason == "underrun" and s.queued_samples == 0
    ended = sched.end_of_utterance("s1")
    assert [e.timeline_end for e in ended] == [BLOCK0 + LOOKAHEAD]


@pytest.mark.parametrize("voice_queued", [True, False])
def test_an_utterance_an_interrupt_cut_never_completes_and_the_next_one_does(pipeline, clock, voice_queued):
    # The player heard 0.5 s of a line and interrupted; the line's end of utterance comes after the interrupt.
    # Whether some of its voice was still queued (dropped) or all of it was on video beyond what the player
    # heard, the line did not complete.
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    sched.push_voice("s1", voice(5 * RATE if voice_queued else BLOCK0 + LOOKAHEAD))
    run_one(sched, pipeline, clock)
    if not voice_queued:
        clock.t = s.video_end(RATE)
        run_one(sched, pipeline, clock)               # the rest of the voice, padded
    heard = 10 * 800
    result = sched.interrupt("s1", played_until=heard)
    assert result.replace_from == heard and (result.dropped_samples > 0) == voice_queued
    assert sched.end_of_utterance("s1") == []
    assert sched.end_of_utterance("s1") == []         # repeated: still nothing
    clock.advance(5.0)
    ends = []
    while (step := run_one(sched, pipeline, clock))[0] is not None:
        assert not step[0].speaking
        ends += step[1]
    assert ends == []
    # The next line completes where its voice ends.
    sched.push_voice("s1", voice(RATE))
    assert sched.end_of_utterance("s1") == []          # queued: reported once on video
    plan, ended = run_one(sched, pipeline, clock)
    assert plan.voice_samples == RATE and [e.timeline_end for e in ended] == [plan.audio_start + RATE]


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
    run_one(sched, pipeline, clock, compute_s=0.1)
    run_one(sched, pipeline, clock, compute_s=0.1)    # t = 0.2, 2.65 s of video
    result = sched.interrupt("s1")
    assert result.generated_until == result.replace_from == BLOCK0 + BLOCK
    assert result.dropped_samples == 5 * RATE - BLOCK0 - BLOCK
    assert result.next_frame_index == 21 + 32
    assert s.queued_samples == 0
    # The next block starts from silence, just in time: video end - compute estimate - idle margin.
    due = (BLOCK0 + BLOCK) / RATE - 0.1 - MARGIN
    assert sched.seconds_until_ready() == pytest.approx(due - clock.t)
    clock.t = due - 0.001
    assert sched.next_block() is None
    clock.t = due + 1e-9
    plan, _ = run_one(sched, pipeline, clock)
    assert plan.reason == "idle" and not plan.speaking and plan.audio_start == result.generated_until


def test_interrupt_continues_the_timeline_from_the_playback_position(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    sched.push_voice("s1", voice(5 * RATE))
    run_one(sched, pipeline, clock, compute_s=0.1)
    run_one(sched, pipeline, clock, compute_s=0.1)    # 2.65 s of video; the player heard 0.5 s of it
    heard = 10 * 800                                    # frame 10
    result = sched.interrupt("s1", played_until=heard)
    assert (result.generated_until, result.replace_from, result.played_until) == (BLOCK0 + BLOCK, heard, heard)
    assert s.timeline_pos == heard and result.next_frame_index == 21 + 32
    # The video now runs out where the player is, so the new (silent) block is due at once.
    assert sched.seconds_until_ready() == 0.0
    plan, _ = run_one(sched, pipeline, clock)
    assert plan.reason == "idle" and plan.audio_start == heard and not plan.speaking
    # A position beyond the video made is clamped to its end; one before the last replace point to that point.
    end = s.timeline_pos
    assert sched.interrupt("s1", played_until=10**9).replace_from == end
    assert sched.interrupt("s1", played_until=0).replace_from == end
    assert sched.interrupt("s1").replace_from == end


def test_a_waiting_utterance_starts_as_soon_as_its_block_is_queued(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    clock.t = GRACE
    run_one(sched, pipeline, clock)                   # idle block 0: video until 1.05 s
    sched.push_voice("s1", voice(1000))                # an utterance starts: it waits, nothing is padded
    idle_due = BLOCK0 / RATE - 0.0 - MARGIN
    clock.t = idle_due - 0.01
    assert sched.next_block() is None
    assert sched.seconds_until_ready() == pytest.approx(0.01)
    sched.push_voice("s1", voice(BLOCK + LOOKAHEAD - 1000))   # the rest, faster than real time
    plan, _ = run_one(sched, pipeline, clock)
    assert plan.reason == "voice" and plan.voice_samples == BLOCK and plan.gap_samples == 0
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
    # Listening changes the prompt, not the pacing: block 0 still waits the start grace.
    assert sched.seconds_until_ready() == pytest.approx(GRACE)
    clock.t = GRACE
    plan = sched.next_block()
    assert plan.reason == "idle" and plan.session.listening
    assert plan.prompt == "smiling" and plan.intensity == 0.5
    sched.set_prompt("s1", None)
    plan = sched.next_block()
    assert plan.prompt is None and plan.intensity == 1.0
    sched.set_prompt("s1", "", 0.0)                    # empty: the base prompt; no intensity: full
    plan = sched.next_block()
    assert plan.prompt is None and plan.intensity == 1.0
    with pytest.raises(KeyError):
        sched.push_voice("nope", voice(10))


def run_all(sched: Scheduler, pipe: StandInGenerator, clock: FakeClock) -> list:
    """Generate every block due now, one after the other; returns their plans."""
    plans = []
    while (plan := run_one(sched, pipe, clock)[0]) is not None:
        plans.append(plan)
    return plans


def test_a_timed_event_applies_in_the_block_that_holds_its_voice(pipeline, clock):
    # TTS queues 6 s of voice at once; events timed to points of it show in the blocks that start nearest to
    # them (block 0: voice [0, 16800), block 1: [16800, 42400), block 2: [42400, 68000), block 3: [68000, 93600),
    # block 4: the rest, padded).
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    sched.set_prompt("s1", "smiling", 0.5, at_voice=20_000)    # before its voice arrived
    sched.push_voice("s1", voice(3 * RATE))
    sched.push_voice("s1", voice(3 * RATE))
    sched.start_action("s1", "waving", at_voice=50_000)
    sched.set_prompt("s1", None, at_voice=70_000)              # back to the base prompt
    sched.start_action("s1", "nodding", at_voice=90_000)       # late in block 3: from block 4
    sched.end_of_utterance("s1")
    plans = run_all(sched, pipeline, clock)
    assert [(p.prompt, p.intensity) for p in plans] == [
        (None, 1.0), ("smiling", 0.5), ("waving", 1.0), (None, 1.0), ("nodding", 1.0)]
    assert not s.timed_events
    # An untimed event still applies from the next block, whatever is queued.
    sched.push_voice("s1", voice(3 * RATE))
    sched.set_prompt("s1", "frowning")
    assert sched.next_block().prompt == "frowning"


def test_a_timed_event_at_an_utterances_end_or_on_video_applies_from_the_next_block(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    sched.push_voice("s1", voice(20_000))
    sched.set_prompt("s1", "calm", at_voice=20_000)            # the end of this utterance's voice
    sched.end_of_utterance("s1")
    plans = run_all(sched, pipeline, clock)
    assert [(p.reason, p.prompt) for p in plans] == [("voice", None), ("end_of_utterance", None)]
    assert s.prompt == "calm" and not s.timed_events
    clock.advance(10.0)
    assert sched.next_block().prompt == "calm"
    sched.start_action("s1", "nodding", at_voice=100)           # long on video: the next block
    assert sched.next_block().prompt == "nodding"


def test_an_interrupt_cancels_the_timed_events_not_yet_shown(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    sched.push_voice("s1", voice(5 * RATE))
    sched.set_prompt("s1", "angry", at_voice=60_000)
    sched.start_action("s1", "waving", at_voice=2 * 5 * RATE)   # voice that never comes
    run_one(sched, pipeline, clock)
    sched.interrupt("s1")
    assert not s.timed_events
    # Events that come after the interrupt, timed into the voice it dropped (block 0 made [0, 16800) of 80000),
    # are never shown; one timed to voice already on video still applies from the next block.
    sched.set_prompt("s1", "sad", at_voice=50_000)
    sched.start_action("s1", "nodding", at_voice=79_999)
    clock.advance(10.0)
    plans = run_all(sched, pipeline, clock)
    assert plans and all(p.prompt is None for p in plans)
    sched.set_prompt("s1", "calm", at_voice=16_000)
    clock.advance(10.0)
    assert sched.next_block().prompt == "calm"


def test_an_event_timed_into_dropped_voice_is_known_by_the_voice_alone_not_the_pauses(pipeline, clock):
    # Two utterances at real-time pace: the first is held at its end and the second queues behind silence as
    # long as the speaker's pause. An interrupt drops all of it; the pause was never voice: the second
    # utterance's last sample is the last dropped one.
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    for _ in range(10):
        sched.push_voice("s1", voice(1600))
        clock.advance(0.1)
    sched.end_of_utterance("s1")
    clock.advance(0.5)
    sched.push_voice("s1", voice(8000))
    assert s.pauses
    sched.interrupt("s1")
    assert list(s.dropped_voice) == [(0, 24_000)]
    sched.set_prompt("s1", "sad", at_voice=23_999)
    assert s.prompt is None and not s.timed_events
    sched.set_prompt("s1", "calm", at_voice=24_000)        # the end of the voice received: from the next block
    assert s.prompt == "calm"


def test_timed_events_closer_than_the_granularity_apply_together_and_stay_bounded(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    sched.push_voice("s1", voice(5 * RATE))
    # 2,000 emotions, one every 10 ms of voice from 2 s on: one waits per 50 ms, the last of each.
    for k in range(2000):
        sched.set_prompt("s1", f"mood {k}", at_voice=2 * RATE + 160 * k)
    assert len(s.timed_events) <= 2000 * 160 // 800 + 1
    plans = run_all(sched, pipeline, clock)
    # Block 2 holds voice [42400, 68000) (the voice runs out at 80000): the last event before its middle wins.
    last_in_block_2 = max(k for k in range(2000) if 2 * RATE + 160 * k < 42_400 + BLOCK // 2)
    assert plans[2].prompt == f"mood {last_in_block_2}"


def test_seconds_until_ready(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    assert sched.seconds_until_ready() is None
    open_session(sched, pipeline)
    assert sched.seconds_until_ready() == pytest.approx(GRACE)
    clock.t = 0.1
    assert sched.seconds_until_ready() == pytest.approx(GRACE - 0.1)
    clock.t = GRACE
    assert sched.seconds_until_ready() == 0.0
    run_one(sched, pipeline, clock, compute_s=0.1)    # t = 0.4, video until 1.05 s, estimate 0.1 s
    due = BLOCK0 / RATE - 0.1 - MARGIN                # 0.45
    assert sched.seconds_until_ready() == pytest.approx(due - 0.4)
    open_session(sched, pipeline, "s2")                # its first block: at 0.4 + the grace, later than s1's
    # Two sessions: when both are due at once the generator is busy for two blocks, so s1's next one is due
    # 0.1 s earlier, at 0.35: now.
    assert sched.busy_estimate_s() == pytest.approx(0.2)
    assert sched.seconds_until_ready() == 0.0
    clock.t = 0.5
    assert sched.seconds_until_ready() == 0.0          # past due: never negative
    sched.push_voice("s2", voice(BLOCK0 + LOOKAHEAD))
    assert sched.seconds_until_ready() == 0.0
    # Both may run; s2 (video end 0.4) is further behind its wall clock than s1 (1.05), so it goes first.
    assert sched.next_block().session.session_id == "s2"


def test_repeated_end_of_utterance_waits_for_the_queued_voice(pipeline, clock):
    # Guards: a second EndOfUtterance while the first utterance's voice is still queued returns [] (it used to
    # report a premature UtteranceDone at timeline_end 0); the one UtteranceDone comes when the voice is made.
    sched = Scheduler(pipeline, clock=clock)
    open_session(sched, pipeline)
    sched.push_voice("s1", voice(10_000))
    assert sched.end_of_utterance("s1") == []
    assert sched.end_of_utterance("s1") == []         # repeated: the first one is still pending
    assert sched.end_of_utterance("s1") == []
    plan, ended = run_one(sched, pipeline, clock)
    assert plan.reason == "end_of_utterance" and plan.voice_samples == 10_000
    assert [e.timeline_end for e in ended] == [10_000]
    assert sched.get("s1").utterance_ends == collections.deque()


def test_an_utterance_that_never_ended_is_not_a_gap(pipeline, clock):
    # Guards: a client that forgot EndOfUtterance leaves the utterance open with nothing queued: one block
    # pads the rest of its voice, then the NPC idles; no gap is ever reported, since no voice resumes.
    sched = Scheduler(pipeline, clock=clock)
    s = open_session(sched, pipeline)
    sched.push_voice("s1", voice(BLOCK0 + LOOKAHEAD))   # no end of utterance ever comes
    plan, _ = run_one(sched, pipeline, clock)
    assert (plan.reason, plan.voice_samples) == ("voice", BLOCK0)
    assert s.utterance_open and s.queued_samples == LOOKAHEAD
    clock.t = s.video_end(RATE) - SchedulerConfig().underrun_margin_s
    plan, _ = run_one(sched, pipeline, clock)
    assert (plan.reason, plan.voice_samples, plan.gap_samples) == ("underrun", LOOKAHEAD, 0)
    for _ in range(3):
        clock.t = s.video_end(RATE)
        plan, _ = run_one(sched, pipeline, clock)
        assert (plan.reason, plan.speaking, plan.gap_samples) == ("idle", False, 0)


def test_listening_prompt_for_silent_blocks_only(pipeline, clock):
    # Guards: while listening, silent blocks use the session's listening prompt at full intensity; blocks
    # with voice keep the session's prompt; set_listening(False) goes back to it.
    sched = Scheduler(pipeline, clock=clock)
    memory = pipeline.new_memory("npc-s1", "villager", 64, 64, 20, seed=1)
    s = sched.open_session("s1", "npc-s1", memory, conditioning=None, listening_prompt="a villager, listening")
    assert s.listening_prompt == "a villager, listening" and not s.listening
    sched.set_prompt("s1", "smiling", 0.5)
    clock.t = GRACE
    plan = sched.next_block()
    assert (plan.reason, plan.prompt, plan.intensity) == ("idle", "smiling", 0.5)   # not listening yet
    sched.set_listening("s1", True)
    plan, _ = run_one(sched, pipeline, clock)
    assert plan.reason == "idle" and not plan.speaking
    assert (plan.prompt, plan.intensity) == ("a villager, listening", 1.0)
    sched.push_voice("s1", voice(BLOCK + LOOKAHEAD))   # the NPC talks while still marked listening
    plan, _ = run_one(sched, pipeline, clock)
    assert plan.reason == "voice" and plan.speaking
    assert (plan.prompt, plan.intensity) == ("smiling", 0.5)
    sched.end_of_utterance("s1")
    sched.interrupt("s1")
    clock.t = s.video_end(RATE)
    plan = sched.next_block()
    assert not plan.speaking and (plan.prompt, plan.intensity) == ("a villager, listening", 1.0)
    sched.set_listening("s1", False)
    plan = sched.next_block()
    assert not plan.speaking and (plan.prompt, plan.intensity) == ("smiling", 0.5)


def test_voice_queue_is_capped(pipeline, clock):
    # Guards: SchedulerConfig.max_queued_voice_s (default 120 s) caps the voice waiting in a session's queue;
    # a push beyond it raises VoiceQueueFull and queues none of its samples.
    assert SchedulerConfig().max_queued_voice_s == 120.0
    sched = Scheduler(pipeline, SchedulerConfig(max_queued_voice_s=2.0), clock=clock)
    s = open_session(sched, pipeline)
    sched.push_voice("s1", voice(2 * RATE - 10))
    with pytest.raises(VoiceQueueFull):
        sched.push_voice("s1", voice(11))
    assert s.queued_samples == 2 * RATE - 10
    sched.push_voice("s1", voice(10))                  # exactly at the cap is fine
    assert s.queued_samples == 2 * RATE
    with pytest.raises(VoiceQueueFull):
        sched.push_voice("s1", voice(1))
    plan, _ = run_one(sched, pipeline, clock)          # generating frees room in the queue
    sched.push_voice("s1", voice(plan.voice_samples))
    assert s.queued_samples == 2 * RATE
    # The default cap holds two minutes of voice, not a sample more.
    sched = Scheduler(pipeline, clock=clock)
    open_session(sched, pipeline)
    sched.push_voice("s1", voice(120 * RATE))
    with pytest.raises(VoiceQueueFull):
        sched.push_voice("s1", voice(1))


# -- batches -------------------------------------------------------------------------------------------------------


def run_batch(sched: Scheduler, pipe: StandInGenerator, clock: FakeClock, compute_s: float = 0.0):
    plans = sched.next_blocks()
    for plan in plans:
        pipe.generate_block(plan.session.memory, None, plan.audio, plan.prompt, intensity=plan.intensity)
    clock.advance(compute_s)
    sched.complete_blocks(plans, compute_s)
    return plans


def test_sessions_due_together_at_the_same_block_kind_share_a_batch_most_urgent_first(pipeline, clock):
    sched = Scheduler(pipeline, SchedulerConfig(max_batch=3), clock=clock)
    for name in ("a", "b", "c", "d"):
        open_session(sched, pipeline, name)
        clock.advance(0.01)                           # a opened first: its video runs out first
    for name in ("a", "b", "c", "d"):
        sched.push_voice(name, voice(3 * RATE))
    plans = run_batch(sched, pipeline, clock)
    assert [p.session.session_id for p in plans] == ["a", "b", "c"]   # max_batch, by video end
    assert [p.session.session_id for p in sched.next_blocks()] == ["d"]  # block 0 is due for d alone now
    assert sched.next_block().session.session_id == "d"
    run_batch(sched, pipeline, clock)
    # a, b and c are at block 1, d too now: one batch of the same kind again.
    assert sorted(p.session.session_id for p in sched.next_blocks()) == ["a", "b", "c"]


def test_different_block_kinds_do_not_share_a_batch(pipeline, clock):
    sched = Scheduler(pipeline, clock=clock)
    a = open_session(sched, pipeline, "a")
    sched.push_voice("a", voice(3 * RATE))
    run_batch(sched, pipeline, clock)                 # a: block 0 made; next is block 1
    open_session(sched, pipeline, "b")
    sched.push_voice("b", voice(3 * RATE))           # b: block 0 due, a: block 1 due
    plans = sched.next_blocks()
    assert len(plans) == 1 and a.blocks == 1


def test_batch_mates_never_make_a_session_late_unless_it_is_late_anyway(pipeline, clock):
    config = SchedulerConfig(max_batch=4, underrun_margin_s=0.2)
    sched = Scheduler(pipeline, config, clock=clock)
    a, b = open_session(sched, pipeline, "a"), open_session(sched, pipeline, "b")
    for name in ("a", "b"):
        sched.push_voice(name, voice(8 * RATE))
    assert len(run_batch(sched, pipeline, clock, compute_s=0.9)) == 2   # measured: two NPCs take 0.9 s
    for state in (a, b):                              # each alone to block 2: one NPC takes 0.5 s
        plan = sched.next_blocks(max_batch=1)[0]
        pipeline.generate_block(plan.session.memory, None, plan.audio, plan.prompt)
        sched.complete_blocks([plan], 0.5)
    assert (a.blocks, b.blocks) == (2, 2) and sched.batch_estimate_s(1) == pytest.approx(0.5)
    a.opened_at = clock.t - a.timeline_pos / RATE + 0.8   # a's video runs out in 0.8 s: deadline 0.6 s away
    b.opened_at = clock.t - b.timeline_pos / RATE + 2.0   # b's in 2 s
    assert [p.session.session_id for p in sched.next_blocks()] == ["a"]   # 0.9 s together would make a late
    a.opened_at -= 0.7                                # a is late even alone (0.1 s left): b may join
    assert [p.session.session_id for p in sched.next_blocks()] == ["a", "b"]
    assert sched.batch_estimate_s(4) == pytest.approx(1.8)               # extrapolated from two


def test_a_batch_that_does_not_pay_is_not_made(pipeline, clock):
    """Where two NPCs in one call cost more than two calls of one (a small CPU), due sessions run one by one:
    a batch would only make each wait for the other. Estimates are per block kind: measured at blocks >= 2."""
    sched = Scheduler(pipeline, SchedulerConfig(max_batch=4), clock=clock)
    for name in ("a", "b"):
        open_session(sched, pipeline, name)
        sched.push_voice(name, voice(12 * RATE))
    for _ in range(2):                                                   # blocks 0 and 1, together
        run_batch(sched, pipeline, clock)
    assert len(run_batch(sched, pipeline, clock, compute_s=0.7)) == 2    # block 2: two NPCs take 0.7 s ...
    for _ in range(2):                                                   # ... block 3, one alone: 0.3 s
        plan = sched.next_blocks(max_batch=1)[0]
        pipeline.generate_block(plan.session.memory, None, plan.audio, plan.prompt)
        sched.complete_blocks([plan], 0.3)
    assert len(sched.next_blocks()) == 1
    assert sched.busy_estimate_s() == pytest.approx(0.6)                 # two sessions, 0.3 s each


def test_idle_sessions_due_within_the_early_join_window_share_the_batch(pipeline, clock):
    sched = Scheduler(pipeline, SchedulerConfig(early_join_s=0.1), clock=clock)
    open_session(sched, pipeline, "a")
    clock.advance(0.05)
    open_session(sched, pipeline, "b")               # opened 50 ms later: its first block is due 50 ms later
    clock.advance(GRACE - 0.05)
    assert [p.session.session_id for p in sched.next_blocks()] == ["a", "b"]
    late_opener = Scheduler(pipeline, SchedulerConfig(early_join_s=0.02), clock=clock)
    open_session(late_opener, pipeline, "a")
    clock.advance(0.05)
    open_session(late_opener, pipeline, "b")
    clock.advance(GRACE - 0.05)
    assert [p.session.session_id for p in late_opener.next_blocks()] == ["a"]   # b's block is 50 ms away
