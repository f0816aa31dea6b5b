"""The DiT and the streaming loop reproduce the reference implementation's vectors (golden/dit_stream.safetensors)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open

from avatar_backend.generator.config import DiTConfig, SamplerConfig
from avatar_backend.generator.convkv import ConvKVMemory
from avatar_backend.generator.dit import WanModel
from avatar_backend.generator.sampler import ReplayNoise, denoise_block
from avatar_backend.generator.schedule import StreamSchedule


def configs_from_metadata(meta: dict, clip_tokens: int) -> tuple[DiTConfig, SamplerConfig]:
    """The vector file's config keys -> our configs (only the keys the file sets; the rest keep their defaults)."""
    dit = DiTConfig(
        dim=meta["dim"], num_heads=meta["heads"], num_layers=meta["layers"], ffn_dim=meta["ffn"],
        text_dim=meta["text_dim"], text_len=meta["text_len"], freq_dim=meta["freq_dim"],
        context_tokens=meta["out_tokens"], output_dim=meta["audio_dim"], intermediate_dim=meta["inter"],
        clip_dim=meta["clip_dim"], clip_tokens=clip_tokens, audio_layers=meta["wav_layers"],
        audio_channels=meta["wav_ch"],
    )
    sampler = SamplerConfig(
        block_sizes=tuple(meta["block_sizes"]), timesteps=tuple(meta["timesteps"]),
        memory_grouping=meta["memory_grouping"],
        v_compression="k_conv" if meta["v_compress_uses_k_conv"] else "v_conv",
        audio_cfg=float(meta["cfg"]),
    )
    return dit, sampler


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


@pytest.fixture(scope="module")
def golden(golden_dir):
    path = golden_dir / "dit_stream.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["config"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    return meta, tensors


def test_stream_matches_reference(golden):
    meta, tensors = golden
    if meta.get("dtype", "float32") != "float32":
        pytest.skip(f"vectors recorded in {meta['dtype']}; this test compares float32 runs")
    dit_config, sampler = configs_from_metadata(meta, clip_tokens=tensors["clip_fea"].shape[1])
    torch.manual_seed(0)

    model = WanModel(dit_config)
    state = {name.removeprefix("model."): t for name, t in tensors.items() if name.startswith("model.")}
    model.load_state_dict(state, strict=True)
    if meta.get("mean_memory"):
        # The reference's mean pooling is the conv with constant 1/kernel weights on K and V.
        for block in model.blocks:
            block.self_attn.memory_proj_k.weight.data.fill_(1.0 / dit_config.memory_kernel)
        sampler = dataclasses.replace(sampler, v_compression="k_conv")
    model.eval()

    frame_tokens = meta["frame_tokens"]
    assert frame_tokens == (meta["lat_h"] // dit_config.patch_size[1]) * (meta["lat_w"] // dit_config.patch_size[2])
    schedule = StreamSchedule(sampler, dit_config, frame_tokens)
    memory = ConvKVMemory.allocate_for(dit_config, sampler, frame_tokens)

    with torch.no_grad():
        context = model.encode_context(tensors["context"], tensors["clip_fea"])
        for b in range(meta["blocks"]):
            plan = schedule.block(b)
            assert plan.audio_frames == meta["audio_window_frames"]
            recorded = [tensors[f"block{b}.noise"]] + [
                tensors[f"block{b}.step{i}.renoise"] for i in range(sampler.num_steps)
            ]
            noise = ReplayNoise(recorded)
            result = denoise_block(
                model, memory, plan, y=tensors["y"], context=context,
                audio_window=schedule.audio_window(tensors["audio_seq"], plan), noise=noise, sampler=sampler,
            )
            assert noise.remaining == 0, "the sampler must draw exactly 1 + num_steps noise tensors per block"

            errors = {}
            for i, velocity in enumerate(result.velocities):
                errors[f"block{b}.step{i}.velocity"] = max_rel_error(velocity[0], tensors[f"block{b}.step{i}.velocity"])
            errors[f"block{b}.x0"] = max_rel_error(result.x0[0], tensors[f"block{b}.x0"])
            for i, cache in enumerate(memory.steps):
                for kind in ("k", "v"):
                    expected = tensors[f"block{b}.cache.step{i}.layer0.{kind}"]
                    layer0 = getattr(cache, kind)[0]  # layer 0, a batch of one
                    errors[f"block{b}.cache.step{i}.layer0.{kind}"] = max_rel_error(layer0, expected)
            worst = max(errors, key=errors.get)
            assert errors[worst] <= 1e-4, f"{worst}: max abs error {errors[worst]:.2e} of max |reference|"
