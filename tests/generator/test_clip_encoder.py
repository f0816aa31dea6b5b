"""The CLIP ViT-H/14 image encoder: loading Wan's own ``.pth`` (key map, ignored tensors, strict checks) and its
output against a plain-torch statement of Wan2.1's VisionTransformer forward with ``use_31_block=True``."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionModel

from avatar_backend.generator.checkpoint import CheckpointError
from avatar_backend.generator.config import LIVEACT_18B
from avatar_backend.generator.image_encoder import (
    CLIP_MEAN,
    CLIP_STD,
    ClipVisionEncoder,
    build_image_encoder,
    load_clip_vision,
)
from published_files import wan_clip_state

# The published tower's layout at toy sizes: 2 x 2 patches + CLS, 3 blocks (the output is that of block 2).
CONFIG = dataclasses.replace(LIVEACT_18B.image_encoder, image_size=28, patch_size=14, tokens=5, dim=32, heads=4,
                             layers=3, mlp_dim=64, path="clip.pth")
EPS = 1e-5


def wan_visual(state, image, config=CONFIG, blocks: int | None = None, swap_qk: bool = False) -> torch.Tensor:
    """Wan's CLIPModel.visual on one [3, H, W] image in [-1, 1], in plain torch: bicubic resize, [-1, 1] ->
    [0, 1], CLIP normalisation, then VisionTransformer.forward(use_31_block=True): conv patches (raster order),
    CLS first, + positions, pre_norm, the first ``layers - 1`` pre-norm blocks (fused qkv viewed as
    [b, s, 3, heads, head_dim], softmax(q k^T / sqrt(head_dim)), exact GELU MLP), no final norm."""
    blocks = config.layers - 1 if blocks is None else blocks
    s = {k: v.double() for k, v in state.items()}
    # The resize in float32 (Wan resizes in the input's dtype), the rest in float64.
    x = F.interpolate(image[None].float(), size=(config.image_size,) * 2, mode="bicubic", align_corners=False).double()
    mean = torch.tensor(CLIP_MEAN, dtype=torch.double).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.double).view(1, 3, 1, 1)
    x = (x * 0.5 + 0.5 - mean) / std
    x = F.conv2d(x, s["visual.patch_embedding.weight"], stride=config.patch_size).flatten(2).permute(0, 2, 1)
    b, d, n = x.shape[0], config.dim, config.heads
    x = torch.cat([s["visual.cls_embedding"].expand(b, -1, -1), x], dim=1) + s["visual.pos_embedding"]

    def norm(t, prefix):
        return F.layer_norm(t, (d,), s[f"{prefix}.weight"], s[f"{prefix}.bias"], EPS)

    x = norm(x, "visual.pre_norm")
    for i in range(blocks):
        p = f"visual.transformer.{i}"
        h = norm(x, f"{p}.norm1")
        q, k, v = F.linear(h, s[f"{p}.attn.to_qkv.weight"], s[f"{p}.attn.to_qkv.bias"]).view(
            b, -1, 3, n, d // n).unbind(2)
        if swap_qk:
            q, k = k, q
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // n)
        h = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, -1, d)
        x = x + F.linear(h, s[f"{p}.attn.proj.weight"], s[f"{p}.attn.proj.bias"])
        h = F.gelu(F.linear(norm(x, f"{p}.norm2"), s[f"{p}.mlp.0.weight"], s[f"{p}.mlp.0.bias"]))
        x = x + F.linear(h, s[f"{p}.mlp.2.weight"], s[f"{p}.mlp.2.bias"])
    return x.float()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def image(h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture
def checkpoint(tmp_path):
    state = wan_clip_state(CONFIG)
    path = tmp_path / CONFIG.path
    torch.save(state, path)
    return path, state


@torch.inference_mode()
def test_loaded_tower_equals_wan_penultimate_block_output(checkpoint):
    path, state = checkpoint
    encoder = load_clip_vision(path, CONFIG, dtype=torch.float32)
    assert isinstance(encoder, ClipVisionEncoder) and isinstance(encoder.vision, CLIPVisionModel)
    assert len(encoder.vision.encoder.layers) == CONFIG.layers - 1
    picture = image(CONFIG.image_size, CONFIG.image_size)
    out = encoder(picture)
    reference = wan_visual(state, picture)
    assert out.shape == (1, CONFIG.tokens, CONFIG.dim)
    assert relative_error(out, reference) <= 1e-5
    # The comparison tells the neighbours apart: q and k swapped, or another block's output.
    assert relative_error(out, wan_visual(state, picture, swap_qk=True)) > 1e-2
    for blocks in (CONFIG.layers - 2, CONFIG.layers):
        assert relative_error(out, wan_visual(state, picture, blocks=blocks)) > 1e-2
    # A batch gives each image's own result.
    batch = torch.stack([picture, image(CONFIG.image_size, CONFIG.image_size, seed=2)])
    torch.testing.assert_close(encoder(batch)[:1], out, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_input_is_resized_and_normalised_as_the_spec_says(checkpoint):
    path, state = checkpoint
    encoder = load_clip_vision(path, CONFIG, dtype=torch.float32)
    picture = image(64, 48, seed=3)
    out = encoder(picture)
    assert out.shape == (1, CONFIG.tokens, CONFIG.dim)
    assert relative_error(out, wan_visual(state, picture)) <= 1e-5
    # Not the other plausible transforms: no [-1, 1] -> [0, 1] step, or a bilinear resize.
    unshifted = wan_visual(state, picture * 2 - 1)   # = normalising the raw [-1, 1] values
    assert relative_error(out, unshifted) > 1e-2
    resized = F.interpolate(picture[None], size=(28, 28), mode="bilinear", align_corners=False)[0]
    assert relative_error(out, wan_visual(state, resized)) > 1e-3


def test_a_missing_key_is_named_with_the_count(checkpoint):
    path, state = checkpoint
    del state["visual.transformer.1.norm2.bias"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing.*1: encoder\.layers\.1\.layer_norm2\.bias"):
        load_clip_vision(path, CONFIG, dtype=torch.float32)
    # The fused qkv stands for three tensors of the model.
    state = wan_clip_state(CONFIG)
    del state["visual.transformer.0.attn.to_qkv.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing.*3: encoder\.layers\.0\.self_attn\.k_proj\.weight"):
        load_clip_vision(path, CONFIG, dtype=torch.float32)


def test_an_unexpected_key_is_named_with_the_count(checkpoint):
    path, state = checkpoint
    state["visual.transformer.0.attn.extra"] = torch.zeros(3)
    state["visual.patch_embedding.bias"] = torch.zeros(CONFIG.dim)   # the tower was built with pre_norm off
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"not parameters.*2: visual\.patch_embedding\.bias, "
                                              r"visual\.transformer\.0\.attn\.extra"):
        load_clip_vision(path, CONFIG, dtype=torch.float32)


def test_a_tower_without_its_last_block_is_rejected(checkpoint):
    """With a block short, the file's own penultimate output would be that of another block."""
    path, state = checkpoint
    state = {k: v for k, v in state.items() if not k.startswith(f"visual.transformer.{CONFIG.layers - 1}.")}
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="fewer than 3 blocks"):
        load_clip_vision(path, CONFIG, dtype=torch.float32)


@pytest.mark.parametrize("key, shape", [
    ("visual.pos_embedding", (1, CONFIG.tokens + 1, CONFIG.dim)),
    ("visual.transformer.1.attn.to_qkv.weight", (3 * CONFIG.dim, CONFIG.dim + 1)),
    ("visual.transformer.0.mlp.0.weight", (CONFIG.mlp_dim // 2, CONFIG.dim)),
])
def test_a_wrong_shape_is_named(checkpoint, key, shape):
    path, state = checkpoint
    state[key] = torch.zeros(shape)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=rf"{key.replace('.', '[.]')} is \({shape[0]}, {shape[1]}"):
        load_clip_vision(path, CONFIG, dtype=torch.float32)


@torch.inference_mode()
def test_loading_puts_every_tensor_on_the_device_in_the_dtype(checkpoint):
    path, state = checkpoint
    encoder = load_clip_vision(path, CONFIG, dtype=torch.bfloat16)
    assert not encoder.training
    for name, tensor in (*encoder.named_parameters(), *encoder.named_buffers()):
        assert not tensor.is_meta and tensor.device.type == "cpu", name
    for name, parameter in encoder.named_parameters():
        assert parameter.dtype == torch.bfloat16 and not parameter.requires_grad, name
    # The non-persistent buffer that the state dict does not carry is valid again.
    position_ids = encoder.vision.embeddings.position_ids
    assert torch.equal(position_ids, torch.arange(CONFIG.tokens)[None])
    picture = image(40, 40, seed=4)
    out = encoder(picture)
    assert out.dtype == torch.bfloat16 and out.shape == (1, CONFIG.tokens, CONFIG.dim)
    assert relative_error(out, wan_visual(state, picture)) < 0.05


@torch.inference_mode()
def test_build_image_encoder_gives_a_random_clip_tower():
    torch.manual_seed(0)
    encoder = build_image_encoder(CONFIG).eval()
    assert isinstance(encoder, ClipVisionEncoder)
    features = encoder(image(50, 30))
    assert features.shape == (1, CONFIG.tokens, CONFIG.dim) and features.isfinite().all()
    assert not torch.allclose(features, encoder(image(50, 30, seed=5)))
    with pytest.raises(ValueError, match="tokens"):
        build_image_encoder(dataclasses.replace(CONFIG, tokens=257))
