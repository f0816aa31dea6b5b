"""The 3-step block sampler (LIVEACT_SPEC.md §3): x0 prediction with fresh-noise re-noising.

For each step i at t_i (1000, 937.5, 833.33): the model predicts a velocity v with the step-i cache,
x0 = x_t - v * t_i / 1000, and the next input is (1 - t_{i+1}/1000) * x0 + eps * t_{i+1}/1000 with fresh eps
(t_3 = 0, so the last step returns x0). Audio attention is skipped at step 0; with audio CFG the other steps run a
second, audio-free pass on its own caches and use null + cfg * (cond - null).

Prompt guidance (not in the reference): the streams of a batch whose prompt is another than their character's
base prompt add (guidance - 1) * (v - v_base) to the last step's velocity, each with its own factor, v_base from a
pass of those streams alone with the base prompt, which reads the step's cache as it is and writes a scratch copy
of their rows (batch-mates under their base prompts pay nothing for it). Only the last step: the schedule's first
two steps move the latent from t = 1000 to 833, and guiding them did little (docs/TINY_EXPERIMENTS.md, "Prompt
guidance side by side").

Prompt onset (not in the reference either): a stream whose prompt is not its last block's blends the two prompts'
cross-attention per latent frame at every step, the new one's share rising from none over the block's first
frames (:func:`onset_weights`), so that an emotion or action sets in over a few frames as a face changes, rather
than all at the block's first frame. Prompt guidance's base pass reads the base prompt alone.

Noise is drawn in a fixed order per block: one tensor for the initial latent, then one per step (the last one is
multiplied by 0). Keeping that order is what lets a replayed or restored noise source reproduce a stream exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .config import SamplerConfig
from .convkv import ConvKVMemory
from .dit import CrossAttentionContext, PromptOnset, WanModel
from .parallel import SequenceParallel
from .schedule import BlockLayout


class NoiseSource(Protocol):
    """Standard normal noise of ``shape`` with the dtype and device of ``like``."""

    def __call__(self, shape: Sequence[int], like: Tensor) -> Tensor: ...


class GeneratorNoise:
    """Noise from a seeded CPU ``torch.Generator``, drawn in float32 and then moved to the model's device.

    Drawing in float32 on the CPU keeps the stream independent of the model's dtype and of where it runs (a GPU
    generator draws other numbers), and the NPC's saved state is a CPU generator state that resumes anywhere.
    ``get_state``/``set_state`` save and restore the position in the stream for bit-exact resume.
    """

    def __init__(self, seed: int):
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def __call__(self, shape: Sequence[int], like: Tensor) -> Tensor:
        noise = torch.randn(tuple(shape), generator=self.generator, dtype=torch.float32)
        return noise.to(device=like.device, dtype=like.dtype)

    def get_state(self) -> Tensor:
        """The generator state as a uint8 tensor (``bytes(state.numpy())`` for raw bytes)."""
        return self.generator.get_state()

    def set_state(self, state: Tensor | bytes) -> None:
        if isinstance(state, (bytes, bytearray)):
            state = torch.frombuffer(bytearray(state), dtype=torch.uint8)
        self.generator.set_state(state.cpu())


class BatchNoise:
    """The noise of a batch of streams: row i comes from ``sources[i]``, drawn exactly as that stream alone would
    draw it, so a stream's noise does not depend on the batch it runs in."""

    def __init__(self, sources: Sequence[NoiseSource]):
        self.sources = list(sources)

    def __call__(self, shape: Sequence[int], like: Tensor) -> Tensor:
        batch, *rest = shape
        if batch != len(self.sources):
            raise ValueError(f"noise for a batch of {batch} from {len(self.sources)} sources")
        return torch.cat([source((1, *rest), like) for source in self.sources])


class ReplayNoise:
    """Plays back recorded noise tensors in order (conformance tests, debugging)."""

    def __init__(self, tensors: Iterable[Tensor]):
        self._pending = list(tensors)
        self.drawn = 0

    def __call__(self, shape: Sequence[int], like: Tensor) -> Tensor:
        if not self._pending:
            raise RuntimeError(f"replayed noise exhausted after {self.drawn} draws")
        noise = self._pending.pop(0)
        if noise.numel() != torch.Size(shape).numel():
            raise ValueError(f"draw {self.drawn}: recorded noise {tuple(noise.shape)} does not fit {tuple(shape)}")
        self.drawn += 1
        return noise.reshape(tuple(shape)).to(device=like.device, dtype=like.dtype)

    @property
    def remaining(self) -> int:
        return len(self._pending)


@dataclass
class PromptGuidance:
    """Which streams of a batch prompt guidance pushes, from what, and how far."""

    base: CrossAttentionContext    # the guided streams' contexts under their characters' base prompts
    rows: Tensor                   # [G] long: the guided streams' rows of the batch (the others are left as they are)
    factors: Tensor                # [G] float32: each guided stream's factor (> 1)


def onset_weights(frames: int, onset_latents: int) -> list[float]:
    """The new prompt's share of each latent frame of a block whose prompt changes, when the change sets in over
    its first ``onset_latents`` frames: 0, 1/n, 2/n, ..., then 1 (0: all 1, the change at the first frame).

    The first frame is the last block's prompt alone, so the block joins the last one as if the prompt stayed,
    and the change comes in equal steps inside the block. (Starting at 1/(n+1) instead left a quarter of the
    change on the block boundary at n = 3: seams 1.22 against 1.19; docs/TINY_EXPERIMENTS.md, "Prompt onset side by
    side".)
    """
    return [min(1.0, j / onset_latents) if onset_latents else 1.0 for j in range(frames)]


@dataclass
class BlockResult:
    x0: Tensor                 # [B, out_dim, T, h, w] the block's clean latent
    memory: ConvKVMemory       # the memory after the block (the same object unless functional)
    velocities: list[Tensor]   # the guided velocity of each step


def denoise_block(
    model: WanModel,
    memory: ConvKVMemory,
    plan: BlockLayout,
    *,
    y: Tensor,
    context: CrossAttentionContext,
    audio_window: Tensor | None,
    noise: NoiseSource,
    sampler: SamplerConfig,
    functional: bool | None = None,
    parallel: SequenceParallel | None = None,
    guidance: PromptGuidance | None = None,
    onset: PromptOnset | None = None,
) -> BlockResult:
    """Generate one block: draw its initial noise, run the denoising steps, return x0 and the updated memory.

    y [B, in_dim - out_dim, window_latents, h, w] is the whole conditioning window (sliced here by the plan), one
    row per stream of the batch (``memory`` has as many rows). ``audio_window`` [B, 53, 5, layers, ch] is the
    block's audio; None turns audio attention off altogether,
    which is not the same as silence (silent audio still has non-zero features and tokens).
    ``functional`` and ``parallel`` as in :meth:`WanModel.forward` (every rank draws the same noise).
    ``guidance``: prompt guidance, for the streams that have a prompt of their own and a factor above 1.
    ``onset``: the streams whose prompt changes at this block, blended in at every step (:func:`onset_weights`);
    prompt guidance's base pass reads the base prompt alone.
    """
    if functional is None:
        functional = torch.is_grad_enabled()
    y_block = y[:, :, plan.window_frames]
    shape = (y.shape[0], model.config.out_dim, plan.latent_frames, *y.shape[-2:])
    latent = noise(shape, like=y.new_empty((), dtype=model.dtype))

    audio_tokens = null_tokens = None
    if audio_window is not None:
        audio_tokens = model.audio_tokens(audio_window, plan.window_frames)
        if memory.null_audio:
            null_tokens = model.audio_tokens(torch.zeros_like(audio_window), plan.window_frames)

    steps = list(memory.steps)
    null_steps = dict(memory.null_audio)
    velocities: list[Tensor] = []
    timesteps = sampler.timesteps
    for i in range(sampler.num_steps):
        t_now, t_next = timesteps[i], timesteps[i + 1]
        timestep = torch.tensor([t_now], dtype=torch.float32, device=latent.device)
        use_audio = audio_tokens is not None and not (i == 0 and sampler.skip_audio_at_first_step)

        def call(cache, tokens, *, x=latent, y=y_block, context=context, onset=onset):
            return model(
                x, timestep, y, cache=cache, start_frame=plan.window_start, compress=plan.update_cache,
                context=context, audio_tokens=tokens, functional=functional, parallel=parallel, onset=onset,
            )

        tokens = audio_tokens if use_audio else None
        guided = guidance is not None and i == sampler.num_steps - 1
        if guided:  # the guided streams alone, before the conditional pass writes the cache they read
            rows = guidance.rows
            base_velocity, _ = call(steps[i].select(rows), None if tokens is None else tokens[rows],
                                    x=latent[rows], y=y_block[rows], context=guidance.base, onset=None)
        velocity, steps[i] = call(steps[i], tokens)
        prompted_velocity = velocity
        if use_audio and i in null_steps:
            null_velocity, null_steps[i] = call(null_steps[i], null_tokens)
            velocity = null_velocity + sampler.audio_cfg * (velocity - null_velocity)
        if guided:
            # In float32: a bf16 factor would round (2.3 acts as 2.296875).
            scale = (guidance.factors - 1.0).view(-1, *(1,) * (velocity.dim() - 1))
            push = (scale * (prompted_velocity[rows] - base_velocity)).to(velocity.dtype)
            velocity = velocity.index_add(0, rows, push)
        velocities.append(velocity)

        x0 = latent - velocity * (t_now / 1000.0)
        eps = noise(latent.shape, like=latent)
        latent = (1.0 - t_next / 1000.0) * x0 + eps * (t_next / 1000.0)

    if functional:
        memory = dataclasses.replace(memory, steps=steps, null_audio=null_steps)
    return BlockResult(x0=latent, memory=memory, velocities=velocities)
