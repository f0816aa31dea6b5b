"""The light streaming decoder (VAEConfig.decoder = "light"): block-by-block decoding is the whole clip's
decoding, the first latent gives one frame as the Wan decoder's does, and its state has a size known up front."""

import dataclasses

import pytest
import torch

from avatar_backend.generator.config import TINY
from avatar_backend.generator.vae import WanVAE, decoder_state_bytes

CONFIG = dataclasses.replace(TINY.vae, decoder="light")


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return WanVAE(CONFIG).eval()


@torch.inference_mode()
def test_block_by_block_decoding_equals_one_decode_of_the_whole_stream(vae):
    generator = torch.Generator().manual_seed(1)
    blocks = [torch.randn(1, 16, n, 4, 6, generator=generator) for n in (6, 8, 8)]
    whole = vae.decode(torch.cat(blocks, dim=2))
    state = vae.init_decoder_state(48, 32)
    streamed = torch.cat([vae.decode_stream(b, state) for b in blocks], dim=2)
    assert whole.shape == (1, 3, 1 + 4 * 21, 32, 48)
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-5)
    # Several latents per decoder pass compute the same function.
    state = vae.init_decoder_state(48, 32)
    batched = torch.cat([vae.decode_stream(b, state, latents_per_pass=8) for b in blocks], dim=2)
    torch.testing.assert_close(batched, whole, rtol=1e-4, atol=1e-4)


@torch.inference_mode()
def test_the_state_carries_the_past_and_has_its_size_from_the_start(vae):
    generator = torch.Generator().manual_seed(2)
    first, second = (torch.randn(1, 16, n, 4, 4, generator=generator) for n in (6, 8))
    state = vae.init_decoder_state(32, 32)
    expected = decoder_state_bytes(CONFIG, 32, 32)
    assert state.nbytes() == expected
    vae.decode_stream(first, state)
    continued = vae.decode_stream(second, state)
    assert state.nbytes() == expected
    fresh = vae.decode_stream(second, vae.init_decoder_state(32, 32))
    assert (continued[:, :, 4:] - fresh[:, :, 1:]).abs().max() > 1e-3  # the past shows in the next block


def test_the_light_decoder_is_several_times_smaller_than_the_wan_decoder():
    light = sum(p.numel() for p in WanVAE(CONFIG).decoder.parameters())
    wan = sum(p.numel() for p in WanVAE(dataclasses.replace(CONFIG, decoder="wan")).decoder.parameters())
    assert light < wan
    with pytest.raises(ValueError, match="decoder must be one of"):
        dataclasses.replace(CONFIG, decoder="fast")


def test_a_narrower_decoder_keeps_the_encoder_it_was_trained_on():
    # model/train's decoder stage trains a decoder narrower than the encoder's mirror on that encoder's latents.
    mirror = WanVAE(dataclasses.replace(CONFIG, light_decoder_dims=()))
    narrow = WanVAE(dataclasses.replace(CONFIG, light_decoder_dims=(32, 16, 8, 4)))

    def shapes(module):
        return {key: value.shape for key, value in module.state_dict().items()}

    assert shapes(narrow.encoder) == shapes(mirror.encoder) and shapes(narrow.conv1) == shapes(mirror.conv1)
    assert narrow.decoder.head.in_channels == 4 and mirror.decoder.head.in_channels == CONFIG.light_dims[-1]
    assert narrow.config.light_decoder_widths == (32, 16, 8, 4)
    assert mirror.config.light_decoder_widths == CONFIG.light_dims
    assert sum(p.numel() for p in narrow.decoder.parameters()) < sum(p.numel() for p in mirror.decoder.parameters())
    with pytest.raises(ValueError, match="light_decoder_dims needs one width per resolution level"):
        dataclasses.replace(CONFIG, light_decoder_dims=(32, 16))
