"""The umT5 text encoder: Wan's .pth file through the key map (against a plain re-statement of Wan's T5Encoder
forward), the tokenizer directory, the trimmed output, and the key and shape checks of the load."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from avatar_backend.generator.checkpoint import CheckpointError
from avatar_backend.generator.config import TextEncoderConfig
from avatar_backend.generator.text_encoder import (
    UMT5TextEncoder,
    build_text_encoder,
    clean_prompt,
    load_umt5,
    umt5_key,
    wan_umt5_key,
)
from published_files import umt5_tokenizer_dir, wan_umt5_state

CONFIG = TextEncoderConfig(kind="umt5-xxl", max_len=32, dim=32, layers=2, heads=4, head_dim=8, ffn_dim=48,
                           vocab_size=300, relative_buckets=8, relative_max_distance=16)
EPS = 1e-6  # T5's RMS norm


def save(state: dict[str, Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


# -- an independent statement of Wan's T5Encoder forward (plain torch, Wan's names) ------------------------------

def t5_bucket(relative: int, num_buckets: int, max_distance: int) -> int:
    """T5's bidirectional relative position bucket of ``relative`` = key position - query position."""
    half = num_buckets // 2
    offset = half if relative > 0 else 0
    distance = abs(relative)
    exact = half // 2
    if distance < exact:
        return offset + distance
    log_bucket = exact + int(math.log(distance / exact) / math.log(max_distance / exact) * (half - exact))
    return offset + min(log_bucket, half - 1)


def rms_norm(x: Tensor, weight: Tensor) -> Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


def gelu_tanh(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def wan_forward(state: dict[str, Tensor], ids: Tensor, config: TextEncoderConfig = CONFIG,
                mask: Tensor | None = None) -> Tensor:
    """ids [L] -> [L, dim] in float64; ``mask`` [L] (1 = token, 0 = padding) masks keys as Wan's attention does."""
    w = {k: v.double() for k, v in state.items()}
    length, heads, head_dim = ids.shape[0], config.heads, config.head_dim
    buckets = torch.tensor([[t5_bucket(k - q, config.relative_buckets, config.relative_max_distance)
                             for k in range(length)] for q in range(length)])
    x = w["token_embedding.weight"][ids]
    for i in range(config.layers):
        p = f"blocks.{i}."
        h = rms_norm(x, w[p + "norm1.weight"])
        q, k, v = ((h @ w[p + f"attn.{n}.weight"].T).view(length, heads, head_dim).transpose(0, 1) for n in "qkv")
        bias = w[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)  # [heads, L, L]
        logits = q @ k.transpose(1, 2) + bias  # no 1/sqrt(head_dim) scaling
        if mask is not None:
            logits = logits.masked_fill(mask[None, None, :] == 0, float("-inf"))
        attended = (logits.softmax(-1) @ v).transpose(0, 1).reshape(length, heads * head_dim)
        x = x + attended @ w[p + "attn.o.weight"].T
        h = rms_norm(x, w[p + "norm2.weight"])
        gated = (h @ w[p + "ffn.fc1.weight"].T) * gelu_tanh(h @ w[p + "ffn.gate.0.weight"].T)
        x = x + gated @ w[p + "ffn.fc2.weight"].T
    return rms_norm(x, w["norm.weight"])


def relative_error(actual: Tensor, expected: Tensor) -> float:
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def test_reference_buckets_follow_t5():
    # umT5-XXL: 32 buckets (16 per direction, 8 exact), max distance 128
    assert [t5_bucket(r, 32, 128) for r in (0, -1, -7, 1, 7)] == [0, 1, 7, 17, 23]
    assert t5_bucket(-8, 32, 128) == 8 and t5_bucket(-127, 32, 128) == 15 and t5_bucket(-500, 32, 128) == 15
    assert t5_bucket(500, 32, 128) == 31


def ids_of_length(length: int, seed: int = 1) -> Tensor:
    return torch.randint(0, CONFIG.vocab_size, (length,), generator=torch.Generator().manual_seed(seed))


# -- the key map against Wan's forward --------------------------------------------------------------------------

@torch.inference_mode()
def test_loaded_encoder_matches_wan_forward(tmp_path):
    state = wan_umt5_state(CONFIG)
    encoder = load_umt5(save(state, tmp_path / "umt5.pth"), None, CONFIG, dtype=torch.float32)
    # 20 tokens: distances beyond max_distance (16) reach the clamped buckets
    for length in (20, 5, 1):
        ids = ids_of_length(length)
        out = encoder(ids)
        assert out.shape == (length, CONFIG.dim) and out.dtype == torch.float32
        assert relative_error(out, wan_forward(state, ids)) <= 1e-5


def _swap(state: dict[str, Tensor], a: str, b: str) -> dict[str, Tensor]:
    return state | {a: state[b], b: state[a]}


@pytest.mark.parametrize("wrong", ["gate and fc1 swapped", "position biases of the other block",
                                   "norm1 and norm2 swapped"])
@torch.inference_mode()
def test_the_comparison_sees_a_wrong_map(tmp_path, wrong):
    """The comparison above is sensitive to the mistakes a key map could make."""
    state = wan_umt5_state(CONFIG)
    swapped = {
        "gate and fc1 swapped": ("blocks.1.ffn.gate.0.weight", "blocks.1.ffn.fc1.weight"),
        "position biases of the other block": ("blocks.0.pos_embedding.embedding.weight",
                                               "blocks.1.pos_embedding.embedding.weight"),
        "norm1 and norm2 swapped": ("blocks.0.norm1.weight", "blocks.0.norm2.weight"),
    }[wrong]
    encoder = load_umt5(save(_swap(state, *swapped), tmp_path / "umt5.pth"), None, CONFIG, dtype=torch.float32)
    ids = ids_of_length(20)
    assert relative_error(encoder(ids), wan_forward(state, ids)) > 1e-3


def test_key_map_round_trips():
    for key in wan_umt5_state(CONFIG):
        assert wan_umt5_key(umt5_key(key)) == key
    assert umt5_key("token_embedding.weight") == "shared.weight"
    assert umt5_key("blocks.3.ffn.gate.0.weight") == "encoder.block.3.layer.1.DenseReluDense.wi_0.weight"
    assert umt5_key("blocks.3.pos_embedding.embedding.weight") == \
        "encoder.block.3.layer.0.SelfAttention.relative_attention_bias.weight"
    assert umt5_key("head.weight") == "head.weight"  # not Wan's encoder: kept, so the key check names it


# -- the tokenizer --------------------------------------------------------------------------------------------------


def test_clean_prompt_is_wans_whitespace_cleaning():
    assert clean_prompt("  Hello \t\n  world ") == "Hello world"
    assert clean_prompt("fish &amp;amp; chips") == "fish & chips"  # HTML entities unescaped twice
    assert clean_prompt("sch\u00c3\u00b6n") == "sch\u00f6n"  # ftfy repairs mojibake
    assert clean_prompt("") == ""


@torch.inference_mode()
def test_encode_trims_to_the_token_count_like_wans_padded_run(tmp_path):
    state = wan_umt5_state(CONFIG)
    directory = umt5_tokenizer_dir(tmp_path)
    encoder = load_umt5(save(state, tmp_path / "umt5.pth"), directory, CONFIG, dtype=torch.float32)
    tokenizer = encoder.tokenizer
    ids = encoder.token_ids("  Hello   world ")
    assert tokenizer.convert_ids_to_tokens(ids.tolist()) == ["▁Hello", "▁world", "</s>"]
    out = encoder.encode("  Hello   world ")
    assert out.shape == (3, CONFIG.dim) and out.dtype == encoder.dtype and out.device == encoder.device
    assert torch.equal(out, encoder(tokenizer("Hello world", return_tensors="pt").input_ids[0]))

    # Wan's way: padded to max_len, the padding masked, the first L rows kept.
    padded = tokenizer("Hello world", padding="max_length", truncation=True, max_length=CONFIG.max_len,
                       add_special_tokens=True, return_tensors="pt")
    assert padded.input_ids.shape == (1, CONFIG.max_len) and int(padded.attention_mask.sum()) == 3
    hf = encoder.model(input_ids=padded.input_ids, attention_mask=padded.attention_mask).last_hidden_state[0]
    assert relative_error(out, hf[:3]) <= 1e-5
    # The same holds for Wan's forward itself: masked padding does not change the real rows.
    reference = wan_forward(state, padded.input_ids[0], mask=padded.attention_mask[0])[:3]
    assert relative_error(wan_forward(state, ids), reference) <= 1e-12
    assert relative_error(out, reference) <= 1e-5

    long = encoder.token_ids("Hello world " * 40)
    assert long.shape == (CONFIG.max_len,) and long[-1] == tokenizer.eos_token_id
    assert encoder.encode("Hello world " * 40).shape == (CONFIG.max_len, CONFIG.dim)
    assert encoder.encode("").shape == (1, CONFIG.dim)


def test_missing_tokenizer_directory(tmp_path):
    path = save(wan_umt5_state(CONFIG), tmp_path / "umt5.pth")
    with pytest.raises(CheckpointError, match="tokenizer directory"):
        load_umt5(path, tmp_path / "google" / "umt5-xxl", CONFIG)


# -- key and shape checks, dtype ----------------------------------------------------------------------------------

def test_missing_key(tmp_path):
    state = wan_umt5_state(CONFIG)
    del state["blocks.1.ffn.fc1.weight"]
    with pytest.raises(CheckpointError, match=r"missing.*\(1: encoder\.block\.1\.layer\.1\.DenseReluDense\.wi_1\.weight"
                       r"\).*blocks\.1\.ffn\.fc1\.weight"):
        load_umt5(save(state, tmp_path / "umt5.pth"), None, CONFIG)


def test_unexpected_keys(tmp_path):
    state = wan_umt5_state(CONFIG) | {"head.weight": torch.zeros(3), "encoder.extra": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"not parameters.*\(2: encoder\.extra, head\.weight\)"):
        load_umt5(save(state, tmp_path / "umt5.pth"), None, CONFIG)


def test_wrong_shape(tmp_path):
    state = wan_umt5_state(CONFIG)
    state["blocks.0.pos_embedding.embedding.weight"] = torch.zeros(CONFIG.relative_buckets + 1, CONFIG.heads)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.pos_embedding\.embedding\.weight .*\(9, 4\).*\(8, 4\)"):
        load_umt5(save(state, tmp_path / "umt5.pth"), None, CONFIG)
    # a file of another width fails the same way
    wide = dataclasses.replace(CONFIG, dim=48)
    with pytest.raises(CheckpointError, match="token_embedding.weight"):
        load_umt5(save(wan_umt5_state(wide), tmp_path / "wide.pth"), None, CONFIG)


@torch.inference_mode()
def test_load_in_bf16_leaves_nothing_on_meta(tmp_path):
    state = wan_umt5_state(CONFIG, dtype=torch.bfloat16)  # the published file is bf16
    encoder = load_umt5(save(state, tmp_path / "umt5.pth"), None, CONFIG)
    tensors = [*encoder.parameters(), *encoder.buffers()]
    assert tensors and all(t.dtype == torch.bfloat16 and not t.is_meta and not t.requires_grad for t in tensors)
    model = encoder.model
    assert model.encoder.embed_tokens.weight is model.shared.weight  # still tied
    assert torch.equal(model.shared.weight, state["token_embedding.weight"])
    assert torch.equal(model.encoder.block[1].layer[1].DenseReluDense.wi_0.weight, state["blocks.1.ffn.gate.0.weight"])
    assert not encoder.training
    out = encoder(ids_of_length(7))
    assert out.shape == (7, CONFIG.dim) and out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@torch.inference_mode()
def test_build_text_encoder_umt5_is_random_and_needs_a_tokenizer_for_text():
    torch.manual_seed(0)
    encoder = build_text_encoder(CONFIG)
    assert isinstance(encoder, UMT5TextEncoder)
    assert encoder(ids_of_length(6)).shape == (6, CONFIG.dim)
    with pytest.raises(ValueError, match="token ids"):
        encoder(ids_of_length(CONFIG.max_len + 1))
    with pytest.raises(RuntimeError, match="tokenizer directory"):
        encoder.encode("smile")
