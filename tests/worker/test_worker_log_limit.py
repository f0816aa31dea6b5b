"""The worker's log: a client that floods InterruptRequests cannot flood it (one line per session per interval,
then a count of what was left out), and NPCs at a size the weights were not trained at are told once."""

from __future__ import annotations

import logging

from stand_in_generator import StandInGenerator
from worker_helpers import FakeClock, open_npc

from avatar_backend.proto_gen import worker_pb2 as pb
from avatar_backend.worker.config import WorkerConfig
from avatar_backend.worker.engine import Engine
from avatar_backend.worker.executor import InProcessExecutor
from avatar_backend.worker.log_limit import RateLimitedLog
from avatar_backend.worker.requests import INTERRUPT_LOG_INTERVAL_S
from avatar_backend.worker.telemetry import DeviceTelemetry


class QuietLink:
    def __init__(self):
        self.emitted = []

    def reply(self, request_id, msg, payloads=()):
        pass

    def emit(self, msg, payloads=()):
        self.emitted.append(msg)


def _no_nvml():
    raise ImportError("no NVML in tests")


def interrupt_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "interrupted at sample" in r.getMessage()]


def test_a_flood_of_interrupts_logs_one_line_per_session_per_interval(pipeline, data_dir, caplog):
    clock = FakeClock()
    link = QuietLink()
    worker = Engine(WorkerConfig(endpoint="inproc://unused", data_dir=data_dir.root), InProcessExecutor(pipeline),
                    StandInGenerator.codec, link, telemetry=DeviceTelemetry(nvml_loader=_no_nvml), clock=clock)
    for rid, session in ((1, "s1"), (2, "s2")):
        worker.handle(*open_npc(data_dir, "villager", request_id=rid, session_id=session, npc_id=f"npc-{session}",
                                character_id="villager"))

    with caplog.at_level(logging.INFO, logger="avatar_backend.worker"):
        for _ in range(1000):
            worker.handle(pb.ToWorker(control=pb.Control(session_id="s1", interrupt=True)), [])
        worker.handle(pb.ToWorker(control=pb.Control(session_id="s2", interrupt=True)), [])
        assert len(interrupt_lines(caplog)) == 2             # one for s1, one for s2
        assert sum(m.WhichOneof("body") == "interrupt_done" for m in link.emitted) == 1001  # all answered

        clock.advance(INTERRUPT_LOG_INTERVAL_S)
        worker.handle(pb.ToWorker(control=pb.Control(session_id="s1", interrupt=True)), [])
    lines = interrupt_lines(caplog)
    assert len(lines) == 3 and lines[0].startswith("session s1") and lines[1].startswith("session s2")
    assert "999 more like this" in lines[2]


def test_npcs_at_a_size_the_weights_were_not_trained_at_are_told_once_per_size(pipeline, data_dir, caplog):
    pipeline.random_weights = False  # trained weights, trained at the config's default size (64x64 here)
    worker = Engine(WorkerConfig(endpoint="inproc://unused", data_dir=data_dir.root), InProcessExecutor(pipeline),
                    StandInGenerator.codec, QuietLink(), telemetry=DeviceTelemetry(nvml_loader=_no_nvml),
                    clock=FakeClock())
    with caplog.at_level(logging.INFO, logger="avatar_backend.worker"):
        for rid, size in enumerate((64, 128, 128, 256), start=1):
            worker.handle(*open_npc(data_dir, "villager", request_id=rid, session_id=f"s{rid}", npc_id=f"npc-{rid}",
                                    character_id="villager", width=size, height=size))
    told = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "trained at" in r.getMessage()]
    assert [line.split(":")[0] for line in told] == ["NPCs at 128x128", "NPCs at 256x256"]
    assert "the model's default size, 64x64" in told[0]


def test_rate_limited_log_counts_per_key_and_stays_bounded(caplog):
    clock = FakeClock()
    logger = logging.getLogger("test.rate_limited")
    limited = RateLimitedLog(logger, 5.0, max_keys=3, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.rate_limited"):
        assert limited.log("a", logging.INFO, "line %s", 1)
        assert not limited.log("a", logging.INFO, "line %s", 2)
        assert not limited.log("a", logging.INFO, "line %s", 3)
        clock.advance(4.9)
        assert not limited.log("a", logging.INFO, "line %s", 4)
        clock.advance(0.2)
        assert limited.log("a", logging.INFO, "line %s", 5)
        assert not limited.log("a", logging.INFO, "line %s", 6)
        for key in "bcdef":                              # only 3 keys are kept: "a" is forgotten
            assert limited.log(key, logging.INFO, "other %s", key)
        assert limited.log("a", logging.INFO, "line %s", 7)
    messages = [r.getMessage() for r in caplog.records if r.name == "test.rate_limited"]
    assert messages[:2] == ["line 1", "line 5 (3 more like this in the last 5s not logged)"]
    assert messages[-1] == "line 7" and len(messages) == 8
