"""ConvKV memory: the compressor, the slot contents of both groupings, constant size, snapshots, autograd, RoPE."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from avatar_backend.generator.config import LIVEACT_18B, DiTConfig, ModelConfig, SamplerConfig
from avatar_backend.generator.convkv import CacheWrite, ConvKVMemory, SlotLayout, cache_bytes, compress
from avatar_backend.generator.dit import RotaryEmbedding3D, WanModel, apply_rope
from avatar_backend.generator.sampler import GeneratorNoise, denoise_block
from avatar_backend.generator.schedule import StreamSchedule

HEADS, HEAD_DIM = 2, 4
SCHEDULE = StreamSchedule(SamplerConfig(), DiTConfig(), frame_tokens=5)


def global_frame(block: int, frame: int) -> int:
    """Index of a block's latent frame in the whole stream: block 0 has frames 0..5, block b >= 1 has 6 + 8(b-1)..."""
    return frame if block == 0 else 6 + 8 * (block - 1) + frame


def run_writes(layout: SlotLayout, k_blocks, v_blocks, k_conv, v_conv, frame_tokens: int, *, inplace: bool):
    """Feed blocks of keys/values [frames * fs, heads, head_dim] through one layer's cache (a batch of one);
    the caches after each block, without the batch row."""
    shape = (1, layout.slots * frame_tokens, *k_blocks[0].shape[1:])
    k_cache, v_cache = torch.zeros(shape, dtype=k_blocks[0].dtype), torch.zeros(shape, dtype=k_blocks[0].dtype)
    history = []
    for b, (k_new, v_new) in enumerate(zip(k_blocks, v_blocks)):
        plan = SCHEDULE.block(b)
        write = CacheWrite(layout, frame_tokens, plan.window_start, plan.latent_frames, plan.update_cache, inplace)
        k_cache, v_cache = write.apply(k_cache, v_cache, k_new[None], v_new[None], k_conv, v_conv)
        history.append((k_cache[0].clone(), v_cache[0].clone()))
    return history


# -- the compressor ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compress_is_the_depthwise_conv_over_flattened_tokens(dtype):
    frame_tokens = 16  # not a multiple of 5: groups straddle frame ends
    frames = torch.randn(5 * frame_tokens, HEADS, HEAD_DIM).to(dtype)
    weight = torch.randn(HEADS * HEAD_DIM, 1, 5)
    # LIVEACT_SPEC §4.4: [5fs, heads, head_dim] -> [1, channels, 5fs] -> depthwise Conv1d(kernel=stride=5) -> back
    channels_first = frames.float().reshape(1, 5 * frame_tokens, -1).transpose(1, 2)
    expected = F.conv1d(channels_first, weight, stride=5, groups=HEADS * HEAD_DIM)
    expected = expected.transpose(1, 2).reshape(frame_tokens, HEADS, HEAD_DIM)
    actual = compress(frames, weight.to(dtype))
    assert actual.dtype == dtype
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(actual.float(), expected, rtol=tolerance, atol=tolerance)


# -- slot contents of both groupings, checked against the spec's tables ------------------------------------------

FS = 5  # one compressed token per source slot: with mean weights, token j of C(...) is the mean of source j


def frame_slot(index: int) -> torch.Tensor:
    """A latent frame whose every token carries its 1-based global index (0 stays 'never written')."""
    return torch.full((FS,), float(index + 1))


def expected_slots(grouping: str, blocks: int, sign: float = 1.0, weight: float = 1 / 5) -> list[list[torch.Tensor]]:
    """Slot contents after each block, written from LIVEACT_SPEC §4.3 (single-device) and §8 (two-device).

    Frames carry sign * (global index + 1); compression uses constant conv weights ``weight``.
    """

    def C(*sources: torch.Tensor) -> torch.Tensor:
        # With FS = 5 and constant weights, compressed token j is 5 * weight * the mean of source slot j.
        assert len(sources) == 5
        return torch.stack([5 * weight * s.mean() for s in sources])

    F_ = lambda b, f: sign * frame_slot(global_frame(b, f))  # noqa: E731
    zero = torch.zeros(FS)
    tables = [[F_(0, f) for f in range(6)] + [zero] * 8]
    tables.append([F_(0, f) for f in range(6)] + [F_(1, f) for f in range(8)])
    for b in range(2, blocks):
        prev, prev2 = (lambda f, b=b: F_(b - 1, f)), (lambda f, b=b: F_(b - 2, f))
        old = tables[-1]
        current = [F_(b, f) for f in range(8)]
        if grouping == "single-device":
            if b == 2:  # slot 2 = C(b0 f2..f5, b1 f0), slot 3 = C(b1 f1..f5)
                long_term = C(F_(0, 2), F_(0, 3), F_(0, 4), F_(0, 5), prev(0))
            else:  # slot 2 = C(M, C, prev2 f6, prev2 f7, prev f0)
                long_term = C(old[2], old[3], prev2(6), prev2(7), prev(0))
            recent = C(*[prev(f) for f in range(1, 6)])
        else:
            if b == 2:  # pos 2 = C(b0 f2, b1 f0..f3), pos 3 = C(b0 f3..f5, b1 f4, b1 f5)
                long_term = C(F_(0, 2), *[prev(f) for f in range(4)])
                recent = C(F_(0, 3), F_(0, 4), F_(0, 5), prev(4), prev(5))
            else:  # pos 2 = C(M_a, prev f0..f3), pos 3 = C(M_b, prev2 f6, prev2 f7, prev f4, prev f5)
                long_term = C(old[2], *[prev(f) for f in range(4)])
                recent = C(old[3], prev2(6), prev2(7), prev(4), prev(5))
        tables.append([F_(0, 0), F_(0, 1), long_term, recent, prev(6), prev(7), *current])
    return tables


@pytest.mark.parametrize("grouping", ["single-device", "two-device"])
@pytest.mark.parametrize("v_compression", ["k_conv", "v_conv"])
@pytest.mark.parametrize("inplace", [True, False])
def test_slot_contents_follow_the_spec_tables(grouping, v_compression, inplace):
    layout = SlotLayout(grouping=grouping, v_compression=v_compression)
    blocks = 7
    k_blocks, v_blocks = [], []
    for b in range(blocks):
        frames = 6 if b == 0 else 8
        k = torch.cat([frame_slot(global_frame(b, f)) for f in range(frames)])
        k_blocks.append(k[:, None, None].expand(-1, HEADS, HEAD_DIM).contiguous())
        v_blocks.append(-k_blocks[-1])  # V mirrors K with the opposite sign
    channels = HEADS * HEAD_DIM
    k_conv = torch.full((channels, 1, 5), 1 / 5)
    v_conv = torch.full((channels, 1, 5), 2 / 5)  # a different conv, so its use (or not) shows

    history = run_writes(layout, k_blocks, v_blocks, k_conv, v_conv, FS, inplace=inplace)
    expected_k = expected_slots(grouping, blocks)
    # The reference compresses V with the K conv; "v_conv" uses V's own weights.
    expected_v = expected_slots(grouping, blocks, sign=-1.0, weight=1 / 5 if v_compression == "k_conv" else 2 / 5)
    for b, (k_cache, v_cache) in enumerate(history):
        for cache, expected, name in ((k_cache, expected_k[b], "K"), (v_cache, expected_v[b], "V")):
            assert torch.equal(cache, cache[:, :1, :1].expand_as(cache)), "every channel is treated alike"
            slots = cache[:, 0, 0].reshape(layout.slots, FS)
            for slot, want in enumerate(expected):
                assert torch.allclose(slots[slot], want), f"block {b} {name} slot {slot}: {slots[slot]} != {want}"


def test_two_device_grouping_equals_the_two_rank_reference():
    """The one-device emulation equals the reference's 2-rank caches (§8) reassembled by RoPE position."""
    torch.manual_seed(0)
    fs, blocks, channels = 16, 7, HEADS * HEAD_DIM
    k_conv = torch.randn(channels, 1, 5)
    k_blocks = [torch.randn((6 if b == 0 else 8) * fs, HEADS, HEAD_DIM) for b in range(blocks)]
    emulated = run_writes(SlotLayout(grouping="two-device"), k_blocks, k_blocks, k_conv, k_conv, fs, inplace=True)

    def frames(t: torch.Tensor, first: int, count: int) -> torch.Tensor:
        return t[first * fs : (first + count) * fs]

    ranks = [torch.zeros(7 * fs, HEADS, HEAD_DIM) for _ in range(2)]
    for b, k_new in enumerate(k_blocks):
        for r, local in enumerate(ranks):
            if b == 0:  # rank r writes block frames 3r..3r+2 into local slots 0..2
                local[: 3 * fs] = frames(k_new, 3 * r, 3)
                continue
            if b >= 2:
                if r == 0:  # slot 2 <- C(local slots 2..6)
                    local[2 * fs : 3 * fs] = compress(frames(local, 2, 5), k_conv)
                else:  # slot 0 <- C(local slots 0..4); slots 1, 2 <- slots 5, 6
                    compressed = compress(frames(local, 0, 5), k_conv)
                    local[fs : 3 * fs] = frames(local, 5, 2).clone()
                    local[:fs] = compressed
            local[3 * fs :] = frames(k_new, 4 * r, 4)  # the rank's 4 frames of the current block
        # RoPE positions of the local slots: rank r holds 3r..3r+2, then 6+4r..9+4r.
        by_position = {}
        for r, local in enumerate(ranks):
            positions = [3 * r, 3 * r + 1, 3 * r + 2, 6 + 4 * r, 7 + 4 * r, 8 + 4 * r, 9 + 4 * r]
            for slot, position in enumerate(positions):
                by_position[position] = frames(local, slot, 1)
        visible = 6 if b == 0 else 14
        reassembled = torch.cat([by_position[p] for p in range(visible)])
        torch.testing.assert_close(emulated[b][0][: visible * fs], reassembled, rtol=1e-6, atol=1e-6)


# -- constant size, analytic bytes, snapshots --------------------------------------------------------------------


def small_config(**sampler) -> ModelConfig:
    dit = DiTConfig(dim=16, ffn_dim=32, num_heads=2, num_layers=2, freq_dim=16, text_len=4, text_dim=8, clip_dim=8,
                    clip_tokens=3, audio_layers=2, audio_channels=4, intermediate_dim=8, output_dim=8, context_tokens=2)
    return ModelConfig(name="small", dit=dit, sampler=SamplerConfig(**sampler), dtype="float32")


def test_cache_bytes_match_the_spec_for_the_published_model():
    # LIVEACT_SPEC §4.1: bf16 K+V, 3 step caches x 40 layers = 35.2 GB at 512x512 and 40.3 GB at 416x720.
    assert cache_bytes(LIVEACT_18B, 512, 512, torch.bfloat16) == 3 * 2 * 40 * 14336 * 5120 * 2
    assert round(cache_bytes(LIVEACT_18B, 416, 720, "bfloat16") / 1e9, 1) == 40.3
    # Audio CFG adds a cache per step that runs the audio-free pass (steps 1 and 2).
    cfg = dataclasses.replace(LIVEACT_18B, sampler=SamplerConfig(audio_cfg=1.7))
    assert cache_bytes(cfg, 512, 512, torch.bfloat16) == 5 * 2 * 40 * 14336 * 5120 * 2


@pytest.mark.parametrize("audio_cfg", [1.0, 1.7])
def test_memory_size_is_constant_over_200_blocks(audio_cfg):
    config = small_config(audio_cfg=audio_cfg)
    width = height = 64
    expected = cache_bytes(config, width, height)
    memory = ConvKVMemory.allocate(config, width, height)
    assert memory.nbytes == expected
    assert len(memory.null_audio) == (2 if audio_cfg > 1 else 0)
    pointers = {name: t.data_ptr() for name, t in memory.state_tensors().items()}
    fs, dit = memory.frame_tokens, config.dit
    conv = torch.full((dit.dim, 1, 5), 0.2)
    schedule = StreamSchedule.from_model_config(config, width, height)
    for b in range(201):
        plan = schedule.block(b)
        write = CacheWrite(memory.layout, fs, plan.window_start, plan.latent_frames, plan.update_cache, inplace=True)
        new = torch.randn(1, plan.latent_frames * fs, dit.num_heads, dit.head_dim)
        for cache in [*memory.steps, *memory.null_audio.values()]:
            for layer in range(dit.num_layers):
                write.apply(cache.k[layer], cache.v[layer], new, new, conv, conv)
        if b >= 2:
            assert memory.nbytes == expected
            assert {name: t.data_ptr() for name, t in memory.state_tensors().items()} == pointers
    assert torch.isfinite(memory.steps[0].k).all()


def test_state_tensors_round_trip():
    config = small_config(audio_cfg=1.7)
    memory = ConvKVMemory.allocate(config, 64, 64)
    for i, tensor in enumerate(memory.state_tensors().values()):
        tensor.normal_(generator=torch.Generator().manual_seed(i))
    tensors = {name: t.clone() for name, t in memory.state_tensors().items()}
    assert set(tensors) == {f"step{i}.{kv}" for i in range(3) for kv in "kv"} | {
        f"null_audio.step{i}.{kv}" for i in (1, 2) for kv in "kv"
    }
    restored = ConvKVMemory.from_state_tensors(tensors, memory.layout)
    assert restored.nbytes == memory.nbytes and restored.layout == memory.layout
    for name, tensor in restored.state_tensors().items():
        assert torch.equal(tensor, memory.state_tensors()[name]), name
    with pytest.raises(ValueError):
        ConvKVMemory.from_state_tensors({k: v for k, v in tensors.items() if not k.startswith("step0")}, memory.layout)


def test_layout_rejects_other_block_sizes():
    with pytest.raises(ValueError):
        SlotLayout.from_config(SamplerConfig(block_sizes=(4, 8)), DiTConfig())
    with pytest.raises(ValueError):
        SlotLayout(grouping="three-device")


@pytest.mark.parametrize("inplace", [True, False])
def test_the_sliding_window_ablation_keeps_the_sink_and_the_last_frames_exactly(inplace):
    layout = SlotLayout(grouping="sliding-window")
    blocks = [torch.cat([frame_slot(global_frame(b, f)) for f in range(6 if b == 0 else 8)])[:, None, None]
              .expand(-1, HEADS, HEAD_DIM).contiguous() for b in range(4)]
    conv = torch.full((HEADS * HEAD_DIM, 1, 5), 1 / 5)
    history = run_writes(layout, blocks, blocks, conv, conv, FS, inplace=inplace)
    slots = history[-1][0][:, 0, 0].reshape(layout.slots, FS)[:, 0]
    # Block 3 holds stream frames 22..29; before it, block 2's last four (18..21) and the sink (0, 1).
    assert slots.tolist() == [float(i + 1) for i in (0, 1, 18, 19, 20, 21, *range(22, 30))]


# -- autograd: the functional update equals the in-place one and carries gradients ------------------------------


@pytest.mark.parametrize("grouping", ["single-device", "two-device"])
def test_functional_update_equals_inplace_and_has_gradients(grouping):
    torch.manual_seed(1)
    fs, channels = 16, HEADS * HEAD_DIM
    layout = SlotLayout(grouping=grouping, v_compression="v_conv")
    k_conv = torch.randn(channels, 1, 5, requires_grad=True)
    v_conv = torch.randn(channels, 1, 5, requires_grad=True)
    k_blocks = [torch.randn((6 if b == 0 else 8) * fs, HEADS, HEAD_DIM, requires_grad=True) for b in range(5)]
    v_blocks = [torch.randn_like(k, requires_grad=True) for k in k_blocks]

    functional = run_writes(layout, k_blocks, v_blocks, k_conv, v_conv, fs, inplace=False)
    with torch.no_grad():
        inplace = run_writes(layout, k_blocks, v_blocks, k_conv, v_conv, fs, inplace=True)
    for (fk, fv), (ik, iv) in zip(functional, inplace):
        assert torch.equal(fk, ik) and torch.equal(fv, iv)

    k_final, v_final = functional[-1]
    assert k_final.requires_grad
    (k_final.square().sum() + v_final.square().sum()).backward()
    assert k_conv.grad.abs().sum() > 0 and v_conv.grad.abs().sum() > 0
    # Block 0's frames 2..5 only survive inside the recursive long-term slot: gradient must reach them through it.
    assert k_blocks[0].grad[2 * fs :].abs().sum() > 0
    assert v_blocks[0].grad[2 * fs :].abs().sum() > 0


def tiny_model_inputs(config: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    dit = config.dit
    model = WanModel(dit)
    with torch.no_grad():
        for p in model.parameters():  # random everywhere (the default init zeroes the head)
            p.copy_(torch.randn_like(p) * 0.3)
    h = w = 8
    y = torch.randn(1, dit.in_dim - dit.out_dim, 14, h, w)
    text, clip = torch.randn(3, dit.text_dim), torch.randn(1, dit.clip_tokens, dit.clip_dim)
    audio = torch.randn(200, dit.audio_layers, dit.audio_channels)
    return model, y, text, clip, audio


def test_model_functional_rollout_equals_inference_and_backpropagates():
    config = small_config()
    model, y, text, clip, audio = tiny_model_inputs(config)
    schedule = StreamSchedule(config.sampler, config.dit, frame_tokens=16)

    def rollout(functional: bool):
        memory = ConvKVMemory.allocate_for(config.dit, config.sampler, 16)
        noise = GeneratorNoise(seed=3)
        context = model.encode_context(text, clip)
        outputs = []
        for b in range(4):
            plan = schedule.block(b)
            result = denoise_block(
                model, memory, plan, y=y, context=context, audio_window=schedule.audio_window(audio, plan),
                noise=noise, sampler=config.sampler, functional=functional,
            )
            memory = result.memory
            outputs.append(result.x0)
        return outputs, memory

    with torch.no_grad():
        reference, memory_inplace = rollout(functional=False)
    outputs, memory_functional = rollout(functional=True)
    for got, want in zip(outputs, reference):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-5)
    for name, tensor in memory_functional.state_tensors().items():
        torch.testing.assert_close(tensor.detach(), memory_inplace.state_tensors()[name], rtol=1e-5, atol=1e-5)

    outputs[-1].square().mean().backward()
    attn = model.blocks[0].self_attn
    assert attn.memory_proj_k.weight.grad is not None and attn.memory_proj_k.weight.grad.abs().sum() > 0
    assert attn.memory_proj_v.weight.grad is None  # the default V compression reuses the K conv
    assert model.audio_proj.proj1_vf.weight.grad.abs().sum() > 0


# -- RoPE ----------------------------------------------------------------------------------------------------------


def test_rope_axis_split_and_angles():
    head_dim = 16
    rope = RotaryEmbedding3D(head_dim)
    assert rope.axis_pairs == (4, 2, 2)  # [c - 2(c//3), c//3, c//3] with c = 8 pairs
    assert RotaryEmbedding3D(128).axis_pairs == (22, 21, 21)
    x = torch.randn(1, 1, 1, head_dim, dtype=torch.float64)
    channels = {0: range(0, 8), 1: range(8, 12), 2: range(12, 16)}  # interleaved pairs, axis by axis
    for axis, position in ((0, 5), (1, 3), (2, 2)):
        pos = torch.zeros(1, 3, dtype=torch.long)
        pos[0, axis] = position
        rotated = apply_rope(x, *rope.cos_sin(pos))
        changed = {c for c in range(head_dim) if not torch.isclose(rotated[..., c], x[..., c])}
        assert changed == set(channels[axis])
        # pair m of the axis turns by position * 10000^(-m / n)
        n = rope.axis_pairs[axis]
        first = channels[axis][0]
        for m in range(n):
            a, b = x[0, 0, 0, first + 2 * m], x[0, 0, 0, first + 2 * m + 1]
            angle = torch.tensor(position * 10000.0 ** (-m / n), dtype=torch.float64)
            assert torch.isclose(rotated[0, 0, 0, first + 2 * m], a * angle.cos() - b * angle.sin())
            assert torch.isclose(rotated[0, 0, 0, first + 2 * m + 1], a * angle.sin() + b * angle.cos())


def test_rope_reset_positions_used_by_the_model(monkeypatch):
    config = small_config()
    model, y, text, clip, audio = tiny_model_inputs(config)
    calls = []
    grid = model.rope.grid

    def spy(start_frame, frames, height, width, device):
        calls.append((start_frame, frames))
        return grid(start_frame, frames, height, width, device)

    monkeypatch.setattr(model.rope, "grid", spy)
    schedule = StreamSchedule(config.sampler, config.dit, frame_tokens=16)
    memory = ConvKVMemory.allocate_for(config.dit, config.sampler, 16)
    context = model.encode_context(text, clip)
    with torch.no_grad():
        for b in range(5):
            calls.clear()
            plan = schedule.block(b)
            denoise_block(model, memory, plan, y=y, context=context, audio_window=schedule.audio_window(audio, plan),
                          noise=GeneratorNoise(b), sampler=config.sampler)
            queries, keys = set(calls[0::2]), set(calls[1::2])
            if b == 0:
                assert queries == {(0, 6)} and keys == {(0, 6)}
            else:  # queries at temporal positions 6..13, keys at 0..13, however long the stream
                assert queries == {(6, 8)} and keys == {(0, 14)}
    temporal = RotaryEmbedding3D.positions(6, 8, 4, 4)[:, 0]
    assert temporal.unique().tolist() == list(range(6, 14))
