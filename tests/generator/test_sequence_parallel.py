"""Sequence parallelism on 2 CPU processes (gloo): the same latents and frames as one process, over 6 blocks
(so the ConvKV memory is compressed four times, two blocks under prompt guidance, whose prompt sets in and goes
again over the first frames of a block: the prompt onset), for both memory groupings,
with head-sharded caches and a follower rank that holds the DiT alone and runs on what rank 0 encoded."""

from __future__ import annotations

import dataclasses
import io
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from avatar_backend.generator.config import get_config
from avatar_backend.generator.parallel import SequenceParallel
from avatar_backend.generator.pipeline import BlockConditioning, LiveActPipeline
from avatar_backend.generator.runner import BlockInput
from avatar_backend.store import CharacterRecord

SIZE, FPS, BLOCKS = 64, 20, 6
# Ranks multiply smaller matrices in another order: float32 rounding, nothing more.
LATENT_TOLERANCE = 1e-5     # measured: 1.5e-7


def config(grouping: str, kv_cache: str = "model"):
    tiny = get_config("tiny")
    return dataclasses.replace(tiny, sampler=dataclasses.replace(tiny.sampler, memory_grouping=grouping,
                                                                 kv_cache=kv_cache, prompt_onset_latents=2))


def villager_png() -> bytes:
    image = Image.new("RGB", (80, 96), (170, 120, 95))
    image.paste((60, 30, 30), (25, 55, 55, 70))
    png = io.BytesIO()
    image.save(png, "PNG")
    return png.getvalue()


VILLAGER = CharacterRecord("villager", "a villager talking")


def share(objects: list, rank: int) -> list:
    """Rank 0's ``objects`` on every rank (the worker sends them with its commands)."""
    box = [objects if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_stream(pipeline: LiveActPipeline) -> tuple[list[np.ndarray], list[torch.Tensor]]:
    """BLOCKS blocks of one NPC talking; its frames and the latents each block decoded.

    In a group, rank 0 encodes (the character once, each block's audio and prompt) and a follower rank, which
    has the DiT alone, is given what rank 0 encoded."""
    latents = []
    rank = 0 if pipeline.parallel is None else pipeline.parallel.rank
    if rank == 0:
        decode = pipeline.vae.decode_stream

        def recording_decode(x, state, *args, **kwargs):
            latents.append(x.clone())
            return decode(x, state, *args, **kwargs)

        pipeline.vae.decode_stream = recording_decode
        character = pipeline.prepare_character(VILLAGER, villager_png(), SIZE, SIZE)
        encoded = [character.clip_fea, character.y, character.base_text]
    else:
        encoded = None
    if pipeline.parallel is not None:
        encoded = share(encoded, rank)
        if rank != 0:
            character = pipeline.character_from(VILLAGER, SIZE, SIZE, *encoded)
    memory = pipeline.new_memory("npc", "villager", SIZE, SIZE, FPS, seed=9)
    t = np.arange(16000 * 12) / 16000
    voice = (0.3 * np.sin(2 * np.pi * 200 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
    frames = []
    for index in range(BLOCKS):
        consume, lookahead = pipeline.block_audio_samples(memory)
        start = memory.timeline_samples
        # Blocks 2 and 3 under an emotion's prompt: prompt guidance's extra pass runs on every rank, and blocks 2
        # and 4 set their prompt in from the last block's (the followers are sent its text at block 4).
        prompt = "a happy villager" if index in (2, 3) else None
        block = [BlockInput(memory, character, voice[start:start + consume + lookahead], prompt)]
        if pipeline.parallel is None:
            frames.append(pipeline.generate_blocks(block)[0])
        elif rank == 0:
            conditioning = pipeline.block_conditioning(block)
            share([(c.audio_rows, c.audio_start, c.text, c.previous_text) for c in conditioning], rank)
            frames.append(pipeline.generate_blocks(block, conditioning)[0])
        else:
            sent = share(None, rank)
            pipeline.follow_blocks(block, [BlockConditioning(audio_rows=rows, audio_start=start, text=text,
                                                             previous_text=previous_text)
                                           for rows, start, text, previous_text in sent])
            frames.append([])
    return frames, latents


def rank_main(rank: int, world: int, init_method: str, grouping: str, kv_cache: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        # The follower ranks hold the DiT alone, as the worker builds them.
        pipeline = LiveActPipeline.from_config(config(grouping, kv_cache), parallel=SequenceParallel.from_process_group(),
                                               dit_only=rank != 0)
        frames, latents = run_stream(pipeline)
        step0 = pipeline.new_memory("x", "villager", SIZE, SIZE, FPS, seed=0).convkv.steps[0]
        encoders = [m for m in (pipeline.vae, pipeline.audio_encoder, pipeline.image_encoder, pipeline.text_encoder)
                    if m is not None]
        torch.save({"frames": frames, "latents": latents, "cache_heads": step0.k.shape[3], "encoders": len(encoders),
                    "parameters": pipeline.parameters, "dit_parameters": sum(p.numel() for p in pipeline.dit.parameters())},
                   f"{out}.rank{rank}")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("grouping, kv_cache", [("single-device", "model"), ("two-device", "model"),
                                               ("single-device", "fp8")])
def test_two_ranks_make_the_stream_of_one(grouping, kv_cache, tmp_path: Path):
    """With an FP8 cache too: each rank keeps the scales of its own heads, so nothing is quantized
    differently from one rank."""
    out = str(tmp_path / "ranks")
    mp.spawn(rank_main, args=(2, f"tcp://127.0.0.1:{free_port()}", grouping, kv_cache, out), nprocs=2)
    ranks = [torch.load(f"{out}.rank{r}", weights_only=False) for r in range(2)]

    torch.set_num_threads(2)
    alone = LiveActPipeline.from_config(config(grouping, kv_cache))
    frames, latents = run_stream(alone)
    heads = alone.config.dit.num_heads
    assert [rank["cache_heads"] for rank in ranks] == [heads // 2] * 2, "each rank holds half of the heads"
    # Only rank 0 holds the encoders and the VAE: a follower's weights are the DiT's.
    assert ranks[0]["encoders"] == 4 and ranks[1]["encoders"] == 0
    assert ranks[1]["parameters"] == ranks[1]["dit_parameters"] < ranks[0]["parameters"]
    # Rank 0 decodes; the follower's share ends with the DiT (its x0 reaches rank 0 through the gathers).
    assert ranks[1]["frames"] == [[]] * BLOCKS and ranks[1]["latents"] == []
    leader = ranks[0]
    assert len(leader["latents"]) == BLOCKS
    for block, (want, got) in enumerate(zip(latents, leader["latents"])):
        error = (got - want).abs().max().item() / want.abs().max().item()
        assert error <= LATENT_TOLERANCE, f"block {block}: relative error {error:.2e}"
    for want, got in zip(frames, leader["frames"]):
        assert got.shape == want.shape
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    # The ranks' streams are not trivially equal: the voice moves the frames from block to block.
    assert not np.array_equal(frames[3], frames[4][: frames[3].shape[0]])
