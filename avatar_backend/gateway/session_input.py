"""Client input of one live session: what the client sends, turned into what the worker needs.

Voice goes through the jitter buffer (reorder, conceal, trim the Opus pre-skip) to the worker as 16 kHz PCM;
emotion and action names become the character's prompts, and an event timed to a point of the voice
(``at_voice_sample``, session samples) gets that point in the worker's voice count (16 kHz samples it received);
the playback position is kept for interrupts.
Mistakes that need not end the stream are answered with in-band events (INVALID_EVENT, UNKNOWN_EMOTION,
UNKNOWN_ACTION, AUDIO_GARBAGE); a message over the limits ends it, through ``fail``.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable

import grpc
import numpy as np

from avatar_backend.media.resample import MODEL_SAMPLE_RATE
from avatar_backend.proto_gen import converse_pb2, worker_pb2
from avatar_backend.store import CharacterRecord
from avatar_backend.worker.link import WorkerUnavailableError
from avatar_backend.worker.scheduler import DEFAULT_MAX_QUEUED_VOICE_S, DroppedVoice

from .audio_input import AudioInput
from .runtime import GatewayRuntime
from .session_output import MediaOutput
from .session_stats import RateLimitedEvent, session_event
from .status import RpcFailure

__all__ = ["ClientInput", "MAX_TIMELINE_FRAME"]

MAX_TIMELINE_FRAME = 1 << 40  # about 1,700 years of frames at 20 fps: no client value overflows a uint64


class ClientInput:
    """Handles the client messages of one live session (one instance per session, on the event loop)."""

    def __init__(
        self,
        session_id: str,
        runtime: GatewayRuntime,
        audio: AudioInput,
        character: CharacterRecord | None,
        media: MediaOutput,
        send: Callable[[converse_pb2.ServerMessage], None],
        fail: Callable[[RpcFailure], None],
        is_live: Callable[[], bool],
    ):
        self._session_id = session_id
        self._runtime = runtime
        self.audio = audio
        self._character = character
        self._media = media
        self._send = send
        self._fail = fail
        self._is_live = is_live
        self._audio_timer: asyncio.TimerHandle | None = None
        self._played_until: int | None = None   # the client's latest PlaybackProgress (session clock)
        self._interrupt_drops: list[int] = []    # voice the gateway dropped per interrupt, until its ack
        # The session's voice so far (16 kHz): pushed to the worker or dropped here by interrupts.
        self._voice_received = 0
        self._voice_dropped = 0
        # The voice the latest interrupts dropped here (held for reordering), on that count.
        self._dropped_voice = DroppedVoice()
        self._timed_ahead: list[int] = []          # heap: points of timed events beyond the voice received
        self._garbage_seen = 0
        self.garbage_events = RateLimitedEvent(
            converse_pb2.EVENT_CODE_AUDIO_GARBAGE,
            lambda n, total: f"{n} audio packet(s) could not be decoded and were treated as lost ({total} in total)")

    def handle(self, message: converse_pb2.ClientMessage) -> None:
        """One client message after the config. Worker link errors propagate to the caller."""
        kind = message.WhichOneof("message")
        if kind == "audio":
            self._on_audio(message.audio)
        elif kind == "end_of_utterance":
            self.end_utterance()
        elif kind == "emotion":
            self._on_emotion(message.emotion)
        elif kind == "action":
            self._on_action(message.action)
        elif kind == "listening":
            self._control(listening=message.listening.listening)
        elif kind == "interrupt":
            request = message.interrupt
            self._on_interrupt(request.played_until if request.HasField("played_until") else self._played_until)
        elif kind == "playback":
            self._played_until = message.playback.played_until
        elif kind == "config":
            self._invalid_event("config", "SessionConfig was already received; this one is ignored")
        else:
            self._invalid_event("message", "an empty ClientMessage was ignored")

    def end_utterance(self) -> None:
        self.stop()
        self._push_audio(self.audio.end_utterance())
        self._report_garbage()
        self._control(end_of_utterance=True)

    def flush_voice(self) -> None:
        """The client sends no more: the voice still held (behind a missing packet, in the resampler) goes to
        the worker, so the half-close that follows gets all of it onto video."""
        self.stop()
        self._push_audio(self.audio.end_utterance())
        self._report_garbage()

    def take_interrupt_drop(self) -> int:
        """Voice the gateway itself dropped for the oldest interrupt not yet acknowledged (16 kHz samples)."""
        return self._interrupt_drops.pop(0) if self._interrupt_drops else 0

    def stop(self) -> None:
        """No more timed work (the session is closing)."""
        if self._audio_timer is not None:
            self._audio_timer.cancel()
            self._audio_timer = None

    # -- voice ------------------------------------------------------------------------------------------------

    def _on_audio(self, packet: converse_pb2.AudioPacket) -> None:
        limit = self._runtime.limits.max_audio_packet_bytes
        if len(packet.payload) > limit:
            self._fail(RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"audio.payload: {len(packet.payload)} bytes is over the limit of {limit} bytes "
                                  "(ServerInfo.limits.max_audio_packet_bytes)"))
            return
        self._push_audio(self.audio.push(packet.sequence_number, packet.payload, packet.restart_sequence))
        self._report_garbage()
        if self.audio.waiting_for_missing_packet:
            self._arm_audio_timer()

    def _push_audio(self, pcm: np.ndarray) -> None:
        if pcm.size == 0:
            return
        self._voice_received += pcm.size
        while self._timed_ahead and self._timed_ahead[0] <= self._voice_received:
            heapq.heappop(self._timed_ahead)
        push = worker_pb2.PushAudio(session_id=self._session_id, num_samples=pcm.size)
        self._runtime.link.send(worker_pb2.ToWorker(push_audio=push), [pcm])

    def _report_garbage(self) -> None:
        garbage = self.audio.stats.garbage
        if garbage != self._garbage_seen:
            self.garbage_events.note(garbage - self._garbage_seen)
            self._garbage_seen = garbage
        self.send_rate_limited(self.garbage_events)

    def send_rate_limited(self, events: RateLimitedEvent) -> None:
        message = events.take(time.monotonic())
        if message is not None:
            self._send(message)

    def _arm_audio_timer(self) -> None:
        # Audio held behind a missing packet is released when the packet is declared lost; without another
        # packet or pull nobody would look, so look once the reorder timeout has passed.
        if self._audio_timer is None:
            delay = self.audio.reorder_timeout_s + 0.01
            self._audio_timer = asyncio.get_running_loop().call_later(delay, self._on_audio_timer)

    def _on_audio_timer(self) -> None:
        self._audio_timer = None
        if not self._is_live():
            return
        try:
            self._push_audio(self.audio.pull())
        except WorkerUnavailableError:
            return  # the worker queue reports the loss
        if self.audio.waiting_for_missing_packet:
            self._arm_audio_timer()

    # -- control ----------------------------------------------------------------------------------------------

    def _on_interrupt(self, played_until: int | None) -> None:
        self.stop()
        dropped = self.audio.interrupt()
        self._interrupt_drops.append(dropped)
        self._dropped_voice.add(self._voice_received, self._voice_received + dropped)
        self._voice_received += dropped
        self._voice_dropped += dropped
        self._timed_ahead.clear()  # the worker cancels the timed events not yet applied
        if played_until is None:
            self._control(interrupt=True)
            return
        # The worker clamps the position to the video made; the cap keeps any client value representable.
        self._control(interrupt=True,
                      played_until=self._media.played_until_on_timeline(played_until, MAX_TIMELINE_FRAME))

    def _on_emotion(self, emotion: converse_pb2.EmotionEvent) -> None:
        intensity = emotion.intensity or 1.0
        if not 0.0 <= intensity <= 1.0:  # also false for NaN
            self._invalid_event("emotion.intensity", f"emotion.intensity: {emotion.intensity} is out of range 0-1")
            return
        if not emotion.name:
            control = {"reset_prompt": True}  # back to the base prompt
        else:
            prompt = self._character_prompt("emotion", emotion.name, converse_pb2.EVENT_CODE_UNKNOWN_EMOTION)
            if prompt is None:
                return
            control = {"emotion_prompt": prompt, "intensity": intensity}
        timing = self._timing("emotion", emotion)
        if timing is not None:
            self._control(**control, **timing)

    def _on_action(self, action: converse_pb2.ActionEvent) -> None:
        kind = action.WhichOneof("action")
        if kind == "preset":
            prompt = self._character_prompt("action", action.preset, converse_pb2.EVENT_CODE_UNKNOWN_ACTION)
            if prompt is None:
                return
        elif kind == "free_text":
            limit = self._runtime.limits.max_prompt_chars
            if not action.free_text.strip():
                self._invalid_event("action.free_text", "action.free_text is empty")
                return
            if len(action.free_text) > limit:
                self._invalid_event("action.free_text", f"action.free_text: {len(action.free_text)} characters "
                                                        f"is over the limit of {limit}")
                return
            prompt = action.free_text
        else:
            self._invalid_event("action", "ActionEvent has neither preset nor free_text")
            return
        timing = self._timing("action", action)
        if timing is not None:
            self._control(action_prompt=prompt, **timing)

    def _timing(self, kind: str, event: converse_pb2.EmotionEvent | converse_pb2.ActionEvent) -> dict | None:
        """The worker's ``at_voice_sample`` of an event (empty: not timed); None when it is refused (answered
        with INVALID_EVENT) or timed into voice an interrupt dropped here (never shown, as the events that were
        waiting for that voice; the worker does the same for the voice it dropped)."""
        if not event.HasField("at_voice_sample"):
            return {}
        field = f"{kind}.at_voice_sample"
        point = event.at_voice_sample * MODEL_SAMPLE_RATE // self._media.clock.sample_rate
        if self._dropped_voice.holds(point):
            return None
        ahead_s = (point - self._voice_received) / MODEL_SAMPLE_RATE
        if ahead_s > DEFAULT_MAX_QUEUED_VOICE_S:
            self._invalid_event(field, f"{field}: {event.at_voice_sample} is {ahead_s:.0f} s of voice beyond the "
                                       f"voice received; at most {DEFAULT_MAX_QUEUED_VOICE_S:.0f} s may wait")
            return None
        if ahead_s > 0:
            limit = self._runtime.limits.max_timed_events
            if len(self._timed_ahead) >= limit:
                self._invalid_event(field, f"{field}: {limit} timed events already wait for their voice "
                                           "(ServerInfo.limits.max_timed_events)")
                return None
            heapq.heappush(self._timed_ahead, point)
        # The worker counts only the voice it was sent: less what was dropped here before the point.
        return {"at_voice_sample": max(0, point - (self._voice_dropped - self._dropped_voice.after(point)))}

    def _character_prompt(self, kind: str, name: str, unknown_code: int) -> str | None:
        """The character's ``kind`` ("emotion" or "action") prompt of that name; an event when it has none."""
        prompts = getattr(self._character, f"{kind}_prompts") if self._character else {}
        prompt = prompts.get(name)
        if prompt is None:
            self._send(session_event(unknown_code, f"{kind} {name!r} is not one of the character's {kind}s",
                                     name=name, known=",".join(sorted(prompts))))
        return prompt

    def _invalid_event(self, field: str, message: str) -> None:
        self._send(session_event(converse_pb2.EVENT_CODE_INVALID_EVENT, message, field=field))

    def _control(self, **event: object) -> None:
        control = worker_pb2.Control(session_id=self._session_id, **event)
        self._runtime.link.send(worker_pb2.ToWorker(control=control))
