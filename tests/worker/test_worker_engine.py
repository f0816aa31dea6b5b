"""The worker loop's request handling and block output, with the stand-in generator and a recording link."""

from __future__ import annotations

import numpy as np
import pytest
from stand_in_generator import StandInGenerator
from worker_helpers import BLOCK, BLOCK0, LOOKAHEAD, FakeClock, open_npc

from avatar_backend.proto_gen import worker_pb2 as pb
from avatar_backend.store import CharacterRecord
from avatar_backend.worker.characters import listening_prompt
from avatar_backend.worker.config import WorkerConfig
from avatar_backend.worker.engine import MAX_POLLS_PER_STEP, Engine
from avatar_backend.worker.executor import InProcessExecutor
from avatar_backend.worker.telemetry import DeviceTelemetry


class RecordingLink:
    """Stands in for WorkerLink: messages in, replies and emitted output recorded."""

    def __init__(self):
        self.inbox: list[tuple[pb.ToWorker, list[memoryview]]] = []
        self.replies: dict[int, tuple[pb.FromWorker, list]] = {}
        self.emitted: list[tuple[pb.FromWorker, list]] = []

    def poll(self, timeout_ms: int = 0):
        inbox, self.inbox = self.inbox, []
        return inbox

    def reply(self, request_id, msg, payloads=()):
        msg.request_id = request_id
        self.replies[request_id] = (msg, list(payloads))

    def emit(self, msg, payloads=()):
        self.emitted.append((msg, list(payloads)))

    def take(self, body: str) -> list[tuple[pb.FromWorker, list]]:
        found = [(m, p) for m, p in self.emitted if m.WhichOneof("body") == body]
        self.emitted = [(m, p) for m, p in self.emitted if m.WhichOneof("body") != body]
        return found


class Harness:
    def __init__(self, pipeline, data_dir, clock):
        self.link = RecordingLink()
        self.pipeline = pipeline
        self.data_dir = data_dir
        config = WorkerConfig(endpoint="inproc://unused", data_dir=data_dir.root)
        telemetry = DeviceTelemetry(nvml_loader=_no_nvml)
        self.worker = Engine(config, InProcessExecutor(pipeline), StandInGenerator.codec, self.link, telemetry=telemetry,
                             clock=clock)
        self.next_id = 1

    def request(self, **body) -> pb.FromWorker:
        rid = self.next_id
        self.next_id += 1
        self.worker.handle(pb.ToWorker(request_id=rid, **body), [])
        return self.link.replies.pop(rid)[0]

    def send(self, payloads=(), **body) -> None:
        self.worker.handle(pb.ToWorker(**body), [memoryview(np.ascontiguousarray(p)).cast("B") for p in payloads])

    def open(self, session_id="s1", npc_id="guard", **kw) -> pb.FromWorker:
        """OpenNpc as the gateway sends it: with the character asked for, or the NPC's own."""
        character = kw.get("character_id") or next(
            (n.character_id for n in self.worker.pool.query(npc_id)), "") if "/" not in npc_id else ""
        if not (character and self.data_dir.has_character(character)):
            return self.request(open_npc=pb.OpenNpc(session_id=session_id, npc_id=npc_id, **kw))
        rid = self.next_id
        self.next_id += 1
        message, payloads = open_npc(self.data_dir, character, request_id=rid, session_id=session_id, npc_id=npc_id,
                                     **kw)
        self.worker.handle(message, [memoryview(p) for p in payloads])
        return self.link.replies.pop(rid)[0]

    def push(self, session_id, pcm):
        self.send([pcm], push_audio=pb.PushAudio(session_id=session_id, num_samples=pcm.size))

    def blocks(self, count_max=100) -> int:
        """Run the batches that are due, up to ``count_max`` NPC blocks; how many NPC blocks ran."""
        ran = 0
        while ran < count_max:
            batch = self.worker.run_next_batch()
            if not batch:
                break
            ran += batch
        return ran


def _no_nvml():
    raise ImportError("no NVML in tests")


@pytest.fixture
def harness(pipeline, data_dir, clock):
    return Harness(pipeline, data_dir, clock)


def test_open_generate_and_close(harness, data_dir):
    reply = harness.open(character_id="villager")
    opened = reply.npc_opened
    assert opened.session_id == "s1" and not opened.resumed
    assert (opened.first_block_frames, opened.block_frames, opened.start_frame_index) == (21, 32, 0)
    assert opened.npc.live and opened.npc.width == 64 and opened.npc.character_id == "villager"

    pcm = np.full(BLOCK0 + LOOKAHEAD + 100, 0.3, np.float32)
    harness.push("s1", pcm)
    assert harness.blocks(1) == 1
    [(block, payloads)] = harness.link.take("frame_block")
    fb = block.frame_block
    assert (fb.session_id, fb.block_index, fb.first_frame_index, fb.num_frames) == ("s1", 0, 0, 21)
    assert (fb.width, fb.height, fb.audio_start, fb.audio_end) == (64, 64, 0, BLOCK0)
    assert fb.speaking and fb.audio_queued_samples == LOOKAHEAD + 100 and fb.compute_ms >= 0
    frames, audio = payloads
    assert frames.dtype == np.uint8 and frames.shape == (21, 64, 64, 3) and frames.flags["C_CONTIGUOUS"]
    assert audio.dtype == np.float32 and audio.shape == (BLOCK0,) and np.all(audio == np.float32(0.3))

    closed = harness.request(close_npc=pb.CloseNpc(session_id="s1")).npc_closed
    assert not closed.npc.live and closed.npc.blocks_generated == 1
    assert data_dir.npc_memory_path("guard").is_file()
    again = harness.open("s2").npc_opened
    assert again.resumed and again.start_frame_index == 21 and again.npc.resume_token == closed.npc.resume_token


def test_request_errors_carry_grpc_codes(harness):
    def code(reply):
        assert reply.WhichOneof("body") == "error"
        return reply.error.code

    assert code(harness.open(character_id="nobody")) == "INVALID_ARGUMENT"
    assert harness.worker.pool.live_ids == []          # the failed open released the NPC
    assert code(harness.open(npc_id="bad/id", character_id="villager")) == "INVALID_ARGUMENT"
    for factor in (0.5, float("nan"), float("inf")):
        assert code(harness.open(character_id="villager", prompt_guidance=factor)) == "INVALID_ARGUMENT"
    assert harness.worker.pool.live_ids == []
    assert harness.open(character_id="villager").WhichOneof("body") == "npc_opened"
    assert code(harness.open("s2", character_id="villager")) == "ABORTED"
    assert code(harness.open("s1", npc_id="other", character_id="villager")) == "ALREADY_EXISTS"
    assert code(harness.request(reset_npc=pb.ResetNpc(npc_id="guard"))) == "ABORTED"
    assert code(harness.request(delete_npc=pb.DeleteNpc(npc_id="ghost"))) == "NOT_FOUND"
    assert code(harness.request(close_npc=pb.CloseNpc(session_id="nope"))) == "NOT_FOUND"
    harness.request(close_npc=pb.CloseNpc(session_id="s1"))
    assert code(harness.open("s3", resume_token="stale")) == "FAILED_PRECONDITION"
    assert code(harness.request()) == "INVALID_ARGUMENT"


def test_one_way_errors_go_to_the_session(harness):
    harness.open(character_id="villager")
    harness.send([np.zeros(10, np.float32)], push_audio=pb.PushAudio(session_id="s1", num_samples=11))
    [(err, _)] = harness.link.take("error")
    assert err.request_id == 0 and err.error.session_id == "s1" and err.error.code == "INVALID_ARGUMENT"
    harness.send(control=pb.Control(session_id="s1"))
    assert harness.link.take("error")[0][0].error.code == "INVALID_ARGUMENT"


def test_a_failing_block_ends_only_its_session(harness, pipeline, clock, monkeypatch):
    harness.open("s1", "guard", character_id="villager")
    harness.open("s2", "smith-npc", character_id="smith")
    real = pipeline.generate_block

    def flaky(memory, cond, audio, prompt, *, intensity):
        if memory.npc_id == "guard":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(memory, cond, audio, prompt, intensity=intensity)

    monkeypatch.setattr(pipeline, "generate_block", flaky)
    clock.advance(harness.worker.config.scheduler.start_grace_s)   # both first blocks are due
    assert harness.blocks(4) == 2                     # s1 fails, s2 makes block 0; block 1 is not due yet
    assert pipeline.batch_sizes == [2, 1, 1]          # the batch failed: each NPC again alone
    errors = harness.link.take("error")
    assert [(m.error.session_id, m.error.code) for m, _ in errors] == [("s1", "INTERNAL")]
    assert "out of memory" in errors[0][0].error.message
    assert list(harness.worker.scheduler.sessions) == ["s2"]
    assert {m.frame_block.session_id for m, _ in harness.link.take("frame_block")} == {"s2"}
    assert harness.worker.pool.live_ids == ["smith-npc"]
    # The NPC of the failed session can be opened again.
    monkeypatch.setattr(pipeline, "generate_block", real)
    assert harness.open("s3", "guard", character_id="villager").WhichOneof("body") == "npc_opened"


def test_controls_eou_interrupt_and_prompts(harness, pipeline):
    harness.open(character_id="villager")
    harness.send(control=pb.Control(session_id="s1", emotion_prompt="a happy villager", intensity=0.7))
    harness.push("s1", np.full(20_000, 0.5, np.float32))
    harness.send(control=pb.Control(session_id="s1", end_of_utterance=True))
    harness.blocks(2)
    [(done, _)] = harness.link.take("utterance_done")
    assert done.utterance_done.timeline_end == 20_000
    assert pipeline.prompts == ["a happy villager", "a happy villager"]
    harness.send(control=pb.Control(session_id="s1", reset_prompt=True))
    harness.push("s1", np.full(3 * BLOCK, 0.5, np.float32))
    reply = harness.request(control=pb.Control(session_id="s1", interrupt=True))
    result = reply.interrupt_done
    assert (result.generated_until, result.dropped_samples, result.next_frame_index) == (BLOCK0 + BLOCK, 3 * BLOCK, 53)
    harness.send(control=pb.Control(session_id="s1", interrupt=True))   # one-way: emitted to the session
    assert harness.link.take("interrupt_done")[0][0].interrupt_done.dropped_samples == 0
    ack = harness.request(control=pb.Control(session_id="s1", listening=True))
    assert ack.WhichOneof("body") == "ack" and harness.worker.scheduler.get("s1").listening


def test_queries_info_and_character_cache(harness, pipeline, data_dir):
    harness.open(character_id="villager")
    info = harness.request(worker_info_query=pb.WorkerInfoQuery()).worker_info
    assert info.model_name == "tiny" and info.random_weights and info.devices == [] and info.pid > 0
    assert [(s.width, s.height) for s in info.sizes][:1] == [(128, 128)]
    npcs = harness.request(npc_query=pb.NpcQuery()).npc_list.npcs
    assert [(n.npc_id, n.live) for n in npcs] == [("guard", True)]
    assert harness.request(npc_query=pb.NpcQuery(npc_id="ghost")).npc_list.npcs == []
    harness.request(close_npc=pb.CloseNpc(session_id="s1"))
    assert pipeline.prepared == [("villager", 1, 64, 64)]
    harness.open("s2")
    assert len(pipeline.prepared) == 1                  # cached
    harness.request(close_npc=pb.CloseNpc(session_id="s2"))
    data_dir.write_character(CharacterRecord(character_id="villager", base_prompt="new look", revision=2), b"png2")
    harness.request(drop_character=pb.DropCharacter(character_id="villager"))
    harness.open("s3")
    assert pipeline.prepared[-1] == ("villager", 2, 64, 64)
    reset = harness.request(reset_npc=pb.ResetNpc(npc_id="guard"))
    assert reset.WhichOneof("body") == "error" and reset.error.code == "ABORTED"


def test_shutdown_saves_live_memories(harness, data_dir):
    harness.open(character_id="villager")
    harness.push("s1", np.full(BLOCK0 + BLOCK + LOOKAHEAD, 0.3, np.float32))
    assert harness.blocks(3) == 2
    reply = harness.request(shutdown=pb.Shutdown())
    assert reply.WhichOneof("body") == "ack" and harness.worker.stopping
    [(err, _)] = harness.link.take("error")
    assert err.error.code == "UNAVAILABLE"
    header = StandInGenerator.codec.read_header(data_dir.npc_memory_path("guard"))
    assert header["blocks_generated"] == 2


def test_loop_step_runs_due_blocks_only(harness, clock: FakeClock):
    harness.open(character_id="villager")
    sched = harness.worker.scheduler
    config = harness.worker.config.scheduler
    harness.worker.step()
    assert harness.link.take("frame_block") == []      # block 0 waits the start grace for voice
    assert sched.seconds_until_ready() == pytest.approx(config.start_grace_s)
    clock.advance(config.start_grace_s)
    harness.worker.step()
    [(first, _)] = harness.link.take("frame_block")
    assert first.frame_block.block_index == 0 and not first.frame_block.speaking
    harness.worker.step()
    assert harness.link.take("frame_block") == []      # 1.05 s of video: wait until it is about to run out
    # Just in time: video end - compute estimate - idle margin.
    due = BLOCK0 / 16_000 - sched.compute_estimate_s - config.idle_margin_s
    assert sched.compute_estimate_s > 0
    clock.t = due - 0.01
    harness.worker.step()
    assert harness.link.take("frame_block") == []
    clock.t = due
    harness.worker.step()
    [(second, _)] = harness.link.take("frame_block")
    assert second.frame_block.block_index == 1 and second.frame_block.audio_start == BLOCK0


def test_padding_is_reported_and_intensity_reaches_the_pipeline(harness, pipeline, clock, monkeypatch):
    real = pipeline.generate_block
    seen: list[tuple[str | None, float]] = []

    def spy(memory, cond, audio, prompt, *, intensity):
        seen.append((prompt, intensity))
        return real(memory, cond, audio, prompt, intensity=intensity)

    monkeypatch.setattr(pipeline, "generate_block", spy)
    harness.open(character_id="villager")
    sched = harness.worker.scheduler
    config = harness.worker.config.scheduler
    clock.advance(config.start_grace_s)
    assert harness.blocks() == 1                      # idle block 0
    harness.send(control=pb.Control(session_id="s1", emotion_prompt="a happy villager", intensity=0.7))
    harness.push("s1", np.full(5000, 0.3, np.float32))   # an utterance starts: it waits, the NPC idles
    assert harness.blocks() == 0
    clock.t = sched.get("s1").video_end(16_000) - sched.compute_estimate_s - config.idle_margin_s
    assert harness.blocks() == 1
    harness.push("s1", np.full(BLOCK + LOOKAHEAD, 0.3, np.float32))
    harness.send(control=pb.Control(session_id="s1", action_prompt="waves"))   # no intensity: full
    assert harness.blocks() == 1
    blocks = [m.frame_block for m, _ in harness.link.take("frame_block")]
    assert [(b.block_index, b.speaking, b.voice_samples, b.gap_samples) for b in blocks] == [
        (0, False, 0, 0), (1, False, 0, 0), (2, True, BLOCK, 0)]
    assert blocks[1].audio_end - blocks[1].audio_start == BLOCK
    assert seen == [(None, 1.0), ("a happy villager", pytest.approx(0.7)), ("waves", 1.0)]
    # An action is shown once: the block after it is back to the session's emotion.
    harness.push("s1", np.full(BLOCK, 0.3, np.float32))
    assert harness.blocks() == 1
    assert seen[-1] == ("a happy villager", pytest.approx(0.7))


def test_a_resumed_npc_keeps_its_emotion(harness, pipeline, clock, monkeypatch):
    real = pipeline.generate_block
    seen: list[tuple[str, str | None, float]] = []

    def spy(memory, cond, audio, prompt, *, intensity):
        seen.append((memory.npc_id, prompt, intensity))
        return real(memory, cond, audio, prompt, intensity=intensity)

    monkeypatch.setattr(pipeline, "generate_block", spy)
    harness.open("s1", "guard", character_id="villager")
    harness.send(control=pb.Control(session_id="s1", emotion_prompt="a happy villager", intensity=0.6))
    clock.advance(1.0)
    assert harness.blocks(1) == 1
    harness.request(close_npc=pb.CloseNpc(session_id="s1"))
    harness.open("s2", "guard")
    clock.advance(1.0)
    assert harness.blocks(1) == 1
    assert [(npc, prompt) for npc, prompt, _ in seen] == [("guard", "a happy villager")] * 2
    assert [intensity for *_, intensity in seen] == [pytest.approx(0.6)] * 2


def test_a_resumed_npc_whose_block_fails_goes_back_to_its_snapshot(harness, pipeline, data_dir, clock, monkeypatch):
    # Guards: the engine marks the memory updated BEFORE generating, so a block of a resumed NPC that
    # fails half-way (caches already changed in place) is not parked in RAM by pool.abandon; the next session
    # gets the snapshot on disk from the last good session, not the half-updated memory.
    harness.open("s1", "guard", character_id="villager")
    clock.advance(1.0)
    assert harness.blocks(1) == 1
    closed = harness.request(close_npc=pb.CloseNpc(session_id="s1")).npc_closed
    snapshot = StandInGenerator.codec.load(data_dir.npc_memory_path("guard"), "cpu")
    assert snapshot.blocks_generated == 1 and snapshot.state.any()

    real = pipeline.generate_block
    mutated = []

    def fails_half_way(memory, cond, audio, prompt, *, intensity):
        real(memory, cond, audio, prompt, intensity=intensity)   # the caches change in place...
        mutated.append(memory)
        raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")  # ...then it fails

    monkeypatch.setattr(pipeline, "generate_block", fails_half_way)
    assert harness.open("s2", "guard").npc_opened.resumed
    clock.advance(2.0)
    assert harness.blocks(1) == 1
    assert [m.error.code for m, _ in harness.link.take("error")] == ["INTERNAL"]
    assert mutated and mutated[0].blocks_generated == 2       # the failed block did change the memory

    monkeypatch.setattr(pipeline, "generate_block", real)
    again = harness.open("s3", "guard").npc_opened
    assert again.resumed and again.start_frame_index == 21
    assert again.npc.resume_token == closed.npc.resume_token
    memory = harness.worker.scheduler.get("s3").memory
    assert memory is not mutated[0]
    assert memory.blocks_generated == snapshot.blocks_generated == 1
    assert memory.state.tobytes() == snapshot.state.tobytes()
    assert memory.state.tobytes() != mutated[0].state.tobytes()


def test_repeated_end_of_utterance_reports_one_utterance_done(harness):
    # Guards: a second EndOfUtterance while the voice is still queued emits nothing (it used to emit an
    # UtteranceDone with timeline_end 0 at once); the one UtteranceDone comes with the block that ends it.
    harness.open(character_id="villager")
    harness.push("s1", np.full(10_000, 0.5, np.float32))
    harness.send(control=pb.Control(session_id="s1", end_of_utterance=True))
    harness.send(control=pb.Control(session_id="s1", end_of_utterance=True))
    assert harness.link.take("utterance_done") == []
    assert harness.blocks(1) == 1
    [(done, _)] = harness.link.take("utterance_done")
    assert done.utterance_done.session_id == "s1" and done.utterance_done.timeline_end == 10_000


def test_listening_prompt_of_a_character():
    # Guards: the listening prompt is the character's "listening" action prompt, else its "listening"
    # emotion prompt, else the base prompt with ", listening attentively".
    def record(**prompts):
        return CharacterRecord(character_id="c", base_prompt="a guard", **prompts)

    assert listening_prompt(record()) == "a guard, listening attentively"
    assert listening_prompt(record(emotion_prompts={"listening": "a guard, all ears"})) == "a guard, all ears"
    assert listening_prompt(record(action_prompts={"listening": "a guard, nodding"},
                                   emotion_prompts={"listening": "a guard, all ears"})) == "a guard, nodding"
    assert listening_prompt(record(action_prompts={"waves": "waving"})) == "a guard, listening attentively"


def test_listening_control_changes_the_prompt_of_silent_blocks(harness, pipeline, data_dir, clock):
    # Guards: Control(listening=True) makes the next silent blocks use the character's listening prompt at full
    # intensity; blocks with voice and blocks after Control(listening=False) keep the session's prompt.
    harness.open(character_id="villager")
    harness.send(control=pb.Control(session_id="s1", listening=True))
    assert harness.link.take("error") == []
    clock.advance(harness.worker.config.scheduler.start_grace_s)
    assert harness.blocks(1) == 1
    assert pipeline.prompts == ["a villager, listening attentively"]
    harness.push("s1", np.full(BLOCK + LOOKAHEAD, 0.5, np.float32))
    assert harness.blocks(1) == 1
    assert pipeline.prompts[-1] is None                # speaking: the base prompt
    harness.send(control=pb.Control(session_id="s1", interrupt=True))
    harness.send(control=pb.Control(session_id="s1", listening=False))
    clock.t = harness.worker.scheduler.get("s1").video_end(16_000)
    assert harness.blocks(1) == 1
    assert pipeline.prompts[-1] is None
    # A character with its own listening prompt.
    data_dir.write_character(CharacterRecord(character_id="owl", base_prompt="an owl",
                                             action_prompts={"listening": "an owl tilting its head"}), b"png")
    harness.open("s2", "owl-npc", character_id="owl")
    harness.send(control=pb.Control(session_id="s2", listening=True))
    clock.advance(harness.worker.config.scheduler.start_grace_s)
    while harness.worker.run_next_batch():
        pass
    [(block, _)] = [(m, p) for m, p in harness.link.take("frame_block") if m.frame_block.session_id == "s2"]
    assert block.frame_block.block_index == 0
    assert pipeline.prompts[-1] == "an owl tilting its head"


def test_a_listening_block_is_not_remembered_as_the_npc_mood(harness, pipeline, clock):
    # Guards: the NPC memory keeps the session's prompt (its mood), never the listening prompt of a silent block,
    # so a resumed NPC does not come back "listening attentively" with listening off.
    harness.open("s1", "guard", character_id="villager")
    harness.send(control=pb.Control(session_id="s1", emotion_prompt="a happy villager", intensity=1.0))
    harness.send(control=pb.Control(session_id="s1", listening=True))
    clock.advance(1.0)
    assert harness.blocks(1) == 1
    assert pipeline.prompts[-1] == "a villager, listening attentively"
    harness.request(close_npc=pb.CloseNpc(session_id="s1"))
    harness.open("s2", "guard")
    clock.advance(1.0)
    assert harness.blocks(1) == 1
    assert pipeline.prompts[-1] == "a happy villager"


def test_voice_beyond_the_queue_cap_is_resource_exhausted(harness):
    # Guards: PushAudio beyond SchedulerConfig.max_queued_voice_s (120 s) of queued voice is refused with
    # RESOURCE_EXHAUSTED: emitted to the session for a one-way message, replied for a request; the session and
    # its queue stay as they were.
    harness.open(character_id="villager")
    cap = int(harness.worker.config.scheduler.max_queued_voice_s * 16_000)
    assert cap == 120 * 16_000
    harness.push("s1", np.full(cap - 5, 0.1, np.float32))
    assert harness.link.take("error") == []
    harness.push("s1", np.full(6, 0.1, np.float32))
    [(err, _)] = harness.link.take("error")
    assert err.request_id == 0 and err.error.session_id == "s1" and err.error.code == "RESOURCE_EXHAUSTED"
    state = harness.worker.scheduler.get("s1")
    assert state.queued_samples == cap - 5
    pcm = np.full(6, 0.1, np.float32)
    harness.worker.handle(pb.ToWorker(request_id=99, push_audio=pb.PushAudio(session_id="s1", num_samples=6)),
                          [memoryview(pcm).cast("B")])
    reply = harness.link.replies.pop(99)[0]
    assert reply.WhichOneof("body") == "error" and reply.error.code == "RESOURCE_EXHAUSTED"
    harness.push("s1", np.full(5, 0.1, np.float32))    # up to the cap is accepted
    assert harness.link.take("error") == [] and state.queued_samples == cap
    assert list(harness.worker.scheduler.sessions) == ["s1"]


def test_npcs_due_together_are_generated_in_one_call(harness, pipeline, clock):
    harness.open("s1", "guard", character_id="villager")
    harness.open("s2", "smith-npc", character_id="smith")
    for session in ("s1", "s2"):
        harness.push(session, np.full(BLOCK0 + LOOKAHEAD, 0.3, np.float32))
    assert harness.blocks(2) == 2
    assert pipeline.batch_sizes == [2]
    blocks = {m.frame_block.session_id: m.frame_block for m, _ in harness.link.take("frame_block")}
    assert sorted(blocks) == ["s1", "s2"]
    assert all(b.batch_size == 2 and b.num_frames == 21 and b.speaking for b in blocks.values())
    assert blocks["s1"].compute_ms == blocks["s2"].compute_ms   # one call made both


def test_messages_that_come_in_while_requests_are_handled_join_the_same_turn(harness, pipeline, data_dir):
    """Two NPCs opened and voiced right behind each other, the link handing over one message per read: one turn of
    the loop takes them (up to its bound of reads), so the two first blocks are one generator call."""
    voice = [memoryview(np.full(BLOCK0 + LOOKAHEAD, 0.3, np.float32)).cast("B")]
    arriving = []
    for rid, (session, npc, character) in enumerate((("s1", "guard", "villager"), ("s2", "smith-npc", "smith")), 1):
        message, payloads = open_npc(data_dir, character, request_id=rid, session_id=session, npc_id=npc,
                                     character_id=character)
        arriving.append((message, [memoryview(p) for p in payloads]))
    for session in ("s1", "s2"):
        arriving.append((pb.ToWorker(push_audio=pb.PushAudio(session_id=session, num_samples=BLOCK0 + LOOKAHEAD)),
                         voice))
    assert len(arriving) == MAX_POLLS_PER_STEP
    # One more behind them waits for the next turn: input cannot hold a due batch back for long.
    arriving.append((pb.ToWorker(control=pb.Control(session_id="s1", end_of_utterance=True)), []))
    harness.link.poll = lambda timeout_ms=0: [arriving.pop(0)] if arriving else []
    harness.worker.step()
    assert len(arriving) == 1 and pipeline.batch_sizes == [2]
    assert all(harness.link.replies[rid][0].WhichOneof("body") == "npc_opened" for rid in (1, 2))
    assert sorted(m.frame_block.session_id for m, _ in harness.link.take("frame_block")) == ["s1", "s2"]
