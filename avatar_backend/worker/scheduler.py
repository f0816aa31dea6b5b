"""Which session's next block runs, and with what audio: the worker's scheduling policy.

Pure bookkeeping over numpy arrays and a clock; no model, no I/O. The pipeline is only asked how many audio
samples the next block of a memory covers (``block_audio_samples``) and which memories can share a call
(``batch_key``), so tests drive it with the stand-in generator and a fake clock.

Time. Each session has one timeline, in 16 kHz samples from the session's first sample: the NPC's voice and
the silence generated between (or inside) utterances. ``timeline_pos`` is how far video has been generated;
the wall-clock anchor ``opened_at`` maps the timeline onto the clock, so ``opened_at + timeline_pos / rate``
is the wall time at which the session's generated video runs out ("video end").

Voice is never chopped. An utterance is either *waiting* (its voice is queued but none of it is on video
yet) or *speaking* (its voice is being turned into video). A waiting utterance starts only when a whole
block of its voice is queued plus enough more that the voice can stall for ``voice_jitter_budget_s`` before
the video would run out; meanwhile the NPC keeps idling or listening. So voice that arrives at real-time pace
(a microphone, a streaming TTS) pays its delay before the utterance, never inside it. Voice that arrives at
least ``FASTER_THAN_REAL_TIME`` times faster than real time (TTS) keeps ahead by itself and needs no reserve.

The voice of a speaking utterance is expected at real-time pace from the latest it has been so far (its
arrival "origin"). When the next sample is later than that by more than the budget, or the video would run
out first, the block is padded with silence ("underrun") and the utterance goes back to waiting. So a stall
within the budget costs nothing, a longer one puts silence inside the utterance exactly once, and that
silence is reported once, on the block whose voice resumes it (``gap_samples``).

When a session's next block may run (``consume`` samples plus ``lookahead`` samples the block peeks at):

(a) voice for the whole block is queued (a waiting utterance: plus its jitter reserve): now. TTS arrives
    faster than real time, so frames run ahead of the wall clock and the engine buffers them by pts.
(b) the utterance has ended (end of utterance received, no newer voice): what is queued, padded with silence.
    UtteranceDone is reported once the block holding the utterance's last voice sample is made. Voice that
    arrived faster than real time (TTS), or an NPC being closed, flushes now. An utterance that arrived at
    real-time pace is held until the video would run out (as an underrun waits): the next utterance's voice, if
    it comes first, is queued after it behind silence as long as the speaker's pause (on the wall clock) and
    waits as any utterance does; if it may start by (a) in time, the two share the block, else the held block
    is made alone at its deadline. Padding every utterance's last block with silence to a whole block would
    put the timeline further ahead of the clock with each utterance, and so delay each reply a little more,
    without end.
(c) idle, listening, or an utterance still waiting: silence, paced by the wall clock, just in time: a block
    starts when the video already made would run out within the expected busy time plus ``idle_margin_s``,
    so an idle NPC never stalls. The busy time is how long the generator takes when every session's block
    is due at once (the batches they make, one after another), so a block that has to wait for its
    batch-mates or for other batches still comes out in time. A session's first block waits ``start_grace_s`` for
    voice, because TTS audio usually follows the session config by milliseconds. (Listening changes the
    prompt, not the pacing.)
(d) a speaking utterance whose voice is behind: wait for more voice until it is later than the jitter budget
    allows, or until the video would underrun (video end minus the expected busy time minus a margin),
    whichever comes first; then pad the missing part with silence.

Interrupts rewind the timeline to the client's playback position: video made beyond what the player heard is
discarded by the client, and the next block continues the timeline from there. An utterance whose voice an
interrupt cut is never reported done, even when its end of utterance comes after the interrupt.

Prompts. An emotion or action applies from the next block planned, or, timed to a point of the voice
(``at_voice``: voice samples received before it), from the block that starts nearest to that point (the block
holding it when the point is in its first half, else the next one), however far ahead the voice was queued. A
timed event waits until its voice arrives, then takes its place in the voice stream; a point already on video
applies from the next block, and a point at the end of an utterance's voice applies once that voice is on
video. Events of one kind closer than ``TIMED_EVENT_GRANULARITY`` apply together (the later wins, as two in
one block would), which bounds what waits by the voice queued. An interrupt cancels timed events not yet
applied.

Among sessions that may run, the one whose video is furthest behind its wall clock goes first (the earliest
video end); ties go to the session served least recently (round robin).

Batches. The generator runs the next blocks of several NPCs in one call when they have the same size and block
kind (``batch_key``). The first session picked as above heads the batch; other sessions that may run and share
its key join in the same order (then idle ones due within ``early_join_s``), up to ``max_batch``, as long as a
batch of that size costs less per NPC than one NPC fewer (on a 2-core CPU it barely does; on a GPU it does up
to large batches) and the batch, at its expected compute time, still delivers every member's frames before that
member's video runs out (less ``underrun_margin_s``). A session that would be late even alone does not hold its
batch-mates back: the batch is what keeps the worker from falling further behind. Expected compute times are
kept per batch key and size (a size found not to pay is measured again now and then); an unmeasured size is
extrapolated linearly from the nearest measured smaller one.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from avatar_backend.media.resample import MODEL_SAMPLE_RATE

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_QUEUED_VOICE_S",
    "DEFAULT_VOICE_JITTER_BUDGET_MS",
    "BlockAudioSource",
    "BlockPlan",
    "DroppedVoice",
    "InterruptResult",
    "PcmQueue",
    "Scheduler",
    "SchedulerConfig",
    "SessionState",
    "TimedEvent",
    "UtteranceEnd",
    "VoiceQueueFull",
]

SAMPLE_RATE = MODEL_SAMPLE_RATE
# A waiting utterance whose voice has arrived at least this much faster than real time (TTS) keeps ahead of
# the video by itself: it starts without a jitter reserve.
FASTER_THAN_REAL_TIME = 1.5
DEFAULT_VOICE_JITTER_BUDGET_MS = 500
DEFAULT_MAX_QUEUED_VOICE_S = 120.0
# Timed events of one kind closer than this on the voice stream (50 ms at 16 kHz) apply together.
TIMED_EVENT_GRANULARITY = 800
# How many interrupts' dropped voice a session remembers, for events timed into it that arrive after them.
DROPPED_VOICE_RANGES = 32
DEFAULT_MAX_BATCH = 8
# A batch size found not to pay is measured again after this many generator calls.
REMEASURE_CALLS = 200


class DroppedVoice:
    """The voice the latest interrupts dropped, as [start, end) ranges of a voice count: an event timed into it is
    never shown. The gateway keeps one on the voice the client sent, the worker one on the voice it was sent."""

    def __init__(self) -> None:
        self._ranges: collections.deque[tuple[int, int]] = collections.deque(maxlen=DROPPED_VOICE_RANGES)

    def add(self, start: int, end: int) -> None:
        if end > start:
            self._ranges.append((start, end))

    def holds(self, point: int) -> bool:
        """Whether an interrupt dropped the voice at ``point``."""
        return any(start <= point < end for start, end in self._ranges)

    def after(self, point: int) -> int:
        """Samples dropped from ``point`` on (by the interrupts whose voice starts there or later)."""
        return sum(end - start for start, end in self._ranges if start >= point)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._ranges)


class BlockAudioSource(Protocol):
    """What the scheduler needs from the pipeline: the audio span of a memory's next block, and which memories'
    next blocks can run in one batch (equal keys)."""

    def block_audio_samples(self, memory: Any) -> tuple[int, int]: ...

    def batch_key(self, memory: Any) -> Hashable: ...


@dataclass(frozen=True)
class SchedulerConfig:
    sample_rate: int = SAMPLE_RATE
    # Rule (c): an idle block starts this long (plus the expected compute time) before the video runs out.
    idle_margin_s: float = 0.5
    # Rule (c): a session's first block waits this long for voice before it starts from silence.
    start_grace_s: float = 0.3
    # Rule (d): start a padded block this long before the video would run out, on top of the expected compute
    # time (covers scheduling jitter and other sessions' blocks).
    underrun_margin_s: float = 0.2
    # How long a speaking utterance's voice may stall before silence goes inside it; a waiting utterance holds
    # this much voice beyond a block (less when the video made already covers it) before it starts.
    voice_jitter_budget_s: float = DEFAULT_VOICE_JITTER_BUDGET_MS / 1000
    # Voice queued ahead of the video beyond this is refused (a client sending far faster than real time).
    max_queued_voice_s: float = DEFAULT_MAX_QUEUED_VOICE_S
    # Weight of the newest block in the running estimate of a block's compute time.
    compute_estimate_alpha: float = 0.3
    # NPCs whose blocks run in one generator call at most (1: no batching).
    max_batch: int = DEFAULT_MAX_BATCH
    # An idle block due within this long may join a batch that runs now (NPCs that started together, and
    # idle NPCs, then keep sharing calls instead of each waiting for the others' in turn).
    early_join_s: float = 0.1


class PcmQueue:
    """Float32 samples in arrival order: appended in chunks, read and dropped from the front."""

    def __init__(self) -> None:
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, pcm: np.ndarray) -> None:
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if pcm.size:
            self._chunks.append(pcm)
            self._size += pcm.size

    def peek(self, count: int) -> np.ndarray:
        """The first ``min(count, len(self))`` samples as one new array."""
        count = min(count, self._size)
        out = np.empty(count, dtype=np.float32)
        filled = 0
        for chunk in self._chunks:
            if filled >= count:
                break
            take = min(chunk.size, count - filled)
            out[filled:filled + take] = chunk[:take]
            filled += take
        return out

    def drop(self, count: int) -> int:
        """Remove up to ``count`` samples from the front; returns how many were removed."""
        dropped = 0
        while self._chunks and dropped < count:
            chunk = self._chunks[0]
            take = min(chunk.size, count - dropped)
            if take == chunk.size:
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[take:]
            dropped += take
        self._size -= dropped
        return dropped

    def clear(self) -> int:
        size = self._size
        self._chunks.clear()
        self._size = 0
        return size


class VoiceQueueFull(Exception):
    """A session queued more voice than the scheduler holds for it."""


@dataclass(eq=False)
class TimedEvent:
    """An emotion or action, from the next block or timed to a point of the session's voice."""

    kind: str                   # "emotion" or "action"
    prompt: str | None          # an emotion's None: the character's base prompt
    intensity: float
    at_voice: int | None        # voice samples the session received before its point; None: the next block
    stream_pos: int | None = None  # its place in the voice stream (voice_consumed counts); None until it arrived

    def slot(self) -> tuple[str, bool, int]:
        """Events of one kind in one slot apply together (see TIMED_EVENT_GRANULARITY)."""
        placed = self.stream_pos is not None
        return self.kind, placed, (self.stream_pos if placed else self.at_voice) // TIMED_EVENT_GRANULARITY


@dataclass
class SessionState:
    """One live session: the NPC it drives, its voice queue, its clock and its prompt."""

    session_id: str
    npc_id: str
    memory: Any
    conditioning: Any
    opened_at: float                      # scheduler clock at timeline sample 0
    timeline_pos: int = 0                 # session timeline samples covered by generated video
    voice: PcmQueue = field(default_factory=PcmQueue)
    voice_consumed: int = 0               # queued samples already turned into video in this session (voice, and
                                          # the pauses between utterances that rule (b) held together)
    utterance_open: bool = False          # voice arrived since the last end of utterance / interrupt
    speaking: bool = False                # queued voice is being turned into video (see the module doc)
    gap_from: int | None = None           # timeline position where a speaking utterance's voice stalled
    replace_floor: int = 0                # an interrupt never rewinds the timeline before this
    waiting_since: float | None = None    # scheduler clock when a waiting utterance's voice began arriving
    waiting_voice: int = 0                # samples of it that arrived since then
    # The utterance's voice at real-time pace: sample n is due at voice_origin + n / rate (the latest so far).
    voice_origin: float | None = None
    utterance_voice: int = 0              # samples of the utterance that arrived
    # Positions in the voice stream (voice_consumed counts) where announced utterances end.
    utterance_ends: collections.deque[int] = field(default_factory=collections.deque)
    last_voice_end: int = 0               # timeline position just after the last voice sample generated
    utterance_cut: bool = False           # an interrupt cut the voice: no utterance completes until new voice
    # An utterance that arrived at real-time pace ended with voice still queued, which rule (b) holds for the
    # next utterance: the queued samples that belong to it (then also the pause after it), and when (scheduler
    # clock) its last sample was due, until the next utterance's voice comes and follows after the pause.
    held_samples: int = 0
    held_voice_end: float | None = None
    # The speaker's pauses queued as silence between held utterances, as voice-stream positions [start, end).
    pauses: collections.deque[tuple[int, int]] = field(default_factory=collections.deque)
    voice_received: int = 0               # voice samples pushed in this session (the pauses not counted)
    timed_events: list[TimedEvent] = field(default_factory=list)  # waiting for their voice, in arrival order
    dropped_voice: DroppedVoice = field(default_factory=DroppedVoice)  # on voice_received counts
    listening: bool = False
    listening_prompt: str | None = None   # the prompt of silent blocks while listening
    prompt: str | None = None             # None: the character's base prompt
    action_prompt: str | None = None      # an action's prompt, for the next block only
    intensity: float = 1.0
    prompt_guidance: float | None = None  # the session's guidance factor; None: the generator's
    blocks: int = 0                       # blocks generated in this session
    closing_request: int | None = None    # a CloseNpc waiting for the queued voice to be generated (its id)
    last_served: int = -1                 # scheduler's serve counter when this session last ran

    @property
    def queued_samples(self) -> int:
        return len(self.voice)

    def video_end(self, sample_rate: int) -> float:
        """Wall-clock time (scheduler clock) at which the video generated so far runs out."""
        return self.opened_at + self.timeline_pos / sample_rate


@dataclass
class BlockPlan:
    """The next block to generate: which session, the audio it sees, and why it runs now."""

    session: SessionState
    audio: np.ndarray        # float32 [consume + lookahead]: queued voice first, silence after
    consume: int             # samples the block covers (the timeline advances by this)
    lookahead: int           # samples after the block that it peeks at
    voice_samples: int       # voice within the consumed part; the rest of it is silence
    audio_start: int         # session timeline position of audio[0]
    prompt: str | None
    intensity: float         # how strongly ``prompt`` replaces the base prompt (0-1]
    reason: str              # "voice", "end_of_utterance", "underrun" or "idle"
    # Silence that went inside the utterance this block resumes (its voice stalled beyond the budget).
    gap_samples: int = 0
    batch_key: Hashable = None  # the generator's batch key of the block (its kind and size), for its estimates
    # Speaker's pauses inside the voice part (rule (b)), as timeline positions [start, end): silence, not voice.
    pauses: tuple[tuple[int, int], ...] = ()
    # Timed events that condition this block (they set ``prompt``), in voice order.
    timed_events: tuple[TimedEvent, ...] = ()

    @property
    def audio_end(self) -> int:
        return self.audio_start + self.consume

    @property
    def speaking(self) -> bool:
        return self.voice_samples > sum(end - start for start, end in self.pauses)

    @property
    def consumed_audio(self) -> np.ndarray:
        """The timeline slice the block's frames cover (a view)."""
        return self.audio[: self.consume]


@dataclass(frozen=True)
class UtteranceEnd:
    session_id: str
    timeline_end: int        # session timeline sample just after the utterance's last voice sample


@dataclass(frozen=True)
class InterruptResult:
    session_id: str
    generated_until: int     # session timeline sample up to which video existed
    dropped_samples: int     # queued voice that will never be generated
    next_frame_index: int    # NPC-life index of the first frame of the new video
    replace_from: int        # timeline sample where the new video starts (the timeline continues here)
    played_until: int        # the playback position used, after clamping


class Scheduler:
    """Per-session state plus the policy that picks the next block to generate (see the module doc)."""

    def __init__(
        self,
        pipeline: BlockAudioSource,
        config: SchedulerConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.pipeline = pipeline
        self.config = config or SchedulerConfig()
        self.clock = clock
        if self.config.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.config.max_batch}")
        self._sessions: dict[str, SessionState] = {}
        self._serve_counter = 0
        self._compute_estimate_s = 0.0   # a generator call, whatever its batch
        # Seconds of a generator call by batch key (block kind and size), then by NPCs in the batch; when each
        # was last measured (in calls), so that a batch size found not to pay is tried again now and then.
        self._estimates: dict[Hashable, dict[int, float]] = {}
        self._measured_at: dict[tuple[Hashable, int], int] = {}
        self._calls = 0

    # -- sessions -------------------------------------------------------------------------------------------

    @property
    def sessions(self) -> dict[str, SessionState]:
        return self._sessions

    def get(self, session_id: str) -> SessionState:
        """The session; KeyError when it is not open."""
        return self._sessions[session_id]

    def open_session(self, session_id: str, npc_id: str, memory: Any, conditioning: Any,
                     listening_prompt: str | None = None, prompt_guidance: float | None = None) -> SessionState:
        if session_id in self._sessions:
            raise ValueError(f"session {session_id!r} is already open")
        # A resumed NPC keeps the emotion or action it had when its last session ended.
        state = SessionState(session_id=session_id, npc_id=npc_id, memory=memory, conditioning=conditioning,
                             opened_at=self.clock(), prompt=memory.prompt, intensity=memory.intensity,
                             listening_prompt=listening_prompt, prompt_guidance=prompt_guidance)
        self._sessions[session_id] = state
        return state

    def close_session(self, session_id: str) -> SessionState:
        return self._sessions.pop(session_id)

    # -- input ------------------------------------------------------------------------------------------------

    def push_voice(self, session_id: str, pcm: np.ndarray) -> None:
        """Queue the NPC's voice; VoiceQueueFull when more than ``max_queued_voice_s`` would wait."""
        state = self.get(session_id)
        limit = int(self.config.max_queued_voice_s * self.config.sample_rate)
        if len(state.voice) + len(pcm) > limit:
            raise VoiceQueueFull(f"more than {self.config.max_queued_voice_s:.0f} s of voice queued ahead of the "
                                 "video; send audio at most that far ahead")
        if len(pcm):
            now = self.clock()
            if state.held_voice_end is not None:
                # The pause since the held utterance ended, as silence: the NPC pauses as long as the speaker did.
                # The new utterance waits as any does (rule (a) with its reserve); until it may start, the held
                # one's block is still made alone at its deadline.
                pause = np.zeros(int(max(0.0, now - state.held_voice_end) * self.config.sample_rate), np.float32)
                if pause.size:
                    start = state.voice_consumed + len(state.voice)
                    state.pauses.append((start, start + pause.size))
                state.voice.push(pause)
                state.held_samples += pause.size
                state.held_voice_end = None
                state.speaking, state.waiting_since, state.waiting_voice = False, now, 0
            if not state.speaking and state.waiting_since is None:
                state.waiting_since, state.waiting_voice = now, len(state.voice)
            if state.voice_origin is None:
                state.voice_origin, state.utterance_voice = now, 0
            else:
                late_origin = now - state.utterance_voice / self.config.sample_rate
                state.voice_origin = max(state.voice_origin, late_origin)
            state.voice.push(pcm)
            state.voice_received += len(pcm)
            state.utterance_cut = False
            queue_end = state.voice_consumed + len(state.voice)
            for event in state.timed_events:
                if event.stream_pos is None and event.at_voice < state.voice_received:
                    event.stream_pos = queue_end - (state.voice_received - event.at_voice)
            state.waiting_voice += len(pcm)
            state.utterance_voice += len(pcm)
            state.utterance_open = True

    def end_of_utterance(self, session_id: str) -> list[UtteranceEnd]:
        """Mark the end of the current utterance; returns it at once when none of its voice is still queued."""
        state = self.get(session_id)
        now = self.clock()
        # At real-time pace the voice took about its own length to arrive (the origin follows the latest sample).
        real_time = state.voice_origin is not None and state.utterance_open and (
            (now - state.voice_origin) * FASTER_THAN_REAL_TIME >= state.utterance_voice / self.config.sample_rate)
        if state.utterance_open:  # a repeated end of utterance keeps the first one's hold
            held = real_time and len(state.voice) > 0
            state.held_samples = len(state.voice) if held else 0
            state.held_voice_end = state.voice_origin + state.utterance_voice / self.config.sample_rate if held \
                else None
        state.utterance_open = False
        state.voice_origin = None
        queued_end = state.voice_consumed + len(state.voice)
        for event in state.timed_events:
            if event.stream_pos is None and event.at_voice <= state.voice_received:
                event.stream_pos = queued_end  # at the utterance's end
        if not len(state.voice):
            self._apply_ended(state)
        already_marked = bool(state.utterance_ends) and state.utterance_ends[-1] >= queued_end
        if already_marked:
            return []  # a repeated end of utterance: the first one is still pending
        if len(state.voice):
            state.utterance_ends.append(queued_end)
            return []
        if state.utterance_cut:
            return []  # the utterance was interrupted: its voice never all went on video
        # Everything this utterance said is already on video (or it said nothing).
        return [UtteranceEnd(session_id, state.last_voice_end)]

    def interrupt(self, session_id: str, played_until: int | None = None) -> InterruptResult:
        """Drop queued voice and continue the timeline from the playback position (on a frame boundary;
        None: the end of the video made so far), clamped to [the previous interrupt's point, video end]."""
        state = self.get(session_id)
        # The pauses queued between held utterances are silence the client never sent: not voice it could time to.
        queue_end = state.voice_consumed + len(state.voice)
        paused = sum(max(0, min(stop, queue_end) - max(start, state.voice_consumed)) for start, stop in state.pauses)
        dropped = state.voice.clear()
        state.dropped_voice.add(state.voice_received - (dropped - paused), state.voice_received)
        state.utterance_ends.clear()
        state.utterance_open = False
        state.speaking, state.gap_from, state.waiting_since, state.voice_origin = False, None, None, None
        state.held_samples, state.held_voice_end = 0, None
        state.pauses.clear()
        state.timed_events.clear()
        generated_until = state.timeline_pos
        position = generated_until if played_until is None else min(max(played_until, state.replace_floor),
                                                                     generated_until)
        state.timeline_pos = state.replace_floor = position
        # Voice dropped, or on video the player will not see: an end of utterance sent after this completes nothing.
        state.utterance_cut = state.utterance_cut or dropped > 0 or position < state.last_voice_end
        return InterruptResult(session_id, generated_until, dropped, int(state.memory.frames_generated),
                               replace_from=position, played_until=position)

    def set_prompt(self, session_id: str, prompt: str | None, intensity: float = 1.0,
                   at_voice: int | None = None) -> None:
        """The prompt of the session's next blocks (None or empty: the character's base prompt), from the next
        block or from the point ``at_voice`` of the voice (see the module doc)."""
        self._control(self.get(session_id),
                      TimedEvent("emotion", prompt or None, intensity if intensity > 0 else 1.0, at_voice))

    def start_action(self, session_id: str, prompt: str, at_voice: int | None = None) -> None:
        """An action: its prompt conditions one block (the motion itself takes about a block), then the
        session's emotion prompt is back. That block is the next one, or the one nearest to ``at_voice``."""
        self._control(self.get(session_id), TimedEvent("action", prompt or None, 1.0, at_voice))

    def _control(self, state: SessionState, event: TimedEvent) -> None:
        """Apply an event now (from the next block), or keep it until its point of the voice; drop one timed into
        voice an interrupt dropped."""
        if event.at_voice is not None and state.dropped_voice.holds(event.at_voice):
            return
        due_now = event.at_voice is None
        if not due_now and event.at_voice <= state.voice_received:
            # Its voice is here: its place in the queue. On video already (or at the end of an utterance's
            # voice that is all on video): from the next block.
            event.stream_pos = state.voice_consumed + len(state.voice) - (state.voice_received - event.at_voice)
            due_now = event.stream_pos < state.voice_consumed or (
                event.stream_pos == state.voice_consumed and not len(state.voice) and not state.utterance_open)
        if due_now:
            self._apply(state, event)
            return
        slot = event.slot()
        state.timed_events = [e for e in state.timed_events if e.slot() != slot]
        state.timed_events.append(event)

    def _apply_ended(self, state: SessionState) -> None:
        """The utterance's voice is all on video: the events placed at its end apply from the next block."""
        for event in [e for e in state.timed_events if e.stream_pos is not None]:
            state.timed_events.remove(event)
            self._apply(state, event)

    @staticmethod
    def _apply(state: SessionState, event: TimedEvent) -> None:
        if event.kind == "emotion":
            state.prompt, state.intensity = event.prompt, event.intensity
        else:
            state.action_prompt = event.prompt

    def set_listening(self, session_id: str, listening: bool) -> None:
        self.get(session_id).listening = listening

    # -- policy -------------------------------------------------------------------------------------------------

    @property
    def compute_estimate_s(self) -> float:
        """Running estimate of one generator call's time, whatever its batch (0 before the first block)."""
        return self._compute_estimate_s

    def _table(self, key: Hashable | None) -> dict[int, float]:
        """The estimates of a batch key; for None or a key not measured yet, every key's (the slowest per size)."""
        if key is not None and key in self._estimates:
            return self._estimates[key]
        merged: dict[int, float] = {}
        for table in self._estimates.values():
            for size, seconds in table.items():
                merged[size] = max(seconds, merged.get(size, 0.0))
        return merged

    def batch_estimate_s(self, size: int, key: Hashable | None = None) -> float:
        """Expected time of a generator call for ``size`` NPCs of a batch key (0 while nothing is measured); an
        unmeasured size is extrapolated linearly from the nearest measured smaller one."""
        table = self._table(key)
        if size in table:
            return table[size]
        smaller = [n for n in table if n < size]
        if not smaller:
            return 0.0
        nearest = max(smaller)
        return table[nearest] * size / nearest

    def busy_estimate_s(self) -> float:
        """How long a due block may take to come out when every session's block is due at once, each batch key
        made in the batches that cost it least per NPC. A session's next block starts that much before its
        deadline."""
        if not self._sessions or not self._estimates:
            return self._compute_estimate_s
        counts = collections.Counter(self.pipeline.batch_key(s.memory) for s in self._sessions.values())
        total = 0.0
        for key, count in counts.items():
            table = self._table(key)
            total += count * min(seconds / size for size, seconds in table.items())
        return max(self._compute_estimate_s, total)

    def _pays(self, size: int, key: Hashable) -> bool:
        """Whether a batch of ``size`` costs less per NPC than one NPC fewer. True until both are measured (the
        first batch of a size measures it) and again every ``REMEASURE_CALLS`` calls (a slow first call must not
        rule a size out for good). Where batching does not pay, a bigger batch only makes its members wait for
        each other."""
        table = self._estimates.get(key, {})
        if size not in table or size - 1 not in table:
            return True
        if self._calls - self._measured_at.get((key, size), 0) >= REMEASURE_CALLS:
            return True
        return table[size] / size < table[size - 1] / (size - 1)

    def seconds_until_ready(self, now: float | None = None) -> float | None:
        """0 when some block may run now; the wait until the first one may; None without sessions."""
        if not self._sessions:
            return None
        now = self.clock() if now is None else now
        lead_s = self.busy_estimate_s()
        return max(0.0, min(self._ready_at(s, now, lead_s)[0] for s in self._sessions.values()) - now)

    def next_block(self, now: float | None = None) -> BlockPlan | None:
        """The most urgent block to generate now, alone, or None when every session should wait."""
        plans = self.next_blocks(now, max_batch=1)
        return plans[0] if plans else None

    def next_blocks(self, now: float | None = None, max_batch: int | None = None) -> list[BlockPlan]:
        """The blocks to generate now in one generator call (see the module doc), most urgent first; empty when
        every session should wait. Does not change any state: call :meth:`complete_blocks` once they are made."""
        now = self.clock() if now is None else now
        max_batch = min(max_batch or self.config.max_batch, self.config.max_batch)
        rate = self.config.sample_rate
        ready: list[tuple[tuple[float, int], SessionState, str]] = []
        soon: list[tuple[tuple[float, int], SessionState, str]] = []
        lead_s = self.busy_estimate_s()  # once per call: it looks at every session
        for state in self._sessions.values():
            ready_at, reason = self._ready_at(state, now, lead_s)
            # Furthest behind its wall clock first; the least recently served on a tie.
            key = (round(state.video_end(rate), 9), state.last_served)
            if ready_at <= now:
                ready.append((key, state, reason))
            elif reason == "idle" and ready_at <= now + self.config.early_join_s:
                soon.append((key, state, reason))
        if not ready:
            return []
        ready.sort(key=lambda item: item[0])
        soon.sort(key=lambda item: item[0])
        _, head, head_reason = ready[0]
        batch = [(head, head_reason)]
        key = self.pipeline.batch_key(head.memory)
        for _, state, reason in ready[1:] + soon:
            if len(batch) >= max_batch:
                break
            if self.pipeline.batch_key(state.memory) == key and self._pays(len(batch) + 1, key) and self._in_time(
                    [s for s, _ in batch] + [state], key, now):
                batch.append((state, reason))
        return [self._plan(state, reason, key) for state, reason in batch]

    def _in_time(self, members: list[SessionState], key: Hashable, now: float) -> bool:
        """Whether a batch of ``members`` delivers each one's frames before its video runs out (a member late
        even alone does not count: batching is what keeps the worker from falling further behind)."""
        together = now + self.batch_estimate_s(len(members), key)
        alone = now + self.batch_estimate_s(1, key)
        for state in members:
            deadline = state.video_end(self.config.sample_rate) - self.config.underrun_margin_s
            if alone <= deadline < together:
                return False
        return True

    def _plan(self, state: SessionState, reason: str, key: Hashable) -> BlockPlan:
        consume, lookahead = self.pipeline.block_audio_samples(state.memory)
        audio = np.zeros(consume + lookahead, dtype=np.float32)
        voice_samples = 0
        if reason != "idle":  # an idle block leaves a waiting utterance's voice queued
            # A held utterance's block made alone leaves the next (waiting) utterance's voice queued.
            take = consume + lookahead
            if reason == "end_of_utterance" and state.held_samples:
                take = min(take, state.held_samples)
            voice = state.voice.peek(take)
            audio[: voice.size] = voice
            voice_samples = min(voice.size, consume)
        prompt, intensity, action = state.prompt, state.intensity, state.action_prompt
        # A timed event in the first half of the block conditions it; one later on, the next block.
        shown_until = state.voice_consumed + min(voice_samples, consume // 2)
        timed = tuple(sorted((e for e in state.timed_events if e.stream_pos is not None and e.stream_pos < shown_until),
                             key=lambda e: e.stream_pos))
        for event in timed:
            if event.kind == "emotion":
                prompt, intensity = event.prompt, event.intensity
            else:
                action = event.prompt
        if action:
            prompt, intensity = action, 1.0
        elif state.listening and not voice_samples and state.listening_prompt:
            prompt, intensity = state.listening_prompt, 1.0
        gap = 0
        if voice_samples and not state.speaking and state.gap_from is not None:
            gap = state.timeline_pos - state.gap_from
        # Voice-stream positions map onto the timeline by the block's start.
        offset = state.timeline_pos - state.voice_consumed
        end = state.voice_consumed + voice_samples
        pauses = tuple((max(start, state.voice_consumed) + offset, min(stop, end) + offset)
                       for start, stop in state.pauses if start < end and stop > state.voice_consumed)
        return BlockPlan(
            session=state, audio=audio, consume=consume, lookahead=lookahead,
            voice_samples=voice_samples, audio_start=state.timeline_pos, prompt=prompt,
            intensity=intensity, reason=reason, gap_samples=gap, batch_key=key, pauses=pauses, timed_events=timed,
        )

    def complete_blocks(self, plans: list[BlockPlan], compute_s: float = 0.0) -> list[UtteranceEnd]:
        """Account for a batch generated in one call of ``compute_s``; returns utterances that ended."""
        alpha = self.config.compute_estimate_alpha

        def smooth(old: float | None, new: float) -> float:
            return new if not old else alpha * new + (1 - alpha) * old

        self._compute_estimate_s = smooth(self._compute_estimate_s, compute_s)
        if plans:
            self._calls += 1
            table = self._estimates.setdefault(plans[0].batch_key, {})
            table[len(plans)] = smooth(table.get(len(plans)), compute_s)
            self._measured_at[(plans[0].batch_key, len(plans))] = self._calls
        ended: list[UtteranceEnd] = []
        for plan in plans:
            ended += self._advance(plan)
        return ended

    def complete_block(self, plan: BlockPlan, compute_s: float = 0.0) -> list[UtteranceEnd]:
        """Account for one block generated alone (see :meth:`complete_blocks`)."""
        return self.complete_blocks([plan], compute_s)

    def _advance(self, plan: BlockPlan) -> list[UtteranceEnd]:
        """Consume a generated block's voice and advance its session's timeline."""
        state = plan.session
        self._serve_counter += 1
        state.last_served = self._serve_counter
        if self._sessions.get(state.session_id) is not state:
            return []  # closed while its block was being made
        consumed_before = state.voice_consumed
        state.voice.drop(plan.voice_samples)
        state.voice_consumed += plan.voice_samples
        while state.pauses and state.pauses[0][1] <= state.voice_consumed:
            state.pauses.popleft()
        if plan.voice_samples:
            state.last_voice_end = plan.audio_start + plan.voice_samples
            if not (plan.reason == "end_of_utterance" and state.utterance_open):  # else the open one still waits
                state.speaking, state.gap_from, state.waiting_since = True, None, None
        state.held_samples = max(0, state.held_samples - plan.voice_samples)
        if plan.reason == "underrun" and state.utterance_open:
            # The voice stalled beyond the budget: silence goes in once, then the rest waits to start again.
            state.speaking = False
            state.gap_from = plan.audio_start + plan.voice_samples
        if not state.utterance_open and not len(state.voice):
            state.speaking, state.gap_from = False, None  # the utterance is over
            state.waiting_since = state.held_voice_end = None  # held_samples is 0 too: never more than is queued
        state.timeline_pos += plan.consume
        state.blocks += 1
        for event in plan.timed_events:
            if event in state.timed_events:  # not cancelled by an interrupt meanwhile
                state.timed_events.remove(event)
                if event.kind == "emotion":
                    self._apply(state, event)
        if not len(state.voice) and not state.utterance_open:
            self._apply_ended(state)
        if state.action_prompt is not None and plan.prompt == state.action_prompt:
            state.action_prompt = None  # the action was shown
        # The NPC's mood as the session set it (not a listening block's prompt) is what a resumed NPC continues.
        state.memory.prompt, state.memory.intensity = state.prompt, state.intensity
        ended = []
        while state.utterance_ends and state.utterance_ends[0] <= state.voice_consumed:
            mark = state.utterance_ends.popleft()
            ended.append(UtteranceEnd(state.session_id, plan.audio_start + (mark - consumed_before)))
        return ended

    def _faster_than_real_time(self, state: SessionState, now: float) -> bool:
        if state.waiting_since is None:
            return False
        arrived_s = state.waiting_voice / self.config.sample_rate
        return arrived_s >= FASTER_THAN_REAL_TIME * (now - state.waiting_since)

    def _ready_at(self, state: SessionState, now: float, lead_s: float) -> tuple[float, str]:
        """When the session's next block may start, and under which rule."""
        consume, lookahead = self.pipeline.block_audio_samples(state.memory)
        queued = len(state.voice)
        config = self.config
        video_end = state.video_end(config.sample_rate)
        # The latest start of a block that keeps the video from running out.
        deadline = video_end - lead_s - config.underrun_margin_s
        needed = consume + lookahead
        if not state.speaking and state.utterance_open and not self._faster_than_real_time(state, now):
            # A waiting utterance also holds what the jitter budget needs beyond the video already made: then its
            # next block's voice, arriving in real time, is complete before that block's deadline. Bounded (by
            # the budget plus the time a block may wait for the generator), or a generator slower than real
            # time would never let it start.
            longest_s = config.voice_jitter_budget_s + lead_s + config.underrun_margin_s
            reserve_s = min(max(0.0, config.voice_jitter_budget_s - (deadline - now)), longest_s)
            needed += int(reserve_s * config.sample_rate)
        if queued >= needed:
            return -np.inf, "voice"                                     # (a)
        if state.held_samples and state.closing_request is None:        # (b) the ended utterance, held
            return deadline, "end_of_utterance"
        if state.held_samples or (queued and not state.utterance_open):  # (b) flush the ended utterance
            return -np.inf, "end_of_utterance"
        if state.speaking and state.utterance_open:                     # (d) wait for voice, pad late
            stalled_at = (state.voice_origin + state.utterance_voice / config.sample_rate
                          + config.voice_jitter_budget_s)
            return min(deadline, stalled_at), "underrun"
        ready_at = video_end - lead_s - config.idle_margin_s
        if state.blocks == 0:
            ready_at = max(ready_at, state.opened_at + self.config.start_grace_s)
        return ready_at, "idle"                                         # (c)
