"""A worker on two devices (``--devices cpu,cpu``, gloo): the frames of a one-device worker, an NPC parked
from two ranks and resumed on them, a rank that dies takes the worker down so that it is restarted, and a
worker that hangs or dies takes its follower rank with it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from worker_helpers import BLOCK, BLOCK0, open_npc, until_process_gone

from avatar_backend.generator.config import get_config
from avatar_backend.proto_gen import worker_pb2 as pb
from avatar_backend.store import CharacterRecord, DataDir
from avatar_backend.worker.link import GatewayLink, WorkerLost
from avatar_backend.worker.process import WorkerProcess, WorkerProcessConfig

pytest.importorskip("torch")

SIZE = 64


def real_character(root: Path) -> DataDir:
    data_dir = DataDir(root).ensure()
    image = Image.new("RGB", (80, 96), (175, 130, 100))
    image.paste((70, 35, 35), (25, 60, 55, 72))
    png = io.BytesIO()
    image.save(png, "PNG")
    data_dir.write_character(CharacterRecord("villager", "a villager talking"), png.getvalue())
    return data_dir


def voice(samples: int, seed: int) -> np.ndarray:
    t = np.arange(samples) / 16000
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 190 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
            + 0.01 * rng.standard_normal(samples)).astype(np.float32)


async def talk(link: GatewayLink, data_dir: DataDir, session: str, pcm: np.ndarray, blocks: int,
               emotion_prompt: str = "", prompt_guidance: float | None = None) -> list[np.ndarray]:
    """One session of the NPC "guard": its voice (under ``emotion_prompt`` from the start, when given, and the
    session's ``prompt_guidance``), then its first ``blocks`` blocks' frames; the session closed."""
    queue = link.subscribe(session)
    guidance = {} if prompt_guidance is None else {"prompt_guidance": prompt_guidance}
    reply, _ = await link.request(*open_npc(data_dir, "villager", session_id=session, npc_id="guard",
                                            character_id="villager", width=SIZE, height=SIZE, **guidance), timeout=60)
    assert reply.WhichOneof("body") == "npc_opened", reply
    if emotion_prompt:
        link.send(pb.ToWorker(control=pb.Control(session_id=session, emotion_prompt=emotion_prompt, intensity=1.0)))
    link.send(pb.ToWorker(push_audio=pb.PushAudio(session_id=session, num_samples=pcm.size)), [pcm])
    link.send(pb.ToWorker(control=pb.Control(session_id=session, end_of_utterance=True)))
    frames = []
    while len(frames) < blocks:
        item = await asyncio.wait_for(queue.get(), 60)
        assert not isinstance(item, WorkerLost), item
        message, payloads = item
        if message.WhichOneof("body") == "frame_block":
            block = message.frame_block
            frames.append(np.frombuffer(payloads[0], np.uint8).reshape(block.num_frames, SIZE, SIZE, 3).copy())
    closed, _ = await link.request(pb.ToWorker(close_npc=pb.CloseNpc(session_id=session)), timeout=60)
    assert closed.npc_closed.npc.blocks_generated >= blocks
    link.unsubscribe(session)
    return frames


@contextlib.asynccontextmanager
async def running_worker(data_dir: DataDir, devices: str, model_config: str = "tiny"):
    """A worker process on ``devices`` and the link to it; stopped (memories saved) at the end."""
    async with GatewayLink() as link:
        worker = WorkerProcess(link, WorkerProcessConfig(data_dir=data_dir.root, device=devices,
                                                         model_config=model_config, ready_timeout_s=120))
        await worker.start()
        try:
            yield link
        finally:
            await worker.stop(timeout=60)


def run_worker_stream(root: Path, devices: str, model_config: str = "tiny") -> list[np.ndarray]:
    data_dir = real_character(root)

    async def main():
        async with running_worker(data_dir, devices, model_config) as link:
            # Three blocks (compression starts at block 2), parked, resumed, two more under an emotion's prompt
            # (its text embedding goes to the followers; the base prompt's they hold) with the session's own
            # prompt guidance (its factor goes to the followers too).
            first = await talk(link, data_dir, "s1", voice(BLOCK0 + 2 * BLOCK, 1), 3)
            second = await talk(link, data_dir, "s2", voice(2 * BLOCK, 2), 2, emotion_prompt="an angry villager",
                                prompt_guidance=5.0)
            return first + second

    return asyncio.run(asyncio.wait_for(main(), 300))


@pytest.mark.parametrize("kv_cache", ["model", "fp8"])
def test_two_ranks_make_the_frames_of_one_and_an_npc_parks_and_resumes_across_them(tmp_path, kv_cache):
    tiny = get_config("tiny")
    config = tmp_path / f"tiny-{kv_cache}.json"
    config.write_text(dataclasses.replace(tiny, sampler=dataclasses.replace(tiny.sampler, kv_cache=kv_cache)).to_json())
    alone = run_worker_stream(tmp_path / "one", "cpu", str(config))
    ranks = run_worker_stream(tmp_path / "two", "cpu,cpu", str(config))
    assert [f.shape[0] for f in ranks] == [21, 32, 32, 32, 32]
    for block, (want, got) in enumerate(zip(alone, ranks)):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, f"block {block}"
    # The snapshot on disk is the whole memory, whichever the number of ranks: the same file size.
    sizes = {p.parent.parent.name: p.stat().st_size for p in tmp_path.glob("*/npcs/*.npcmem")}
    assert len(sizes) == 2 and len(set(sizes.values())) == 1, sizes


def run_two_npcs(root: Path, devices: str) -> tuple[dict[str, list[np.ndarray]], set[int]]:
    """Two NPCs talking at once (their blocks share generator calls); each one's frames, and the batch sizes."""
    data_dir = real_character(root)

    async def main():
        frames: dict[str, list[np.ndarray]] = {}
        sizes: set[int] = set()
        queues = {}
        async with running_worker(data_dir, devices) as link:
            # Both NPCs open and get their voice before the worker runs a block for either (the sends take
            # microseconds, an open far longer, and the worker reads what came in meanwhile before it runs a batch):
            # the two stay in step (same block sizes), so their blocks share generator calls from the first one on.
            # A request goes out when its task first runs, hence the yield before the voices.
            opening = []
            for index, npc in enumerate(("guard", "smith")):
                session = f"s-{npc}"
                queues[npc] = link.subscribe(session)
                opening.append(asyncio.ensure_future(link.request(*open_npc(
                    data_dir, "villager", session_id=session, npc_id=npc, character_id="villager",
                    width=SIZE, height=SIZE, seed=index + 1), timeout=60)))
            await asyncio.sleep(0)
            for index, npc in enumerate(("guard", "smith")):
                session = f"s-{npc}"
                pcm = voice(BLOCK0 + 3 * BLOCK, 10 + index)
                link.send(pb.ToWorker(push_audio=pb.PushAudio(session_id=session, num_samples=pcm.size)), [pcm])
                link.send(pb.ToWorker(control=pb.Control(session_id=session, end_of_utterance=True)))
            for reply, _ in await asyncio.gather(*opening):
                assert reply.WhichOneof("body") == "npc_opened", reply
            for npc, queue in queues.items():
                frames[npc] = []
                while len(frames[npc]) < 4:
                    item = await asyncio.wait_for(queue.get(), 60)
                    assert not isinstance(item, WorkerLost), item
                    message, payloads = item
                    if message.WhichOneof("body") == "frame_block":
                        block = message.frame_block
                        sizes.add(block.batch_size)
                        frames[npc].append(np.frombuffer(payloads[0], np.uint8).reshape(
                            block.num_frames, SIZE, SIZE, 3).copy())
        return frames, sizes

    return asyncio.run(asyncio.wait_for(main(), 300))


def test_npcs_batched_on_two_ranks_make_the_frames_of_one(tmp_path):
    alone, _ = run_two_npcs(tmp_path / "one", "cpu")
    ranks, sizes = run_two_npcs(tmp_path / "two", "cpu,cpu")
    assert 2 in sizes, "the two NPCs shared generator calls"
    for npc in ("guard", "smith"):
        assert [f.shape[0] for f in ranks[npc]] == [21, 32, 32, 32]   # compression from the third block
        for block, (want, got) in enumerate(zip(alone[npc], ranks[npc])):
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, f"{npc} block {block}"


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the follower rank through /proc")
def test_a_rank_that_dies_takes_the_worker_down_and_it_is_restarted(tmp_path, caplog):
    data_dir = real_character(tmp_path / "data")

    async def main():
        lost: list[str] = []
        async with GatewayLink() as link:
            worker = WorkerProcess(link, WorkerProcessConfig(data_dir=data_dir.root, device="cpu,cpu",
                                                             ready_timeout_s=120, restart_backoff_s=0.1),
                                   on_lost=lost.append)
            await worker.start()
            try:
                first_pid = worker.pid
                [follower] = _children(first_pid)
                os.kill(follower, signal.SIGKILL)
                for _ in range(1200):
                    if worker.ready and worker.pid not in (0, first_pid):
                        break
                    await asyncio.sleep(0.1)
                assert worker.restarts == 1 and worker.ready and worker.pid != first_pid
                assert len(lost) == 1 and "code 3" in lost[0], lost
                assert len(_children(worker.pid)) == 1, "the new worker has its follower rank again"
            finally:
                await worker.stop(timeout=60)

    asyncio.run(asyncio.wait_for(main(), 300))
    assert any("lost a rank (rank 1 (cpu) exited" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the follower rank through /proc")
def test_a_hung_or_dead_worker_takes_its_follower_rank_with_it(tmp_path):
    data_dir = real_character(tmp_path / "data")
    # Stopped followers stand for ranks blocked in a collective that never returns (NCCL waiting for a peer).
    stopped: list[int] = []

    async def restarted(worker: WorkerProcess, old_pid: int) -> None:
        for _ in range(1200):
            if worker.ready and worker.pid not in (0, old_pid):
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the worker was not restarted")

    async def main():
        lost: list[str] = []
        async with GatewayLink() as link:
            worker = WorkerProcess(link, WorkerProcessConfig(
                data_dir=data_dir.root, device="cpu,cpu", ready_timeout_s=120, restart_backoff_s=0.1,
                heartbeat_interval_s=0.2, hang_timeout_s=3.0), on_lost=lost.append)
            await worker.start()
            try:
                # Hung: rank 0 and its follower stop answering; the supervisor kills the worker.
                hung_pid = worker.pid
                [follower] = _children(hung_pid)
                for pid in (follower, hung_pid):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
                await restarted(worker, hung_pid)
                assert len(lost) == 1 and "did not answer" in lost[0], lost
                assert await until_process_gone(follower), f"follower rank pid {follower} outlived its hung worker"

                # Dead: rank 0 is killed from outside while its follower waits for it.
                dead_pid = worker.pid
                [follower] = _children(dead_pid)
                os.kill(follower, signal.SIGSTOP)
                stopped.append(follower)
                os.kill(dead_pid, signal.SIGKILL)
                await restarted(worker, dead_pid)
                assert len(lost) == 2 and "SIGKILL" in lost[1], lost
                assert await until_process_gone(follower), f"follower rank pid {follower} outlived its dead worker"
                assert len(_children(worker.pid)) == 1, "the new worker has its follower rank again"
            finally:
                await worker.stop(timeout=60)

    try:
        asyncio.run(asyncio.wait_for(main(), 300))
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
