"""The DiT stage and the control stage that continues it: the DiT and the learned encoders, with Neighbor Forcing.

One step takes one clip of ``dit_blocks`` blocks (6 + 8 + 8 + 8 latents, so from block 2 on the ConvKV memory
is compressed, recursively) and one of the sampler's timesteps t_i. Every block is noised to t_i with its own
noise and run in order through one functional step cache, exactly as step i of inference runs block after
block against the cache of step i: block b attends to block b - 1 seen at the same noise level. Audio is left
out at step 0 as in inference. The loss is the flow-matching velocity (noise - x0), with the mouth's latent
cells weighted up (and in the control stage the eyes', brows' and hand's). Conditioning (reference image,
prompt per block, audio window) is built by the functions serving uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from avatar_backend.generator.conditioning import (audio_tail_frames, block_audio_window, blended_text, padded_text,
                                                   reference_pixels)
from avatar_backend.generator.config import ModelConfig
from avatar_backend.generator.convkv import ConvKVMemory
from avatar_backend.generator.dit import WanModel
from avatar_backend.generator.schedule import BlockLayout, StreamSchedule
from avatar_backend.generator.vae import WanVAE
from model.data.prompts import BASE_PROMPT, BlockPrompt

from .clips import TrainingClip, latent_loss_weight, prompts_for_blocks, video_to_tensor
from .recipe import TrainRecipe


@dataclass
class DiTExample:
    """One clip, encoded once: everything a DiT step reads."""

    latents: torch.Tensor          # [1, z, latent frames, h, w], DiT-space (normalised)
    y: torch.Tensor                # [1, 4 + z, 14, h, w]: mask and VAE code of the reference still
    reference: torch.Tensor        # [3, H, W] in [-1, 1]: the still, for the image encoder
    audio: torch.Tensor            # float32 16 kHz PCM of the whole clip
    prompts: list[BlockPrompt]     # per block
    weight: torch.Tensor | None = None   # [1, 1, latent frames, h, w] loss weights (the trainer's: example_weight)


def stream_plans(config: ModelConfig, blocks: int) -> list[BlockLayout]:
    schedule = StreamSchedule.from_model_config(config, config.width, config.height)
    return [schedule.block(b) for b in range(blocks)]


def latent_slice(plan: BlockLayout, config: ModelConfig) -> slice:
    """The stream latents a block generates (block 0: 0..5; block b >= 1: 6 + 8(b - 1) onwards)."""
    first, later = config.sampler.block_sizes
    start = 0 if plan.index == 0 else first + later * (plan.index - 1)
    return slice(start, start + plan.latent_frames)


def video_frames_for_blocks(config: ModelConfig, blocks: int) -> int:
    """The frames a clip needs for its first ``blocks`` blocks of latents (1 + 4(latents - 1))."""
    latent_frames = latent_slice(stream_plans(config, blocks)[-1], config).stop
    return 1 + config.vae.temporal_stride * (latent_frames - 1)


def example_weight(clip: TrainingClip, config: ModelConfig, recipe: TrainRecipe,
                   expression_weight: float = 0.0) -> torch.Tensor:
    """A clip's DiT loss weights over its ``dit_blocks`` blocks: the mouth, the recipe's hand and forearm, and
    ``expression_weight`` on the eyes, brows and hand weighted up."""
    latent_frames = latent_slice(stream_plans(config, recipe.dit_blocks)[-1], config).stop
    return latent_loss_weight(clip.truth, latent_frames, config.height, config.width,
                              mouth_weight=recipe.mouth_weight, expression_weight=expression_weight,
                              hand_weight=recipe.hand_weight, vae_scale=config.vae.temporal_stride)


@torch.no_grad()
def encode_example(vae: WanVAE, clip: TrainingClip, config: ModelConfig, blocks: int, fps: int) -> DiTExample:
    """A clip's first ``blocks`` blocks of latents and their conditioning (no loss weights)."""
    plans = stream_plans(config, blocks)
    video_frames = video_frames_for_blocks(config, blocks)
    if len(clip.frames) < video_frames:
        raise ValueError(f"a clip of {len(clip.frames)} frames is shorter than {blocks} blocks ({video_frames})")
    reference = reference_pixels(clip.reference, config.width, config.height)
    latents = vae.encode(video_to_tensor(clip.frames[:video_frames]))
    y = vae.encode_reference_image(reference, sum(config.sampler.block_sizes))
    return DiTExample(latents=latents, y=y, reference=reference, audio=torch.from_numpy(clip.audio.copy()),
                      prompts=prompts_for_blocks(clip, plans, fps))


@dataclass
class BlockPrediction:
    """One block of a Neighbor-Forcing pass: its clean latents, the noise they were mixed with, the DiT's velocity."""

    plan: BlockLayout
    x0: torch.Tensor
    noise: torch.Tensor
    noisy: torch.Tensor
    sigma: float                   # the noise level, t / 1000
    velocity: torch.Tensor

    @property
    def predicted_x0(self) -> torch.Tensor:
        """The clean block the velocity points to (what the sampler's last step returns)."""
        return self.noisy - self.sigma * self.velocity


def neighbor_forcing(modules: dict[str, torch.nn.Module], example: DiTExample, config: ModelConfig, blocks: int,
                     step: int, fps: int, generator: torch.Generator) -> list[BlockPrediction]:
    """The DiT's velocity for each of the example's first ``blocks`` blocks, every block noised to sampler step
    ``step``'s level with its own noise and run in order through one functional step cache (the module docstring):
    what a training step learns from, and what a teacher-forced measure reads."""
    dit: WanModel = modules["dit"]
    sampler = config.sampler
    t = sampler.timesteps[step]
    timestep = torch.tensor([t], dtype=torch.float32)
    use_audio = not (step == 0 and sampler.skip_audio_at_first_step)

    # Features as serving computes them: block 0's audio reaches back into a tail of zeros.
    encoder = modules["audio_encoder"]
    schedule = StreamSchedule.from_model_config(config, config.width, config.height)
    tail = audio_tail_frames(schedule, encoder.context_frames(fps))
    silence = example.audio.new_zeros(tail * (config.audio_encoder.sample_rate // fps))
    features = encoder.features(torch.cat([silence, example.audio]), fps)
    clip_fea = modules["image_encoder"](example.reference)
    text_len = config.dit.text_len
    encode_text = modules["text_encoder"].encode
    base = padded_text(encode_text(BASE_PROMPT), text_len)
    frame_tokens = config.frame_tokens(config.width, config.height)
    cache = ConvKVMemory.allocate_for(config.dit, sampler, frame_tokens).steps[0]
    radius = config.dit.audio_window // 2

    predictions = []
    for plan in stream_plans(config, blocks):
        prompt = example.prompts[plan.index]
        text = base if prompt.prompt is None else blended_text(base, padded_text(encode_text(prompt.prompt), text_len),
                                                             prompt.intensity)
        context = dit.encode_context(text, clip_fea, precompute_kv=False)
        x0 = example.latents[:, :, latent_slice(plan, config)]
        noise = torch.randn(x0.shape, generator=generator)
        noisy = (1.0 - t / 1000.0) * x0 + (t / 1000.0) * noise
        tokens = None
        if use_audio:
            tokens = dit.audio_tokens(block_audio_window(features, -tail, plan, radius), plan.window_frames)
        out = dit(noisy, timestep, example.y[:, :, plan.window_frames], cache=cache, start_frame=plan.window_start,
                  compress=plan.update_cache, context=context, audio_tokens=tokens, functional=True)
        cache = out.cache
        predictions.append(BlockPrediction(plan, x0, noise, noisy, t / 1000.0, out.velocity))
    return predictions


def dit_step(modules: dict[str, torch.nn.Module], example: DiTExample, config: ModelConfig, recipe: TrainRecipe,
             fps: int, rng: np.random.Generator, generator: torch.Generator) -> dict[str, float]:
    """One clip's Neighbor-Forcing loss at one random sampler step (backward included)."""
    step = int(rng.integers(config.sampler.num_steps))
    losses = []
    for block in neighbor_forcing(modules, example, config, recipe.dit_blocks, step, fps, generator):
        weight = example.weight[:, :, latent_slice(block.plan, config)]
        losses.append(((block.velocity - (block.noise - block.x0)).square() * weight).mean() / weight.mean())
    loss = torch.stack(losses).mean()
    loss.backward()
    return {"loss": loss.item(), f"loss_t{step}": loss.item()}
