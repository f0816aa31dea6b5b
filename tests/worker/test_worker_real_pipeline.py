"""The worker against the real LiveActPipeline (tiny, CPU): the generator API contract the worker relies on."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from worker_helpers import open_npc

import avatar_backend.generator
from avatar_backend.proto_gen import worker_pb2 as pb
from avatar_backend.store import CharacterRecord
from avatar_backend.worker.config import WorkerConfig
from avatar_backend.worker.engine import Engine
from avatar_backend.worker.executor import InProcessExecutor
from avatar_backend.worker.main import build_runner
from avatar_backend.worker.telemetry import DeviceTelemetry

# Only a missing module skips; one that exists must import and keep the contract.
if not (Path(avatar_backend.generator.__file__).parent / "pipeline.py").is_file():
    pytest.skip("generator/pipeline.py is not in this checkout yet", allow_module_level=True)

pytestmark = pytest.mark.slow


class RecordingLink:
    def __init__(self):
        self.replies: dict[int, pb.FromWorker] = {}
        self.emitted: list[tuple[pb.FromWorker, list]] = []

    def poll(self, timeout_ms=0):
        return []

    def reply(self, request_id, msg, payloads=()):
        self.replies[request_id] = msg

    def emit(self, msg, payloads=()):
        self.emitted.append((msg, list(payloads)))


@pytest.fixture(scope="module")
def real_pipeline():
    return build_runner("tiny", None, "cpu")


def write_real_character(data_dir) -> None:
    image = Image.new("RGB", (96, 96), (180, 140, 110))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data_dir.write_character(CharacterRecord(character_id="villager", base_prompt="a villager talking"),
                             buffer.getvalue())


def test_blocks_snapshots_and_resume_with_the_real_generator(real_pipeline, data_dir, monkeypatch):
    monkeypatch.delenv("AVATAR_TEST_GENERATOR", raising=False)
    write_real_character(data_dir)
    pipeline, codec = real_pipeline
    link = RecordingLink()
    config = WorkerConfig(endpoint="inproc://unused", data_dir=data_dir.root)
    worker = Engine(config, InProcessExecutor(pipeline), codec, link,
                    telemetry=DeviceTelemetry(nvml_loader=lambda: (_ for _ in ()).throw(ImportError())))
    size = min(pipeline.config.sizes, key=lambda s: s[0] * s[1])   # the cheapest: CPU time matters here

    def request(rid, **body):
        worker.handle(pb.ToWorker(request_id=rid, **body), [])
        return link.replies.pop(rid)

    message, payloads = open_npc(data_dir, "villager", request_id=1, session_id="s1", npc_id="guard",
                                 character_id="villager", width=size[0], height=size[1])
    worker.handle(message, [memoryview(p) for p in payloads])
    opened = link.replies.pop(1)
    assert opened.WhichOneof("body") == "npc_opened", opened
    consume, lookahead = pipeline.block_audio_samples(worker.scheduler.get("s1").memory)
    pcm = (0.1 * np.sin(np.arange(consume + lookahead) / 10)).astype(np.float32)
    worker.handle(pb.ToWorker(push_audio=pb.PushAudio(session_id="s1", num_samples=pcm.size)),
                  [memoryview(pcm).cast("B")])
    assert worker.run_next_batch()                     # one block: CPU time is precious in this suite
    blocks = [(m.frame_block, p) for m, p in link.emitted if m.WhichOneof("body") == "frame_block"]
    assert [b.num_frames for b, _ in blocks] == [pipeline.config.frames_per_block(0)]
    assert blocks[0][0].speaking and blocks[0][0].audio_queued_samples == lookahead
    frames, audio = blocks[0][1]
    assert frames.dtype == np.uint8 and frames.shape == (blocks[0][0].num_frames, size[1], size[0], 3)
    assert audio.shape == (consume,)

    closed = request(2, close_npc=pb.CloseNpc(session_id="s1")).npc_closed
    assert closed.npc.blocks_generated == 1
    header = codec.read_header(data_dir.npc_memory_path("guard"))
    assert header["blocks_generated"] == 1 and header["resume_token"] == closed.npc.resume_token
    assert header["memory_bytes"] == pipeline.memory_bytes(*size)

    # A restarted worker resumes from the snapshot on disk.
    fresh = Engine(config, InProcessExecutor(pipeline), codec, link, telemetry=worker.telemetry)
    fresh.characters = worker.characters               # the conditioning is not what this checks
    fresh.handle(*open_npc(data_dir, "villager", request_id=3, session_id="s2", npc_id="guard",
                           resume_token=closed.npc.resume_token))
    reopened = link.replies.pop(3)
    assert reopened.npc_opened.resumed and reopened.npc_opened.start_frame_index == closed.npc.frames_generated
