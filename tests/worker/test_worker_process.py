"""The supervisor with the real worker entry point (stand-in generator): ready, killed, restarted, stopped."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest
from stand_in_generator import WORKER_ENV, StandInGenerator
from worker_helpers import open_npc

from avatar_backend.generator.config import ExecutionConfig
from avatar_backend.proto_gen import worker_pb2 as pb
from avatar_backend.worker.config import execution_flags
from avatar_backend.worker.link import GatewayLink, WorkerLost
from avatar_backend.worker.process import (
    WorkerProcess,
    WorkerProcessConfig,
    WorkerStartError,
)


def run(coro, timeout: float = 40):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def next_frame_block(queue: asyncio.Queue) -> tuple[pb.FromWorker, list[memoryview]]:
    while True:
        item = await asyncio.wait_for(queue.get(), 10)
        assert not isinstance(item, WorkerLost), item
        if item[0].WhichOneof("body") == "frame_block":
            return item


def test_supervisor_restarts_a_killed_worker_and_stops_it_cleanly(data_dir):
    async def main():
        lost: list[str] = []
        async with GatewayLink() as link:
            config = WorkerProcessConfig(data_dir=data_dir.root, env=WORKER_ENV, restart_backoff_s=0.1,
                                         ready_timeout_s=30)
            worker = WorkerProcess(link, config, on_lost=lost.append)
            await worker.start()
            first_pid = worker.pid
            assert worker.ready and first_pid > 0 and link.worker_pid == first_pid

            queue = link.subscribe("s1")
            reply, _ = await link.request(*open_npc(data_dir, "villager", session_id="s1", npc_id="guard",
                                                    character_id="villager"), timeout=10)
            assert reply.npc_opened.npc.width == 128
            msg, payloads = await next_frame_block(queue)
            frames = np.frombuffer(payloads[0], np.uint8).reshape(msg.frame_block.num_frames, 128, 128, 3)
            assert frames.shape[0] == 21 and len(payloads[1]) == 21 * 800 * 4

            os.kill(first_pid, signal.SIGKILL)
            while True:  # frames already in flight may come first
                item = await asyncio.wait_for(queue.get(), 10)
                if isinstance(item, WorkerLost):
                    break
            assert "SIGKILL" in item.reason
            for _ in range(200):
                if worker.ready and worker.pid not in (0, first_pid):
                    break
                await asyncio.sleep(0.05)
            assert worker.ready and worker.pid != first_pid and worker.restarts == 1
            assert len(lost) == 1 and "SIGKILL" in lost[0]

            # The new worker serves sessions; the killed one never saved "guard", so it starts fresh.
            queue = link.subscribe("s2")
            reply, _ = await link.request(*open_npc(data_dir, "villager", session_id="s2", npc_id="guard",
                                                    character_id="villager"), timeout=10)
            assert not reply.npc_opened.resumed
            await next_frame_block(queue)

            second_pid = worker.pid
            await worker.stop(timeout=10)
            assert worker.pid == 0 and not worker.ready
            assert len(lost) == 1                      # a requested stop is not a loss
            with pytest.raises(ProcessLookupError):
                os.kill(second_pid, 0)
            header = StandInGenerator.codec.read_header(data_dir.npc_memory_path("guard"))
            assert header["blocks_generated"] >= 1     # Shutdown saved the live memory

    run(main())


def test_a_worker_that_cannot_start_reports_why(data_dir):
    async def main():
        async with GatewayLink() as link:
            config = WorkerProcessConfig(data_dir=data_dir.root, model_config="no-such-model", env=WORKER_ENV,
                                         ready_timeout_s=30)
            worker = WorkerProcess(link, config)
            with pytest.raises(WorkerStartError) as err:
                await worker.start()
            assert "exited with code 2" in str(err.value) and "no-such-model" in str(err.value)

    run(main())


def test_command_line(data_dir):
    async def main():
        async with GatewayLink() as link:
            config = WorkerProcessConfig(data_dir=data_dir.root, model_config="tiny", device="cpu",
                                         weights="/w.safetensors")
            cmd = WorkerProcess(link, config).command()
            assert cmd[1:3] == ["-m", "avatar_backend.worker"]
            assert cmd[cmd.index("--endpoint") + 1] == link.connect_endpoint
            assert cmd[cmd.index("--weights") + 1] == "/w.safetensors"
            assert cmd[cmd.index("--parent-pid") + 1] == str(os.getpid())

    run(main())


def test_how_the_model_runs_reaches_the_worker_and_its_follower_ranks(data_dir):
    from avatar_backend.cli import build_parser
    from avatar_backend.worker.main import _parser, parse_args

    serve = build_parser().parse_args(["serve", "--attention", "math", "--gemm", "fp8", "--compile",
                                       "--text-encoder-device", "cuda:1", "--decode-precision", "bfloat16",
                                       "--prompt-guidance", "2.5", "--prompt-onset", "3", "--weights",
                                       str(data_dir.root)])
    execution = ExecutionConfig(attention=serve.attention, gemm=serve.gemm, compile=serve.compile,
                                text_encoder_device=serve.text_encoder_device,
                                decode_precision=serve.decode_precision, prompt_guidance=serve.prompt_guidance,
                                prompt_onset_latents=serve.prompt_onset)
    assert build_parser().parse_args(["serve"]).gemm == "model"
    assert build_parser().parse_args(["serve"]).prompt_guidance is None   # the model config's
    assert build_parser().parse_args(["serve"]).prompt_onset is None

    async def main():
        async with GatewayLink() as link:
            config = WorkerProcessConfig(data_dir=data_dir.root, execution=execution)
            return WorkerProcess(link, config).command()

    cmd = run(main())
    assert parse_args(cmd[cmd.index("avatar_backend.worker") + 1:]).execution == execution
    # Rank 0 starts its followers with the same flags (execution_flags), which their parser reads back.
    follower = _parser().parse_args(["--follow-rank", "1", *execution_flags(execution)])
    assert (follower.attention, follower.gemm, follower.compile, follower.text_encoder_device,
            follower.decode_precision, follower.prompt_guidance, follower.prompt_onset) == (
        "math", "fp8", True, "cuda:1", "bfloat16", 2.5, 3)


def test_a_hung_worker_is_killed_and_restarted(data_dir):
    async def main():
        lost: list[str] = []
        async with GatewayLink() as link:
            # Every block "takes" 30 s: the worker stops reading the link once a session runs.
            config = WorkerProcessConfig(data_dir=data_dir.root, env={**WORKER_ENV, "AVATAR_STAND_IN_BLOCK_DELAY_S": "30"},
                                         restart_backoff_s=0.1, heartbeat_interval_s=0.2, hang_timeout_s=1.0)
            worker = WorkerProcess(link, config, on_lost=lost.append)
            await worker.start()
            first_pid = worker.pid
            queue = link.subscribe("s1")
            await link.request(*open_npc(data_dir, "villager", session_id="s1", npc_id="n", character_id="villager"))
            item = await asyncio.wait_for(queue.get(), 10)
            assert isinstance(item, WorkerLost) and "did not answer" in item.reason
            for _ in range(200):
                if worker.ready and worker.pid not in (0, first_pid):
                    break
                await asyncio.sleep(0.05)
            assert worker.ready and worker.pid != first_pid
            assert len(lost) == 1 and "was killed" in lost[0]
            await worker.stop(timeout=5)

    run(main())
