"""The worker's engine core: one loop that takes requests, then schedules, executes and updates a batch.

    step():  poll the link -> RequestHandler  (sessions, voice, controls, NPC management)
             schedule:  Scheduler.next_blocks()      which NPCs' blocks run now, together
             execute:   Executor.execute(inputs)     the generator, on one rank or several
             update:    Scheduler.complete_blocks()  timelines advance; FrameBlocks and UtteranceDone go out

One thread: the link is read between batches (without blocking while a batch is ready to run). Nothing a
session does can stop the loop: a batch that fails is retried NPC by NPC (a failed batch leaves its memories
as they were), and an NPC whose block fails alone ends its session with a WorkerError (INTERNAL) while the
others carry on; its memory goes back to its last snapshot.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from avatar_backend.generator.runner import BlockInput
from avatar_backend.proto_gen import worker_pb2
from avatar_backend.store import DataDir

from .characters import CharacterCache
from .config import WorkerConfig
from .executor import Executor, ExecutorLost
from .memory_pool import MemoryCodec, MemoryPool
from .requests import RequestHandler
from .scheduler import BlockPlan, Scheduler, SessionState
from .telemetry import DeviceTelemetry

__all__ = ["Engine"]

log = logging.getLogger("avatar_backend.worker")

# Rounds of reading the link in one turn of the loop before a batch runs.
MAX_POLLS_PER_STEP = 4


class Engine:
    """The worker: link in, scheduler and memory pool as state, executor for the blocks, FrameBlocks out."""

    def __init__(
        self,
        config: WorkerConfig,
        executor: Executor,
        codec: MemoryCodec,
        link: Any,
        *,
        telemetry: DeviceTelemetry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.executor = executor
        self.runner = executor.runner
        self.link = link
        self.clock = clock
        self.telemetry = telemetry or DeviceTelemetry()
        data_dir = DataDir(config.data_dir).ensure()
        self.pool = MemoryPool(self.runner, data_dir, codec, config.resident_budget_bytes, config.max_live_sessions,
                               max_stored_npcs=config.max_stored_npcs, max_stored_bytes=config.max_stored_npc_bytes,
                               snapshot_interval_s=config.npc_snapshot_interval_s, clock=clock)
        self.characters = CharacterCache(self.runner, config.character_cache_size)
        self.scheduler = Scheduler(self.runner, config.scheduler, clock)
        self.requests = RequestHandler(self)
        self._stopping = False
        self._aborted = False
        self.gateway_gone = False
        self.executor_lost = ""                    # why the executor's other ranks are gone ("" while they are not)

    # -- loop -------------------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Leave the loop after the current batch; memories are saved on the way out."""
        self._stopping = True

    def abort(self) -> None:
        """Leave the loop after the current batch as a killed process would: nothing saved, nothing more sent
        (safe to call from another thread)."""
        self._aborted = True
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def run(self) -> int:
        """The loop, until asked to stop; 0, or 3 when the executor lost a rank (the worker must restart)."""
        self.telemetry.samples()  # start NVML now, not inside the first session's first block
        log.info("worker ready: model %s on %s (pid %d)", self.runner.config.name, self.runner.device, os.getpid())
        last_parent_check = 0.0
        try:
            while not self._stopping:
                try:
                    self.step()
                except ExecutorLost as err:
                    self._lose_executor(str(err))
                    break
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
            try:
                if not self._aborted:
                    self.save_everything()
            except ExecutorLost as err:  # a rank went while live memories were collected: keep the parked ones
                self._lose_executor(str(err))
                self.pool.save_all()
            finally:
                self.executor.shutdown()
        return 3 if self.executor_lost else 0

    def _lose_executor(self, reason: str) -> None:
        """A rank is gone: live memories (split over the ranks) are lost since their last snapshots; parked
        ones are saved on the way out. The gateway restarts the worker."""
        self.executor_lost = reason
        log.error("the worker lost a rank (%s); exiting so that it is restarted", reason)
        self.executor.lost()
        for session_id in list(self.scheduler.sessions):
            self.scheduler.close_session(session_id)
            self.link.emit(worker_pb2.FromWorker(error=worker_pb2.WorkerError(
                session_id=session_id, code="UNAVAILABLE", message=f"the generator lost a device: {reason}")))
        dropped = self.pool.drop_live()
        if dropped:
            log.error("NPCs back at their last snapshots: %s", ", ".join(dropped))

    def step(self) -> None:
        """One turn of the loop: take every waiting message (and what comes in while they are handled, up to
        ``MAX_POLLS_PER_STEP`` reads), then run at most one batch."""
        wait_s = self.scheduler.seconds_until_ready()
        timeout_ms = self.config.idle_poll_ms if wait_s is None else min(self.config.idle_poll_ms,
                                                                        math.ceil(wait_s * 1000))
        received = self.link.poll(timeout_ms)
        for round_ in range(1, MAX_POLLS_PER_STEP + 1):
            for msg, payloads in received:
                self.handle(msg, payloads)
                if self._stopping:
                    return
            if not received or round_ == MAX_POLLS_PER_STEP:
                break
            # What came in while those were handled (opening an NPC takes a while) joins this turn: a voice or an
            # interrupt sent right behind a request does not wait a whole batch. Bounded, so that input cannot
            # starve the generator.
            received = self.link.poll(0)
        self.executor.check()
        self.run_next_batch()
        self._close_finished_sessions()
        self.pool.snapshot_due()  # between batches; the file is written in the background

    def handle(self, msg: worker_pb2.ToWorker, payloads: list[memoryview]) -> None:
        self.requests.handle(msg, payloads)

    def _close_finished_sessions(self) -> None:
        """Sessions closing once their voice is on video: close those whose voice is all generated."""
        for state in list(self.scheduler.sessions.values()):
            if state.closing_request is None or state.queued_samples:
                continue
            try:
                reply = self.requests.close_session(state.session_id)
            except ExecutorLost:
                raise
            except Exception as err:
                log.exception("session %s: closing NPC %s failed", state.session_id, state.npc_id)
                reply = worker_pb2.FromWorker(error=worker_pb2.WorkerError(
                    session_id=state.session_id, code="INTERNAL", message=f"closing the NPC failed: {err}"))
            if state.closing_request:
                self.link.reply(state.closing_request, reply)

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

    def worker_info(self) -> worker_pb2.WorkerInfo:
        runner = self.runner
        config = runner.config
        return worker_pb2.WorkerInfo(
            model_name=config.name, config_json=config.to_json(), random_weights=bool(runner.random_weights),
            weights_sha256=runner.weights_sha256 or "", parameters=int(runner.parameters), device=str(runner.device),
            devices=self.telemetry.to_proto(), pid=os.getpid(),
            sizes=[worker_pb2.SizeMemory(width=w, height=h, npc_memory_bytes=int(runner.memory_bytes(w, h)))
                   for w, h in config.sizes],
            # The model is trained at one frame rate: its audio features are aligned to it.
            fps=[config.fps], default_width=config.width, default_height=config.height, default_fps=config.fps,
            first_block_frames=config.frames_per_block(0), block_frames=config.frames_per_block(1),
            denoising_steps=config.sampler.num_steps, prompt_guidance=config.sampler.prompt_guidance,
            prompt_onset_latents=config.sampler.prompt_onset_latents,
        )

    # -- schedule -> execute -> update -------------------------------------------------------------------------

    def run_next_batch(self) -> int:
        """Generate the batch the scheduler picks, if any; the number of NPCs it held (0: nothing was due)."""
        plans = self.scheduler.next_blocks()
        if not plans:
            return 0
        try:
            self._run(plans)
        except ExecutorLost:
            raise
        except _Generated as failure:
            # The memories moved on: running the batch again would make the next blocks from this audio.
            for plan in plans:
                self._fail_block(plan, failure.error)
        except Exception as err:
            self.executor.check()  # a rank that died mid-batch: not the sessions' failure
            if len(plans) == 1:
                self._fail_block(plans[0], err)
            else:
                # A batch that fails leaves its memories as they were: each NPC again alone.
                log.exception("a batch of %d NPCs failed; running them one by one", len(plans))
                for plan in plans:
                    try:
                        self._run([plan])
                    except ExecutorLost:
                        raise
                    except Exception as own_err:
                        self._fail_block(plan, own_err.error if isinstance(own_err, _Generated) else own_err)
        return len(plans)

    def _run(self, plans: list[BlockPlan]) -> None:
        positions = [(int(p.session.memory.blocks_generated), int(p.session.memory.frames_generated)) for p in plans]
        # Dirty before the block runs: a block updates its NPC's caches in place, so one that fails half-way leaves
        # a memory that must never be parked or saved (the NPC goes back to its last snapshot).
        for plan in plans:
            self.pool.mark_updated(plan.session.npc_id)
        started = time.perf_counter()
        outputs = self.executor.execute([
            BlockInput(p.session.memory, p.session.conditioning, p.audio, p.prompt, p.intensity,
                       p.session.prompt_guidance) for p in plans])
        if self._aborted:
            return
        try:
            self._deliver(plans, outputs, positions, time.perf_counter() - started)
        except ExecutorLost:
            raise
        except Exception as err:
            raise _Generated(err) from err

    def _deliver(self, plans: list[BlockPlan], outputs: list, positions: list[tuple[int, int]],
                 compute_s: float) -> None:
        """The update step: timelines advance, FrameBlocks and UtteranceDone go out."""
        frames = [self._check_frames(out, p.session.memory) for out, p in zip(outputs, plans, strict=True)]
        ended = self.scheduler.complete_blocks(plans, compute_s)
        for plan, block_frames, (block_index, first_frame) in zip(plans, frames, positions):
            self._emit_block(plan, block_frames, block_index, first_frame, compute_s, len(plans))
        for utterance in ended:
            self.link.emit(worker_pb2.FromWorker(utterance_done=worker_pb2.UtteranceDone(
                session_id=utterance.session_id, timeline_end=utterance.timeline_end)))

    def _fail_block(self, plan: BlockPlan, err: Exception) -> None:
        state = plan.session
        block_index = int(state.memory.blocks_generated)
        log.error("session %s: block %d of NPC %s failed", state.session_id, block_index, state.npc_id,
                  exc_info=err)
        self.fail_session(state, "INTERNAL", f"generating block {block_index} failed: {type(err).__name__}: {err}")

    def fail_session(self, state: SessionState, code: str, message: str) -> None:
        """End one session on an error: the others carry on; its NPC goes back to its last snapshot."""
        error = worker_pb2.FromWorker(error=worker_pb2.WorkerError(session_id=state.session_id, code=code,
                                                                   message=message))
        self.link.emit(error)
        if state.closing_request:  # the CloseNpc that waited for this voice is answered too
            self.link.reply(state.closing_request, error)
        if self.scheduler.sessions.get(state.session_id) is state:
            self.scheduler.close_session(state.session_id)
            self.pool.abandon(state.npc_id)

    @staticmethod
    def _check_frames(frames: Any, memory: Any) -> np.ndarray:
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 \
                or frames.shape[1:] != (memory.height, memory.width, 3):
            shape = getattr(frames, "shape", None)
            raise RuntimeError(f"the generator returned {type(frames).__name__} {shape}, expected uint8 "
                               f"[T, {memory.height}, {memory.width}, 3]")
        return np.ascontiguousarray(frames)

    def _emit_block(self, plan: BlockPlan, frames: np.ndarray, block_index: int, first_frame: int,
                    compute_s: float, batch_size: int) -> None:
        state = plan.session
        block = worker_pb2.FrameBlock(
            session_id=state.session_id, block_index=block_index, first_frame_index=first_frame,
            num_frames=frames.shape[0], width=frames.shape[2], height=frames.shape[1],
            audio_start=plan.audio_start, audio_end=plan.audio_end, speaking=plan.speaking,
            compute_ms=compute_s * 1000.0, audio_queued_samples=state.queued_samples,
            voice_samples=plan.voice_samples, gap_samples=plan.gap_samples,
            devices=self.telemetry.to_proto(), batch_size=batch_size,
            pauses=[worker_pb2.SampleRange(start=start, end=end) for start, end in plan.pauses],
        )
        pcm = np.ascontiguousarray(plan.consumed_audio)
        self.link.emit(worker_pb2.FromWorker(frame_block=block), [frames, pcm])


class _Generated(Exception):
    """The update step of a batch failed after its memories had moved on (the blocks were made)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error
