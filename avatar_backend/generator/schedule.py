"""The block plan of the streaming loop and the audio windowing (LIVEACT_SPEC.md §3, §6.3).

The stream is generated in blocks against a fixed conditioning window of ``first + later`` latent frames (14):
block 0 fills window frames [0, 6) and yields 21 video frames; every later block fills window frames [6, 14) and
yields 32 video frames. The window's video frames (53) are the audio the block is conditioned on; its start
moves by one block of video frames from block 2 on, so a later block's own frames are always the window's last 32.

All numbers derive from ``SamplerConfig.block_sizes`` and ``DiTConfig.vae_scale`` / ``audio_window``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .config import DiTConfig, ModelConfig, SamplerConfig


@dataclass(frozen=True)
class BlockLayout:
    """Everything that differs between blocks of the stream."""

    index: int
    latent_frames: int          # latent frames generated: 6 for block 0, then 8
    window_start: int           # first window latent frame of the block (0, then 6): y slice, query RoPE, cache slots
    frame_tokens: int           # DiT tokens per latent frame
    update_cache: bool          # ConvKV compression before the write (blocks >= 2)
    audio_start: int            # first video frame of the audio window
    audio_frames: int           # video frames in the audio window (53)
    video_start: int            # first video frame the block outputs
    video_end: int              # one past the last video frame it outputs
    audio_required: int         # audio feature frames [0, audio_required) must exist before the block can run

    @property
    def window_end(self) -> int:
        return self.window_start + self.latent_frames

    @property
    def window_frames(self) -> slice:
        """The block's latent frames within the 14-frame conditioning window (of ``y`` and the audio tokens)."""
        return slice(self.window_start, self.window_end)

    @property
    def start_idx(self) -> int:
        """Reference naming: first cache token the block writes."""
        return self.window_start * self.frame_tokens

    @property
    def end_idx(self) -> int:
        """Reference naming: keys [0, end_idx) are attended."""
        return self.window_end * self.frame_tokens

    @property
    def video_frames(self) -> int:
        return self.video_end - self.video_start


class StreamSchedule:
    """Block plans for one stream at a given frame size."""

    def __init__(self, sampler: SamplerConfig, dit: DiTConfig, frame_tokens: int):
        self.first_block, self.block_size = sampler.block_sizes
        self.vae_scale = dit.vae_scale
        self.audio_radius = dit.audio_window // 2
        self.frame_tokens = frame_tokens
        self.window_latents = self.first_block + self.block_size
        self.window_video_frames = (self.window_latents - 1) * self.vae_scale + 1
        self.first_video_frames = (self.first_block - 1) * self.vae_scale + 1
        self.block_video_frames = self.block_size * self.vae_scale

    @classmethod
    def from_model_config(cls, config: ModelConfig, width: int, height: int) -> "StreamSchedule":
        return cls(config.sampler, config.dit, config.frame_tokens(width, height))

    def whole_blocks(self, video_frames: int) -> int:
        """How many blocks a stream of ``video_frames`` frames holds: block 0, counted however short the stream,
        and every later block that fits whole."""
        return 1 + max(0, (video_frames - self.first_video_frames) // self.block_video_frames)

    def block(self, index: int) -> BlockLayout:
        if index < 0:
            raise ValueError(f"block index must be >= 0, got {index}")
        if index == 0:
            latent_frames, window_start, video_start, video_end = self.first_block, 0, 0, self.first_video_frames
        else:
            latent_frames, window_start = self.block_size, self.first_block
            video_start = self.first_video_frames + (index - 1) * self.block_video_frames
            video_end = video_start + self.block_video_frames
        audio_start = max(index - 1, 0) * self.block_video_frames
        return BlockLayout(
            index=index,
            latent_frames=latent_frames,
            window_start=window_start,
            frame_tokens=self.frame_tokens,
            update_cache=index > 1,
            audio_start=audio_start,
            audio_frames=self.window_video_frames,
            video_start=video_start,
            video_end=video_end,
            # The last output frame's audio group reaches audio_radius frames ahead of it.
            audio_required=video_end + self.audio_radius,
        )

    def audio_window(self, features: Tensor, plan: BlockLayout) -> Tensor:
        """The block's audio window [1, 53, 5, layers, ch] from per-video-frame features [S, layers, ch]."""
        return audio_window(features, plan.audio_start, plan.audio_frames, self.audio_radius)


def audio_window(features: Tensor, start: int, length: int, radius: int) -> Tensor:
    """Frames n - radius .. n + radius of ``features`` [S, layers, ch] for n in [start, start + length).

    Indices are clamped to [0, S - 1], so the ends of the audio repeat. Returns [1, length, 2*radius + 1, layers, ch].
    """
    frames = torch.arange(start, start + length, device=features.device)
    offsets = torch.arange(-radius, radius + 1, device=features.device)
    index = (frames[:, None] + offsets[None, :]).clamp(0, features.shape[0] - 1)
    return features[index].unsqueeze(0)
