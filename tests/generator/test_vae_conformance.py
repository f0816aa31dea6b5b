"""The Wan2.1 VAE reproduces the reference vectors (golden/vae.safetensors) and streams across blocks."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from avatar_backend.generator.config import TINY, VAEConfig
from avatar_backend.generator.vae import CausalCache, WanVAE, decoder_state_bytes, frames_to_uint8

TOLERANCE = 1e-4  # max abs error relative to the reference tensor's max abs value


def config_from_metadata(meta: dict) -> VAEConfig:
    return VAEConfig(
        base_dim=meta["dim"], z_dim=meta["z_dim"], dim_mult=tuple(meta["dim_mult"]),
        num_res_blocks=meta["num_res_blocks"], temporal_downsample=tuple(meta["temperal_downsample"]),
        latent_mean=tuple(meta["latent_mean"]), latent_std=tuple(meta["latent_std"]),
    )


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    error = float((actual - expected).abs().max() / expected.abs().max())
    assert error <= TOLERANCE, f"max abs error {error:.2e} of the reference's max abs value"


@pytest.fixture(scope="module")
def golden(golden_dir):
    with safe_open(str(golden_dir / "vae.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["config"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    config = config_from_metadata(meta)
    weights = {name.removeprefix("vae."): t for name, t in tensors.items() if name.startswith("vae.")}

    def load_vae() -> WanVAE:
        vae = WanVAE(config).eval()
        vae.load_state_dict(weights, strict=True)
        return vae

    height, width = tensors["decode.continuous"].shape[-2:]
    return SimpleNamespace(config=config, tensors=tensors, load_vae=load_vae, vae=load_vae(), width=width, height=height)


@torch.inference_mode()
def test_encode_matches_reference(golden):
    assert_matches(golden.vae.encode(golden.tensors["video"]), golden.tensors["encode.mu"])


@torch.inference_mode()
def test_decode_first_block_matches_reference(golden):
    latents = golden.tensors["latents.block0"]
    frames = golden.vae.decode(latents)
    assert_matches(frames, golden.tensors["decode.block0"])

    # Caches pre-allocated as zeros decode exactly like caches filled on first use.
    state = golden.vae.init_decoder_state(golden.width, golden.height)
    assert torch.equal(golden.vae.decode_stream(latents, state), frames)


@pytest.mark.parametrize("latents_per_pass", [1, 8])
@torch.inference_mode()
def test_streaming_decoder_equals_continuous_decode(golden, latents_per_pass):
    vae, tensors = golden.vae, golden.tensors
    state = vae.init_decoder_state(golden.width, golden.height)
    first = vae.decode_stream(tensors["latents.block0"], state, latents_per_pass)
    second = vae.decode_stream(tensors["latents.block1"], state, latents_per_pass)
    assert (first.shape[2], second.shape[2]) == (21, 32)
    assert_matches(torch.cat([first, second], dim=2), tensors["decode.continuous"])


@torch.inference_mode()
def test_reference_overlap_seam_is_reproducible(golden):
    """The reference's seam (re-decode 3 latents from a fresh cache, drop 9 frames) is a plain decode here."""
    latents = torch.cat([golden.tensors["latents.block0"][:, :, -3:], golden.tensors["latents.block1"]], dim=2)
    assert_matches(golden.vae.decode(latents)[:, :, 9:], golden.tensors["decode.block1_overlap"])


@torch.inference_mode()
def test_snapshot_restores_bit_exactly(golden):
    tensors = golden.tensors
    vae = golden.vae
    state = vae.init_decoder_state(golden.width, golden.height)
    vae.decode_stream(tensors["latents.block0"], state)
    snapshot = save_bytes({k: v.contiguous() for k, v in state.to_tensors().items()})
    continued = vae.decode_stream(tensors["latents.block1"], state)

    restored = CausalCache.from_tensors(load_bytes(snapshot))
    resumed = golden.load_vae().decode_stream(tensors["latents.block1"], restored)
    assert torch.equal(resumed, continued)
    assert restored.nbytes() == state.nbytes()

    # Without the snapshot the block decodes differently (as a new stream of 29 frames), so the comparison
    # above has something to catch.
    fresh = vae.decode_stream(tensors["latents.block1"], vae.init_decoder_state(golden.width, golden.height))
    assert (fresh - continued[:, :, -fresh.shape[2] :]).abs().max() > 1e-2


@torch.inference_mode()
def test_state_size_is_constant_and_known_in_advance(golden):
    vae = golden.vae
    width, height = 48, 32  # not square, so a swapped width/height shows
    expected = decoder_state_bytes(golden.config, width, height)
    generator = torch.Generator().manual_seed(0)
    blocks = [torch.randn(1, 16, n, height // 8, width // 8, generator=generator) for n in (6, 8, 8, 8, 8, 8)]

    # Pre-allocated: full size from the start, and the same tensor shapes after every block.
    state = vae.init_decoder_state(width, height)
    assert state.nbytes() == expected
    shapes = {name: t.shape for name, t in state.to_tensors().items()}
    for latents in blocks:
        vae.decode_stream(latents, state, latents_per_pass=8)
        assert state.nbytes() == expected
        assert {name: t.shape for name, t in state.to_tensors().items()} == shapes

    # Filled on first use: full size once the first block has run.
    lazy = CausalCache()
    vae.decode_stream(blocks[0], lazy, latents_per_pass=8)
    assert {name: t.shape for name, t in lazy.to_tensors().items()} == shapes


def test_state_size_scales_with_frame_area_and_dtype():
    config = TINY.vae
    small = decoder_state_bytes(config, 128, 128)
    assert decoder_state_bytes(config, 256, 256) - 1 == 4 * (small - 1)
    assert decoder_state_bytes(config, 128, 128, torch.bfloat16) - 1 == (small - 1) // 2


@torch.inference_mode()
def test_reference_image_conditioning(golden):
    vae = golden.vae
    image = golden.tensors["video"][0, :, 0]
    y = vae.encode_reference_image(image)
    h, w = golden.height // 8, golden.width // 8
    assert y.shape == (1, 4 + 16, 14, h, w)
    assert torch.equal(y[:, :4, 0], torch.ones(1, 4, h, w))
    assert torch.equal(y[:, :4, 1:], torch.zeros(1, 4, 13, h, w))

    video = torch.zeros(1, 3, 53, golden.height, golden.width)
    video[:, :, 0] = image
    assert torch.equal(y[:, 4:], vae.encode(video))


def test_frames_to_uint8_clamps_and_truncates():
    video = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0]).view(1, 1, 6, 1, 1).expand(1, 3, 6, 1, 1)
    frames = frames_to_uint8(video)
    assert frames.shape == (1, 6, 1, 1, 3) and frames.dtype == torch.uint8
    assert frames[0, :, 0, 0, 0].tolist() == [0, 0, 127, 254, 255, 255]
    assert torch.equal(frames_to_uint8(video[0]), frames[0])


@torch.inference_mode()
def test_tiny_config_shapes():
    vae = WanVAE(TINY.vae).eval()
    y = vae.encode_reference_image(torch.rand(3, 64, 64) * 2 - 1)
    assert y.shape == (1, 20, 14, 8, 8)
    state = vae.init_decoder_state(64, 64)
    assert vae.decode_stream(y[:, 4:, :6], state).shape == (1, 3, 21, 64, 64)
    assert vae.decode_stream(y[:, 4:, 6:], state).shape == (1, 3, 32, 64, 64)
    with pytest.raises(ValueError, match="do not match"):
        vae.decode_stream(torch.zeros(1, 16, 8, 4, 4), state)


def test_the_rms_norm_under_bf16_autocast_is_the_float32_norm_rounded_once():
    # Serving's bf16 decode and training's bf16 VAE stages run the norms of bf16 activations: their sum of squares
    # in bf16 would round several times over; computed in float32, each output is the float32 norm's value rounded
    # once to bf16 (relative error at most 2^-8, half its 7-bit mantissa's step).
    from avatar_backend.generator.vae import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(32)
    with torch.no_grad():
        norm.gamma.uniform_(0.5, 1.5)
    x = (torch.randn(2, 32, 3, 8, 8) * 3.0).to(torch.bfloat16)
    exact = norm(x.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = norm(x)
    assert rounded.dtype == torch.bfloat16
    torch.testing.assert_close(rounded.float(), exact, rtol=2.0**-8, atol=0.0)
    # In float32 the norm is the formula itself.
    expected = x.float() / x.float().square().sum(1, keepdim=True).sqrt() * 32**0.5 * norm.gamma
    torch.testing.assert_close(exact, expected, rtol=1e-6, atol=0.0)
