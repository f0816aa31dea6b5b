"""One Converse stream: the session state machine.

    AWAIT_CONFIG --config ok--> OPENING (OpenNpc on the worker) --NpcOpened--> LIVE --> ENDED

While LIVE four things run side by side, and none of them ever waits for another:

- the reader takes client messages: audio through the jitter buffer to the worker (PushAudio), control
  events to the worker (Control), protocol mistakes answered with in-band events;
- the pump takes the worker's output for this session: frame blocks are echoed (AudioEcho) and encoded in
  the thread pool into VideoFrames, InterruptDone becomes InterruptAck, UtteranceDone an event;
- the stats ticker adds SessionStats every stats_interval_ms;
- the writer (the call's own task) sends the outbound queue to the client. The queue drops the oldest
  frames when the client reads slowly, so the worker and other sessions never wait for this client.

Endings: the client half-closes -> CloseNpc (the worker saves the memory), frames already made are flushed,
then SessionEnded with the NPC's resume token, status OK. The client cancels -> CloseNpc all the same. The
worker dies, the server drains, or a fatal error -> pending frames are discarded, queued events still go
out, then the status. Whenever the NPC's memory was saved, the resume token also rides in the trailers.

Times: the worker counts the session's timeline in 16 kHz samples; every frame's place on it is a whole
frame, so the gateway converts frame numbers, never rounded sample counts, to the session's clock.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
import uuid

import grpc
import numpy as np

from avatar_backend.media.clock import FrameClock
from avatar_backend.media.encoders import EncodedFrame, EncoderSettings, FrameEncoder, create_encoder
from avatar_backend.media.resample import MODEL_SAMPLE_RATE
from avatar_backend.proto_gen import converse_pb2, worker_pb2
from avatar_backend.store import CharacterRecord
from avatar_backend.worker.link import WorkerBusyError, WorkerLost, WorkerRequestError, WorkerUnavailableError

from .audio_input import AudioInput
from .capabilities import public_devices
from .outbound import OutboundOverflow, OutboundQueue
from .runtime import GatewayRuntime
from .session_config import SessionSettings, resolve_session_config
from .status import (
    NPC_RESOURCE,
    RESUME_TOKEN_METADATA_KEY,
    RpcFailure,
    abort,
    failure_from_worker,
    worker_stopped_message,
)
from .wire import MalformedRequest, malformed_request_failure

__all__ = ["ConverseSession", "SessionPhase"]

log = logging.getLogger(__name__)

EVENT_MIN_INTERVAL_S = 1.0
# Time a fatal end waits for the client to take the events already queued (e.g. DRAINING).
FINAL_FLUSH_TIMEOUT_S = 2.0
CLOSE_NPC_TIMEOUT_S = 30.0
_END_OF_OUTPUT = object()  # put on the worker queue after NpcClosed: nothing more will come
MAX_TIMELINE_FRAME = 1 << 40  # about 1,700 years of frames at 20 fps


class SessionPhase(enum.Enum):
    AWAIT_CONFIG = "await_config"
    OPENING = "opening"
    LIVE = "live"
    CLOSING = "closing"
    ENDED = "ended"


class _RateLimitedEvent:
    """Counts occurrences and turns them into at most one SessionEvent per interval."""

    def __init__(self, code: int, describe):
        self._code = code
        self._describe = describe  # (count since last event, total) -> message
        self._pending = 0
        self._total = 0
        self._last_sent = -math.inf

    def note(self, count: int = 1) -> None:
        self._pending += count
        self._total += count

    def take(self, now: float) -> converse_pb2.ServerMessage | None:
        if not self._pending or now - self._last_sent < EVENT_MIN_INTERVAL_S:
            return None
        count, self._pending, self._last_sent = self._pending, 0, now
        event = converse_pb2.SessionEvent(
            code=self._code, message=self._describe(count, self._total),
            details={"count": str(count), "total": str(self._total)},
        )
        return converse_pb2.ServerMessage(event=event)


def _event(code: int, message: str, **details: object) -> converse_pb2.ServerMessage:
    return converse_pb2.ServerMessage(event=converse_pb2.SessionEvent(
        code=code, message=message, details={k: str(v) for k, v in details.items()}))


def _pcm16_bytes(pcm: np.ndarray) -> bytes:
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


class ConverseSession:
    """Serves one Converse call; create one per call and ``await session.run()``."""

    def __init__(self, runtime: GatewayRuntime, context: grpc.aio.ServicerContext):
        self._runtime = runtime
        self._context = context
        self.session_id = uuid.uuid4().hex
        self.phase = SessionPhase.AWAIT_CONFIG
        self.npc_id = ""
        self._settings: SessionSettings | None = None
        self._character: CharacterRecord | None = None
        self._admitted = False
        self._npc_open_requested = False
        self._npc_closed = False
        self._failure: RpcFailure | None = None
        self._failed = asyncio.Event()
        self._drain_requested = False
        self._tasks: list[asyncio.Task] = []
        self._worker_queue: asyncio.Queue | None = None
        self._out: OutboundQueue[converse_pb2.ServerMessage] = OutboundQueue(
            runtime.limits.outbound_queue_frames, runtime.limits.max_undroppable_bytes)
        self._audio: AudioInput | None = None
        self._encoder: FrameEncoder | None = None
        self._audio_timer: asyncio.TimerHandle | None = None
        self._pending_interrupt_drops: list[int] = []
        self._played_until: int | None = None   # the client's latest PlaybackProgress (session clock)
        self._closed_npc: worker_pb2.NpcState | None = None  # the NPC as the worker saved it at the end
        # Clock and numbering.
        self._clock: FrameClock | None = None
        self._clock_ratio = 1          # session samples per 16 kHz timeline sample (1 or 3)
        self._timeline_samples_per_frame = 1
        # Counters for SessionStats.
        self._config_received_at = 0.0
        self._first_frame_latency_ms = 0.0
        self._frames_sent = 0
        self._frames_made_since_stats = 0
        self._stats_window_start = 0.0
        self._blocks_generated = 0
        self._block_compute_ms = 0.0
        self._audio_queued_samples = 0
        self._devices: list[converse_pb2.DeviceTelemetry] = []
        self._dropped_events = _RateLimitedEvent(
            converse_pb2.EVENT_CODE_FRAMES_DROPPED,
            lambda n, total: f"{n} video frame(s) dropped because the client reads too slowly ({total} in total)")
        self._garbage_events = _RateLimitedEvent(
            converse_pb2.EVENT_CODE_AUDIO_GARBAGE,
            lambda n, total: f"{n} audio packet(s) could not be decoded and were treated as lost ({total} in total)")
        self._garbage_seen = 0
        self._gap_ms_total = 0

    # -- the call ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """The whole call. Returns for status OK; otherwise ends the call with the failure's status."""
        failure: RpcFailure | None = None
        try:
            await self._run()
        except RpcFailure as err:
            failure = err
        except Exception:
            log.exception("session %s failed", self.session_id)
            failure = RpcFailure(grpc.StatusCode.INTERNAL, "the session failed in the gateway")
        finally:
            # Shielded and tracked: a cancelled call still closes the NPC, so its memory is saved.
            cleanup = self._runtime.spawn(self._cleanup(), name=f"session-cleanup-{self.session_id}")
            await asyncio.shield(cleanup)
        failure = failure or self._failure
        token = self._closed_npc.resume_token if self._closed_npc is not None else ""
        if failure is not None:
            await abort(self._context, failure, token)
        elif token:
            self._context.set_trailing_metadata(((RESUME_TOKEN_METADATA_KEY, token),))

    def drain(self) -> None:
        """The server is shutting down: tell the client, then end with UNAVAILABLE."""
        if self._drain_requested:
            return
        self._drain_requested = True
        self._send(_event(converse_pb2.EVENT_CODE_DRAINING,
                          "the server is shutting down; the stream will end with UNAVAILABLE"))
        self._fail(RpcFailure(grpc.StatusCode.UNAVAILABLE, "server is draining", retry_after_ms=1000))

    async def _run(self) -> None:
        config = await self._read_config()
        self._config_received_at = time.monotonic()
        model = self._runtime.worker.require_ready()
        settings = resolve_session_config(config, model, self._runtime.data_dir)
        self._settings = settings
        self.npc_id = settings.npc_id
        self._runtime.sessions.admit(self)
        self._admitted = True
        self.phase = SessionPhase.OPENING
        accepted = await self._open_npc(settings)
        if self._failure is not None:
            raise self._failure
        await self._context.write(converse_pb2.ServerMessage(accepted=accepted))
        self.phase = SessionPhase.LIVE
        await self._serve_live()

    async def _read_config(self) -> converse_pb2.SessionConfig:
        message = await self._context.read()
        if message is grpc.aio.EOF:
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                             "the stream ended before its first message; the first message must be a SessionConfig")
        if isinstance(message, MalformedRequest):
            raise malformed_request_failure(message)
        kind = message.WhichOneof("message")
        if kind != "config":
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                             "the first message must be a SessionConfig (ClientMessage.config), "
                             f"got {kind or 'nothing'}")
        return message.config

    async def _open_npc(self, settings: SessionSettings) -> converse_pb2.SessionAccepted:
        link = self._runtime.link
        # Subscribe first, so that no frame made right after NpcOpened is missed.
        self._worker_queue = link.subscribe(self.session_id)
        request = worker_pb2.ToWorker(open_npc=worker_pb2.OpenNpc(
            session_id=self.session_id, npc_id=settings.npc_id, character_id=settings.character_id,
            width=settings.width, height=settings.height, fps=settings.fps, seed=settings.seed,
            reset_memory=settings.reset_memory, resume_token=settings.resume_token,
        ))
        # From here until the worker answers, the NPC may be open (a timeout, a cancelled call): close it then.
        self._npc_open_requested = True
        try:
            reply, _ = await link.request(request, timeout=self._runtime.open_timeout_s)
        except WorkerRequestError as err:
            self._npc_open_requested = False  # refused: nothing was opened
            raise failure_from_worker(err, resource=(NPC_RESOURCE, settings.npc_id)) from None
        except WorkerUnavailableError as err:
            raise failure_from_worker(err) from None
        opened = reply.npc_opened
        npc = opened.npc
        if settings.character_id and npc.character_id != settings.character_id:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                             f"character_id: NPC {npc.npc_id!r} looks like {npc.character_id!r}; send "
                             f"{npc.character_id!r} or leave it empty (or use a new npc_id)")
        self._character = self._load_character(npc.character_id)
        model = self._runtime.worker.require_ready()
        width, height = (npc.width, npc.height) if npc.width else (model.default_width, model.default_height)
        fps = settings.fps or model.default_fps  # the model runs at one frame rate
        self._clock = FrameClock(settings.sample_rate, fps)
        self._clock_ratio = settings.sample_rate // MODEL_SAMPLE_RATE
        self._timeline_samples_per_frame = MODEL_SAMPLE_RATE // fps
        self._blocks_generated = npc.blocks_generated
        self._audio = AudioInput(settings.audio_codec, settings.sample_rate, settings.opus_pre_skip)
        self._encoder = create_encoder(settings.codec_name, EncoderSettings(
            width=width, height=height, fps=fps, jpeg_quality=settings.jpeg_quality))
        return converse_pb2.SessionAccepted(
            session_id=self.session_id, npc_id=npc.npc_id or settings.npc_id, character_id=npc.character_id,
            video=settings.video_format(width, height, fps), audio=settings.audio_format(), resumed=opened.resumed,
            blocks_generated=npc.blocks_generated, resume_token=npc.resume_token, memory_bytes=npc.memory_bytes,
            first_block_frames=opened.first_block_frames or model.first_block_frames,
            block_frames=opened.block_frames or model.block_frames, model=model.model_name,
            start_frame_index=opened.start_frame_index,
        )

    def _load_character(self, character_id: str) -> CharacterRecord | None:
        try:
            return self._runtime.data_dir.read_character(character_id)
        except (FileNotFoundError, ValueError):
            log.warning("session %s: character %r has no record; emotion and action names are unknown",
                        self.session_id, character_id)
            return None

    async def _serve_live(self) -> None:
        loop = asyncio.get_running_loop()
        self._stats_window_start = time.monotonic()
        self._tasks = [
            loop.create_task(self._read_client(), name=f"session-reader-{self.session_id}"),
            loop.create_task(self._pump_worker_output(), name=f"session-pump-{self.session_id}"),
            loop.create_task(self._tick_stats(), name=f"session-stats-{self.session_id}"),
        ]
        writer = loop.create_task(self._write_to_client(), name=f"session-writer-{self.session_id}")
        failed = loop.create_task(self._failed.wait())
        try:
            await asyncio.wait({writer, failed}, return_when=asyncio.FIRST_COMPLETED)
            if not writer.done():
                # Give the client a moment to take the queued events (DRAINING ...), but never hang on one
                # that stopped reading.
                await asyncio.wait({writer}, timeout=FINAL_FLUSH_TIMEOUT_S)
        finally:
            failed.cancel()
            writer.cancel()
        if writer.done() and not writer.cancelled() and writer.exception() is not None:
            log.debug("session %s: writing failed: %r", self.session_id, writer.exception())
            self._fail(RpcFailure(grpc.StatusCode.CANCELLED, "the client went away"))

    # -- writer --------------------------------------------------------------------------------------------

    async def _write_to_client(self) -> None:
        while (item := await self._out.get()) is not None:
            message, is_frame = item
            await self._context.write(message)
            if is_frame:
                self._frames_sent += 1
                if self._frames_sent == 1:
                    self._first_frame_latency_ms = (time.monotonic() - self._config_received_at) * 1000

    def _send(self, message: converse_pb2.ServerMessage) -> None:
        """Queue a message that is never dropped (its size counts towards the client's unread bytes)."""
        try:
            self._out.put(message, message.ByteSize())
        except OutboundOverflow as err:
            self._fail(RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the client stopped reading: {err}"))

    def _send_frame(self, message: converse_pb2.ServerMessage) -> None:
        if self._out.put_frame(message):
            self._dropped_events.note()
            self._send_rate_limited(self._dropped_events)

    def _send_rate_limited(self, events: _RateLimitedEvent) -> None:
        message = events.take(time.monotonic())
        if message is not None:
            self._send(message)

    # -- ending --------------------------------------------------------------------------------------------

    def _fail(self, failure: RpcFailure) -> None:
        """End the session with ``failure`` (the first one wins); queued frames are discarded."""
        if self._failure is None:
            self._failure = failure
            log.info("session %s (npc %s) ends: %s %s", self.session_id, self.npc_id, failure.code.name,
                     failure.message)
        self._out.close(discard_frames=True)
        self._failed.set()

    def _begin_graceful_close(self) -> None:
        """The client half-closed: stop generating, save the memory, flush what was made, end with OK."""
        if self.phase is not SessionPhase.LIVE:
            return
        self.phase = SessionPhase.CLOSING
        self._cancel_audio_timer()
        self._tasks.append(asyncio.get_running_loop().create_task(
            self._close_then_finish_output(), name=f"session-close-{self.session_id}"))

    async def _close_then_finish_output(self) -> None:
        await self._close_npc()
        if self._worker_queue is not None:
            # The worker's output before NpcClosed is already queued (one ordered socket); end after it.
            self._worker_queue.put_nowait(_END_OF_OUTPUT)

    async def _close_npc(self) -> None:
        if not self._npc_open_requested or self._npc_closed:
            return
        self._npc_closed = True
        request = worker_pb2.ToWorker(close_npc=worker_pb2.CloseNpc(session_id=self.session_id))
        try:
            reply, _ = await self._runtime.link.request(request, timeout=CLOSE_NPC_TIMEOUT_S)
            if reply.WhichOneof("body") == "npc_closed":
                self._closed_npc = reply.npc_closed.npc
        except WorkerUnavailableError as err:
            log.warning("session %s: NPC %s not closed, the worker is unavailable: %s", self.session_id,
                        self.npc_id, err)
        except WorkerRequestError as err:
            log.warning("session %s: closing NPC %s failed: %s", self.session_id, self.npc_id, err)

    async def _cleanup(self) -> None:
        self.phase = SessionPhase.ENDED
        self._cancel_audio_timer()
        self._out.close(discard_frames=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._close_npc()
        finally:
            self._runtime.link.unsubscribe(self.session_id)
            if self._admitted:
                self._runtime.sessions.release(self)

    # -- client messages -----------------------------------------------------------------------------------

    async def _read_client(self) -> None:
        while True:
            try:
                message = await self._context.read()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the call broke: cancelled by the client, transport error
                log.debug("session %s: reading failed: %r", self.session_id, err)
                self._fail(RpcFailure(grpc.StatusCode.CANCELLED, "the client went away"))
                return
            if message is grpc.aio.EOF:
                self._begin_graceful_close()
                return
            if isinstance(message, MalformedRequest):
                self._fail(malformed_request_failure(message))
                return
            try:
                self._handle_client_message(message)
            except WorkerBusyError as err:
                self._fail(RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err), retry_after_ms=1000))
                return
            except WorkerUnavailableError as err:
                self._fail(RpcFailure(grpc.StatusCode.UNAVAILABLE, worker_stopped_message(str(err)),
                                      retry_after_ms=1000))
                return
            except Exception:
                log.exception("session %s: handling a %s message failed", self.session_id,
                              message.WhichOneof("message"))
                self._fail(RpcFailure(grpc.StatusCode.INTERNAL, "the server failed to handle a client message"))
                return

    def _handle_client_message(self, message: converse_pb2.ClientMessage) -> None:
        kind = message.WhichOneof("message")
        if kind == "audio":
            self._on_audio(message.audio)
        elif kind == "end_of_utterance":
            self._on_end_of_utterance()
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

    def _on_audio(self, packet: converse_pb2.AudioPacket) -> None:
        limit = self._runtime.limits.max_audio_packet_bytes
        if len(packet.payload) > limit:
            self._fail(RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"audio.payload: {len(packet.payload)} bytes is over the limit of {limit} bytes "
                                  "(ServerInfo.limits.max_audio_packet_bytes)"))
            return
        self._push_audio(self._audio.push(packet.sequence_number, packet.payload, packet.restart_sequence))
        self._report_garbage()
        if self._audio.waiting_for_missing_packet:
            self._arm_audio_timer()

    def _on_end_of_utterance(self) -> None:
        self._cancel_audio_timer()
        self._push_audio(self._audio.end_utterance())
        self._report_garbage()
        self._control(end_of_utterance=True)

    def _on_interrupt(self, played_until: int | None) -> None:
        self._cancel_audio_timer()
        self._pending_interrupt_drops.append(self._audio.interrupt())
        if played_until is None:
            self._control(interrupt=True)
            return
        # The first whole frame the player has not seen yet, as a place on the worker's timeline (the worker
        # clamps it to the video made; capped here so that no client value overflows the message's uint64).
        clock = self._clock
        frame = min(-(-played_until * clock.fps // clock.sample_rate), MAX_TIMELINE_FRAME)
        self._control(interrupt=True, played_until=frame * self._timeline_samples_per_frame)

    def _on_emotion(self, emotion: converse_pb2.EmotionEvent) -> None:
        intensity = emotion.intensity or 1.0
        if not 0.0 <= intensity <= 1.0:  # also false for NaN
            self._invalid_event("emotion.intensity", f"emotion.intensity: {emotion.intensity} is out of range 0-1")
            return
        if not emotion.name:
            self._control(reset_prompt=True)  # back to the base prompt
            return
        prompt = self._character_prompt("emotion", emotion.name, converse_pb2.EVENT_CODE_UNKNOWN_EMOTION)
        if prompt is not None:
            self._control(emotion_prompt=prompt, intensity=intensity)

    def _character_prompt(self, kind: str, name: str, unknown_code: int) -> str | None:
        """The character's ``kind`` ("emotion" or "action") prompt of that name; an event when it has none."""
        prompts = getattr(self._character, f"{kind}_prompts") if self._character else {}
        prompt = prompts.get(name)
        if prompt is None:
            self._send(_event(unknown_code, f"{kind} {name!r} is not one of the character's {kind}s",
                              name=name, known=",".join(sorted(prompts))))
        return prompt

    def _on_action(self, action: converse_pb2.ActionEvent) -> None:
        kind = action.WhichOneof("action")
        if kind == "preset":
            prompt = self._character_prompt("action", action.preset, converse_pb2.EVENT_CODE_UNKNOWN_ACTION)
            if prompt is not None:
                self._control(action_prompt=prompt)
        elif kind == "free_text":
            limit = self._runtime.limits.max_prompt_chars
            if not action.free_text.strip():
                self._invalid_event("action.free_text", "action.free_text is empty")
            elif len(action.free_text) > limit:
                self._invalid_event("action.free_text", f"action.free_text: {len(action.free_text)} characters "
                                                        f"is over the limit of {limit}")
            else:
                self._control(action_prompt=action.free_text)
        else:
            self._invalid_event("action", "ActionEvent has neither preset nor free_text")

    def _invalid_event(self, field: str, message: str) -> None:
        self._send(_event(converse_pb2.EVENT_CODE_INVALID_EVENT, message, field=field))

    def _control(self, **event: object) -> None:
        control = worker_pb2.Control(session_id=self.session_id, **event)
        self._runtime.link.send(worker_pb2.ToWorker(control=control))

    def _push_audio(self, pcm: np.ndarray) -> None:
        if pcm.size == 0:
            return
        push = worker_pb2.PushAudio(session_id=self.session_id, num_samples=pcm.size)
        self._runtime.link.send(worker_pb2.ToWorker(push_audio=push), [pcm])

    def _report_garbage(self) -> None:
        garbage = self._audio.stats.garbage
        if garbage != self._garbage_seen:
            self._garbage_events.note(garbage - self._garbage_seen)
            self._garbage_seen = garbage
        self._send_rate_limited(self._garbage_events)

    def _arm_audio_timer(self) -> None:
        # Audio held behind a missing packet is released when the packet is declared lost; without another
        # packet or pull nobody would look, so look once the reorder timeout has passed.
        if self._audio_timer is None:
            delay = self._audio.reorder_timeout_s + 0.01
            self._audio_timer = asyncio.get_running_loop().call_later(delay, self._on_audio_timer)

    def _on_audio_timer(self) -> None:
        self._audio_timer = None
        if self.phase is not SessionPhase.LIVE:
            return
        try:
            self._push_audio(self._audio.pull())
        except WorkerUnavailableError:
            return  # the worker queue reports the loss
        if self._audio.waiting_for_missing_packet:
            self._arm_audio_timer()

    def _cancel_audio_timer(self) -> None:
        if self._audio_timer is not None:
            self._audio_timer.cancel()
            self._audio_timer = None

    # -- worker output -------------------------------------------------------------------------------------

    async def _pump_worker_output(self) -> None:
        queue = self._worker_queue
        while True:
            item = await queue.get()
            if item is _END_OF_OUTPUT:
                self._send_stats()
                if self._closed_npc is not None:
                    npc = self._closed_npc
                    self._send(converse_pb2.ServerMessage(ended=converse_pb2.SessionEnded(
                        resume_token=npc.resume_token, blocks_generated=npc.blocks_generated,
                        frames_generated=npc.frames_generated)))
                self._out.close()
                return
            if isinstance(item, WorkerLost):
                self._npc_closed = True  # nothing to close: the worker and its session are gone
                self._fail(RpcFailure(grpc.StatusCode.UNAVAILABLE, worker_stopped_message(item.reason),
                                      retry_after_ms=1000))
                return
            message, payloads = item
            kind = message.WhichOneof("body")
            if kind == "frame_block":
                await self._deliver_block(message.frame_block, payloads)
            elif kind == "interrupt_done":
                self._deliver_interrupt_ack(message.interrupt_done)
            elif kind == "utterance_done":
                end = message.utterance_done.timeline_end * self._clock_ratio
                self._send(_event(converse_pb2.EVENT_CODE_UTTERANCE_COMPLETE,
                                  "all audio of the utterance has been generated", timeline_end=end))
            elif kind == "error":
                error = message.error
                self._fail(failure_from_worker(WorkerRequestError(error.code, f"generation stopped: {error.message}")))
                return

    async def _deliver_block(self, block: worker_pb2.FrameBlock, payloads: list) -> None:
        n, height, width = block.num_frames, block.height, block.width
        frame_bytes = memoryview(payloads[0]).nbytes if payloads else 0
        if frame_bytes != n * height * width * 3:
            log.error("session %s: frame block %d has %d bytes of frames for %d frames of %dx%d", self.session_id,
                      block.block_index, frame_bytes, n, width, height)
            self._fail(RpcFailure(grpc.StatusCode.INTERNAL, "the generator worker sent a malformed frame block"))
            return
        self._note_block(block)
        if block.gap_samples:
            self._report_gap(block.gap_samples)
        if self._settings.echo_audio and len(payloads) > 1:
            pcm16 = _pcm16_bytes(np.frombuffer(payloads[1], dtype=np.float32))
            echo = converse_pb2.AudioEcho(start=self._timeline_pts(block.audio_start),
                                          sample_rate=MODEL_SAMPLE_RATE, pcm16=pcm16)
            self._send(converse_pb2.ServerMessage(audio_echo=echo))
        frames = np.frombuffer(payloads[0], dtype=np.uint8).reshape(n, height, width, 3)
        loop = asyncio.get_running_loop()
        encoding = [loop.run_in_executor(self._runtime.encode_pool, self._encoder.encode, frames[k])
                    for k in range(n)]
        # In order, each as soon as it and the ones before it are encoded.
        for k, pending in enumerate(encoding):
            encoded = await pending
            self._send_frame(self._frame_message(block, k, encoded))

    def _timeline_frame(self, timeline_sample: int) -> int:
        """The frame number on the session clock of a (frame-aligned) place on the worker's timeline."""
        return timeline_sample // self._timeline_samples_per_frame

    def _timeline_pts(self, timeline_sample: int) -> int:
        return self._clock.pts(self._timeline_frame(timeline_sample))

    def _frame_message(self, block: worker_pb2.FrameBlock, k: int,
                       encoded: EncodedFrame) -> converse_pb2.ServerMessage:
        settings, clock = self._settings, self._clock
        local = self._timeline_frame(block.audio_start) + k
        start, end = clock.audio_slice(local)
        # The block's voice comes first and silence after it, so a frame speaks when its slice starts in it.
        speaking = k * self._timeline_samples_per_frame < block.voice_samples
        return converse_pb2.ServerMessage(frame=converse_pb2.VideoFrame(
            index=block.first_frame_index + k, pts=start, pts_us=clock.pts_us(local), codec=settings.video_codec,
            width=block.width, height=block.height, keyframe=encoded.keyframe, data=encoded.data,
            audio_start=start, audio_end=end, block_index=block.block_index, speaking=speaking,
        ))

    def _report_gap(self, gap_samples: int) -> None:
        # One event per stall (at most one per block), so no rate limit is needed.
        gap_ms = gap_samples * 1000 // MODEL_SAMPLE_RATE
        self._gap_ms_total += gap_ms
        self._send(_event(converse_pb2.EVENT_CODE_AUDIO_GAP,
                          f"the voice stalled beyond the jitter budget: {gap_ms} ms of silence went inside the "
                          f"utterance ({self._gap_ms_total} ms in this session)",
                          gap_ms=gap_ms, total_ms=self._gap_ms_total))

    def _note_block(self, block: worker_pb2.FrameBlock) -> None:
        self._frames_made_since_stats += block.num_frames
        self._blocks_generated = max(self._blocks_generated, block.block_index + 1)
        self._block_compute_ms = block.compute_ms
        self._audio_queued_samples = block.audio_queued_samples
        if block.devices:
            self._devices = public_devices(block.devices)

    def _deliver_interrupt_ack(self, done: worker_pb2.InterruptDone) -> None:
        dropped_here = self._pending_interrupt_drops.pop(0) if self._pending_interrupt_drops else 0
        generated_until = self._timeline_pts(done.generated_until)
        replace_from = self._timeline_pts(done.replace_from)
        ack = converse_pb2.InterruptAck(
            generated_until=generated_until,
            dropped_samples=(done.dropped_samples + dropped_here) * self._clock_ratio,
            next_frame_index=done.next_frame_index, replace_from_pts=replace_from,
            played_until=self._timeline_pts(done.played_until), unheard_samples=generated_until - replace_from,
        )
        self._send(converse_pb2.ServerMessage(interrupt_ack=ack))

    # -- stats ---------------------------------------------------------------------------------------------

    async def _tick_stats(self) -> None:
        interval = self._settings.stats_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self._send_rate_limited(self._dropped_events)
            self._send_rate_limited(self._garbage_events)
            self._send_stats()

    def _send_stats(self) -> None:
        now = time.monotonic()
        elapsed = max(now - self._stats_window_start, 1e-6)
        fps = self._frames_made_since_stats / elapsed
        self._frames_made_since_stats, self._stats_window_start = 0, now
        audio = self._audio.stats
        stats = converse_pb2.SessionStats(
            generated_fps=fps, frames_sent=self._frames_sent, frames_dropped=self._out.frames_dropped,
            block_compute_ms=self._block_compute_ms, first_frame_latency_ms=self._first_frame_latency_ms,
            outbound_queue_depth=len(self._out), audio_queued_ms=self._audio_queued_samples * 1000 / MODEL_SAMPLE_RATE,
            audio=converse_pb2.AudioCounters(
                received=audio.received, duplicates=audio.duplicates, late=audio.late, lost=audio.lost,
                concealed_plc=audio.concealed_plc, recovered_fec=audio.recovered_fec, garbage=audio.garbage,
            ),
            devices=self._devices, blocks_generated=self._blocks_generated,
        )
        self._send(converse_pb2.ServerMessage(stats=stats))
