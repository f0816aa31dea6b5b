"""The FP8 ConvKV cache (e4m3 with an fp32 scale per token and head): a quarter of the float32 cache's bytes
(tiny), close to its latents, constant in size, and snapshots that resume exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_pipeline import SIZE, FPS, make_character, run_blocks, speech_like

from avatar_backend.generator.config import get_config
from avatar_backend.generator.fp8 import FP8, dequantize_fp8, quantize_fp8
from avatar_backend.generator.memory import NpcMemory
from avatar_backend.generator.pipeline import LiveActPipeline, shipped_weights

TINY = get_config("tiny")
FP8_TINY = dataclasses.replace(TINY, sampler=dataclasses.replace(TINY.sampler, kv_cache="fp8"))
# Measured with the shipped weights at 64x64: 2.7e-2 to 3.1e-2 over 8 blocks, flat (no drift with the stream).
LATENT_TOLERANCE = 0.06


def test_quantization_keeps_each_token_and_head_within_its_scale_and_is_idempotent():
    torch.manual_seed(0)
    values = torch.randn(3, 50, 4, 32) * torch.logspace(-3, 2, 50)[None, :, None, None]
    stored, scale = quantize_fp8(values)
    assert stored.dtype == FP8 and scale.shape == (3, 50, 4, 1)
    restored = dequantize_fp8(stored, scale)
    amax = values.abs().amax(dim=-1, keepdim=True)
    assert ((restored - values).abs() <= amax / 16 + 1e-12).all()   # 3 mantissa bits: half an ulp of 1/8
    again, again_scale = quantize_fp8(restored)
    assert torch.equal(again.view(torch.uint8), stored.view(torch.uint8)) and torch.equal(again_scale, scale)


@pytest.fixture(scope="module")
def pipelines():
    torch.set_num_threads(2)
    weights = shipped_weights("tiny")
    return LiveActPipeline.from_config(TINY, weights=weights), LiveActPipeline.from_config(FP8_TINY, weights=weights)


def test_fp8_stream_stays_close_to_the_full_precision_one_in_constant_memory(pipelines):
    full, fp8 = pipelines
    voice = speech_like(16000 * 12, 4)
    latents = {}
    for name, pipeline in (("full", full), ("fp8", fp8)):
        decode = pipeline.vae.decode_stream
        seen = latents.setdefault(name, [])
        pipeline.vae.decode_stream = lambda x, state, *args, seen=seen, decode=decode: (
            seen.append(x.clone()), decode(x, state, *args))[1]
        memory = pipeline.new_memory("npc", "villager", SIZE, SIZE, FPS, seed=5)
        expected = pipeline.memory_bytes(SIZE, SIZE)
        assert memory.nbytes() == expected
        run_blocks(pipeline, memory, make_character(pipeline), voice, 6)
        assert memory.nbytes() == expected
        pipeline.vae.decode_stream = decode
    assert fp8.memory_bytes(SIZE, SIZE) < 0.4 * full.memory_bytes(SIZE, SIZE)
    for block, (want, got) in enumerate(zip(latents["full"], latents["fp8"])):
        error = ((got - want).abs().max() / want.abs().max()).item()
        assert error <= LATENT_TOLERANCE, f"block {block}: {error:.3f}"
    assert torch.equal(latents["full"][0], latents["fp8"][0]), "block 0 attends to nothing cached yet"


def test_an_fp8_snapshot_resumes_the_stream_exactly(pipelines, tmp_path):
    _, fp8 = pipelines
    character = make_character(fp8)
    voice = speech_like(16000 * 12, 6)
    whole = fp8.new_memory("npc", "villager", SIZE, SIZE, FPS, seed=2)
    uninterrupted = run_blocks(fp8, whole, character, voice, 5)
    first = fp8.new_memory("npc", "villager", SIZE, SIZE, FPS, seed=2)
    part1 = run_blocks(fp8, first, character, voice, 3)
    first.save(tmp_path / "npc.npcmem")
    resumed = NpcMemory.load(tmp_path / "npc.npcmem")
    assert resumed.convkv.steps[0].k.dtype == FP8 and resumed.convkv.steps[0].quantized
    for a, b in zip(uninterrupted, part1 + run_blocks(fp8, resumed, character, voice, 2)):
        np.testing.assert_array_equal(a, b)


def test_fp8_cache_holds_one_layers_full_precision_copy_at_a_time():
    """The FP8 block works on an fp32 copy of its layer's cache; a forward that kept every layer's copy would
    hold the float32 cache (twice the bf16 one) in transient memory, undoing what FP8 saves."""
    import gc

    from avatar_backend.generator.convkv import ConvKVMemory
    from avatar_backend.generator.dit import WanModel
    from avatar_backend.generator.sampler import GeneratorNoise, denoise_block
    from avatar_backend.generator.schedule import StreamSchedule

    torch.manual_seed(0)
    model = WanModel(FP8_TINY.dit).eval()
    memory = ConvKVMemory.allocate(FP8_TINY, SIZE, SIZE, device="cpu", dtype=torch.float32)
    layer_shape = memory.caches()[0].k[0].shape

    def copies() -> set[int]:
        gc.collect()
        return {id(o) for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.dtype == torch.float32
                and o.shape == layer_shape}

    before = copies()   # other tests' tensors of that shape
    alive = []

    def count_copies(module, args):
        alive.append(len(copies() - before))

    model.blocks[-1].register_forward_pre_hook(count_copies)
    schedule = StreamSchedule.from_model_config(FP8_TINY, SIZE, SIZE)
    h = w = SIZE // FP8_TINY.vae.spatial_stride
    window = sum(FP8_TINY.sampler.block_sizes)
    dit = FP8_TINY.dit
    with torch.inference_mode():
        context = model.encode_context(torch.randn(dit.text_len, dit.text_dim), torch.randn(1, dit.clip_tokens,
                                                                                            dit.clip_dim))
        denoise_block(model, memory, schedule.block(0), y=torch.randn(1, dit.in_dim - dit.out_dim, window, h, w),
                      context=context, audio_window=torch.randn(1, 1 + dit.vae_scale * (window - 1),
                                                                dit.audio_window, dit.audio_layers,
                                                                dit.audio_channels),
                      noise=GeneratorNoise(0), sampler=FP8_TINY.sampler, functional=False)
    assert alive and max(alive) <= 2, f"fp32 layer-cache copies alive at the last layer: {alive}"
