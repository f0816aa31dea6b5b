"""The worker process: generator pipeline, NPC memory pool and scheduler behind the ZeroMQ link.

One loop, one thread: poll the link (without blocking while a block is ready to run), handle what arrived,
then generate the block the scheduler picks and send it out. Nothing a session does can stop the loop: a
failed block ends that session with a WorkerError (INTERNAL) and the others carry on; a failed request gets
a WorkerError reply with a grpc status code name.

Run as ``python -m avatar_backend.worker --endpoint E --config NAME_OR_PATH --data-dir D --device DEV
[--weights FILE] [--parent-pid PID]``; the gateway's :class:`~avatar_backend.worker.process.WorkerProcess`
does that. ``AVATAR_FAKE_PIPELINE=1`` (tests only) swaps the generator for a numpy stand-in.
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avatar_backend.proto_gen import worker_pb2
from avatar_backend.store import (
    DEFAULT_MAX_PARKED_MEMORY_BYTES,
    DEFAULT_MAX_STORED_NPC_BYTES,
    DEFAULT_MAX_STORED_NPCS,
    DEFAULT_NPC_SNAPSHOT_INTERVAL_S,
    CharacterRecord,
    DataDir,
    default_data_dir,
)

from .character_spec import record_from_spec
from .link import WorkerLink
from .log_limit import RateLimitedLog
from .memory_pool import MemoryCodec, MemoryPool, PoolError
from .process import RANDOM_WEIGHTS
from .scheduler import (
    DEFAULT_VOICE_JITTER_BUDGET_MS,
    BlockPlan,
    Scheduler,
    SchedulerConfig,
    SessionState,
    VoiceQueueFull,
)
from .telemetry import DeviceTelemetry

__all__ = ["CharacterCache", "RequestError", "Worker", "WorkerConfig", "build_pipeline", "main"]

log = logging.getLogger("avatar_backend.worker")

FAKE_PIPELINE_ENV = "AVATAR_FAKE_PIPELINE"
# A character prompt of this name (action or emotion) is what the NPC shows while listening.
LISTENING_PROMPT_NAME = "listening"
# A client can interrupt as often as it likes: at most one log line per session this often.
INTERRUPT_LOG_INTERVAL_S = 5.0


class RequestError(Exception):
    """A request the worker refuses; ``code`` is a grpc.StatusCode name."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class WorkerConfig:
    endpoint: str
    model_config: str = "tiny"                 # a named ModelConfig or a JSON file
    data_dir: Path = field(default_factory=default_data_dir)
    device: str = "cpu"
    weights: str | None = None
    parent_pid: int = 0                        # exit (saving memories) when this process is gone; 0: never
    resident_budget_bytes: int = DEFAULT_MAX_PARKED_MEMORY_BYTES  # parked NPC memories kept in host memory
    max_stored_npcs: int = DEFAULT_MAX_STORED_NPCS             # NPCs on disk; a new one beyond is refused (0: no cap)
    max_stored_npc_bytes: int = DEFAULT_MAX_STORED_NPC_BYTES   # their bytes on disk, likewise (0: no cap)
    npc_snapshot_interval_s: float = DEFAULT_NPC_SNAPSHOT_INTERVAL_S  # live memories saved this often (0: off)
    max_live_sessions: int = 0                 # 0: no limit (the gateway does admission)
    character_cache_size: int = 64             # prepared (character, size) conditionings kept
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    idle_poll_ms: int = 50                     # longest wait for messages when no block is due


def listening_prompt(record: CharacterRecord) -> str:
    """What a listening NPC is conditioned on: the character's "listening" prompt if it has one."""
    return (record.action_prompts.get(LISTENING_PROMPT_NAME) or record.emotion_prompts.get(LISTENING_PROMPT_NAME)
            or f"{record.base_prompt}, listening attentively")


class CharacterCache:
    """Character conditioning per (character_id, revision, width, height), prepared once, LRU-bounded."""

    def __init__(self, pipeline: Any, capacity: int = 64):
        self.pipeline = pipeline
        self.capacity = capacity
        self._cache: collections.OrderedDict[tuple[str, int, int, int], Any] = collections.OrderedDict()

    def get(self, record: CharacterRecord, png: bytes, width: int, height: int) -> Any:
        """The conditioning of ``record`` (its reference image ``png``) at a size; prepared on first use."""
        character_id = record.character_id
        key = (character_id, record.revision, width, height)
        cond = self._cache.get(key)
        if cond is None:
            try:
                cond = self.pipeline.prepare_character(record, png, width, height)
            except ValueError as err:  # the generator's GeneratorError: this character cannot be used
                raise RequestError("INVALID_ARGUMENT", str(err)) from None
            # Older revisions of this character are never used again; other sizes of this one still are.
            for stale in [k for k in self._cache if k[0] == character_id and k[1] != record.revision]:
                del self._cache[stale]
            self._cache[key] = cond
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return cond

    def drop(self, character_id: str) -> int:
        stale = [k for k in self._cache if k[0] == character_id]
        for k in stale:
            del self._cache[k]
        return len(stale)


class Worker:
    """The engine: turns link messages into scheduler/pool calls and scheduled blocks into FrameBlocks."""

    def __init__(
        self,
        config: WorkerConfig,
        pipeline: Any,
        codec: MemoryCodec,
        link: Any,
        *,
        telemetry: DeviceTelemetry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.pipeline = pipeline
        self.link = link
        self.telemetry = telemetry or DeviceTelemetry()
        data_dir = DataDir(config.data_dir).ensure()
        self.pool = MemoryPool(pipeline, data_dir, codec, config.resident_budget_bytes, config.max_live_sessions,
                               max_stored_npcs=config.max_stored_npcs, max_stored_bytes=config.max_stored_npc_bytes,
                               snapshot_interval_s=config.npc_snapshot_interval_s, clock=clock)
        self._interrupt_log = RateLimitedLog(log, INTERRUPT_LOG_INTERVAL_S, clock=clock)
        self.characters = CharacterCache(pipeline, config.character_cache_size)
        self.scheduler = Scheduler(pipeline, config.scheduler, clock)
        self._stopping = False
        self.gateway_gone = False
        self._handlers: dict[str, Callable[[worker_pb2.ToWorker, list[memoryview]], None]] = {
            "open_npc": self._open_npc, "push_audio": self._push_audio, "control": self._control,
            "close_npc": self._close_npc, "npc_query": self._npc_query, "reset_npc": self._reset_npc,
            "delete_npc": self._delete_npc, "worker_info_query": self._worker_info,
            "drop_character": self._drop_character, "shutdown": self._shutdown, "ping": self._ping,
        }

    # -- loop -------------------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Leave the loop after the current block; memories are saved on the way out."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def run(self) -> int:
        self.telemetry.samples()  # start NVML now, not inside the first session's first block
        log.info("worker ready: model %s on %s (pid %d)", self.pipeline.config.name, self.pipeline.device,
                 os.getpid())
        last_parent_check = 0.0
        try:
            while not self._stopping:
                try:
                    self.step()
                except Exception:
                    # Requests and blocks handle their own errors; this is a bug around them. Keep serving
                    # the other sessions rather than lose every NPC's unsaved progress.
                    log.exception("worker loop step failed")
                    time.sleep(0.05)
                now = time.monotonic()
                if self.config.parent_pid and now - last_parent_check > 1.0:
                    last_parent_check = now
                    if os.getppid() != self.config.parent_pid:
                        log.warning("the gateway (pid %d) is gone; saving memories and exiting", self.config.parent_pid)
                        self.gateway_gone = True
                        self._stopping = True
        except KeyboardInterrupt:
            log.info("interrupted; saving memories and exiting")
        finally:
            self.save_everything()
        return 0

    def step(self) -> None:
        """One turn of the loop: take every waiting message, then run at most one block."""
        wait_s = self.scheduler.seconds_until_ready()
        timeout_ms = self.config.idle_poll_ms if wait_s is None else min(self.config.idle_poll_ms,
                                                                        math.ceil(wait_s * 1000))
        for msg, payloads in self.link.poll(timeout_ms):
            self.handle(msg, payloads)
            if self._stopping:
                return
        self.run_next_block()
        self.pool.snapshot_due()  # between blocks; the file is written in the background

    def save_everything(self) -> None:
        """Park every live session's memory and write every changed memory (shutdown, lost gateway)."""
        parked = 0
        for session_id in list(self.scheduler.sessions):
            state = self.scheduler.close_session(session_id)
            self.pool.release(state.npc_id)
            parked += 1
        written = self.pool.save_all()
        if parked or written:
            log.info("saved NPC memories: %d live, %d parked", parked, written)

    # -- requests ---------------------------------------------------------------------------------------------

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
        except Exception as err:
            log.exception("request %s failed", body)
            self._fail(msg, body, "INTERNAL", f"{body} failed in the worker: {type(err).__name__}: {err}")

    def _fail(self, msg: worker_pb2.ToWorker, body: str, code: str, message: str) -> None:
        session_id = getattr(getattr(msg, body), "session_id", "") if body else ""
        error = worker_pb2.FromWorker(error=worker_pb2.WorkerError(session_id=session_id, code=code, message=message))
        if msg.request_id:
            self.link.reply(msg.request_id, error)
        elif session_id:
            self.link.emit(error)
        else:
            log.warning("one-way %s refused: %s %s", body or "message", code, message)

    def _answer(self, msg: worker_pb2.ToWorker, reply: worker_pb2.FromWorker | None = None) -> None:
        """Reply to requests; one-way messages (request_id 0) get no answer unless ``reply`` is an event."""
        if msg.request_id:
            self.link.reply(msg.request_id, reply or worker_pb2.FromWorker(ack=worker_pb2.Ack()))

    def _session(self, session_id: str) -> SessionState:
        try:
            return self.scheduler.get(session_id)
        except KeyError:
            raise RequestError("NOT_FOUND", f"no open session {session_id!r} on this worker") from None

    def _open_npc(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        req = msg.open_npc
        if not req.session_id:
            raise RequestError("INVALID_ARGUMENT", "open_npc.session_id is empty")
        if req.session_id in self.scheduler.sessions:
            raise RequestError("ALREADY_EXISTS", f"session {req.session_id!r} is already open")
        if not req.HasField("character") or len(payloads) != 1:
            raise RequestError("INVALID_ARGUMENT", "open_npc needs the NPC's character and its reference image")
        record = record_from_spec(req.character)
        memory, resumed = self.pool.acquire(
            req.npc_id, req.session_id, character_id=req.character_id, width=req.width, height=req.height,
            fps=req.fps, seed=req.seed, reset=req.reset_memory, resume_token=req.resume_token)
        try:
            if record.character_id != memory.character_id:
                raise RequestError("INVALID_ARGUMENT", f"character_id: NPC {req.npc_id!r} looks like "
                                                       f"{memory.character_id!r}, not {record.character_id!r}")
            conditioning = self.characters.get(record, bytes(payloads[0]), memory.width, memory.height)
            self.scheduler.open_session(req.session_id, req.npc_id, memory, conditioning,
                                        listening_prompt=listening_prompt(record))
        except BaseException:
            self.pool.abandon(req.npc_id)
            raise
        npc = self.pool.query(req.npc_id)[0]
        config = self.pipeline.config
        log.info("session %s: NPC %s %s (%dx%d @ %d fps, block %d)", req.session_id, req.npc_id,
                 "resumed" if resumed else "new", memory.width, memory.height, memory.fps, memory.blocks_generated)
        self._answer(msg, worker_pb2.FromWorker(npc_opened=worker_pb2.NpcOpened(
            session_id=req.session_id, npc=npc, resumed=resumed, first_block_frames=config.frames_per_block(0),
            block_frames=config.frames_per_block(1), start_frame_index=int(memory.frames_generated))))

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
            self.scheduler.push_voice(req.session_id, pcm)
        except VoiceQueueFull as err:
            raise RequestError("RESOURCE_EXHAUSTED", str(err)) from None
        self._answer(msg)

    def _control(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        req = msg.control
        sid = req.session_id
        self._session(sid)
        event = req.WhichOneof("event")
        if event == "emotion_prompt":
            self.scheduler.set_prompt(sid, req.emotion_prompt, req.intensity)
        elif event == "action_prompt":
            self.scheduler.start_action(sid, req.action_prompt)
        elif event == "reset_prompt":
            self.scheduler.set_prompt(sid, None)
        elif event == "listening":
            self.scheduler.set_listening(sid, req.listening)
        elif event == "end_of_utterance":
            for ended in self.scheduler.end_of_utterance(sid):
                self.link.emit(worker_pb2.FromWorker(utterance_done=worker_pb2.UtteranceDone(
                    session_id=sid, timeline_end=ended.timeline_end)))
        elif event == "interrupt":
            played_until = req.played_until if req.HasField("played_until") else None
            result = self.scheduler.interrupt(sid, played_until)
            done = worker_pb2.FromWorker(interrupt_done=worker_pb2.InterruptDone(
                session_id=sid, generated_until=result.generated_until, dropped_samples=result.dropped_samples,
                next_frame_index=result.next_frame_index, replace_from=result.replace_from,
                played_until=result.played_until))
            self._interrupt_log.log(sid, logging.INFO, "session %s: interrupted at sample %d, %d samples dropped",
                                    sid, result.generated_until, result.dropped_samples)
            if msg.request_id:
                self.link.reply(msg.request_id, done)
            else:
                self.link.emit(done)
            return
        else:
            raise RequestError("INVALID_ARGUMENT", "control message without an event")
        self._answer(msg)

    def _close_npc(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        sid = msg.close_npc.session_id
        self._session(sid)
        state = self.scheduler.close_session(sid)
        npc = self.pool.release(state.npc_id)
        log.info("session %s closed: NPC %s parked after %d block(s) this session", sid, state.npc_id, state.blocks)
        self._answer(msg, worker_pb2.FromWorker(npc_closed=worker_pb2.NpcClosed(session_id=sid, npc=npc)))

    def _npc_query(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        req = msg.npc_query
        npcs = self.pool.query(req.npc_id, req.character_id)
        self._answer(msg, worker_pb2.FromWorker(npc_list=worker_pb2.NpcList(npcs=npcs)))

    def _reset_npc(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        npc = self.pool.reset(msg.reset_npc.npc_id)
        self._answer(msg, worker_pb2.FromWorker(npc_list=worker_pb2.NpcList(npcs=[npc])))

    def _delete_npc(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        self.pool.delete(msg.delete_npc.npc_id)
        self._answer(msg)

    def _worker_info(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        self._answer(msg, worker_pb2.FromWorker(worker_info=self.worker_info()))

    def worker_info(self) -> worker_pb2.WorkerInfo:
        p = self.pipeline
        config = p.config
        return worker_pb2.WorkerInfo(
            model_name=config.name, config_json=config.to_json(), random_weights=bool(p.random_weights),
            weights_sha256=p.weights_sha256 or "", parameters=int(p.parameters), device=str(p.device),
            devices=self.telemetry.to_proto(), pid=os.getpid(),
            sizes=[worker_pb2.SizeMemory(width=w, height=h, npc_memory_bytes=int(p.memory_bytes(w, h)))
                   for w, h in config.sizes],
            # The model is trained at one frame rate: its audio features are aligned to it.
            fps=[config.fps], default_width=config.width, default_height=config.height, default_fps=config.fps,
            first_block_frames=config.frames_per_block(0), block_frames=config.frames_per_block(1),
            denoising_steps=config.sampler.num_steps,
        )

    def _drop_character(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        self.characters.drop(msg.drop_character.character_id)
        self._answer(msg)

    def _shutdown(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        log.info("shutdown requested; saving %d live NPC memories", len(self.scheduler.sessions))
        for sid in list(self.scheduler.sessions):
            self.link.emit(worker_pb2.FromWorker(error=worker_pb2.WorkerError(
                session_id=sid, code="UNAVAILABLE", message="the worker is shutting down")))
        self.save_everything()
        self._stopping = True
        self._answer(msg)

    def _ping(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        self._answer(msg, worker_pb2.FromWorker(pong=worker_pb2.Pong(pid=os.getpid())))

    # -- generation -------------------------------------------------------------------------------------------

    def run_next_block(self) -> bool:
        """Generate the block the scheduler picks, if any; True when one ran (or failed)."""
        plan = self.scheduler.next_block()
        if plan is None:
            return False
        state = plan.session
        memory = state.memory
        block_index = int(memory.blocks_generated)
        first_frame = int(memory.frames_generated)
        # Dirty before the block runs: it updates the caches in place, so a block that fails half-way leaves
        # a memory that must never be parked or saved (the NPC goes back to its last snapshot).
        self.pool.mark_updated(state.npc_id)
        started = time.perf_counter()
        try:
            frames = self.pipeline.generate_block(memory, state.conditioning, plan.audio, plan.prompt,
                                                  intensity=plan.intensity)
            frames = self._check_frames(frames, memory)
        except Exception as err:
            log.exception("session %s: block %d of NPC %s failed", state.session_id, block_index, state.npc_id)
            self.fail_session(state, "INTERNAL", f"generating block {block_index} failed: {type(err).__name__}: {err}")
            return True
        compute_s = time.perf_counter() - started
        ended = self.scheduler.complete_block(plan, compute_s)
        self._emit_block(plan, frames, block_index, first_frame, compute_s)
        for utterance in ended:
            self.link.emit(worker_pb2.FromWorker(utterance_done=worker_pb2.UtteranceDone(
                session_id=utterance.session_id, timeline_end=utterance.timeline_end)))
        return True

    def fail_session(self, state: SessionState, code: str, message: str) -> None:
        """End one session on an error: the others carry on; its NPC goes back to its last snapshot."""
        if self.scheduler.sessions.get(state.session_id) is state:
            self.scheduler.close_session(state.session_id)
            self.pool.abandon(state.npc_id)
        self.link.emit(worker_pb2.FromWorker(error=worker_pb2.WorkerError(
            session_id=state.session_id, code=code, message=message)))

    @staticmethod
    def _check_frames(frames: Any, memory: Any) -> np.ndarray:
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 \
                or frames.shape[1:] != (memory.height, memory.width, 3):
            shape = getattr(frames, "shape", None)
            raise RuntimeError(f"the generator returned {type(frames).__name__} {shape}, expected uint8 "
                               f"[T, {memory.height}, {memory.width}, 3]")
        return np.ascontiguousarray(frames)

    def _emit_block(self, plan: BlockPlan, frames: np.ndarray, block_index: int, first_frame: int,
                    compute_s: float) -> None:
        state = plan.session
        block = worker_pb2.FrameBlock(
            session_id=state.session_id, block_index=block_index, first_frame_index=first_frame,
            num_frames=frames.shape[0], width=frames.shape[2], height=frames.shape[1],
            audio_start=plan.audio_start, audio_end=plan.audio_end, speaking=plan.speaking,
            compute_ms=compute_s * 1000.0, audio_queued_samples=state.queued_samples,
            voice_samples=plan.voice_samples, gap_samples=plan.gap_samples,
            devices=self.telemetry.to_proto(),
        )
        pcm = np.ascontiguousarray(plan.consumed_audio)
        self.link.emit(worker_pb2.FromWorker(frame_block=block), [frames, pcm])


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------


def build_pipeline(model_config: str, weights: str | None, device: str) -> tuple[Any, MemoryCodec]:
    """The generator and its snapshot codec (the numpy stand-in when AVATAR_FAKE_PIPELINE=1, tests only)."""
    if os.environ.get(FAKE_PIPELINE_ENV) == "1":
        from .fake_pipeline import FakePipeline

        log.warning("%s=1: running the TEST-ONLY fake pipeline, not the generator", FAKE_PIPELINE_ENV)
        return FakePipeline.from_config(model_config, weights, device), FakePipeline.codec
    from avatar_backend.generator.memory import NpcMemory, read_memory_header
    from avatar_backend.generator.pipeline import LiveActPipeline, shipped_weights

    if weights is None:
        weights = shipped_weights(model_config)
    elif weights == RANDOM_WEIGHTS:
        weights = None
    pipeline = LiveActPipeline.from_config(model_config, weights=weights, device=device)
    return pipeline, MemoryCodec(load=NpcMemory.load, read_header=read_memory_header)


def parse_args(argv: Sequence[str] | None = None) -> WorkerConfig:
    parser = argparse.ArgumentParser(prog="python -m avatar_backend.worker",
                                     description="LiveAct generator worker (started by the gateway)")
    parser.add_argument("--endpoint", required=True, help="ZeroMQ endpoint the gateway bound (ipc://... or tcp://...)")
    parser.add_argument("--config", default="tiny", help="model config name or JSON file (default: tiny)")
    parser.add_argument("--data-dir", default=None, help="data directory (characters, NPC memories)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--weights", default=None,
                        help="weights file, or 'random' (default: the config's shipped weights, random without them)")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process (the gateway) is gone")
    parser.add_argument("--max-parked-memory-bytes", type=int, default=DEFAULT_MAX_PARKED_MEMORY_BYTES,
                        help="host memory for parked NPC memories; beyond it they stay on disk only")
    parser.add_argument("--max-stored-npcs", type=int, default=DEFAULT_MAX_STORED_NPCS,
                        help="NPCs kept on disk; a new NPC beyond this is refused (0: no limit)")
    parser.add_argument("--max-stored-npc-bytes", type=int, default=DEFAULT_MAX_STORED_NPC_BYTES,
                        help="bytes of NPC memories on disk; a new NPC beyond this is refused (0: no limit)")
    parser.add_argument("--npc-snapshot-interval-s", type=float, default=DEFAULT_NPC_SNAPSHOT_INTERVAL_S,
                        help="save live NPC memories this often, in seconds (0: only when sessions end)")
    parser.add_argument("--voice-jitter-budget-ms", type=int, default=DEFAULT_VOICE_JITTER_BUDGET_MS,
                        help="how long an utterance's voice may stall before silence goes inside it")
    parser.add_argument("--max-live", type=int, default=0, help="live sessions at most (default: no limit)")
    parser.add_argument("--log-level", default=os.environ.get("AVATAR_WORKER_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    return WorkerConfig(
        endpoint=args.endpoint, model_config=args.config,
        data_dir=Path(args.data_dir).expanduser() if args.data_dir else default_data_dir(),
        device=args.device, weights=args.weights, parent_pid=args.parent_pid,
        resident_budget_bytes=args.max_parked_memory_bytes, max_live_sessions=args.max_live,
        max_stored_npcs=args.max_stored_npcs, max_stored_npc_bytes=args.max_stored_npc_bytes,
        npc_snapshot_interval_s=args.npc_snapshot_interval_s,
        scheduler=SchedulerConfig(voice_jitter_budget_s=args.voice_jitter_budget_ms / 1000),
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    # Connect first: the hello tells the gateway this process is up while the model loads.
    link = WorkerLink(config.endpoint)
    linger_ms = 2000  # let the last replies (Shutdown's Ack) leave before exiting
    try:
        try:
            pipeline, codec = build_pipeline(config.model_config, config.weights, config.device)
        except Exception:
            log.exception("could not build the generator (config %s, device %s)", config.model_config, config.device)
            return 2
        worker = Worker(config, pipeline, codec, link)
        # SIGTERM: leave the loop and save every memory (SIGINT does the same through KeyboardInterrupt).
        signal.signal(signal.SIGTERM, lambda *_: worker.request_stop())
        code = worker.run()
        if worker.gateway_gone:
            linger_ms = 0  # nobody is left to read what is still queued
        return code
    finally:
        link.close(linger_ms)
