"""One Converse stream: the session's lifecycle, the state machine that runs it.

    AWAIT_CONFIG --config ok--> OPENING (OpenNpc on the worker) --NpcOpened--> LIVE --> CLOSING --> ENDED

While LIVE four things run side by side, and none of them ever waits for another; the jobs are split by
module:

- the reader takes client messages and hands them to :class:`~.session_input.ClientInput` (voice through the
  jitter buffer to the worker, control events, interrupts by playback position);
- the pump takes the worker's output for this session and has :class:`~.session_output.MediaOutput` turn it
  into messages (echoed voice, frames encoded in the thread pool and placed on the session clock, interrupt
  acks, gap and utterance events);
- the stats ticker adds SessionStats every stats_interval_ms (:class:`~.session_stats.SessionMeter`);
- the writer (the call's own task) sends the outbound queue to the client. The queue drops the oldest
  frames when the client reads slowly, so the worker and other sessions never wait for this client.

Endings: the client half-closes -> CloseNpc (the worker saves the memory), frames already made are flushed,
then SessionEnded with the NPC's resume token, status OK. The client cancels -> CloseNpc all the same. The
worker dies, the server drains, or a fatal error -> pending frames are discarded, queued events still go
out, then the status. Whenever the NPC's memory was saved, the resume token also rides in the trailers.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid

import grpc

from avatar_backend.media.clock import FrameClock
from avatar_backend.media.encoders import EncoderSettings, create_encoder
from avatar_backend.proto_gen import converse_pb2, worker_pb2
from avatar_backend.store import CharacterRecord
from avatar_backend.worker.character_spec import spec_from_record
from avatar_backend.worker.link import WorkerBusyError, WorkerLost, WorkerRequestError, WorkerUnavailableError

from .audio_input import AudioInput
from .outbound import OutboundOverflow, OutboundQueue
from .runtime import GatewayRuntime
from .session_config import SessionSettings, resolve_session_config
from .session_input import ClientInput
from .session_output import MediaOutput
from .session_stats import RateLimitedEvent, SessionMeter, session_event
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

# Time a fatal end waits for the client to take the events already queued (e.g. DRAINING).
FINAL_FLUSH_TIMEOUT_S = 2.0
CLOSE_NPC_TIMEOUT_S = 30.0
# A half-closed session first gets the voice it was sent onto video: at most this long.
FINISH_VOICE_TIMEOUT_S = 300.0
_END_OF_OUTPUT = object()  # put on the worker queue after NpcClosed: nothing more will come


class SessionPhase(enum.Enum):
    AWAIT_CONFIG = "await_config"
    OPENING = "opening"
    LIVE = "live"
    CLOSING = "closing"
    ENDED = "ended"


class ConverseSession:
    """Serves one Converse call; create one per call and ``await session.run()``."""

    def __init__(self, runtime: GatewayRuntime, context: grpc.aio.ServicerContext):
        self._runtime = runtime
        self._context = context
        self.session_id = uuid.uuid4().hex
        self.phase = SessionPhase.AWAIT_CONFIG
        self.npc_id = ""
        self._settings: SessionSettings | None = None
        self._admitted = False
        self._npc_open_requested = False
        self._npc_closed = False
        self._finishing_voice = False       # a CloseNpc that first finishes the voice is under way
        self._failure: RpcFailure | None = None
        self._failed = asyncio.Event()
        self._drain_requested = False
        self._tasks: list[asyncio.Task] = []
        self._worker_queue: asyncio.Queue | None = None
        self._out: OutboundQueue[converse_pb2.ServerMessage] = OutboundQueue(
            runtime.limits.outbound_queue_frames, runtime.limits.max_undroppable_bytes)
        self._input: ClientInput | None = None       # set once the NPC is open
        self._media: MediaOutput | None = None
        self._meter = SessionMeter()
        self._closed_npc: worker_pb2.NpcState | None = None  # the NPC as the worker saved it at the end
        self._dropped_events = RateLimitedEvent(
            converse_pb2.EVENT_CODE_FRAMES_DROPPED,
            lambda n, total: f"{n} video frame(s) dropped because the client reads too slowly ({total} in total)")

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
        self._send(session_event(converse_pb2.EVENT_CODE_DRAINING,
                          "the server is shutting down; the stream will end with UNAVAILABLE"))
        self._fail(RpcFailure(grpc.StatusCode.UNAVAILABLE, "server is draining", retry_after_ms=1000))

    async def _run(self) -> None:
        config = await self._read_config()
        self._meter.config_received_at = time.monotonic()
        model = self._runtime.worker.require_ready()
        settings = resolve_session_config(config, model, self._runtime.data_dir,
                                          self._runtime.limits.prompt_guidance_limit(model.prompt_guidance))
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
        character, reference_png = await self._npc_character(settings)
        # Subscribe first, so that no frame made right after NpcOpened is missed.
        self._worker_queue = link.subscribe(self.session_id)
        request = worker_pb2.ToWorker(open_npc=worker_pb2.OpenNpc(
            session_id=self.session_id, npc_id=settings.npc_id, character_id=settings.character_id,
            width=settings.width, height=settings.height, fps=settings.fps, seed=settings.seed,
            reset_memory=settings.reset_memory, resume_token=settings.resume_token,
            character=spec_from_record(character), prompt_guidance=settings.prompt_guidance,
        ))
        # From here until the worker answers, the NPC may be open (a timeout, a cancelled call): close it then.
        self._npc_open_requested = True
        try:
            reply, _ = await link.request(request, [reference_png], timeout=self._runtime.open_timeout_s)
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
        model = self._runtime.worker.require_ready()
        width, height = (npc.width, npc.height) if npc.width else (model.default_width, model.default_height)
        fps = settings.fps or model.default_fps  # the model runs at one frame rate
        self._meter.blocks_generated = npc.blocks_generated
        encoder = create_encoder(settings.codec_name, EncoderSettings(
            width=width, height=height, fps=fps, jpeg_quality=settings.jpeg_quality))
        self._media = MediaOutput(FrameClock(settings.sample_rate, fps), encoder, self._runtime.encode_pool,
                                  settings.video_codec)
        self._input = ClientInput(
            self.session_id, self._runtime,
            AudioInput(settings.audio_codec, settings.sample_rate, settings.opus_pre_skip),
            character, self._media, self._send, self._fail, is_live=lambda: self.phase is SessionPhase.LIVE)
        return converse_pb2.SessionAccepted(
            session_id=self.session_id, npc_id=npc.npc_id or settings.npc_id, character_id=npc.character_id,
            video=settings.video_format(width, height, fps), audio=settings.audio_format(), resumed=opened.resumed,
            blocks_generated=npc.blocks_generated, resume_token=npc.resume_token, memory_bytes=npc.memory_bytes,
            first_block_frames=opened.first_block_frames or model.first_block_frames,
            block_frames=opened.block_frames or model.block_frames, model=model.model_name,
            start_frame_index=opened.start_frame_index, prompt_guidance=opened.prompt_guidance,
        )

    async def _npc_character(self, settings: SessionSettings) -> tuple[CharacterRecord, bytes]:
        """The character the NPC looks like and its reference image, sent to the worker with OpenNpc (the
        worker never reads this data directory): the one asked for, or an existing NPC's own."""
        character_id = settings.character_id
        if not character_id:
            try:
                reply, _ = await self._runtime.link.request(worker_pb2.ToWorker(npc_query=worker_pb2.NpcQuery(
                    npc_id=settings.npc_id)), timeout=self._runtime.request_timeout_s)
            except WorkerRequestError:
                reply = None  # no such NPC: the worker says so below
            except WorkerUnavailableError as err:
                raise failure_from_worker(err) from None
            npcs = [n for n in reply.npc_list.npcs if n.npc_id == settings.npc_id] if reply else []
            character_id = npcs[0].character_id if npcs else ""
        if not character_id:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                             f"character_id: required for the new NPC {settings.npc_id!r} (see ListCharacters)")
        data_dir = self._runtime.data_dir
        try:
            return (await asyncio.to_thread(data_dir.read_character, character_id),
                    await asyncio.to_thread(data_dir.read_reference_image, character_id))
        except (FileNotFoundError, ValueError):
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                             f"character_id: NPC {settings.npc_id!r} looks like {character_id!r}, which is no "
                             "longer registered; register it again or reset the NPC with a character") from None

    async def _serve_live(self) -> None:
        loop = asyncio.get_running_loop()
        self._meter.start_window()
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
                self._meter.frame_sent()

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

    def _send_rate_limited(self, events: RateLimitedEvent) -> None:
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
        try:
            self._input.flush_voice()
        except WorkerUnavailableError:
            pass  # the worker is gone: the close that follows finds that out and ends the session
        self._tasks.append(asyncio.get_running_loop().create_task(
            self._close_then_finish_output(), name=f"session-close-{self.session_id}"))

    async def _close_then_finish_output(self) -> None:
        await self._close_npc(finish_voice=True)
        if self._worker_queue is not None:
            # The worker's output before NpcClosed is already queued (one ordered socket); end after it.
            self._worker_queue.put_nowait(_END_OF_OUTPUT)

    async def _close_npc(self, finish_voice: bool = False) -> None:
        if not self._npc_open_requested or self._npc_closed:
            if self._finishing_voice:
                # The client went away while its voice was being finished: close the NPC now.
                self._finishing_voice = False
                self._runtime.link.send(worker_pb2.ToWorker(close_npc=worker_pb2.CloseNpc(
                    session_id=self.session_id)))
            return
        self._npc_closed = True
        self._finishing_voice = finish_voice
        request = worker_pb2.ToWorker(close_npc=worker_pb2.CloseNpc(session_id=self.session_id,
                                                                    finish_voice=finish_voice))
        try:
            reply, _ = await self._runtime.link.request(
                request, timeout=FINISH_VOICE_TIMEOUT_S if finish_voice else CLOSE_NPC_TIMEOUT_S)
            self._finishing_voice = False
            if reply.WhichOneof("body") == "npc_closed":
                self._closed_npc = reply.npc_closed.npc
        except WorkerUnavailableError as err:
            log.warning("session %s: NPC %s not closed, the worker is unavailable: %s", self.session_id,
                        self.npc_id, err)
        except WorkerRequestError as err:
            log.warning("session %s: closing NPC %s failed: %s", self.session_id, self.npc_id, err)

    async def _cleanup(self) -> None:
        self.phase = SessionPhase.ENDED
        if self._input is not None:
            self._input.stop()
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
                self._input.handle(message)
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

    # -- worker output -------------------------------------------------------------------------------------

    async def _pump_worker_output(self) -> None:
        try:
            await self._take_worker_output()
        except Exception:
            # Nothing awaits this task before cleanup: without this the session would go on with stats and
            # no frames while the worker's output piles up.
            log.exception("session %s: delivering the worker's output failed", self.session_id)
            self._fail(RpcFailure(grpc.StatusCode.INTERNAL, "the server failed to deliver the generated video"))

    async def _take_worker_output(self) -> None:
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
                self._send(self._media.interrupt_ack(message.interrupt_done, self._input.take_interrupt_drop()))
            elif kind == "utterance_done":
                self._send(self._media.utterance_event(message.utterance_done))
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
        self._meter.block_made(block)
        if block.gap_samples:
            self._send(self._media.gap_event(block.gap_samples))
        if self._settings.echo_audio and len(payloads) > 1:
            self._send(self._media.echo(block, payloads[1]))
        async for frame in self._media.frames(block, payloads[0]):
            self._send_frame(frame)

    # -- stats ---------------------------------------------------------------------------------------------

    async def _tick_stats(self) -> None:
        interval = self._settings.stats_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self._send_rate_limited(self._dropped_events)
            self._send_rate_limited(self._input.garbage_events)
            self._send_stats()

    def _send_stats(self) -> None:
        self._send(self._meter.stats_message(self._input.audio.stats, self._out.frames_dropped, len(self._out)))
