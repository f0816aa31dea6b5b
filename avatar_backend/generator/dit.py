"""The LiveAct DiT: Wan2.1-I2V plus an audio adapter and ConvKV self-attention memory (LIVEACT_SPEC.md §1-2, §5-6).

One call denoises one block of latent frames at one timestep:

    latent [B, 16, T, h, w] + y [B, 20, T, h, w]  --patch_embedding-->  tokens [B, T*(h/2)*(w/2), dim]
    timestep  --sinusoid, time_embedding-->  e [B, dim]  --time_projection-->  e0 [B, 6, dim] (adaLN modulation)
    text [L, 4096] (zero-padded to text_len) and CLIP tokens [257, 1280]  -->  cross-attention context
    audio window [B, 53, 5, 12, 768]  --audio_proj-->  audio tokens [B, 14, 32, 768]
    num_layers x WanAttentionBlock: self-attention over the step cache (ConvKV), text+image cross-attention,
                                    per-frame audio cross-attention, FFN
    head + unpatchify  -->  velocity [B, 16, T, h, w]

A prompt onset (not in the reference; :class:`PromptOnset`) gives a stream's tokens a second cross-attention, to
its previous prompt's context, and blends the two per latent frame.

Module and parameter names are those of the published checkpoint, so its state dict loads with strict=True.
Runs in plain float32 (or bf16 weights); norms compute in fp32 and RoPE in float64, as the reference does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import attention
from .config import DiTConfig
from .convkv import CacheWrite, StepCache
from .fp8 import dequantize_fp8
from .parallel import SequenceParallel


# ----------------------------------------------------------------------------------------------------------------
# Small pieces


def sinusoidal_embedding(dim: int, timestep: Tensor) -> Tensor:
    """[N] timesteps -> [N, dim] as (cos, sin) halves, computed in float64 like the reference."""
    half = dim // 2
    t = timestep.reshape(-1).to(torch.float64)
    inv_freq = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t[:, None] * inv_freq[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class WanRMSNorm(nn.Module):
    """RMSNorm computed in fp32, cast back to the input dtype, then scaled."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (affine parameters too) and cast back to the input dtype."""

    def __init__(self, dim: int, eps: float, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


def modulate(normed: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: the modulation arithmetic runs in fp32, the result goes back to the activation dtype."""
    return (normed.float() * (1 + scale) + shift).to(normed.dtype)


# ----------------------------------------------------------------------------------------------------------------
# 3-axis RoPE


class RotaryEmbedding3D:
    """Rotary position embedding over (latent frame, row, column) of the token grid.

    Channel pairs (2m, 2m+1) are rotated together; the head_dim/2 pairs are split [c - 2(c//3), c//3, c//3]
    between the temporal, row and column axes. Axis tables and the rotation are float64 as in the reference.
    Not an nn.Module on purpose: ``model.to(bfloat16)`` must not touch the tables.
    """

    def __init__(self, head_dim: int, max_positions: int = 1024, theta: float = 10000.0):
        pairs = head_dim // 2
        self.axis_pairs = (pairs - 2 * (pairs // 3), pairs // 3, pairs // 3)
        self.max_positions = max_positions
        self.theta = theta
        self._tables: dict[torch.device, tuple[Tensor, ...]] = {}
        self._grids: dict[tuple, tuple[Tensor, Tensor]] = {}

    def axis_angles(self, device: torch.device) -> tuple[Tensor, ...]:
        """Per axis: angle[p, j] = p * theta^(-j / n) for positions p < max_positions, n pairs on that axis."""
        if device not in self._tables:
            positions = torch.arange(self.max_positions, dtype=torch.float64, device=device)
            tables = []
            for n in self.axis_pairs:
                exponents = torch.arange(0, 2 * n, 2, dtype=torch.float64, device=device) / (2 * n)
                tables.append(torch.outer(positions, 1.0 / torch.pow(self.theta, exponents)))
            self._tables[device] = tuple(tables)
        return self._tables[device]

    @staticmethod
    def positions(start_frame: int, frames: int, height: int, width: int, device: torch.device | None = None) -> Tensor:
        """[frames * height * width, 3] (frame, row, col) positions in token raster order, frames from start_frame."""
        t, r, c = torch.meshgrid(
            torch.arange(start_frame, start_frame + frames, device=device),
            torch.arange(height, device=device),
            torch.arange(width, device=device),
            indexing="ij",
        )
        return torch.stack([t, r, c], dim=-1).reshape(-1, 3)

    def cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin [tokens, head_dim / 2] (float64) for [tokens, 3] positions."""
        if int(positions.max()) >= self.max_positions:
            raise ValueError(f"RoPE position {int(positions.max())} exceeds the table ({self.max_positions})")
        tables = self.axis_angles(positions.device)
        angles = torch.cat([table[positions[:, axis]] for axis, table in enumerate(tables)], dim=1)
        return torch.cos(angles), torch.sin(angles)

    def grid(
        self, start_frame: int, frames: int, height: int, width: int, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """cos/sin for a block of frames on the token grid; cached, since every layer and step reuses them."""
        key = (start_frame, frames, height, width, device)
        if key not in self._grids:
            self._grids[key] = self.cos_sin(self.positions(start_frame, frames, height, width, device))
        return self._grids[key]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate [B, L, heads, head_dim] by per-token angles [L, head_dim / 2]; float64 math, result in x's dtype."""
    real, imag = x.to(torch.float64).unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Attention layers


class WanSelfAttention(nn.Module):
    """Self-attention of the current block over the step cache: 6 (block 0) or 14 latent frames of keys."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        dim, kernel = config.dim, config.memory_kernel
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, config.eps)
        self.norm_k = WanRMSNorm(dim, config.eps)
        # ConvKV compressors (depthwise, kernel = stride); the reference uses memory_proj_k for V as well.
        self.memory_proj_k = nn.Conv1d(dim, dim, kernel, stride=kernel, groups=dim, bias=False)
        self.memory_proj_v = nn.Conv1d(dim, dim, kernel, stride=kernel, groups=dim, bias=False)

    def forward(
        self,
        x: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        write: CacheWrite,
        rope_q: tuple[Tensor, Tensor],
        rope_k: tuple[Tensor, Tensor],
        parallel: SequenceParallel | None = None,
        scales: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``scales``: the caches are FP8 with these per-token-and-head scales (updated in place with them)."""
        batch, tokens, dim = x.shape
        if k_cache.shape[0] != batch:
            raise ValueError(f"a batch of {batch} streams needs a cache of {batch} rows, got {k_cache.shape[0]}")
        split = (batch, tokens, self.num_heads, self.head_dim)
        q = self.norm_q(self.q(x)).view(split)
        k = self.norm_k(self.k(x)).view(split)
        v = self.v(x).view(split)
        k_conv, v_conv = self.memory_proj_k.weight, self.memory_proj_v.weight
        if parallel is not None:
            # Ulysses: from here on this rank has every token of the block, for its heads only.
            q, k, v = parallel.scatter_heads(q), parallel.scatter_heads(k), parallel.scatter_heads(v)
            heads = parallel.local_heads(self.num_heads)
            channels = slice(heads.start * self.head_dim, heads.stop * self.head_dim)
            k_conv, v_conv = k_conv[channels], v_conv[channels]

        # The cache keeps post-norm, pre-RoPE keys: compression and RoPE both run on the stored values.
        if scales is None:
            k_cache, v_cache = write.apply(k_cache, v_cache, k, v, k_conv, v_conv)
            visible = write.end_frame * write.frame_tokens
            keys, values = k_cache[:, :visible].to(q.dtype), v_cache[:, :visible].to(q.dtype)
        else:
            # FP8: attention reads the memory dequantized, and the slots this block computed as computed.
            computed = write.apply_quantized(k_cache, v_cache, *scales, k, v, k_conv, v_conv)
            keys, values = (_dequantized(cache, scale, write, rows, q.dtype)
                            for cache, scale, rows in zip((k_cache, v_cache), scales, computed))
        keys = apply_rope(keys, *rope_k)

        out = attention(apply_rope(q, *rope_q), keys, values)
        if parallel is not None:
            out = parallel.gather_heads(out)
        return self.o(out.reshape(batch, tokens, dim)), k_cache, v_cache


def _dequantized(cache: Tensor, scale: Tensor, write: CacheWrite, computed: dict[int, Tensor],
                 dtype: torch.dtype) -> Tensor:
    """The rows an FP8 layer attends to, in ``dtype``: the memory before the block dequantized, and what the
    block ``computed`` (by first row: the compressed slots, its own frames) as computed."""
    memory = write.block_rows.start   # the block's own rows are never dequantized: they are taken as computed
    out = cache.new_empty((cache.shape[0], write.block_rows.stop, *cache.shape[2:]), dtype=dtype)
    out[:, :memory] = dequantize_fp8(cache[:, :memory], scale[:, :memory])
    for row, value in computed.items():
        out[:, row: row + value.shape[1]] = value
    return out


class CrossKV(NamedTuple):
    """One layer's keys/values of the character conditioning, [B, tokens, heads, head_dim] each."""

    text_k: Tensor
    text_v: Tensor
    image_k: Tensor
    image_v: Tensor


class LayerOnset(NamedTuple):
    """One layer's view of a :class:`PromptOnset`: the onset rows' previous K/V and each of their tokens' weight."""

    previous_kv: CrossKV
    rows: Tensor            # [R] long
    token_weights: Tensor   # [R, tokens, 1], the model's dtype


class WanI2VCrossAttention(nn.Module):
    """Cross-attention to the text tokens and, with a separate softmax, to the CLIP image tokens; outputs summed."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        dim = config.dim
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, config.eps)
        self.norm_k = WanRMSNorm(dim, config.eps)
        self.norm_k_img = WanRMSNorm(dim, config.eps)

    def context_kv(self, text: Tensor, image: Tensor) -> CrossKV:
        """K/V of the embedded text [B, text_len, dim] and image [B, clip_tokens, dim] tokens."""

        def heads(t: Tensor) -> Tensor:
            return t.unflatten(-1, (self.num_heads, self.head_dim))

        return CrossKV(
            text_k=heads(self.norm_k(self.k(text))),
            text_v=heads(self.v(text)),
            image_k=heads(self.norm_k_img(self.k_img(image))),
            image_v=heads(self.v_img(image)),
        )

    def forward(self, x: Tensor, kv: CrossKV) -> Tensor:
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, self.head_dim))
        out = attention(q, kv.image_k, kv.image_v) + attention(q, kv.text_k, kv.text_v)
        return self.o(out.flatten(2))


class SingleStreamAttention(nn.Module):
    """Audio cross-attention: each latent frame's tokens attend only to that frame's audio tokens."""

    def __init__(self, dim: int, encoder_dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(encoder_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, audio_tokens: Tensor) -> Tensor:
        """x [B, T * S, dim], audio_tokens [B, T, tokens, encoder_dim] -> [B, T * S, dim]."""
        batch, frames, tokens, _ = audio_tokens.shape
        per_frame = x.shape[1] // frames
        q = self.q_linear(x).view(batch * frames, per_frame, self.num_heads, self.head_dim)
        kv = self.kv_linear(audio_tokens).view(batch * frames, tokens, 2, self.num_heads, self.head_dim)
        out = attention(q, kv[:, :, 0], kv[:, :, 1])
        return self.proj(out.reshape(batch, frames * per_frame, -1))


# ----------------------------------------------------------------------------------------------------------------
# The transformer block


class WanAttentionBlock(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = WanLayerNorm(dim, eps)
        self.self_attn = WanSelfAttention(config)
        self.norm3 = WanLayerNorm(dim, eps, elementwise_affine=True)
        self.cross_attn = WanI2VCrossAttention(config)
        self.norm2 = WanLayerNorm(dim, eps)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(config.ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.norm_x = WanLayerNorm(dim, eps, elementwise_affine=True) if config.norm_input_visual else nn.Identity()
        self.audio_cross_attn = SingleStreamAttention(dim, config.output_dim, config.num_heads)

    def forward(
        self,
        x: Tensor,
        e0: Tensor,
        *,
        cross_kv: CrossKV,
        audio_tokens: Tensor | None,
        k_cache: Tensor,
        v_cache: Tensor,
        write: CacheWrite,
        rope_q: tuple[Tensor, Tensor],
        rope_k: tuple[Tensor, Tensor],
        parallel: SequenceParallel | None = None,
        first_frame: int = 0,
        scales: tuple[Tensor, Tensor] | None = None,
        onset: LayerOnset | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` holds the block's latent frames from ``first_frame`` on (all of them without ``parallel``)."""
        modulation = self.modulation.float() + e0.float()
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = modulation.chunk(6, dim=1)

        out, k_cache, v_cache = self.self_attn(
            modulate(self.norm1(x), shift_sa, scale_sa), k_cache, v_cache, write, rope_q, rope_k, parallel, scales
        )
        x = x + out * gate_sa.to(out.dtype)

        # Cross-attention and audio attention are neither modulated nor gated.
        normed = self.norm3(x)
        cross = self.cross_attn(normed, cross_kv)
        if onset is not None:
            previous = self.cross_attn(normed[onset.rows], onset.previous_kv)
            cross = cross.index_copy(0, onset.rows, torch.lerp(previous, cross[onset.rows], onset.token_weights))
        x = x + cross

        if audio_tokens is not None:
            audio_out = self.audio_cross_attn(self.norm_x(x), audio_tokens)
            if write.start_frame + first_frame == 0:
                # Latent frame 0 is the reference image: it gets no audio.
                first, rest = audio_out.split([write.frame_tokens, audio_out.shape[1] - write.frame_tokens], dim=1)
                audio_out = torch.cat([torch.zeros_like(first), rest], dim=1)
            x = x + audio_out

        out = self.ffn(modulate(self.norm2(x), shift_ff, scale_ff))
        x = x + out * gate_ff.to(out.dtype)
        return x, k_cache, v_cache


class Head(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        dim = config.dim
        self.norm = WanLayerNorm(dim, config.eps)
        self.head = nn.Linear(dim, config.out_dim * math.prod(config.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        # Modulated by the time embedding e [B, dim] itself, not by the 6-way projection.
        shift, scale = (self.modulation.float() + e.float().unsqueeze(1)).chunk(2, dim=1)
        return self.head(modulate(self.norm(x), shift, scale))


class MLPProj(nn.Module):
    """CLIP image features -> model width."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim),
            nn.LayerNorm(out_dim),
        )

    def forward(self, image_embeds: Tensor) -> Tensor:
        return self.proj(image_embeds)


# ----------------------------------------------------------------------------------------------------------------
# Audio adapter


def group_audio_window(window: Tensor, vae_scale: int) -> tuple[Tensor, Tensor]:
    """Split a per-video-frame audio window [B, 1 + vae_scale*n, W, layers, ch] into latent-frame groups.

    The first video frame is its own group (all W window positions). Each later group of vae_scale frames keeps
    offsets -r..0 of its first frame, offset 0 of its middle frames and 0..+r of its last frame (r = W // 2): a
    contiguous run of audio frames around the group. Returns first [B, 1, W, layers, ch] and
    later [B, n, 2(r+1) + vae_scale - 2, layers, ch].
    """
    batch, frames, width = window.shape[:3]
    if (frames - 1) % vae_scale:
        raise ValueError(f"audio window of {frames} frames is not 1 + {vae_scale} * n")
    middle = width // 2
    first = window[:, :1]
    later = window[:, 1:].unflatten(1, ((frames - 1) // vae_scale, vae_scale))  # [B, n, vae_scale, W, L, C]
    grouped = torch.cat(
        [later[:, :, 0, : middle + 1], later[:, :, 1:-1, middle], later[:, :, -1, middle:]], dim=2
    )
    return first, grouped


class AudioProjModel(nn.Module):
    """Per latent frame: window of audio features -> context_tokens audio tokens of width output_dim."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        per_frame = config.audio_layers * config.audio_channels
        group_frames = 2 * (config.audio_window // 2 + 1) + config.vae_scale - 2
        self.vae_scale = config.vae_scale
        self.context_tokens, self.output_dim = config.context_tokens, config.output_dim
        self.proj1 = nn.Linear(config.audio_window * per_frame, config.intermediate_dim)
        self.proj1_vf = nn.Linear(group_frames * per_frame, config.intermediate_dim)
        self.proj2 = nn.Linear(config.intermediate_dim, config.intermediate_dim)
        self.proj3 = nn.Linear(config.intermediate_dim, config.context_tokens * config.output_dim)
        self.norm = nn.LayerNorm(config.output_dim) if config.norm_output_audio else nn.Identity()

    def forward(self, window: Tensor, frames: slice | None = None) -> Tensor:
        """[B, 1 + vae_scale*n, W, layers, ch] -> audio tokens [B, 1 + n, context_tokens, output_dim], or of the
        latent frames in ``frames`` only: every group is projected on its own, so the others need not be."""
        first, later = group_audio_window(window, self.vae_scale)
        start, stop, step = (frames or slice(None)).indices(1 + later.shape[1])
        if step != 1 or start >= stop:
            raise ValueError(f"frames must be a non-empty contiguous slice, got {frames}")
        parts = []
        if start == 0:
            parts.append(F.relu(self.proj1(first.flatten(2))))                                    # [B, 1, inter]
        if stop > 1:
            parts.append(F.relu(self.proj1_vf(later[:, max(start, 1) - 1 : stop - 1].flatten(2))))  # [B, n', inter]
        hidden = F.relu(self.proj2(torch.cat(parts, dim=1)))
        tokens = self.proj3(hidden).unflatten(-1, (self.context_tokens, self.output_dim))
        return self.norm(tokens)


# ----------------------------------------------------------------------------------------------------------------
# The model


@dataclass
class CrossAttentionContext:
    """Per-character conditioning, computed once per character and prompt.

    image [B, clip_tokens, dim] and text [B, text_len, dim] are the embedded tokens; ``layer_kv`` optionally holds
    every layer's cross-attention K/V so the per-call work is only the query side.
    """

    image: Tensor
    text: Tensor
    layer_kv: list[CrossKV] | None = None

    @classmethod
    def batch(cls, contexts: list["CrossAttentionContext"]) -> "CrossAttentionContext":
        """The contexts of several streams (one per NPC, each of batch 1) as one batch, in order."""
        if len(contexts) == 1:
            return contexts[0]
        layer_kv = None
        if all(c.layer_kv for c in contexts):
            layer_kv = [CrossKV(*(torch.cat(parts) for parts in zip(*layers)))
                        for layers in zip(*(c.layer_kv for c in contexts))]
        return cls(image=torch.cat([c.image for c in contexts]), text=torch.cat([c.text for c in contexts]),
                   layer_kv=layer_kv)


@dataclass
class PromptOnset:
    """The streams of a batch whose prompt changed at this block, and how the change sets in over its frames.

    Their tokens cross-attend to the previous prompt's context as well as to the new one, and latent frame j takes
    ``weights[:, j]`` of the new prompt's output and the rest of the previous one's: the change sets in over the
    block's first frames instead of all at its first frame, where the block meets the last one (a seam).
    """

    previous: CrossAttentionContext   # [R] the onset streams' contexts under the previous block's prompt
    rows: Tensor                      # [R] long: their rows of the batch
    weights: Tensor                   # [R, T] float32: the new prompt's share of each of the block's latent frames


class DiTOutput(NamedTuple):
    velocity: Tensor       # [B, out_dim, T, h, w], flow-matching velocity (noise - x0)
    cache: StepCache       # the step cache after this call (the same object unless functional)


def _layer_kv(block: WanAttentionBlock, context: CrossAttentionContext, index: int) -> CrossKV:
    """Layer ``index``'s cross-attention K/V of ``context``: precomputed, or computed now."""
    if context.layer_kv:
        return context.layer_kv[index]
    return block.cross_attn.context_kv(context.text, context.image)


class WanModel(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanAttentionBlock(config) for _ in range(config.num_layers))
        self.head = Head(config)
        self.img_emb = MLPProj(config.clip_dim, dim)
        self.audio_proj = AudioProjModel(config)
        self.rope = RotaryEmbedding3D(config.head_dim, config.rope_max_positions)
        self.init_weights()

    def init_weights(self, zero_head: bool = True) -> None:
        """Initialisation for training from scratch; loading a checkpoint overwrites all of it.

        A zero head makes the untrained model predict zero velocity (training starts from "no change"); an
        untrained model that is run, not trained, keeps a small random head so its output follows its inputs.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for sequential in (self.text_embedding, self.time_embedding):
            for layer in sequential:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
        if zero_head:
            nn.init.zeros_(self.head.head.weight)
        else:
            nn.init.normal_(self.head.head.weight, std=0.02)
        for block in self.blocks:
            # Mean pooling: a compressed slot starts as the average of its five tokens.
            nn.init.constant_(block.self_attn.memory_proj_k.weight, 1.0 / self.config.memory_kernel)
            nn.init.constant_(block.self_attn.memory_proj_v.weight, 1.0 / self.config.memory_kernel)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def compile_blocks(self, *, for_training: bool = False) -> None:
        """torch.compile each transformer block in place. The blocks run the same code with their weights as
        inputs, so they share compiled graphs: one per block kind (first, second, compressing), not per layer.

        ``for_training``: with horizontal fusion off in the CPU code generator, which otherwise makes torch
        2.13's backward pass of these blocks wrong (some parameters' gradients off by up to twice their norm;
        the forward pass is exact either way)."""
        options = {"cpp.max_horizontal_fusion_size": 1} if for_training else None
        for block in self.blocks:
            block.compile(dynamic=False, options=options)

    # -- per-character and per-block conditioning ----------------------------------------------------------------

    def encode_context(self, text: Tensor, clip_fea: Tensor, precompute_kv: bool = True) -> CrossAttentionContext:
        """Embed text [L <= text_len, text_dim] (or [B, L, text_dim]) and CLIP features [B, clip_tokens, clip_dim]."""
        if text.dim() == 2:
            text = text.unsqueeze(0)
        length = text.shape[1]
        if length > self.config.text_len:
            raise ValueError(f"text context has {length} tokens, more than text_len {self.config.text_len}")
        # Zero rows up to text_len; they become bias-driven tokens and are attended (there is no mask).
        text = F.pad(text.to(self.dtype), (0, 0, 0, self.config.text_len - length))
        context = CrossAttentionContext(image=self.img_emb(clip_fea.to(self.dtype)), text=self.text_embedding(text))
        if precompute_kv:
            context.layer_kv = [block.cross_attn.context_kv(context.text, context.image) for block in self.blocks]
        return context

    def audio_tokens(self, audio_window: Tensor, frames: slice | None = None) -> Tensor:
        """Audio window [B, 53, 5, layers, ch] -> tokens [B, n, tokens, dim] of the window's latent frames in
        ``frames`` (a block's: ``slice(start_frame, start_frame + T)``), or of all 14 when None. The reference
        projects all 14 on every call; a block uses 6 or 8."""
        return self.audio_proj(audio_window.to(self.dtype), frames)

    # -- one denoising call ----------------------------------------------------------------------------------------

    def forward(
        self,
        latent: Tensor,
        timestep: Tensor,
        y: Tensor,
        *,
        cache: StepCache,
        start_frame: int,
        compress: bool,
        context: CrossAttentionContext | None = None,
        text: Tensor | None = None,
        clip_fea: Tensor | None = None,
        audio_tokens: Tensor | None = None,
        functional: bool | None = None,
        parallel: SequenceParallel | None = None,
        onset: PromptOnset | None = None,
    ) -> DiTOutput:
        """Velocity for one block at one timestep, reading and updating one step cache.

        latent [B, out_dim, T, h, w]; timestep [B] or [1] (float32, 0..1000); y [B, in_dim - out_dim, T, h, w] (mask
        and reference code of these window frames). B streams (NPCs) at the same block position run together, each
        with its own row of the cache and of the context. ``start_frame`` is the block's first latent frame within the
        conditioning window (0 for block 0, 6 after): it picks the cache slots written, the queries' temporal RoPE
        positions and the audio tokens used. ``compress`` runs the ConvKV update first (blocks >= 2).
        Conditioning: a ``context`` from :meth:`encode_context`, or raw ``text`` and ``clip_fea``.
        ``audio_tokens`` [B, T, tokens, dim] of the block's latent frames (:meth:`audio_tokens` with
        ``slice(start_frame, start_frame + T)``), or None to skip audio attention.
        ``functional`` builds a new cache instead of writing in place; by default it follows grad mode.
        With ``parallel``, this rank computes its share of the block's frames and holds its heads' shard of the
        cache (see :mod:`.parallel`); every rank returns the whole velocity. ``onset``: the streams whose prompt
        changes at this block, blended per latent frame from their previous prompt (None: every frame follows
        ``context``).
        """
        if functional is None:
            functional = torch.is_grad_enabled()
        if context is None:
            if text is None or clip_fea is None:
                raise ValueError("pass either context= or both text= and clip_fea=")
            context = self.encode_context(text, clip_fea, precompute_kv=False)

        x = self.patch_embedding(torch.cat([latent, y], dim=1).to(self.dtype))
        frames, rows, cols = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)  # [B, frames * rows * cols, dim], (frame, row, col) raster order
        frame_tokens = rows * cols
        local = slice(0, frames) if parallel is None else parallel.local_frames(frames)
        x = x[:, local.start * frame_tokens : local.stop * frame_tokens]

        e = self.time_embedding(sinusoidal_embedding(self.config.freq_dim, timestep).to(self.dtype))
        e0 = self.time_projection(e).unflatten(1, (6, self.config.dim))

        if audio_tokens is not None:
            if audio_tokens.shape[1] != frames:
                raise ValueError(f"audio tokens for {audio_tokens.shape[1]} latent frames, the block has {frames}")
            audio_tokens = audio_tokens[:, local].to(self.dtype)

        write = CacheWrite(cache.layout, frame_tokens, start_frame, frames, compress, inplace=not functional)
        # RoPE reset: queries sit at the block's window frames, keys at their slot indices 0..end_frame-1.
        rope_q = self.rope.grid(start_frame, frames, rows, cols, x.device)
        rope_k = self.rope.grid(0, write.end_frame, rows, cols, x.device)

        token_weights = None
        if onset is not None:
            if onset.weights.shape != (onset.rows.shape[0], frames):
                raise ValueError(f"onset weights of shape {tuple(onset.weights.shape)} for {onset.rows.shape[0]} "
                                 f"rows of a {frames}-frame block")
            token_weights = onset.weights[:, local].to(x.device, self.dtype)
            token_weights = token_weights.repeat_interleave(frame_tokens, dim=1).unsqueeze(-1)

        new_k, new_v = [], []
        for index, block in enumerate(self.blocks):
            layer_onset = None
            if onset is not None:
                layer_onset = LayerOnset(_layer_kv(block, onset.previous, index), onset.rows, token_weights)
            x, k_layer, v_layer = block(
                x, e0, cross_kv=_layer_kv(block, context, index), audio_tokens=audio_tokens,
                k_cache=cache.k[index], v_cache=cache.v[index],
                write=write, rope_q=rope_q, rope_k=rope_k, parallel=parallel, first_frame=local.start,
                scales=(cache.k_scale[index], cache.v_scale[index]) if cache.quantized else None, onset=layer_onset,
            )
            if functional:   # in place, the caches are already written
                new_k.append(k_layer)
                new_v.append(v_layer)
        if functional:
            cache = StepCache(torch.stack(new_k), torch.stack(new_v), cache.layout)

        out = self.head(x, e)
        if parallel is not None:
            out = parallel.gather_tokens(out)
        return DiTOutput(self.unpatchify(out, (frames, rows, cols)), cache)

    def unpatchify(self, x: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """[B, tokens, pt*ph*pw*out_dim] -> [B, out_dim, frames*pt, rows*ph, cols*pw]; channel is the fastest index."""
        pt, ph, pw = self.config.patch_size
        frames, rows, cols = grid
        x = x.reshape(x.shape[0], frames, rows, cols, pt, ph, pw, self.config.out_dim)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], self.config.out_dim, frames * pt, rows * ph, cols * pw)
