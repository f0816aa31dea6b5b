"""The small learned encoders of the tiny model: shapes, streaming audio features, trimmed text."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from avatar_backend.generator.audio_encoder import AudioEncoder, LearnedAudioEncoder, build_audio_encoder
from avatar_backend.generator.config import LIVEACT_18B, TINY
from avatar_backend.generator.image_encoder import ClipVisionEncoder, build_image_encoder
from avatar_backend.generator.text_encoder import build_text_encoder, tokenize

SAMPLE_RATE = TINY.audio_encoder.sample_rate


@pytest.fixture(scope="module")
def audio_encoder() -> LearnedAudioEncoder:
    torch.manual_seed(0)
    return build_audio_encoder(TINY.audio_encoder).eval()


def speechlike(seconds: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    samples = int(seconds * SAMPLE_RATE)
    envelope = torch.rand(samples // 800 + 1, generator=generator).repeat_interleave(800)[:samples]
    return 0.3 * envelope * torch.randn(samples, generator=generator)


def test_audio_features_shape(audio_encoder):
    assert isinstance(audio_encoder, AudioEncoder)
    config = TINY.audio_encoder
    for fps, seconds, frames in ((20, 2.0, 40), (20, 2.03, 40), (25, 1.0, 25), (30, 1.0, 30)):
        features = audio_encoder.features(speechlike(seconds), fps)
        assert features.shape == (frames, config.layers, config.channels)
    assert (TINY.dit.audio_layers, TINY.dit.audio_channels) == (config.layers, config.channels)


@pytest.mark.parametrize("fps", [20, 25])
@torch.inference_mode()
def test_audio_features_of_a_window_equal_those_of_the_whole_stream(audio_encoder, fps):
    """The worker computes features per block on a rolling buffer; with enough history they must not change."""
    pcm = speechlike(6.0)
    samples_per_frame = SAMPLE_RATE // fps
    stream = audio_encoder.features(pcm, fps)
    context = audio_encoder.context_frames(fps)
    for start in (5, 40):
        window = audio_encoder.features(pcm[start * samples_per_frame : (start + 60) * samples_per_frame], fps)
        torch.testing.assert_close(window[context:], stream[start + context : start + 60], rtol=1e-5, atol=1e-5)
        # The stated context is needed: the frame before it still sees the buffer's edge.
        assert not torch.allclose(window[context - 1], stream[start + context - 1], atol=1e-4)


@torch.inference_mode()
def test_audio_features_do_not_look_ahead(audio_encoder):
    pcm = speechlike(3.0)
    changed = pcm.clone()
    changed[40 * 800 :] = speechlike(3.0, seed=1)[40 * 800 :]
    before, after = audio_encoder.features(pcm, 20), audio_encoder.features(changed, 20)
    assert torch.equal(before[:40], after[:40])
    assert not torch.allclose(before[40], after[40])


def test_audio_encoder_kinds():
    with pytest.raises(ValueError, match="unknown audio encoder"):
        build_audio_encoder(dataclasses.replace(TINY.audio_encoder, kind="mfcc"))


@torch.inference_mode()
def test_image_encoder_shape():
    torch.manual_seed(0)
    encoder = build_image_encoder(TINY.image_encoder).eval()
    features = encoder(torch.rand(3, 100, 80) * 2 - 1)
    assert features.shape == (1, TINY.image_encoder.tokens, TINY.image_encoder.dim)
    assert (TINY.dit.clip_tokens, TINY.dit.clip_dim) == (TINY.image_encoder.tokens, TINY.image_encoder.dim)
    # Different images give different features (the encoder is not ignoring its input).
    assert not torch.allclose(features, encoder(torch.rand(3, 100, 80) * 2 - 1))


def test_image_encoder_rejects_a_token_count_that_does_not_fit():
    with pytest.raises(ValueError, match="tokens"):
        build_image_encoder(dataclasses.replace(TINY.image_encoder, tokens=257))


@torch.inference_mode()
def test_image_encoder_builds_a_small_clip_tower():
    """The published kind at toy sizes (the full ViT-H/14 is too big to build here)."""
    torch.manual_seed(0)
    config = dataclasses.replace(LIVEACT_18B.image_encoder, image_size=28, patch_size=14, tokens=5, dim=32,
                                 layers=3, heads=4, mlp_dim=64)
    encoder = build_image_encoder(config).eval()
    assert isinstance(encoder, ClipVisionEncoder)
    assert encoder(torch.rand(3, 100, 80) * 2 - 1).shape == (1, config.tokens, config.dim)


@torch.inference_mode()
def test_text_encoder_trims_to_the_token_count():
    torch.manual_seed(0)
    config = TINY.text_encoder
    encoder = build_text_encoder(config).eval()
    assert encoder.encode("smile").shape == (len("smile") + 1, config.dim)  # bytes + end token
    assert encoder.encode("").shape == (1, config.dim)
    assert encoder.encode("wave 👋").shape == (len("wave 👋".encode()) + 1, config.dim)  # UTF-8 bytes, not characters
    long_prompt = "the character laughs and then looks surprised " * 4
    assert encoder.encode(long_prompt).shape == (config.max_len, config.dim)
    assert tokenize(long_prompt, config.max_len)[-1] == tokenize("", config.max_len)[0]  # the end token survives
    assert TINY.dit.text_dim == config.dim


@torch.inference_mode()
def test_text_encoder_is_deterministic():
    torch.manual_seed(0)
    encoder = build_text_encoder(TINY.text_encoder).eval()
    first = encoder.encode("nod slowly")
    encoder.encode("something else entirely")
    assert torch.equal(encoder.encode("nod slowly"), first)
    assert not torch.allclose(encoder.encode("nod softly"), first)


@torch.inference_mode()
def test_text_encoder_builds_a_small_umt5():
    """The published kind at toy sizes (umT5-XXL itself is too big to build here); its weights come from load_umt5."""
    torch.manual_seed(0)
    config = dataclasses.replace(LIVEACT_18B.text_encoder, max_len=16, dim=32, layers=2, heads=4, head_dim=8,
                                 ffn_dim=48, vocab_size=300, relative_buckets=8, relative_max_distance=16)
    encoder = build_text_encoder(config).eval()
    assert encoder(torch.tensor([5, 7, 1])).shape == (3, config.dim)
