"""A worker on several devices: rank 0 runs the engine and speaks ZeroMQ; ranks 1..N-1 follow it.

``python -m avatar_backend.worker --devices cuda:0,cuda:1`` makes this process rank 0. It starts one follower
process per other device (``--follow-rank R``), and all of them join one torch.distributed group (NCCL between
GPUs, gloo on the CPU) in which every DiT call runs sequence-parallel (:mod:`avatar_backend.generator.parallel`).

Rank 0's :class:`LeaderRunner` is the generator the engine sees. Only rank 0 holds the encoders and the VAE; a
follower's pipeline is the DiT alone, so every encoder output a follower needs comes from rank 0. Whatever
changes the ranks' state goes to the followers first, as a command broadcast on a gloo group, and then runs on
every rank at once:

- ``prepare``: a character's conditioning as rank 0 encoded it (image features, reference code, base text);
  followers keep it until rank 0 no longer does;
- ``activate``: an NPC memory goes live: rank 0 scatters each ConvKV cache by heads, the rest of the stream
  state (noise state, counters) is broadcast; a follower holds only its shard;
- ``generate``: the next blocks of a batch, by NPC, with each block's conditioning (the audio features its
  window reads, about 1 MB per NPC and block for liveact-18b by their shapes, and the text embedding of a
  prompt other than the base prompt, 4 MB, as well as the last block's when a prompt onset blends it in); only
  rank 0 decodes frames;
- ``gather``: rank 0 collects the shards into a whole memory (a snapshot, or parking: the followers drop theirs);
- ``discard``: the followers drop an NPC's shard without collecting it (a failed session);
- ``ping`` (an idle worker's heartbeat, so the followers' wait for a command never times out) and ``stop``.

A memory is whole whenever it is not live (parked, on disk, in a snapshot), so snapshot files are the same on
any number of ranks. Every command is checked on rank 0 before it is sent (a batch that cannot run fails there,
alone); once sent, the ranks must finish it together, so a failure after that is a RankError: the worker
exits and the gateway's supervisor restarts it (live NPCs go back to their last snapshots). A follower that
fails or loses rank 0 exits; rank 0 checks its followers between batches, and a collective waiting for a rank
that died fails after COLLECTIVE_TIMEOUT_S.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from avatar_backend.generator.conditioning import is_base_prompt
from avatar_backend.generator.fp8 import FP8
from avatar_backend.generator.memory import NpcMemory
from avatar_backend.generator.parallel import SequenceParallel
from avatar_backend.generator.pipeline import BlockConditioning, LiveActPipeline
from avatar_backend.generator.runner import BlockInput
from avatar_backend.generator.vae import CausalCache
from avatar_backend.store import CharacterRecord

from .executor import ExecutorLost

__all__ = ["LeaderRunner", "RankError", "RankExecutor", "RankGroup", "follow", "parse_devices"]

log = logging.getLogger("avatar_backend.worker")

# A follower's block input carries no audio: rank 0 sends the audio window its encoder made.
NO_AUDIO = np.zeros(0, np.float32)
# A collective that waits longer than this for another rank fails (a rank that hangs takes the worker down).
COLLECTIVE_TIMEOUT_S = 300.0
# An idle rank 0 tells its followers it is there this often (well inside the collective timeout).
HEARTBEAT_INTERVAL_S = 30.0


class RankError(ExecutorLost):
    """A rank of this worker has gone: the worker cannot go on."""


def parse_devices(text: str) -> list[str]:
    """``cpu``, ``cuda:0,cuda:1``, ``cpu,cpu`` -> one device per rank."""
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices:
        raise ValueError("no device given")
    kinds = {torch.device(d).type for d in devices}
    if len(kinds) > 1:
        raise ValueError(f"the ranks of one worker run on one kind of device, got {text!r}")
    return devices


def _backend(devices: Sequence[str]) -> str:
    return "nccl" if torch.device(devices[0]).type == "cuda" else "gloo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, init_method: str, devices: Sequence[str]) -> tuple[SequenceParallel, Any]:
    """Join the worker's process group; the sequence-parallel group and the gloo group commands travel on."""
    from datetime import timedelta

    timeout = timedelta(seconds=COLLECTIVE_TIMEOUT_S)
    device = torch.device(devices[rank])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(_backend(devices), init_method=init_method, rank=rank, world_size=world, timeout=timeout)
    control = dist.new_group(backend="gloo", timeout=timeout) if _backend(devices) != "gloo" else None
    return SequenceParallel.from_process_group(), control


class RankGroup:
    """Rank 0's view of the ranks: the follower processes, the process group, the command channel."""

    def __init__(self, devices: Sequence[str], worker_args: Sequence[str]):
        self.devices = list(devices)
        self.world = len(devices)
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        self.followers: list[subprocess.Popen] = []
        for rank in range(1, self.world):
            cmd = [sys.executable, "-m", "avatar_backend.worker", *worker_args, "--follow-rank", str(rank),
                   "--init-method", init_method, "--parent-pid", str(os.getpid())]
            self.followers.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
        log.info("waiting for %d follower rank(s) on %s", self.world - 1, ", ".join(self.devices[1:]))
        self.parallel, self.control = _join(0, self.world, init_method, self.devices)
        self._last_sent = time.monotonic()

    def check_alive(self) -> None:
        """RankError when a follower has exited; a heartbeat when the followers have not heard from rank 0."""
        for rank, proc in enumerate(self.followers, start=1):
            if proc.poll() is not None:
                raise RankError(f"rank {rank} ({self.devices[rank]}) exited with code {proc.returncode}")
        if time.monotonic() - self._last_sent > HEARTBEAT_INTERVAL_S:
            self.send(("ping",))

    def send(self, command: tuple) -> None:
        """Broadcast a command to the followers (they run it with rank 0)."""
        self._last_sent = time.monotonic()
        self.check_alive()
        dist.broadcast_object_list([command], src=0, group=self.control)

    def stop(self, timeout: float = 30.0) -> None:
        try:
            if all(p.poll() is None for p in self.followers):
                dist.broadcast_object_list([("stop",)], src=0, group=self.control)
        except Exception as err:  # a follower already gone: nothing to tell
            log.warning("could not tell the follower ranks to stop: %s", err)
        deadline = time.monotonic() + timeout
        for proc in self.followers:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        dist.destroy_process_group()


def _cache_tensors(convkv: Any) -> list[torch.Tensor]:
    """The ConvKV tensors of a memory in a fixed order, [layers, 1, tokens, heads, head_dim or 1] each (FP8
    values as their bytes: collectives need not know the type; writes through the views reach the cache)."""
    tensors = [t for cache in convkv.caches() for t in cache.tensors()]
    return [t.view(torch.uint8) if t.dtype == FP8 else t for t in tensors]


def _stream_state(memory: NpcMemory) -> dict[str, Any]:
    """What a follower needs besides its cache shard to run the NPC's blocks (small: no decoder state)."""
    fields = ("npc_id", "character_id", "model_name", "width", "height", "fps", "seed", "blocks_generated",
              "frames_generated", "timeline_samples", "prompt", "intensity", "last_block_prompt",
              "last_block_intensity", "memory_layout", "lineage")
    return {"fields": {f: getattr(memory, f) for f in fields}, "noise_state": memory.noise_state.cpu()}


class LeaderRunner:
    """Rank 0's generator: the engine's GeneratorRunner, with every state change mirrored on the followers."""

    def __init__(self, pipeline: LiveActPipeline, group: RankGroup):
        if pipeline.parallel is None or pipeline.parallel.rank != 0:
            raise ValueError("the leader runs the rank-0 pipeline of a sequence-parallel group")
        self.pipeline = pipeline
        self.group = group
        self.config = pipeline.config
        self.device = ",".join(group.devices)
        self.memory_layout = pipeline.memory_layout
        self.random_weights = pipeline.random_weights
        self.weights_sha256 = pipeline.weights_sha256
        self.parameters = pipeline.parameters
        self._next_handle = itertools.count(1)
        self._handles: dict[int, int] = {}         # id of a rank-0 conditioning -> the followers' handle of it
        self._dropped: list[int] = []              # conditionings rank 0 let go of: the followers' go next
        self._lock = threading.RLock()             # finalizers run on any thread, also inside a _send
        self._live: set[str] = set()               # NPCs whose memories are sharded over the ranks

    # -- what needs no other rank --------------------------------------------------------------------------

    def memory_bytes(self, width: int, height: int) -> int:
        return self.pipeline.memory_bytes(width, height)

    def block_audio_samples(self, memory: NpcMemory) -> tuple[int, int]:
        return self.pipeline.block_audio_samples(memory)

    def batch_key(self, memory: NpcMemory):
        return self.pipeline.batch_key(memory)

    # -- characters ----------------------------------------------------------------------------------------

    def prepare_character(self, record: CharacterRecord, reference_png: bytes, width: int, height: int) -> Any:
        conditioning = self.pipeline.prepare_character(record, reference_png, width, height)
        handle = next(self._next_handle)
        self._send(("prepare", handle, dataclasses.asdict(record), width, height, conditioning.clip_fea.cpu(),
                    conditioning.y.cpu(), conditioning.base_text.cpu()))
        self._handles[id(conditioning)] = handle
        weakref.finalize(conditioning, self._forget, id(conditioning), handle)
        return conditioning

    def _forget(self, object_id: int, handle: int) -> None:
        """Rank 0 let go of a conditioning: the followers drop theirs with the next command."""
        with self._lock:
            self._handles.pop(object_id, None)
            self._dropped.append(handle)

    def _send(self, command: tuple) -> None:
        with self._lock:
            dropped, self._dropped = self._dropped, []
        if dropped:
            self.group.send(("forget", dropped))
        self.group.send(command)

    # -- NPC memories --------------------------------------------------------------------------------------

    def new_memory(self, npc_id: str, character_id: str, width: int, height: int, fps: int, seed: int) -> NpcMemory:
        """A fresh NPC, whole on the host, then live on every rank."""
        whole = self.pipeline.new_memory(npc_id, character_id, width, height, fps, seed, whole_on_host=True)
        return self.activate(whole)

    def activate(self, memory: NpcMemory) -> NpcMemory:
        """A whole host memory goes live: each rank gets its heads of every cache; rank 0 keeps the rest."""
        shard = self.pipeline.allocate_convkv(memory.width, memory.height)
        self._send(("activate", _stream_state(memory)))
        try:
            for whole, own in zip(_cache_tensors(memory.convkv), _cache_tensors(shard)):
                parts = [p.contiguous() for p in whole.cpu().chunk(self.group.world, dim=3)]
                received = torch.empty_like(parts[0])
                dist.scatter(received, parts, src=0, group=self.group.control)
                own.copy_(received)
        except Exception as err:
            raise RankError(f"activating NPC {memory.npc_id!r} failed across the ranks: {err}") from err
        memory.convkv = shard  # first: only the rank's shard goes to its device, never the whole cache
        memory.to(self.pipeline.device)
        self._live.add(memory.npc_id)
        return memory

    def _gather(self, memory: NpcMemory, keep: bool) -> NpcMemory:
        """A copy of the whole memory on the host, from every rank's shard (the followers keep theirs when
        ``keep``)."""
        whole = self.pipeline.allocate_convkv(memory.width, memory.height, whole_on_host=True)
        self._send(("gather", memory.npc_id, keep))
        try:
            for own, out in zip(_cache_tensors(memory.convkv), _cache_tensors(whole)):
                parts = [torch.empty_like(own, device="cpu") for _ in range(self.group.world)]
                dist.gather(own.cpu().contiguous(), parts, dst=0, group=self.group.control)
                out.copy_(torch.cat(parts, dim=3))
        except Exception as err:
            raise RankError(f"collecting NPC {memory.npc_id!r} from the ranks failed: {err}") from err
        decoder = CausalCache({k: v.detach().to("cpu", copy=True) for k, v in memory.decoder.frames.items()},
                              memory.decoder.first_chunk)
        return dataclasses.replace(memory, convkv=whole, decoder=decoder,
                                   audio_tail=memory.audio_tail.detach().to("cpu", copy=True),
                                   noise_state=memory.noise_state.clone())

    def park(self, memory: NpcMemory) -> NpcMemory:
        if memory.npc_id in self._live:
            whole = self._gather(memory, keep=False)
            self._live.discard(memory.npc_id)
            memory.convkv, memory.decoder, memory.audio_tail = whole.convkv, whole.decoder, whole.audio_tail
        return memory.to("cpu")

    def host_copy(self, memory: NpcMemory) -> NpcMemory:
        if memory.npc_id in self._live:
            return self._gather(memory, keep=True)
        return memory.host_copy()

    def discard(self, memory: NpcMemory) -> None:
        if memory.npc_id in self._live:
            self._live.discard(memory.npc_id)
            self._send(("discard", memory.npc_id))

    # -- blocks ---------------------------------------------------------------------------------------------

    def forget_live(self) -> None:
        """The ranks are gone: the live memories' shards with them."""
        self._live.clear()

    @staticmethod
    def _text_to_send(item: BlockInput, prompt: str | None, intensity: float,
                      text: torch.Tensor | None) -> torch.Tensor | None:
        """A prompt's embedding for the followers: None for the base prompt's, which ``prepare`` gave them (most
        blocks; 4 MB each for liveact-18b), or when there is none to send."""
        if text is None or is_base_prompt(item.conditioning.base_prompt, prompt, intensity):
            return None
        return text.cpu()

    def generate_blocks(self, inputs: Sequence[BlockInput]) -> list[np.ndarray]:
        if not inputs:
            return []
        self.pipeline.check_batch(inputs)   # a batch that cannot run fails here, before any rank starts it
        conditioning = self.pipeline.block_conditioning(inputs)
        self._send(("generate", [(item.memory.npc_id, self._handles[id(item.conditioning)], item.prompt,
                                  item.intensity, item.prompt_guidance, block.audio_rows.cpu(), block.audio_start,
                                  self._text_to_send(item, item.prompt, item.intensity, block.text),
                                  self._text_to_send(item, item.memory.last_block_prompt,
                                                     item.memory.last_block_intensity, block.previous_text))
                                 for item, block in zip(inputs, conditioning)]))
        try:
            return self.pipeline.generate_blocks(inputs, conditioning)
        except Exception as err:
            raise RankError(f"a batch failed on rank 0 after the other ranks started it: {err}") from err


class RankExecutor:
    """The executor of a multi-rank worker: each batch runs on every rank (see :class:`LeaderRunner`)."""

    def __init__(self, runner: LeaderRunner):
        self.runner = runner

    def execute(self, inputs: Sequence[BlockInput]) -> list[np.ndarray]:
        return self.runner.generate_blocks(inputs)

    def check(self) -> None:
        self.runner.group.check_alive()

    def lost(self) -> None:
        """The ranks are gone: rank 0's live memories can no longer be collected."""
        self.runner.forget_live()

    def shutdown(self) -> None:
        self.runner.group.stop()


def follow(rank: int, init_method: str, devices: Sequence[str], pipeline_factory, parent_pid: int = 0) -> int:
    """A follower rank's whole life: join the group, then run rank 0's commands until ``stop``."""
    parallel, control = _join(rank, len(devices), init_method, devices)
    pipeline: LiveActPipeline = pipeline_factory(devices[rank], parallel)
    characters: dict[int, Any] = {}
    live: dict[str, NpcMemory] = {}
    log.info("rank %d of %d ready on %s", rank, len(devices), devices[rank])
    try:
        while True:
            if parent_pid and os.getppid() != parent_pid:
                log.warning("rank 0 is gone; rank %d exits", rank)
                return 1
            box: list[Any] = [None]
            dist.broadcast_object_list(box, src=0, group=control)
            command, *args = box[0]
            if command == "stop":
                return 0
            if command == "ping":
                continue
            if command == "forget":
                for handle in args[0]:
                    characters.pop(handle, None)
            elif command == "prepare":
                handle, record, width, height, clip_fea, y, base_text = args
                characters[handle] = pipeline.character_from(CharacterRecord(**record), width, height, clip_fea, y,
                                                             base_text)
            elif command == "activate":
                state = args[0]
                fields = state["fields"]
                memory = pipeline.new_memory(fields["npc_id"], fields["character_id"], fields["width"],
                                             fields["height"], fields["fps"], fields["seed"])
                for name, value in fields.items():
                    setattr(memory, name, value)
                memory.noise_state = state["noise_state"]
                for own in _cache_tensors(memory.convkv):
                    received = torch.empty_like(own, device="cpu")
                    dist.scatter(received, None, src=0, group=control)
                    own.copy_(received)
                live[memory.npc_id] = memory
            elif command == "gather":
                npc_id, keep = args
                memory = live[npc_id] if keep else live.pop(npc_id)
                for own in _cache_tensors(memory.convkv):
                    dist.gather(own.cpu().contiguous(), None, dst=0, group=control)
            elif command == "discard":
                live.pop(args[0], None)
            elif command == "generate":
                items = args[0]
                pipeline.follow_blocks(
                    [BlockInput(live[npc_id], characters[handle], NO_AUDIO, prompt, intensity, guidance)
                     for npc_id, handle, prompt, intensity, guidance, *_ in items],
                    [BlockConditioning(audio_rows=rows, audio_start=start, text=text, previous_text=previous_text)
                     for *_, rows, start, text, previous_text in items])
            else:
                raise RankError(f"unknown command {command!r} from rank 0")
    finally:
        dist.destroy_process_group()
