"""The 3-step sampler: update rule, noise order, audio skipping, audio CFG and its caches, noise sources, the
timesteps a shift gives."""

from __future__ import annotations

import pytest
import torch

from avatar_backend.generator.config import DiTConfig, SamplerConfig, flow_timesteps
from avatar_backend.generator.convkv import ConvKVMemory
from avatar_backend.generator.dit import DiTOutput
from avatar_backend.generator.sampler import GeneratorNoise, ReplayNoise, denoise_block
from avatar_backend.generator.schedule import StreamSchedule

DIT = DiTConfig(dim=8, num_heads=2, num_layers=1, ffn_dim=8, out_dim=4, in_dim=6)


class FakeModel:
    """Velocity = 0.5 * latent + timestep/1000 + (audio token mean if audio is used); records every call."""

    config = DIT
    dtype = torch.float32

    def __init__(self):
        self.calls = []

    def audio_tokens(self, window, frames):
        tokens = window.mean() * torch.ones(1, 14, 2, 3) + 1.0  # zero audio still gives non-zero tokens
        return tokens[:, frames]

    def __call__(self, latent, timestep, y, *, cache, start_frame, compress, context, audio_tokens, functional,
                 parallel=None, onset=None):
        self.calls.append(
            dict(t=float(timestep), cache=cache, audio=audio_tokens, start=start_frame, compress=compress)
        )
        audio = 0.0 if audio_tokens is None else float(audio_tokens.mean())
        return DiTOutput(0.5 * latent + float(timestep) / 1000 + audio, cache)


def run_block(sampler: SamplerConfig, block: int = 2):
    schedule = StreamSchedule(sampler, DIT, frame_tokens=4)
    plan = schedule.block(block)
    memory = ConvKVMemory.allocate_for(DIT, sampler, frame_tokens=4)
    shape = (1, DIT.out_dim, plan.latent_frames, 2, 2)
    recorded = [torch.randn(shape) for _ in range(1 + sampler.num_steps)]
    model = FakeModel()
    window = torch.full((1, 53, 5, 2, 3), 2.0)
    result = denoise_block(
        model, memory, plan, y=torch.zeros(1, 2, 14, 2, 2), context=None, audio_window=window,
        noise=ReplayNoise(recorded), sampler=sampler,
    )
    return result, recorded, model, memory, plan


def test_update_rule_and_noise_order():
    sampler = SamplerConfig()
    result, noises, model, memory, plan = run_block(sampler)
    t = sampler.timesteps
    audio = 3.0  # FakeModel tokens for a window of 2.0
    x = noises[0]
    for i in range(3):
        velocity = 0.5 * x + t[i] / 1000 + (audio if i > 0 else 0.0)  # audio skipped at step 0
        torch.testing.assert_close(result.velocities[i], velocity)
        x0 = x - velocity * t[i] / 1000
        x = (1 - t[i + 1] / 1000) * x0 + noises[i + 1] * t[i + 1] / 1000
    torch.testing.assert_close(result.x0, x0)  # the last re-noise is multiplied by t_3 = 0
    assert [c["t"] for c in model.calls] == pytest.approx([1000.0, 937.5, 833.33333333])
    assert [c["cache"] for c in model.calls] == memory.steps  # step i uses cache i (Neighbor Forcing)
    assert all(c["start"] == plan.window_start == 6 and c["compress"] for c in model.calls)


def test_a_smaller_shift_runs_the_three_steps_at_less_noise():
    # LiveAct's schedule is the shift-5 flow sigmas of [1, 0.75, 0.5] (LIVEACT_SPEC.md); shift 1 is the grid itself.
    assert flow_timesteps(5.0) == SamplerConfig().timesteps == (1000.0, 937.5, 833.33333333, 0.0)
    assert flow_timesteps(1.25) == (1000.0, 789.47368421, 555.55555556, 0.0)
    sampler = SamplerConfig(timesteps=flow_timesteps(1.0))
    result, noises, model, _, _ = run_block(sampler)
    assert [c["t"] for c in model.calls] == [1000.0, 750.0, 500.0]
    x = (1 - 0.75) * (noises[0] - result.velocities[0]) + 0.75 * noises[1]  # step 0's x0, re-noised to t = 750
    torch.testing.assert_close(result.velocities[1], 0.5 * x + 0.75 + 3.0)
    for shift in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="shift must be positive"):
            flow_timesteps(shift)


def test_audio_cfg_uses_the_null_caches_at_steps_with_audio():
    sampler = SamplerConfig(audio_cfg=1.7)
    result, noises, model, memory, _ = run_block(sampler)
    assert sorted(memory.null_audio) == [1, 2]
    assert len(model.calls) == 5  # step 0 (no audio, no CFG), then conditional + null at steps 1 and 2
    assert model.calls[0]["audio"] is None
    for i, (cond, null) in zip((1, 2), (model.calls[1:3], model.calls[3:5])):
        assert cond["cache"] is memory.steps[i] and null["cache"] is memory.null_audio[i]
        assert float(cond["audio"].mean()) == 3.0 and float(null["audio"].mean()) == 1.0
    t = sampler.timesteps
    x = noises[0]
    for i in range(3):
        base = 0.5 * x + t[i] / 1000
        velocity = base if i == 0 else (base + 1.0) + 1.7 * ((base + 3.0) - (base + 1.0))
        torch.testing.assert_close(result.velocities[i], velocity)
        x0 = x - velocity * t[i] / 1000
        x = (1 - t[i + 1] / 1000) * x0 + noises[i + 1] * t[i + 1] / 1000
    torch.testing.assert_close(result.x0, x0)


def test_block_zero_writes_from_slot_zero_without_compression():
    _, _, model, _, plan = run_block(SamplerConfig(), block=0)
    assert plan.latent_frames == 6
    assert all(c["start"] == 0 and not c["compress"] for c in model.calls)


def test_generator_noise_resumes_bit_exactly():
    like = torch.zeros(())
    source = GeneratorNoise(seed=7)
    source((16, 6, 4, 4), like)
    state = source.get_state()
    raw = bytes(state.numpy())
    first = [source((16, 8, 4, 4), like) for _ in range(4)]
    for saved in (state, raw):
        resumed = GeneratorNoise(seed=123)
        resumed.set_state(saved)
        again = [resumed((16, 8, 4, 4), like) for _ in range(4)]
        assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])
    assert source((2,), torch.zeros((), dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_replay_noise_checks_sizes_and_exhaustion():
    source = ReplayNoise([torch.arange(6.0)])
    assert torch.equal(source((2, 3), torch.zeros(())), torch.arange(6.0).reshape(2, 3))
    with pytest.raises(RuntimeError):
        source((2, 3), torch.zeros(()))
    with pytest.raises(ValueError):
        ReplayNoise([torch.zeros(5)])((2, 3), torch.zeros(()))
