"""The worker's request handlers: one per ``ToWorker`` message, each a small call into the engine's parts.

Every failure becomes a WorkerError with a grpc status code name: the reply to a request, or a session event
for a one-way message. Handlers never generate: blocks are the engine loop's job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from avatar_backend.generator.config import is_prompt_guidance
from avatar_backend.proto_gen import worker_pb2

from .character_spec import record_from_spec
from .characters import listening_prompt
from .errors import RequestError
from .executor import ExecutorLost
from .log_limit import RateLimitedLog
from .memory_pool import PoolError
from .scheduler import SessionState, VoiceQueueFull

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["RequestHandler"]

log = logging.getLogger("avatar_backend.worker")

# A client can interrupt as often as it likes: at most one log line per session this often.
INTERRUPT_LOG_INTERVAL_S = 5.0

Handler = Callable[[worker_pb2.ToWorker, list[memoryview]], None]


class RequestHandler:
    """Serves the link's messages against an engine's scheduler, memory pool and characters."""

    def __init__(self, engine: "Engine"):
        self.engine = engine
        self._interrupt_log = RateLimitedLog(log, INTERRUPT_LOG_INTERVAL_S, clock=engine.clock)
        self._untrained_sizes_told: set[tuple[int, int]] = set()
        self._handlers: dict[str, Handler] = {
            "open_npc": self._open_npc, "push_audio": self._push_audio, "control": self._control,
            "close_npc": self._close_npc, "npc_query": self._npc_query, "reset_npc": self._reset_npc,
            "delete_npc": self._delete_npc, "worker_info_query": self._worker_info,
            "drop_character": self._drop_character, "shutdown": self._shutdown, "ping": self._ping,
        }

    def handle(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        """Serve one message; every failure becomes a WorkerError (reply, or session event for one-way)."""
        body = msg.WhichOneof("body") or ""
        handler = self._handlers.get(body)
        try:
            if handler is None:
                raise RequestError("INVALID_ARGUMENT", f"unknown or empty worker message {body!r}")
            handler(msg, payloads)
        except (RequestError, PoolError) as err:
            self._fail(msg, body, err.code, err.message)
        except ExecutorLost:
            raise  # the engine goes down with the ranks; the gateway restarts the worker
        except Exception as err:
            log.exception("request %s failed", body)
            self._fail(msg, body, "INTERNAL", f"{body} failed in the worker: {type(err).__name__}: {err}")

    # -- replies ------------------------------------------------------------------------------------------------

    def _fail(self, msg: worker_pb2.ToWorker, body: str, code: str, message: str) -> None:
        session_id = getattr(getattr(msg, body), "session_id", "") if body else ""
        error = worker_pb2.FromWorker(error=worker_pb2.WorkerError(session_id=session_id, code=code, message=message))
        if msg.request_id:
            self.engine.link.reply(msg.request_id, error)
        elif session_id:
            self.engine.link.emit(error)
        else:
            log.warning("one-way %s refused: %s %s", body or "message", code, message)

    def _answer(self, msg: worker_pb2.ToWorker, reply: worker_pb2.FromWorker | None = None) -> None:
        """Reply to requests; one-way messages (request_id 0) get no answer."""
        if msg.request_id:
            self.engine.link.reply(msg.request_id, reply or worker_pb2.FromWorker(ack=worker_pb2.Ack()))

    def _session(self, session_id: str) -> SessionState:
        try:
            return self.engine.scheduler.get(session_id)
        except KeyError:
            raise RequestError("NOT_FOUND", f"no open session {session_id!r} on this worker") from None

    # -- sessions -----------------------------------------------------------------------------------------------

    def _open_npc(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        engine, req = self.engine, msg.open_npc
        if not req.session_id:
            raise RequestError("INVALID_ARGUMENT", "open_npc.session_id is empty")
        if req.session_id in engine.scheduler.sessions:
            raise RequestError("ALREADY_EXISTS", f"session {req.session_id!r} is already open")
        if not req.HasField("character") or len(payloads) != 1:
            raise RequestError("INVALID_ARGUMENT", "open_npc needs the NPC's character and its reference image")
        record = record_from_spec(req.character)
        default_guidance = engine.runner.config.sampler.prompt_guidance
        guidance = req.prompt_guidance if req.HasField("prompt_guidance") else default_guidance
        if not is_prompt_guidance(guidance):
            raise RequestError("INVALID_ARGUMENT", f"open_npc.prompt_guidance: {guidance} is not a finite factor >= 1")
        memory, resumed = engine.pool.acquire(
            req.npc_id, req.session_id, character_id=req.character_id, width=req.width, height=req.height,
            fps=req.fps, seed=req.seed, reset=req.reset_memory, resume_token=req.resume_token)
        try:
            if record.character_id != memory.character_id:
                raise RequestError("INVALID_ARGUMENT", f"character_id: NPC {req.npc_id!r} looks like "
                                                       f"{memory.character_id!r}, not {record.character_id!r}")
            conditioning = engine.characters.get(record, bytes(payloads[0]), memory.width, memory.height)
            engine.scheduler.open_session(req.session_id, req.npc_id, memory, conditioning,
                                          listening_prompt=listening_prompt(record), prompt_guidance=guidance)
        except BaseException:
            engine.pool.abandon(req.npc_id)
            raise
        npc = engine.pool.query(req.npc_id)[0]
        config = engine.runner.config
        log.info("session %s: NPC %s %s (%dx%d @ %d fps, block %d)", req.session_id, req.npc_id,
                 "resumed" if resumed else "new", memory.width, memory.height, memory.fps, memory.blocks_generated)
        # model/train trains at the config's default size only (the published model knows all its sizes).
        size = (memory.width, memory.height)
        if not engine.runner.random_weights and not config.runs_published_encoders \
                and size != (config.width, config.height) and size not in self._untrained_sizes_told:
            self._untrained_sizes_told.add(size)  # once per size: tests and benchmarks open many NPCs at one size
            log.warning("NPCs at %dx%d: the weights were trained at the model's default size, %dx%d; at other sizes "
                        "the face may not talk (the shipped tiny weights do not at 64x64)", *size, config.width,
                        config.height)
        self._answer(msg, worker_pb2.FromWorker(npc_opened=worker_pb2.NpcOpened(
            session_id=req.session_id, npc=npc, resumed=resumed, first_block_frames=config.frames_per_block(0),
            block_frames=config.frames_per_block(1), start_frame_index=int(memory.frames_generated),
            prompt_guidance=guidance)))

    def _push_audio(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        req = msg.push_audio
        self._session(req.session_id)
        if len(payloads) != 1:
            raise RequestError("INVALID_ARGUMENT", f"push_audio carries {len(payloads)} payloads, expected 1")
        if payloads[0].nbytes != req.num_samples * 4:
            raise RequestError("INVALID_ARGUMENT",
                               f"push_audio: {payloads[0].nbytes} bytes for {req.num_samples} float32 samples")
        pcm = np.frombuffer(payloads[0], dtype=np.float32)
        if not np.isfinite(pcm).all():
            # NaN would poison the NPC's memory for good; treat bad samples as silence.
            pcm = np.nan_to_num(pcm, nan=0.0, posinf=0.0, neginf=0.0)
        try:
            self.engine.scheduler.push_voice(req.session_id, pcm)
        except VoiceQueueFull as err:
            raise RequestError("RESOURCE_EXHAUSTED", str(err)) from None
        self._answer(msg)

    def _control(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        scheduler, link, req = self.engine.scheduler, self.engine.link, msg.control
        sid = req.session_id
        self._session(sid)
        event = req.WhichOneof("event")
        at_voice = req.at_voice_sample if req.HasField("at_voice_sample") else None
        if event == "emotion_prompt":
            scheduler.set_prompt(sid, req.emotion_prompt, req.intensity, at_voice=at_voice)
        elif event == "action_prompt":
            scheduler.start_action(sid, req.action_prompt, at_voice=at_voice)
        elif event == "reset_prompt":
            scheduler.set_prompt(sid, None, at_voice=at_voice)
        elif event == "listening":
            scheduler.set_listening(sid, req.listening)
        elif event == "end_of_utterance":
            for ended in scheduler.end_of_utterance(sid):
                link.emit(worker_pb2.FromWorker(utterance_done=worker_pb2.UtteranceDone(
                    session_id=sid, timeline_end=ended.timeline_end)))
        elif event == "interrupt":
            played_until = req.played_until if req.HasField("played_until") else None
            result = scheduler.interrupt(sid, played_until)
            done = worker_pb2.FromWorker(interrupt_done=worker_pb2.InterruptDone(
                session_id=sid, generated_until=result.generated_until, dropped_samples=result.dropped_samples,
                next_frame_index=result.next_frame_index, replace_from=result.replace_from,
                played_until=result.played_until))
            self._interrupt_log.log(sid, logging.INFO, "session %s: interrupted at sample %d, %d samples dropped",
                                    sid, result.generated_until, result.dropped_samples)
            if msg.request_id:
                link.reply(msg.request_id, done)
            else:
                link.emit(done)
            return
        else:
            raise RequestError("INVALID_ARGUMENT", "control message without an event")
        self._answer(msg)

    def _close_npc(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        sid = msg.close_npc.session_id
        state = self._session(sid)
        if msg.close_npc.finish_voice and (state.queued_samples or state.utterance_open):
            # The engine closes it (and answers) once the queued voice is on video.
            for ended in self.engine.scheduler.end_of_utterance(sid):
                self.engine.link.emit(worker_pb2.FromWorker(utterance_done=worker_pb2.UtteranceDone(
                    session_id=sid, timeline_end=ended.timeline_end)))
            state.closing_request = msg.request_id
            return
        self._answer(msg, self.close_session(sid))

    def close_session(self, session_id: str) -> worker_pb2.FromWorker:
        """Close a session now: its NPC's memory is parked and saved; the NpcClosed answer."""
        state = self.engine.scheduler.close_session(session_id)
        npc = self.engine.pool.release(state.npc_id)
        log.info("session %s closed: NPC %s parked after %d block(s) this session", session_id, state.npc_id,
                 state.blocks)
        return worker_pb2.FromWorker(npc_closed=worker_pb2.NpcClosed(session_id=session_id, npc=npc))

    # -- NPCs, characters and the worker ----------------------------------------------------------------------

    def _npc_query(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        npcs = self.engine.pool.query(msg.npc_query.npc_id, msg.npc_query.character_id)
        self._answer(msg, worker_pb2.FromWorker(npc_list=worker_pb2.NpcList(npcs=npcs)))

    def _reset_npc(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        npc = self.engine.pool.reset(msg.reset_npc.npc_id)
        self._answer(msg, worker_pb2.FromWorker(npc_list=worker_pb2.NpcList(npcs=[npc])))

    def _delete_npc(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        self.engine.pool.delete(msg.delete_npc.npc_id)
        self._answer(msg)

    def _worker_info(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        self._answer(msg, worker_pb2.FromWorker(worker_info=self.engine.worker_info()))

    def _drop_character(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        self.engine.characters.drop(msg.drop_character.character_id)
        self._answer(msg)

    def _shutdown(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        engine = self.engine
        log.info("shutdown requested; saving %d live NPC memories", len(engine.scheduler.sessions))
        for sid in list(engine.scheduler.sessions):
            engine.link.emit(worker_pb2.FromWorker(error=worker_pb2.WorkerError(
                session_id=sid, code="UNAVAILABLE", message="the worker is shutting down")))
        engine.save_everything()
        engine.request_stop()
        self._answer(msg)

    def _ping(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        self._answer(msg, worker_pb2.FromWorker(pong=worker_pb2.Pong(pid=os.getpid())))
