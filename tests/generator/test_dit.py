"""The DiT: checkpoint names and shapes, cached conditioning, audio routing, prompt onsets, bf16 without autocast."""

from __future__ import annotations

import pytest
import torch

from avatar_backend.generator.config import LIVEACT_18B, DiTConfig, SamplerConfig
from avatar_backend.generator.convkv import ConvKVMemory
from avatar_backend.generator.dit import CrossAttentionContext, PromptOnset, WanModel

SMALL = DiTConfig(dim=16, ffn_dim=32, num_heads=2, num_layers=2, freq_dim=16, text_len=4, text_dim=8, clip_dim=8,
                  clip_tokens=3, audio_layers=2, audio_channels=4, intermediate_dim=8, output_dim=8, context_tokens=2)
SAMPLER = SamplerConfig()


def test_published_checkpoint_names_and_shapes():
    with torch.device("meta"):
        model = WanModel(LIVEACT_18B.dit)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    # LIVEACT_SPEC §1.3
    expected = {
        "patch_embedding.weight": (5120, 36, 1, 2, 2),
        "text_embedding.0.weight": (5120, 4096),
        "time_projection.1.weight": (6 * 5120, 5120),
        "img_emb.proj.0.weight": (1280,),
        "img_emb.proj.4.weight": (5120,),
        "head.modulation": (1, 2, 5120),
        "head.head.weight": (64, 5120),
        "audio_proj.proj1.weight": (512, 46080),
        "audio_proj.proj1_vf.weight": (512, 73728),
        "audio_proj.proj3.weight": (24576, 512),
        "audio_proj.norm.weight": (768,),
        "blocks.39.modulation": (1, 6, 5120),
        "blocks.0.self_attn.memory_proj_k.weight": (5120, 1, 5),
        "blocks.0.self_attn.memory_proj_v.weight": (5120, 1, 5),
        "blocks.0.cross_attn.norm_k_img.weight": (5120,),
        "blocks.0.ffn.0.weight": (13824, 5120),
        "blocks.0.audio_cross_attn.kv_linear.weight": (10240, 768),
        "blocks.0.norm_x.bias": (5120,),
    }
    for name, shape in expected.items():
        assert shapes.get(name) == shape, name
    assert not any(name.startswith("blocks.0.norm1") or name.startswith("head.norm") for name in shapes)
    assert "freqs" not in shapes
    total = sum(t.numel() for t in model.parameters())
    assert round(total / 1e9, 3) == 18.884  # §1.2


def random_model(config: DiTConfig = SMALL, seed: int = 0) -> WanModel:
    torch.manual_seed(seed)
    model = WanModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


def inputs(config: DiTConfig = SMALL, frames: int = 6):
    generator = torch.Generator().manual_seed(1)
    latent = torch.randn(1, config.out_dim, frames, 8, 8, generator=generator)
    y = torch.randn(1, config.in_dim - config.out_dim, frames, 8, 8, generator=generator)
    text = torch.randn(3, config.text_dim, generator=generator)
    clip = torch.randn(1, config.clip_tokens, config.clip_dim, generator=generator)
    tokens = torch.randn(1, frames, config.context_tokens, config.output_dim, generator=generator)  # the block's
    return latent, y, text, clip, tokens


def call(model, latent, y, tokens, *, dtype=torch.float32, **conditioning):
    memory = ConvKVMemory.allocate_for(model.config, SAMPLER, frame_tokens=16, dtype=dtype,
                                       batch_size=latent.shape[0])
    with torch.no_grad():
        out = model(latent, torch.tensor([937.5]), y, cache=memory.steps[1], start_frame=0, compress=False,
                    audio_tokens=tokens, **conditioning)
    return out.velocity


def test_cached_conditioning_equals_raw_inputs():
    model = random_model()
    latent, y, text, clip, tokens = inputs()
    raw = call(model, latent, y, tokens, text=text, clip_fea=clip)
    with torch.no_grad():
        cached = model.encode_context(text, clip, precompute_kv=True)
        embedded = model.encode_context(text, clip, precompute_kv=False)
    assert len(cached.layer_kv) == SMALL.num_layers and cached.text.shape == (1, SMALL.text_len, SMALL.dim)
    torch.testing.assert_close(call(model, latent, y, tokens, context=cached), raw)
    torch.testing.assert_close(call(model, latent, y, tokens, context=embedded), raw)
    # The padding rows of the text are attended: a shorter prompt is not the same as zero-padding ignored.
    assert not torch.allclose(call(model, latent, y, tokens, text=text[:2], clip_fea=clip), raw)
    with pytest.raises(ValueError):
        call(model, latent, y, tokens, text=text)


def test_audio_reaches_every_frame_but_the_reference_frame_of_block_zero():
    model = random_model()
    latent, y, text, clip, tokens = inputs()
    base = call(model, latent, y, tokens, text=text, clip_fea=clip)
    frame0 = tokens.clone()
    frame0[:, 0] += 1.0
    torch.testing.assert_close(call(model, latent, y, frame0, text=text, clip_fea=clip), base)
    frame1 = tokens.clone()
    frame1[:, 1] += 1.0
    assert not torch.allclose(call(model, latent, y, frame1, text=text, clip_fea=clip), base)
    # Audio tokens past the block (window frames 6..13) are not used by block 0.
    later = tokens.clone()
    later[:, 6:] += 1.0
    torch.testing.assert_close(call(model, latent, y, later, text=text, clip_fea=clip), base)
    assert not torch.allclose(call(model, latent, y, None, text=text, clip_fea=clip), base)


def test_a_prompt_onset_blends_the_previous_prompt_into_its_rows_alone():
    """Two streams, the second under a new prompt with an onset: at weight 1 everywhere it is drawn as without
    one, at weight 0 as under its previous prompt, and a ramp lands in between; the first stream never changes."""
    model = random_model()
    latent, y, text, clip, tokens = inputs()
    latent, y, tokens = (torch.cat([t, t.flip(-1)]) for t in (latent, y, tokens))
    with torch.no_grad():
        contexts = [model.encode_context(t, clip) for t in (text, text.flip(0))]
        previous = model.encode_context(text * 2, clip)
    now = CrossAttentionContext.batch(contexts)
    before = CrossAttentionContext.batch([contexts[0], previous])
    rows = torch.tensor([1])

    def onset(weights):
        return PromptOnset(previous, rows, torch.tensor([weights]))

    plain = call(model, latent, y, tokens, context=now)
    under_previous = call(model, latent, y, tokens, context=before)
    torch.testing.assert_close(call(model, latent, y, tokens, context=now, onset=onset([1.0] * 6)), plain)
    set_in = call(model, latent, y, tokens, context=now, onset=onset([0.0] * 6))
    torch.testing.assert_close(set_in, under_previous)
    ramp = call(model, latent, y, tokens, context=now, onset=onset([1 / 3, 2 / 3, 1, 1, 1, 1]))
    assert torch.equal(ramp[0], plain[0])
    first_frame = slice(0, 1)   # latent frame 0: a third of the new prompt
    assert ((ramp[1, :, first_frame] - under_previous[1, :, first_frame]).norm()
            < (plain[1, :, first_frame] - under_previous[1, :, first_frame]).norm())
    with pytest.raises(ValueError, match="onset weights"):
        call(model, latent, y, tokens, context=now, onset=onset([1.0] * 5))


def test_bf16_weights_run_without_autocast():
    model = random_model()
    latent, y, text, clip, tokens = inputs()
    reference = call(model, latent, y, tokens, text=text, clip_fea=clip)
    model.to(torch.bfloat16)
    velocity = call(model, latent, y, tokens, text=text, clip_fea=clip, dtype=torch.bfloat16)
    assert velocity.dtype == torch.bfloat16
    error = (velocity.float() - reference).abs().max() / reference.abs().max()
    assert error < 0.1
