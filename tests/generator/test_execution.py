"""How the model runs: the attention dispatch and its backends, FP8 GEMM, torch.compile and the decoder's
precision. Every fast path has a quality guard here: on the same inputs and noise, its latents (or frames)
against the default path's."""

from __future__ import annotations

import copy
import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avatar_backend.generator import attention as dispatch
from avatar_backend.generator.config import ATTENTION_BACKENDS, TINY, ExecutionConfig
from avatar_backend.generator.convkv import ConvKVMemory
from avatar_backend.generator.dit import WanModel
from avatar_backend.generator.fp8 import FP8, FP8Linear, quantize_linears
from avatar_backend.generator.pipeline import (GeneratorError, LiveActPipeline, compiles_decoder, cpu_has_bf16_units,
                                               decode_autocast_dtype, decode_block, shipped_weights)
from avatar_backend.generator.sampler import GeneratorNoise, denoise_block
from avatar_backend.generator.schedule import StreamSchedule
from avatar_backend.store import CharacterRecord

SIZE = 64
# What the kernel says this CPU has (empty where /proc/cpuinfo does not exist or has no flags line).
CPUINFO = Path("/proc/cpuinfo")
CPU_FLAGS = set(next((line.split(":", 1)[1].split() for line in CPUINFO.read_text().splitlines()
                      if line.startswith("flags")), [])) if CPUINFO.exists() else set()
FP8_GEMM_TOLERANCE = 0.08   # relative L2 error of a block's latents (measured 4.5-4.8% on the shipped tiny model)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().float(), expected.detach().float()
    return float((actual - expected).norm() / expected.norm())


@pytest.fixture(scope="module")
def trained_dit() -> WanModel:
    weights = shipped_weights("tiny")
    return LiveActPipeline.from_config(TINY, weights=weights).dit


def stream_latents(model: WanModel, blocks: int) -> list[torch.Tensor]:
    """Each block's clean latents, for fixed conditioning, audio and noise."""
    schedule = StreamSchedule.from_model_config(TINY, SIZE, SIZE)
    memory = ConvKVMemory.allocate(TINY, SIZE, SIZE)
    g = torch.Generator().manual_seed(0)
    latent_side = SIZE // TINY.vae.spatial_stride
    y = torch.randn(1, TINY.dit.in_dim - TINY.dit.out_dim, sum(TINY.sampler.block_sizes), latent_side,
                    latent_side, generator=g)
    text = torch.randn(TINY.dit.text_len, TINY.dit.text_dim, generator=g)
    clip = torch.randn(1, TINY.dit.clip_tokens, TINY.dit.clip_dim, generator=g)
    audio = torch.randn(1, schedule.block(0).audio_frames, TINY.dit.audio_window, TINY.dit.audio_layers,
                        TINY.dit.audio_channels, generator=g)
    noise = GeneratorNoise(0)
    out = []
    with torch.inference_mode():
        context = model.encode_context(text, clip)
        for index in range(blocks):
            result = denoise_block(model, memory, schedule.block(index), y=y, context=context, audio_window=audio,
                                   noise=noise, sampler=TINY.sampler, functional=False)
            out.append(result.x0)
    return out


# -- attention dispatch -----------------------------------------------------------------------------------------


def test_the_backends_the_config_names_are_the_dispatch_backends():
    assert tuple(dispatch.BACKENDS) == ATTENTION_BACKENDS


def test_sdpa_equals_the_exact_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 24, 4, 16, generator=g) for _ in range(3))
    with dispatch.attention_backend("math"):
        exact = dispatch.attention(q, k, v)
    assert dispatch.get_attention_backend() == "sdpa"
    assert relative_error(dispatch.attention(q, k, v), exact) < 1e-6


def test_the_whole_stream_on_the_exact_backend_matches_sdpa(trained_dit):
    default = stream_latents(trained_dit, 3)
    with dispatch.attention_backend("math"):
        exact = stream_latents(trained_dit, 3)
    assert max(relative_error(a, b) for a, b in zip(default, exact)) < 1e-5


def test_a_backend_that_cannot_run_is_refused_naming_its_package():
    with pytest.raises(dispatch.AttentionBackendError, match="unknown attention backend 'xformers'"):
        dispatch.set_attention_backend("xformers")
    missing = [name for name in ("flash", "sage") if name not in dispatch.available_backends()]
    for name in missing:
        package = dispatch.BACKENDS[name][1]
        with pytest.raises(dispatch.AttentionBackendError, match=f"needs the '{package}' package"):
            dispatch.set_attention_backend(name)
    assert dispatch.get_attention_backend() == "sdpa"
    if missing:
        with pytest.raises(GeneratorError, match=f"needs the '{dispatch.BACKENDS[missing[0]][1]}'"):
            LiveActPipeline.from_config(TINY, execution=ExecutionConfig(attention=missing[0]))


# -- FP8 GEMM ---------------------------------------------------------------------------------------------------


def test_fp8_linear_is_e4m3_per_channel_and_close_to_the_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    fp8 = FP8Linear.from_linear(linear)
    assert fp8.weight.dtype == FP8 and fp8.weight_scale.shape == (48, 1)
    x = torch.randn(3, 7, 64)   # 21 rows: padded to the GEMM's alignment inside
    assert fp8(x).shape == (3, 7, 48)
    assert relative_error(fp8(x), linear(x)) < 0.05


def test_fp8_gemm_latents_against_the_model_dtype_path(trained_dit):
    """The quality guard: the whole stream with every block's linear layers as FP8 GEMMs."""
    quantized = copy.deepcopy(trained_dit)
    replaced = quantize_linears(quantized)
    per_block = 4 + 6 + 3 + 2   # self-attention q k v o, cross-attention q k v o k_img v_img, audio q kv proj, FFN
    assert replaced == per_block * TINY.dit.num_layers
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.blocks.modules())
    errors = [relative_error(a, b) for a, b in zip(stream_latents(quantized, 4), stream_latents(trained_dit, 4))]
    print(f"FP8 GEMM latents vs the model dtype: relative errors per block {[round(e, 4) for e in errors]}")
    assert 0 < max(errors) < FP8_GEMM_TOLERANCE


def talk(pipeline: LiveActPipeline, blocks: int = 1):
    """``blocks`` blocks of one NPC saying a tone: its frames [T, H, W, 3] and its memory."""
    png = io.BytesIO()
    Image.new("RGB", (80, 80), (150, 110, 90)).save(png, "PNG")
    character = pipeline.prepare_character(CharacterRecord("villager", "a villager talking"), png.getvalue(),
                                           SIZE, SIZE)
    memory = pipeline.new_memory("npc", "villager", SIZE, SIZE, 20, seed=3)
    frames = []
    for _ in range(blocks):
        consume, lookahead = pipeline.block_audio_samples(memory)
        voice = 0.3 * np.sin(np.arange(consume + lookahead, dtype=np.float32) * 0.07)
        frames.append(pipeline.generate_block(memory, character, voice))
    return np.concatenate(frames), memory


def test_the_pipeline_runs_with_fp8_gemm_and_makes_frames():
    pipeline = LiveActPipeline.from_config(TINY, weights=shipped_weights("tiny"),
                                           execution=ExecutionConfig(gemm="fp8"))
    assert any(isinstance(m, FP8Linear) for m in pipeline.dit.modules())
    frames, _ = talk(pipeline)
    assert frames.shape == (21, SIZE, SIZE, 3) and np.ptp(frames) > 0


# -- decoder precision --------------------------------------------------------------------------------------------


def test_bf16_decode_gives_the_float32_frames_within_a_level_and_the_same_memory_file():
    """The quality guard of the bf16 decoder, over 4 blocks of the shipped tiny model; its NPC memory has the
    float32 one's tensors (names, shapes, dtypes), so a snapshot moves between machines that decode either way."""
    weights = shipped_weights("tiny")
    results = {precision: talk(LiveActPipeline.from_config(
        TINY, weights=weights, execution=ExecutionConfig(decode_precision=precision)), blocks=4)
        for precision in ("float32", "bfloat16")}
    (full, full_memory), (half, half_memory) = results["float32"], results["bfloat16"]
    difference = np.abs(full.astype(np.int16) - half.astype(np.int16))
    print(f"bf16 decode vs float32: mean {difference.mean():.3f}, max {difference.max()} levels of 255")
    assert full.shape == half.shape == (21 + 3 * 32, SIZE, SIZE, 3)
    assert 0 < difference.mean() < 0.5 and difference.max() <= 8     # measured here: mean 0.11, max 1
    def layout(memory):
        return {name: (tensor.shape, tensor.dtype) for name, tensor in memory.state_tensors().items()}

    assert layout(full_memory) == layout(half_memory) and full_memory.nbytes() == half_memory.nbytes()


def test_decode_precision_auto_takes_bf16_on_gpus_and_on_cpus_with_bf16_units():
    bf16_units = "amx_bf16" in CPU_FLAGS or "avx512_bf16" in CPU_FLAGS
    assert cpu_has_bf16_units() == bf16_units or not CPU_FLAGS
    assert decode_autocast_dtype("auto", "cpu") == (torch.bfloat16 if cpu_has_bf16_units() else None)
    assert decode_autocast_dtype("auto", "cuda:0") == torch.bfloat16
    assert decode_autocast_dtype("float32", "cuda:0") is None
    assert decode_autocast_dtype("float32", "cpu") is None
    assert decode_autocast_dtype("bfloat16", "cuda:1") == torch.bfloat16


# -- torch.compile ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_blocks_give_the_eager_latents(trained_dit):
    """The quality guard of torch.compile: the first block (one compiled graph) against eager."""
    compiled = copy.deepcopy(trained_dit)
    compiled.compile_blocks()
    assert relative_error(stream_latents(compiled, 1)[0], stream_latents(trained_dit, 1)[0]) < 1e-4


def test_compile_on_a_cpu_compiles_the_dit_and_leaves_the_decoder_eager():
    """On CPUs the compiled decoder was the slower (``avatar-backend bench --compiled``), so ``--compile`` there
    compiles the DiT's blocks alone; on GPUs the decoder too. Nothing compiles before the first block runs."""
    pipeline = LiveActPipeline.from_config(TINY, execution=ExecutionConfig(compile=True))
    # torch's Module.compile() keeps the compiled callable here; None is a module that runs eager.
    assert all(block._compiled_call_impl is not None for block in pipeline.dit.blocks)
    assert pipeline.vae.decoder._compiled_call_impl is None
    assert compiles_decoder("cuda:0") and not compiles_decoder("cpu")


@pytest.mark.slow
def test_compiled_decoder_gives_the_eager_frames_over_a_stream():
    """The quality guard of the compiled decoder (serving's ``--compile``): a stream of three blocks, the first
    latent alone and the passes after it (each its own graph), against eager, both float32."""
    eager = LiveActPipeline.from_config(TINY, weights=shipped_weights("tiny")).vae
    compiled = copy.deepcopy(eager)
    compiled.compile_decoder()
    side = SIZE // TINY.vae.spatial_stride
    first, later = TINY.sampler.block_sizes
    sizes = [first, later, later]
    latents = torch.randn(1, TINY.vae.z_dim, sum(sizes), side, side, generator=torch.Generator().manual_seed(5))
    blocks = latents.split(sizes, dim=2)

    def stream(vae):
        state = vae.init_decoder_state(SIZE, SIZE)
        with torch.inference_mode():
            return torch.cat([decode_block(vae, block, state, None) for block in blocks], dim=2)

    expected, actual = stream(eager), stream(compiled)
    assert actual.shape == expected.shape == (1, 3, 21 + 2 * 32, SIZE, SIZE)
    print(f"compiled decoder vs eager: max {float((actual - expected).abs().max()):.2e} (frames in [-1, 1])")
    assert float((actual - expected).abs().max()) < 1e-3
    # A session at another frame size is a graph of its own (torch's automatic dynamic shapes failed to lower).
    bigger = torch.randn(1, TINY.vae.z_dim, 1 + later, 2 * side, 2 * side, generator=torch.Generator().manual_seed(6))
    frames = {}
    for name, vae in (("eager", eager), ("compiled", compiled)):
        state = vae.init_decoder_state(2 * SIZE, 2 * SIZE)
        with torch.inference_mode():
            frames[name] = torch.cat([decode_block(vae, block, state, None)
                                      for block in bigger.split([1, later], dim=2)], dim=2)
    assert float((frames["compiled"] - frames["eager"]).abs().max()) < 1e-3


def test_execution_config_refuses_unknown_choices():
    with pytest.raises(ValueError, match="gemm must be one of"):
        ExecutionConfig(gemm="int8")
    with pytest.raises(ValueError, match="decode_precision must be one of"):
        ExecutionConfig(decode_precision="float16")
    for factor in (0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="prompt_guidance must be a finite factor >= 1"):
            ExecutionConfig(prompt_guidance=factor)
    with pytest.raises(ValueError, match="attention must be one of"):
        dataclasses.replace(ExecutionConfig(), attention="xformers")
