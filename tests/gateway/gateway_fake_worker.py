"""An in-process stand-in for the worker link and the worker behind it.

It implements the methods of worker.link.GatewayLink that the gateway uses, answers the worker requests the
way worker.proto describes, and generates FrameBlocks of small RGB frames on a timer, so the gateway's
state machine can be tested without ZeroMQ, a subprocess or a model.

Frame k of an NPC's life is filled with the byte value ``k % 256``, so a test can tell which frames arrived.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from avatar_backend.generator.config import TINY
from avatar_backend.proto_gen import worker_pb2
from avatar_backend.worker.link import WorkerLost, WorkerRequestError, WorkerUnavailableError

TIMELINE_RATE = 16000


@dataclass
class FakeNpc:
    state: worker_pb2.NpcState


@dataclass
class FakeSession:
    session_id: str
    npc_id: str
    width: int
    height: int
    fps: int
    audio: list[np.ndarray] = field(default_factory=list)
    audio_samples_received: int = 0
    timeline: int = 0
    utterance_open: bool = False
    controls: list[worker_pb2.Control] = field(default_factory=list)
    block_times: list[float] = field(default_factory=list)
    task: asyncio.Task | None = None

    def queued_samples(self) -> int:
        return sum(a.size for a in self.audio)

    def take_audio(self, count: int) -> np.ndarray:
        out = np.zeros(count, dtype=np.float32)
        filled = 0
        while self.audio and filled < count:
            chunk = self.audio[0]
            take = min(chunk.size, count - filled)
            out[filled:filled + take] = chunk[:take]
            filled += take
            if take == chunk.size:
                self.audio.pop(0)
            else:
                self.audio[0] = chunk[take:]
        return out


class FakeWorkerLink:
    """GatewayLink's interface with a fake worker behind it."""

    def __init__(self, *, block_interval_s: float = 0.05, random_weights: bool = True):
        self.config = TINY
        self.block_interval_s = block_interval_s
        self.gap_samples_per_block = 0      # silence the fake reports inside an utterance, per block
        self.random_weights = random_weights
        self.connected = True
        self.npcs: dict[str, FakeNpc] = {}
        # NPCs whose snapshot the worker cannot read: not listed, refused on reset, deletable.
        self.unreadable: set[str] = set()
        self.sessions: dict[str, FakeSession] = {}
        self.queues: dict[str, asyncio.Queue] = {}
        self.requests: list[worker_pb2.ToWorker] = []
        self.closed_sessions: list[str] = []
        self.sent_bodies: list[str] = []

    # -- GatewayLink interface -------------------------------------------------------------------------------

    def subscribe(self, session_id: str) -> asyncio.Queue:
        return self.queues.setdefault(session_id, asyncio.Queue())

    def unsubscribe(self, session_id: str) -> None:
        self.queues.pop(session_id, None)

    def send(self, msg: worker_pb2.ToWorker, payloads=()) -> None:
        if not self.connected:
            raise WorkerUnavailableError("no worker is connected")
        body = msg.WhichOneof("body")
        self.sent_bodies.append(body)
        if body == "push_audio":
            session = self.sessions.get(msg.push_audio.session_id)
            if session is not None:
                pcm = np.frombuffer(payloads[0], dtype=np.float32).copy()
                assert pcm.size == msg.push_audio.num_samples
                session.audio.append(pcm)
                session.audio_samples_received += pcm.size
                session.utterance_open = True
        elif body == "control":
            session = self.sessions.get(msg.control.session_id)
            if session is not None:
                session.controls.append(msg.control)
                if msg.control.WhichOneof("event") == "interrupt":
                    played_until = msg.control.played_until if msg.control.HasField("played_until") else None
                    self._interrupt(session, played_until)

    async def request(self, msg: worker_pb2.ToWorker, payloads=(), timeout: float | None = 10.0):
        if not self.connected:
            raise WorkerUnavailableError("no worker is connected")
        self.requests.append(msg)
        await asyncio.sleep(0)
        body = msg.WhichOneof("body")
        reply = getattr(self, f"_on_{body}")(getattr(msg, body))
        reply.request_id = msg.request_id
        return reply, []

    # -- test controls ---------------------------------------------------------------------------------------

    def kill(self, reason: str) -> None:
        """The worker died: every session queue gets WorkerLost; NPCs stay (they were saved)."""
        self.connected = False
        for session in self.sessions.values():
            if session.task is not None:
                session.task.cancel()
            self.npcs[session.npc_id].state.live = False
        self.sessions.clear()
        queues, self.queues = self.queues, {}
        for queue in queues.values():
            queue.put_nowait(WorkerLost(reason))

    def restart(self) -> None:
        self.connected = True

    def requests_of(self, body: str) -> list:
        return [getattr(r, body) for r in self.requests if r.WhichOneof("body") == body]

    def session_of(self, npc_id: str) -> FakeSession | None:
        return next((s for s in self.sessions.values() if s.npc_id == npc_id), None)

    # -- requests --------------------------------------------------------------------------------------------

    def _on_worker_info_query(self, _query) -> worker_pb2.FromWorker:
        sizes = [worker_pb2.SizeMemory(width=w, height=h, npc_memory_bytes=w * h * 100) for w, h in self.config.sizes]
        return worker_pb2.FromWorker(worker_info=worker_pb2.WorkerInfo(
            model_name=self.config.name, config_json=self.config.to_json(), random_weights=self.random_weights,
            parameters=12345, device="cpu", sizes=sizes, pid=4242, fps=[self.config.fps],
            default_width=self.config.width, default_height=self.config.height, default_fps=self.config.fps,
            first_block_frames=self.config.frames_per_block(0), block_frames=self.config.frames_per_block(1),
            denoising_steps=self.config.sampler.num_steps,
        ))

    def _on_ping(self, _ping) -> worker_pb2.FromWorker:
        return worker_pb2.FromWorker(pong=worker_pb2.Pong(pid=4242))

    def _on_open_npc(self, open_npc: worker_pb2.OpenNpc) -> worker_pb2.FromWorker:
        npc = self.npcs.get(open_npc.npc_id)
        if npc is not None and npc.state.live:
            raise WorkerRequestError("ABORTED", f"NPC {open_npc.npc_id} is live")
        if npc is None:
            if not open_npc.character_id:
                raise WorkerRequestError("INVALID_ARGUMENT", "character_id: required for a new NPC")
            # 0 x 0: the model's default for a new NPC.
            width, height = (open_npc.width, open_npc.height) if open_npc.width else (
                self.config.width, self.config.height)
            npc = self.npcs[open_npc.npc_id] = FakeNpc(worker_pb2.NpcState(
                npc_id=open_npc.npc_id, character_id=open_npc.character_id, memory_bytes=1000,
                width=width, height=height, resume_token="t0"))
        elif open_npc.character_id and open_npc.character_id != npc.state.character_id:
            raise WorkerRequestError("INVALID_ARGUMENT", f"character_id: the NPC is a {npc.state.character_id}")
        elif open_npc.width and (open_npc.width, open_npc.height) != (npc.state.width, npc.state.height):
            raise WorkerRequestError("INVALID_ARGUMENT", "video size: the memory was made for another size")
        if open_npc.resume_token and open_npc.resume_token != npc.state.resume_token:
            raise WorkerRequestError("FAILED_PRECONDITION", "resume_token: the memory changed")
        resumed = npc.state.blocks_generated > 0 and not open_npc.reset_memory
        if open_npc.reset_memory:
            self._reset(npc)
        npc.state.live = True
        session = FakeSession(open_npc.session_id, open_npc.npc_id, npc.state.width, npc.state.height,
                              open_npc.fps or self.config.fps)
        self.sessions[session.session_id] = session
        session.task = asyncio.get_running_loop().create_task(self._generate(session, npc))
        state = worker_pb2.NpcState()
        state.CopyFrom(npc.state)
        return worker_pb2.FromWorker(npc_opened=worker_pb2.NpcOpened(
            session_id=open_npc.session_id, npc=state, resumed=resumed,
            first_block_frames=self.config.frames_per_block(0), block_frames=self.config.frames_per_block(1),
            start_frame_index=npc.state.frames_generated,
        ))

    def _on_close_npc(self, close: worker_pb2.CloseNpc) -> worker_pb2.FromWorker:
        session = self.sessions.pop(close.session_id, None)
        if session is None:
            raise WorkerRequestError("NOT_FOUND", f"no session {close.session_id}")
        if session.task is not None:
            session.task.cancel()
        npc = self.npcs[session.npc_id]
        npc.state.live = False
        self.closed_sessions.append(close.session_id)
        return worker_pb2.FromWorker(npc_closed=worker_pb2.NpcClosed(session_id=close.session_id, npc=npc.state))

    def _on_npc_query(self, query: worker_pb2.NpcQuery) -> worker_pb2.FromWorker:
        npcs = [n.state for n in self.npcs.values()
                if (not query.npc_id or n.state.npc_id == query.npc_id)
                and (not query.character_id or n.state.character_id == query.character_id)]
        return worker_pb2.FromWorker(npc_list=worker_pb2.NpcList(npcs=npcs))

    def _on_reset_npc(self, reset: worker_pb2.ResetNpc) -> worker_pb2.FromWorker:
        if reset.npc_id in self.unreadable:
            raise WorkerRequestError("DATA_LOSS", f"the memory snapshot of NPC {reset.npc_id} is unreadable")
        npc = self._existing_idle(reset.npc_id)
        self._reset(npc)
        return worker_pb2.FromWorker(npc_list=worker_pb2.NpcList(npcs=[npc.state]))

    def _on_delete_npc(self, delete: worker_pb2.DeleteNpc) -> worker_pb2.FromWorker:
        if delete.npc_id in self.unreadable:
            self.unreadable.discard(delete.npc_id)
            return worker_pb2.FromWorker(ack=worker_pb2.Ack())
        self._existing_idle(delete.npc_id)
        del self.npcs[delete.npc_id]
        return worker_pb2.FromWorker(ack=worker_pb2.Ack())

    def _on_drop_character(self, _drop) -> worker_pb2.FromWorker:
        return worker_pb2.FromWorker(ack=worker_pb2.Ack())

    def _on_shutdown(self, _shutdown) -> worker_pb2.FromWorker:
        return worker_pb2.FromWorker(ack=worker_pb2.Ack())

    def _existing_idle(self, npc_id: str) -> FakeNpc:
        npc = self.npcs.get(npc_id)
        if npc is None:
            raise WorkerRequestError("NOT_FOUND", f"no NPC {npc_id}")
        if npc.state.live:
            raise WorkerRequestError("ABORTED", f"NPC {npc_id} is live")
        return npc

    @staticmethod
    def _reset(npc: FakeNpc) -> None:
        npc.state.blocks_generated = 0
        npc.state.frames_generated = 0
        npc.state.resume_token = "t-reset"

    # -- generation ------------------------------------------------------------------------------------------

    async def _generate(self, session: FakeSession, npc: FakeNpc) -> None:
        state = npc.state
        while True:
            await asyncio.sleep(self.block_interval_s)
            started = time.perf_counter()
            block_index = state.blocks_generated
            num_frames = self.config.frames_per_block(min(block_index, 1))
            first = state.frames_generated
            values = (np.arange(first, first + num_frames) % 256).astype(np.uint8)
            frames = np.broadcast_to(values[:, None, None, None],
                                     (num_frames, session.height, session.width, 3)).copy()
            span = num_frames * TIMELINE_RATE // session.fps
            voice_samples = min(session.queued_samples(), span)
            pcm = session.take_audio(span)
            block = worker_pb2.FrameBlock(
                session_id=session.session_id, block_index=block_index, first_frame_index=first,
                num_frames=num_frames, width=session.width, height=session.height,
                audio_start=session.timeline, audio_end=session.timeline + span, speaking=voice_samples > 0,
                voice_samples=voice_samples,
                compute_ms=(time.perf_counter() - started) * 1000, audio_queued_samples=session.queued_samples(),
                devices=[worker_pb2.DeviceTelemetry(index=0, name="Fake GPU", memory_total_bytes=1 << 30)],
                gap_samples=self.gap_samples_per_block,
            )
            session.timeline += span
            state.blocks_generated += 1
            state.frames_generated += num_frames
            state.resume_token = f"t{state.blocks_generated}"
            session.block_times.append(time.monotonic())
            queue = self.queues.get(session.session_id)
            if queue is None:
                continue
            # As the real link delivers them: flat memoryviews over the received bytes.
            queue.put_nowait((worker_pb2.FromWorker(frame_block=block),
                              [memoryview(frames.tobytes()), memoryview(pcm.tobytes())]))
            if session.utterance_open and session.queued_samples() == 0 and any(
                    c.WhichOneof("event") == "end_of_utterance" for c in session.controls):
                session.utterance_open = False
                queue.put_nowait((worker_pb2.FromWorker(utterance_done=worker_pb2.UtteranceDone(
                    session_id=session.session_id, timeline_end=session.timeline)), []))

    def _interrupt(self, session: FakeSession, played_until: int | None) -> None:
        dropped = session.queued_samples()
        session.audio.clear()
        generated_until = session.timeline
        if played_until is not None:
            session.timeline = min(played_until, generated_until)  # the real scheduler also keeps a floor
        queue = self.queues.get(session.session_id)
        if queue is not None:
            state = self.npcs[session.npc_id].state
            queue.put_nowait((worker_pb2.FromWorker(interrupt_done=worker_pb2.InterruptDone(
                session_id=session.session_id, generated_until=generated_until, dropped_samples=dropped,
                next_frame_index=state.frames_generated, replace_from=session.timeline,
                played_until=session.timeline)), []))
