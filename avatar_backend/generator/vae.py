"""The Wan2.1 causal 3D VAE, with a decoder that streams across blocks.

The VAE maps video [B, 3, T, H, W] in [-1, 1] to latents [B, z_dim, 1 + (T - 1) / 4, H / 8, W / 8] and back
(at the default temporal downsampling; see :class:`VAEConfig`). Every convolution over time is causal: it pads
on the left only, so frame t never sees a later frame. That makes the model runnable in chunks: the encoder
takes frames in chunks of 1, 4, 4, ... and the decoder one latent at a time (1 frame for the first latent,
4 for each later one), each causal convolution carrying its last two input frames from chunk to chunk in a
:class:`CausalCache`.

LiveAct restarts the decoder on every block and re-decodes 3 latents of the previous block as a warm-up.
Here the cache is instead kept from block to block, so decoding block 0's 6 latents, then each later block's
8, gives exactly the frames of one continuous decode of all latents, for 8 latents of work per block. The cache
is then part of an NPC's memory: :meth:`CausalCache.to_tensors` / :meth:`CausalCache.from_tensors` snapshot and
restore it bit-exactly, and :func:`decoder_state_bytes` gives its size before anything is allocated.

Module and parameter names follow the published ``Wan2.1_VAE.pth`` so its state dict loads with
``strict=True``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import CheckpointError, check_keys, load_pth_state
from .config import VAEConfig

# A causal 3-tap time kernel needs the two frames before a chunk.
CACHE_FRAMES = 2

# PyTorch's CPU convolution uses oneDNN only above this N*C*D*H (for batch 1 and 3x3-or-smaller kernels).
_CPU_NATIVE_CONV3D_LIMIT = 20480

_FLAG_KEY = "first_chunk"
_FRAMES_PREFIX = "frames."


@dataclass
class CausalCache:
    """The state that lets a causal encoder or decoder continue a clip chunk by chunk.

    ``frames`` maps each causal convolution (by module name) to the last input frames it saw. A missing entry
    means "nothing seen yet" and acts as zeros, exactly like the zero padding before frame 0, so a cache can be
    filled lazily or pre-allocated with zeros (:meth:`WanVAE.init_decoder_state`) with identical results.
    ``first_chunk`` is true until the first chunk has run: on that chunk the temporal resamplers only store
    their input (the first latent decodes to a single frame, the first frame encodes to a single latent).

    Chunks replace the tensors in ``frames`` instead of writing into them, so the tensors returned by
    :meth:`to_tensors` stay a valid snapshot while the stream goes on.
    """

    frames: dict[str, Tensor] = field(default_factory=dict)
    first_chunk: bool = True

    def to_tensors(self) -> dict[str, Tensor]:
        """A flat dict of tensors (for safetensors) holding the whole state."""
        tensors = {f"{_FRAMES_PREFIX}{name}": frames for name, frames in self.frames.items()}
        tensors[_FLAG_KEY] = torch.tensor(int(self.first_chunk), dtype=torch.uint8)
        return tensors

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> "CausalCache":
        """The inverse of :meth:`to_tensors`."""
        unknown = [k for k in tensors if k != _FLAG_KEY and not k.startswith(_FRAMES_PREFIX)]
        if unknown or _FLAG_KEY not in tensors:
            raise ValueError(f"not a causal cache snapshot: missing {_FLAG_KEY!r} or unknown keys {unknown}")
        frames = {k[len(_FRAMES_PREFIX):]: v for k, v in tensors.items() if k.startswith(_FRAMES_PREFIX)}
        return cls(frames=frames, first_chunk=bool(tensors[_FLAG_KEY].item()))

    @classmethod
    def stack(cls, caches: list["CausalCache"]) -> "CausalCache":
        """One state for a batch of streams: their cached frames concatenated along the batch, in order."""
        first = caches[0]
        if any(c.first_chunk != first.first_chunk or c.frames.keys() != first.frames.keys() for c in caches):
            raise ValueError("decoder states at different points of their streams cannot decode in one batch")
        return cls(frames={name: torch.cat([c.frames[name] for c in caches]) for name in first.frames},
                   first_chunk=first.first_chunk)

    def unstack(self) -> list["CausalCache"]:
        """One state per batch row (copies: a row must not keep the whole batch's tensors alive)."""
        rows = next(iter(self.frames.values())).shape[0] if self.frames else 1
        return [CausalCache(frames={name: t[row:row + 1].clone() for name, t in self.frames.items()},
                            first_chunk=self.first_chunk) for row in range(rows)]

    def nbytes(self) -> int:
        """Bytes of :meth:`to_tensors` (the cached frames plus one byte for the flag)."""
        return sum(t.numel() * t.element_size() for t in self.frames.values()) + 1


def decoder_state_bytes(
    config: VAEConfig, width: int, height: int, dtype: torch.dtype = torch.float32, batch_size: int = 1
) -> int:
    """Size in bytes of a streaming decoder's :class:`CausalCache` for frames of ``width`` x ``height``.

    Computed from the architecture alone: every 3-tap causal conv of the decoder keeps 2 frames of its input at
    its level's resolution. The size does not depend on how many latents have been decoded.
    """
    _check_frame_size(config, width, height)
    element_size = torch.empty((), dtype=dtype).element_size()
    if config.decoder == "light":
        shapes = _decoder_cache_shapes(config, width, height, batch_size)  # traced on the meta device
        return sum(shape.numel() for shape in shapes.values()) * element_size + 1
    latent_h, latent_w = height // config.spatial_stride, width // config.spatial_stride
    dims = _decoder_dims(config)
    upsample_in_time = tuple(reversed(config.temporal_downsample))

    levels = len(config.dim_mult)
    channel_frames = [0] * levels  # cached channels at each level's resolution
    channel_frames[0] += config.z_dim + 4 * dims[0]  # conv1, then the two residual blocks of the middle
    for level, (in_dim, out_dim) in enumerate(_decoder_stages(dims)):
        channel_frames[level] += in_dim + out_dim + 2 * config.num_res_blocks * out_dim
        if level < levels - 1 and upsample_in_time[level]:
            channel_frames[level] += out_dim  # the temporal upsampler's time conv
    channel_frames[-1] += dims[-1]  # head conv

    elements = sum(c * (latent_h << i) * (latent_w << i) for i, c in enumerate(channel_frames))
    return batch_size * CACHE_FRAMES * elements * element_size + 1


# ------------------------------------------------------------------------------------------------ building blocks


class CausalConv3d(nn.Conv3d):
    """A Conv3d padded in time on the left only, so output frame t depends on input frames <= t.

    Given a :class:`CausalCache`, the frames cached from the previous chunk take the place of the zero padding,
    which makes a run over chunks equal to a run over the whole clip.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        pad_t, pad_h, pad_w = (padding,) * 3 if isinstance(padding, int) else padding
        self.time_padding = 2 * pad_t
        self.spatial_padding = (pad_w, pad_w, pad_h, pad_h)
        self.cache_key = ""  # set by WanVAE to the module's name

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        if self.time_padding and cache is not None:
            previous = cache.frames.get(self.cache_key)
            if previous is None:
                x = F.pad(x, (0, 0, 0, 0, self.time_padding, 0))
            else:
                x = torch.cat([previous, x], dim=2)
            # The state keeps its dtype (under autocast x may be lower precision): its size and file never change.
            keep = x[:, :, -self.time_padding:]
            cache.frames[self.cache_key] = keep.to(previous.dtype if previous is not None else keep.dtype, copy=True)
        elif self.time_padding:
            x = F.pad(x, (0, 0, 0, 0, self.time_padding, 0))
        x = F.pad(x, self.spatial_padding)
        n, c, _, h, w = x.shape
        if x.device.type == "cpu" and n * c * x.shape[2] * h <= _CPU_NATIVE_CONV3D_LIMIT < n * c * w * h:
            # PyTorch sends a CPU conv whose N*C*T*H is this small to a native kernel up to 7x slower than oneDNN.
            # The same convolution with time and width swapped (input, kernel and stride alike) goes to oneDNN.
            out = F.conv3d(x.transpose(2, 4), self.weight.transpose(2, 4), self.bias, stride=self.stride[::-1])
            return out.transpose(2, 4).contiguous()
        return super().forward(x)


class RMSNorm(nn.Module):
    """RMS norm over channels (dim 1): an L2 normalisation scaled by sqrt(dim), times a learned gain, computed in
    float32 and returned in the input's dtype (under bf16 autocast a bf16 sum of squares loses the norm's low bits)."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: Tensor) -> Tensor:
        # The same as F.normalize(x, dim=1), whose norm over a non-innermost dim is ~40x slower on CPU.
        x32 = x.float()
        norm = x32.square().sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
        return (x32 / norm * self.scale * self.gamma).to(x.dtype)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        # Indices matter: they are the checkpoint's parameter names (residual.0.gamma, residual.2.weight, ...).
        self.residual = nn.Sequential(
            RMSNorm(in_dim),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        shortcut = self.shortcut(x)
        for layer in self.residual:
            x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + shortcut


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (frames do not attend to each other)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames)).reshape(b * t, 3 * c, h * w).transpose(1, 2)
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)  # each [b*t, 1 head, h*w, c]
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        out = self.proj(out).reshape(b, t, c, h, w).transpose(1, 2)
        return x + out


class Resample(nn.Module):
    """Spatial 2x up/down sampling, optionally with 2x in time.

    Upsampling in time doubles the frames with a causal time conv that outputs two frames' channels per input
    frame. Downsampling in time is a stride-2 time conv over the previous chunk's last frame plus this chunk.
    Neither runs on the first chunk, which is why a clip of 1 + 4k frames maps to 1 + k latents and back.
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"), nn.Conv2d(dim, dim // 2, 3, padding=1)
            )
        else:
            # Pad right and bottom only, so a stride-2 3x3 conv halves even sizes exactly.
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        if self.mode == "upsample3d" and not cache.first_chunk:
            b, c, t, h, w = x.shape
            x = self.time_conv(x, cache).reshape(b, 2, c, t, h, w)
            x = x.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)  # frame 2i, 2i+1 from input frame i

        b, c, t, h, w = x.shape
        x = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w))
        x = x.reshape(b, t, *x.shape[1:]).transpose(1, 2)

        if self.mode == "downsample3d":
            key = self.time_conv.cache_key
            previous = cache.frames.get(key)
            cache.frames[key] = x[:, :, -1:].clone()
            if not cache.first_chunk:
                x = self.time_conv(torch.cat([previous, x], dim=2))
        return x


# ------------------------------------------------------------------------------------------------ encoder, decoder


def _decoder_dims(config: VAEConfig) -> list[int]:
    mult = config.dim_mult
    return [config.base_dim * m for m in (mult[-1], *reversed(mult))]


def _decoder_stages(dims: list[int]) -> list[tuple[int, int]]:
    """(in, out) channels of each decoder level; an upsampler halves the channels it hands to the next level."""
    return [(d_in if i == 0 else d_in // 2, d_out) for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:]))]


class Encoder3d(nn.Module):
    def __init__(self, config: VAEConfig, out_channels: int, dropout: float = 0.0):
        super().__init__()
        dims = [config.base_dim * m for m in (1, *config.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)

        downsamples: list[nn.Module] = []
        levels = len(config.dim_mult)
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(config.num_res_blocks):
                downsamples.append(ResidualBlock(in_dim, out_dim, dropout))
                in_dim = out_dim
            if level < levels - 1:
                mode = "downsample3d" if config.temporal_downsample[level] else "downsample2d"
                downsamples.append(Resample(out_dim, mode))
        self.downsamples = nn.ModuleList(downsamples)

        dim = dims[-1]
        self.middle = nn.ModuleList([ResidualBlock(dim, dim, dropout), AttentionBlock(dim), ResidualBlock(dim, dim, dropout)])
        self.head = nn.Sequential(RMSNorm(dim), nn.SiLU(), CausalConv3d(dim, out_channels, 3, padding=1))

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        x = self.conv1(x, cache)
        for layer in (*self.downsamples, *self.middle):
            x = layer(x) if isinstance(layer, AttentionBlock) else layer(x, cache)
        return _run_head(self.head, x, cache)


class Decoder3d(nn.Module):
    def __init__(self, config: VAEConfig, dropout: float = 0.0):
        super().__init__()
        dims = _decoder_dims(config)
        upsample_in_time = tuple(reversed(config.temporal_downsample))
        self.conv1 = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.middle = nn.ModuleList(
            [ResidualBlock(dims[0], dims[0], dropout), AttentionBlock(dims[0]), ResidualBlock(dims[0], dims[0], dropout)]
        )

        upsamples: list[nn.Module] = []
        levels = len(config.dim_mult)
        for level, (in_dim, out_dim) in enumerate(_decoder_stages(dims)):
            for _ in range(config.num_res_blocks + 1):
                upsamples.append(ResidualBlock(in_dim, out_dim, dropout))
                in_dim = out_dim
            if level < levels - 1:
                upsamples.append(Resample(out_dim, "upsample3d" if upsample_in_time[level] else "upsample2d"))
        self.upsamples = nn.ModuleList(upsamples)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        x = self.conv1(x, cache)
        for layer in (*self.middle, *self.upsamples):
            x = layer(x) if isinstance(layer, AttentionBlock) else layer(x, cache)
        return _run_head(self.head, x, cache)


class LightEncoder3d(nn.Module):
    """A small causal encoder (``VAEConfig.encoder = "light"``), the light decoder's mirror, for CPUs.

    Every frame is downsampled on its own (stride-2 3x3 convs, each followed by a residual 3x3 conv, through
    ``light_dims`` in reverse); each group of ``temporal_stride`` frames is then stacked along channels into one
    latent (the clip's first frame alone, repeated, into the first latent), and a causal 3D conv over latents
    adds the past. Encodes a whole clip at once (causal in time, so a clip's prefix encodes the same).
    """

    def __init__(self, config: VAEConfig, out_channels: int):
        super().__init__()
        dims = tuple(reversed(config.light_dims))
        self.frames_per_latent = config.temporal_stride
        self.stem = nn.Conv2d(3, dims[0], 3, padding=1)
        self.downsamples = nn.ModuleList(
            nn.ModuleDict({"down": nn.Conv2d(d_in, d_out, 3, stride=2, padding=1),
                           "refine": nn.Conv2d(d_out, d_out, 3, padding=1)})
            for d_in, d_out in zip(dims[:-1], dims[1:])
        )
        self.merge = nn.Conv2d(dims[-1] * self.frames_per_latent, dims[-1], 1)
        self.temporal = CausalConv3d(dims[-1], dims[-1], 3, padding=1)
        self.norm = RMSNorm(dims[-1])
        self.head = CausalConv3d(dims[-1], out_channels, 3, padding=1)

    def forward(self, video: Tensor) -> Tensor:
        b, _, t, height, width = video.shape
        # Channels-last, as in the light decoder: faster oneDNN convolutions (training's steps too).
        frames = video.transpose(1, 2).reshape(b * t, 3, height, width).contiguous(memory_format=torch.channels_last)
        x = self.stem(frames)
        for stage in self.downsamples:
            x = stage["down"](F.silu(x))
            x = x + stage["refine"](F.silu(x))
        c, h, w = x.shape[1:]
        x = x.reshape(b, t, c, h, w)
        first = x[:, :1].expand(-1, self.frames_per_latent, -1, -1, -1)
        groups = torch.cat([first, x[:, 1:]], dim=1).reshape(b, -1, self.frames_per_latent * c, h, w)
        latents = groups.shape[1]
        x = self.merge(groups.reshape(b * latents, -1, h, w)).reshape(b, latents, c, h, w).transpose(1, 2)
        x = x + self.temporal(F.silu(x))
        return self.head(F.silu(self.norm(x)))


class LightDecoder3d(nn.Module):
    """A small streaming decoder (``VAEConfig.decoder = "light"``) for CPUs (about 5x faster than the Wan decoder
    of the same base width at 128x128).

    Time is handled only at latent resolution: a causal 3D conv and a causal residual block see the current
    and two previous latents, and a causal time conv turns each latent into ``temporal_stride`` frames (the
    stream's first latent into one frame, as the Wan decoder does). Every frame is then upsampled on its own
    by pixel-shuffle stages (a 3x3 conv to 4x the channels, a 2x shuffle, a residual 3x3 conv), so the costly
    full-resolution layers are a few narrow 2D convs. Its state is the same :class:`CausalCache`.
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        dims = config.light_decoder_widths
        self.frames_per_latent = config.temporal_stride
        self.conv1 = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.middle = ResidualBlock(dims[0], dims[0])
        self.time_conv = CausalConv3d(dims[0], dims[0] * self.frames_per_latent, (3, 1, 1), padding=(1, 0, 0))
        self.upsamples = nn.ModuleList(
            nn.ModuleDict({
                "expand": nn.Conv2d(d_in, 4 * d_out, 3, padding=1),
                "shuffle": nn.PixelShuffle(2),
                "refine": nn.Conv2d(d_out, d_out, 3, padding=1),
            })
            for d_in, d_out in zip(dims[:-1], dims[1:])
        )
        self.head = nn.Conv2d(dims[-1], 3, 3, padding=1)

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        x = self.middle(F.silu(self.conv1(x, cache)), cache)
        b, c, t, h, w = x.shape
        x = self.time_conv(F.silu(x), cache).reshape(b, self.frames_per_latent, c, t, h, w)
        x = x.permute(0, 3, 1, 2, 4, 5)  # [b, t, frames per latent, c, h, w]: latent i -> its frames in order
        if cache.first_chunk:
            x = x[:, :, -1:]
        frames = x.shape[1] * x.shape[2]
        # Channels-last activations: oneDNN's CPU convolutions run them 1.2-1.5x faster than NCHW here, and
        # the frames come out already in the H, W, RGB order that JPEG and raw RGB want.
        x = x.reshape(b * frames, c, h, w).contiguous(memory_format=torch.channels_last)
        for stage in self.upsamples:
            x = stage["shuffle"](stage["expand"](F.silu(x)))
            x = x + stage["refine"](F.silu(x))
        x = self.head(F.silu(x))
        return x.reshape(b, frames, 3, *x.shape[-2:]).transpose(1, 2)


def _run_head(head: nn.Sequential, x: Tensor, cache: CausalCache) -> Tensor:
    for layer in head:
        x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
    return x


# ------------------------------------------------------------------------------------------------ the VAE


class WanVAE(nn.Module):
    """The Wan2.1 video VAE: causal chunked encoding to normalised latents and streaming decoding back to pixels."""

    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        if len(config.temporal_downsample) != len(config.dim_mult) - 1:
            raise ValueError("temporal_downsample needs one entry per downsampling level (len(dim_mult) - 1)")
        self.config = config
        # Both encoders output the posterior's mean and log-variance.
        encoder = Encoder3d if config.encoder == "wan" else LightEncoder3d
        self.encoder = encoder(config, out_channels=2 * config.z_dim)
        self.conv1 = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config) if config.decoder == "wan" else LightDecoder3d(config)

        stats_shape = (1, config.z_dim, 1, 1, 1)
        # Not in the checkpoint: the statistics come from the config.
        self.register_buffer("latent_mean", torch.tensor(config.latent_mean).view(stats_shape), persistent=False)
        self.register_buffer(
            "latent_inv_std", (1.0 / torch.tensor(config.latent_std)).view(stats_shape), persistent=False
        )
        for name, module in self.named_modules():
            if isinstance(module, CausalConv3d):
                module.cache_key = name

    def compile_decoder(self) -> None:
        """torch.compile the decoder in place. A stream's first latent (empty state) and the passes after it are
        graphs of their own, as is each batch size and frame size; weights and streaming state stay float32.
        Static shapes: a second frame size would otherwise be compiled for symbolic sizes, which torch 2.13's
        inductor fails to lower for the causal convolutions' padding."""
        self.decoder.compile(dynamic=False)

    # ---------------------------------------------------------------------------------------------- encoding

    def encode(self, video: Tensor) -> Tensor:
        """Video [B, 3, 1 + 4k, H, W] in [-1, 1] -> normalised latent mean (mu - mean) / std [B, z, 1 + k, h, w].

        Frames go through in causal chunks of 1, 4, 4, ... (at the default temporal stride). No sample is drawn.
        """
        mu, _log_var = self.posterior(video)
        return (mu - self.latent_mean) * self.latent_inv_std

    def posterior(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder's diagonal Gaussian posterior (mean, log-variance) of video [B, 3, 1 + 4k, H, W], both
        [B, z, 1 + k, h, w] and not normalised (training samples from it; :meth:`encode` keeps the mean)."""
        stride = self.config.temporal_stride
        frames = video.shape[2]
        if (frames - 1) % stride:
            raise ValueError(f"encode needs 1 + {stride}k frames, got {frames}")
        _check_frame_size(self.config, video.shape[-1], video.shape[-2])
        video = video.to(self.latent_mean.dtype)

        if isinstance(self.encoder, LightEncoder3d):
            hidden = self.encoder(video)
        else:
            cache = CausalCache()
            chunks = [self.encoder(video[:, :, :1], cache)]
            cache.first_chunk = False
            for start in range(1, frames, stride):
                chunks.append(self.encoder(video[:, :, start : start + stride], cache))
            hidden = torch.cat(chunks, dim=2)
        mu, log_var = self.conv1(hidden).chunk(2, dim=1)
        return mu, log_var

    def encode_reference_image(self, image: Tensor, latent_frames: int = 14) -> Tensor:
        """The image conditioning ``y`` [1, stride + z, latent_frames, h, w] for one RGB image [3, H, W] in [-1, 1].

        Channels are the frame mask (``temporal_stride`` channels: ones on latent frame 0, zeros after), then the
        VAE code of the image followed by 4 * (latent_frames - 1) black frames, as LiveAct builds it once per
        character for its 14-latent attention window.
        """
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected one RGB image [3, H, W], got {tuple(image.shape)}")
        _, height, width = image.shape
        stride = self.config.temporal_stride
        video = image.new_zeros(1, 3, 1 + stride * (latent_frames - 1), height, width)
        video[:, :, 0] = image
        code = self.encode(video)
        mask = reference_mask(latent_frames, *code.shape[-2:], channels=stride).to(code)
        return torch.cat([mask, code], dim=1)

    # ---------------------------------------------------------------------------------------------- decoding

    def init_decoder_state(
        self, width: int, height: int, batch_size: int = 1, dtype: torch.dtype | None = None, device=None
    ) -> CausalCache:
        """A fresh streaming-decoder state with every cache pre-allocated as zeros.

        Zeros are what the causal padding feeds a conv before frame 0, so this decodes exactly like an empty
        cache, and the state has its final size (:func:`decoder_state_bytes`) from the first block on.
        """
        _check_frame_size(self.config, width, height)
        dtype = dtype or self.latent_mean.dtype
        device = device if device is not None else self.latent_mean.device
        shapes = _decoder_cache_shapes(self.config, width, height, batch_size)  # shared: read only
        return CausalCache(frames={name: torch.zeros(shape, dtype=dtype, device=device) for name, shape in shapes.items()})

    def decode_stream(self, latents: Tensor, state: CausalCache, latents_per_pass: int = 1) -> Tensor:
        """Decode the next latents [B, z, n, h, w] of a stream, continuing ``state`` (updated in place).

        Returns unclamped frames [B, 3, F, H, W]: F = 1 + 4(n - 1) on the stream's first call, 4n after (at the
        default temporal stride). Concatenating the outputs of successive calls equals :meth:`decode` of all
        latents at once. ``latents_per_pass`` > 1 decodes several latents per decoder pass: the same function
        (every layer is causal or per-frame), usually faster, not bit-identical to one at a time.
        """
        conv_cache = state.frames.get(self.decoder.conv1.cache_key)
        if conv_cache is not None and conv_cache.shape[-2:] != latents.shape[-2:]:
            raise ValueError(
                f"latents of {tuple(latents.shape[-2:])} do not match a decoder state for {tuple(conv_cache.shape[-2:])}"
            )
        z = latents.to(self.latent_mean.dtype) / self.latent_inv_std + self.latent_mean
        z = self.conv2(z)

        frames = []
        start = 0
        while start < z.shape[2]:
            # The first latent runs alone: the temporal upsamplers treat the first chunk differently.
            stop = start + (1 if state.first_chunk else latents_per_pass)
            frames.append(self.decoder(z[:, :, start:stop], state))
            state.first_chunk = False
            start = stop
        return torch.cat(frames, dim=2)

    def decode(self, latents: Tensor, latents_per_pass: int = 1) -> Tensor:
        """Decode a whole clip of normalised latents [B, z, n, h, w] -> frames [B, 3, 1 + 4(n - 1), H, W], unclamped."""
        return self.decode_stream(latents, CausalCache(), latents_per_pass)


def reference_mask(latent_frames: int, height: int, width: int, channels: int = 4) -> Tensor:
    """[1, channels, latent_frames, h, w]: ones on latent frame 0 (the reference image), zeros elsewhere."""
    mask = torch.zeros(1, channels, latent_frames, height, width)
    mask[:, :, 0] = 1.0
    return mask


def frames_to_uint8(video: Tensor) -> Tensor:
    """Decoded frames [3, T, H, W] -> uint8 [T, H, W, 3], or a batch [B, 3, T, H, W] -> [B, T, H, W, 3].

    Clamps to [-1, 1], then maps with (x + 1) * 127.5 and truncates, as the reference does before encoding video.
    """
    pixels = ((video.float().clamp(-1.0, 1.0) + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
    return pixels.movedim(-4, -1).contiguous()


# ------------------------------------------------------------------------------------------------ helpers


def _check_frame_size(config: VAEConfig, width: int, height: int) -> None:
    stride = config.spatial_stride
    if width % stride or height % stride:
        raise ValueError(f"frame size {width}x{height} is not a multiple of the VAE stride {stride}")


@functools.lru_cache(maxsize=32)
def _decoder_cache_shapes(config: VAEConfig, width: int, height: int, batch_size: int) -> dict[str, torch.Size]:
    """Shape of every decoder cache, found by running two latents through a VAE on the meta device (no memory).

    Cached: tracing costs ~0.15 s (and ~2 s on first use, when torch imports its compiler stack), which must not
    land on every new NPC's session start. Callers only read the returned dict.
    """
    with torch.device("meta"):
        vae = WanVAE(config)
        latents = torch.zeros(
            batch_size, config.z_dim, 2, height // config.spatial_stride, width // config.spatial_stride
        )
    state = CausalCache()
    with torch.no_grad():
        vae.decode_stream(latents, state)
    return {name: frames.shape for name, frames in state.frames.items()}


def load_wan_vae(path: Path | str, config: VAEConfig, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> WanVAE:
    """The published ``Wan2.1_VAE.pth`` (a state dict with this module's names). The latent statistics are not in
    the file; they come from ``config`` (the spec's values for the published model)."""
    state = load_pth_state(path)
    with torch.device(device):
        vae = WanVAE(config)
    expected = vae.state_dict()
    check_keys(path, expected, state)
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(f"{path}: {key} is {tuple(tensor.shape)}, the model's is "
                                  f"{tuple(expected[key].shape)}")
    vae.load_state_dict(state, strict=True)
    return vae.to(dtype).eval().requires_grad_(False)
