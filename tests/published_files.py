"""Small checkpoints in the exact layouts and tensor names of the published LiveAct files, for the loader tests:
the DiT's diffusers shards, Wan's CLIP and umT5 ``.pth`` state dicts, the umT5 tokenizer directory and a
chinese-wav2vec2-base model directory; and a whole weights directory of a toy model with the published
architecture (:data:`TOY_PUBLISHED`), for the pipeline and the server."""

from __future__ import annotations

import dataclasses
import json
import math
import string
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from avatar_backend.generator.config import (
    LIVEACT_18B, TINY, DiTConfig, ImageEncoderConfig, ModelConfig, TextEncoderConfig,
)
from avatar_backend.generator.dit import WanModel
from avatar_backend.generator.vae import WanVAE


def write_dit_checkpoint(directory: Path, state: dict[str, torch.Tensor], dit: DiTConfig, shards: int = 3,
                         config: dict | None = None) -> None:
    """The files as diffusers writes them: config.json, shards named -0000k-of-0000n, and the index."""
    directory.mkdir(parents=True, exist_ok=True)
    config_json = {"_class_name": "WanModel", "_diffusers_version": "0.31.0", "model_type": "i2v",
                   **{f.name: getattr(dit, f.name) for f in dataclasses.fields(dit)},
                   # What the published class ignores from its config.json: its defaults apply, here too.
                   "patch_size": [9, 9, 9], "text_dim": 1, "qk_norm": False, "cross_attn_norm": False,
                   "window_size": [-1, -1]}
    config_json.update(config or {})
    del config_json["patch_size"]   # a list in JSON; leave the tuple default (the key is ignored anyway)
    (directory / "config.json").write_text(json.dumps(config_json))
    names = sorted(state)
    weight_map = {}
    for index in range(shards):
        part = names[index::shards]
        file = f"diffusion_pytorch_model-{index + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k].contiguous() for k in part}, str(directory / file))
        weight_map.update({k: file for k in part})
    (directory / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


def wan_clip_state(config: ImageEncoderConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the key names and shapes of Wan's XLMRobertaCLIP: the whole vision tower (all blocks,
    post_norm and head; the patch embedding has no bias since pre_norm is on), a few text-tower tensors and
    the logit scale. Values are large enough that every weight visibly changes the output."""
    g = torch.Generator().manual_seed(seed)
    d, m = config.dim, config.mlp_dim

    def rand(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    def norm(prefix):
        return {f"{prefix}.weight": 1 + rand(d, scale=0.1), f"{prefix}.bias": rand(d, scale=0.1)}

    state = {
        "visual.patch_embedding.weight": rand(d, 3, config.patch_size, config.patch_size, scale=0.05),
        "visual.cls_embedding": rand(1, 1, d),
        "visual.pos_embedding": rand(1, config.tokens, d),
        **norm("visual.pre_norm"),
    }
    for i in range(config.layers):
        p = f"visual.transformer.{i}"
        state.update({
            **norm(f"{p}.norm1"),
            f"{p}.attn.to_qkv.weight": rand(3 * d, d), f"{p}.attn.to_qkv.bias": rand(3 * d, scale=0.1),
            f"{p}.attn.proj.weight": rand(d, d, scale=0.1), f"{p}.attn.proj.bias": rand(d, scale=0.1),
            **norm(f"{p}.norm2"),
            f"{p}.mlp.0.weight": rand(m, d, scale=0.2), f"{p}.mlp.0.bias": rand(m, scale=0.1),
            f"{p}.mlp.2.weight": rand(d, m, scale=0.1), f"{p}.mlp.2.bias": rand(d, scale=0.1),
        })
    state.update({
        **norm("visual.post_norm"),
        "visual.head": rand(d, 16),
        "textual.token_embedding.weight": rand(50, 24),
        "textual.blocks.0.attn.q.weight": rand(24, 24),
        "textual.head.0.weight": rand(20, 24),
        "log_scale": torch.tensor(math.log(1 / 0.07)),
    })
    return state


def wan_umt5_state(config: TextEncoderConfig, seed: int = 0,
              dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """A random state dict in the names and shapes of Wan's ``T5Encoder`` (shared_pos=False)."""
    g = torch.Generator().manual_seed(seed)
    dim, inner, ffn = config.dim, config.heads * config.head_dim, config.ffn_dim

    def randn(*shape: int, std: float = 1.0, mean: float = 0.0) -> Tensor:
        return torch.randn(*shape, generator=g) * std + mean

    state = {"token_embedding.weight": randn(config.vocab_size, dim)}
    for i in range(config.layers):
        p = f"blocks.{i}."
        state |= {
            p + "norm1.weight": randn(dim, std=0.1, mean=1.0),
            p + "attn.q.weight": randn(inner, dim, std=dim**-0.5),
            p + "attn.k.weight": randn(inner, dim, std=dim**-0.5),
            p + "attn.v.weight": randn(inner, dim, std=dim**-0.5),
            p + "attn.o.weight": randn(dim, inner, std=inner**-0.5),
            p + "norm2.weight": randn(dim, std=0.1, mean=1.0),
            p + "ffn.gate.0.weight": randn(ffn, dim, std=dim**-0.5),
            p + "ffn.fc1.weight": randn(ffn, dim, std=dim**-0.5),
            p + "ffn.fc2.weight": randn(dim, ffn, std=ffn**-0.5),
            p + "pos_embedding.embedding.weight": randn(config.relative_buckets, config.heads),
        }
    state["norm.weight"] = randn(dim, std=0.1, mean=1.0)
    return {k: v.to(dtype) for k, v in state.items()}


def umt5_tokenizer_dir(root: Path) -> Path:
    """A small Unigram tokenizer in the layout of google/umt5-xxl (pad 0, </s> 1, unk 2; </s> closes every text)."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0), ("▁Hello", -1.0), ("▁world", -1.0)]
    vocab += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    vocab += [("▁" + c, -4.0) for c in string.ascii_letters]
    directory = root / "google" / "umt5-xxl"
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(directory))
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    return directory


def write_wav2vec2_dir(path: Path, hf_config: dict, weights: dict[str, torch.Tensor], extra: dict | None = None,
                       normalize: bool = True) -> Path:
    """A model directory as the published checkpoint ships it: the pretraining model's tensor names."""
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    config = transformers.Wav2Vec2Config(**hf_config)
    config.architectures = ["Wav2Vec2ForPreTraining"]
    config.to_json_file(str(path / "config.json"))
    state = {f"wav2vec2.{k}": v for k, v in weights.items()}
    state["quantizer.codevectors"] = torch.zeros(1, 4, 8)
    state["project_q.weight"] = torch.zeros(8, 8)
    state.update(extra or {})
    torch.save(state, path / "pytorch_model.bin")
    (path / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "do_normalize": normalize, "feature_size": 1,
        "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False, "sampling_rate": 16000,
    }))
    return path


TOY_SIZE = 64
TOY_WAV2VEC2 = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                    conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
# The published file names (LIVEACT_18B's) and architectures at toy sizes. The DiT's text width is the published
# one: its config.json does not set it.
TOY_PUBLISHED = ModelConfig(
    name="published-toy",
    dit=dataclasses.replace(TINY.dit, text_dim=4096, clip_dim=32, clip_tokens=5, audio_layers=3, audio_channels=32),
    vae=dataclasses.replace(LIVEACT_18B.vae, base_dim=8),
    audio_encoder=dataclasses.replace(LIVEACT_18B.audio_encoder, layers=3, channels=32),
    image_encoder=dataclasses.replace(LIVEACT_18B.image_encoder, image_size=28, patch_size=14, tokens=5, dim=32,
                                      layers=3, heads=4, mlp_dim=64),
    text_encoder=dataclasses.replace(LIVEACT_18B.text_encoder, max_len=16, dim=4096, layers=1, heads=4, head_dim=8,
                                     ffn_dim=48, vocab_size=300, relative_buckets=8, relative_max_distance=16),
    width=TOY_SIZE, height=TOY_SIZE, sizes=((TOY_SIZE, TOY_SIZE),), dtype="bfloat16",
)


def write_toy_published(directory: Path) -> Path:
    """Every file of :data:`TOY_PUBLISHED` in the published layout (random weights, a 2-shard DiT)."""
    import transformers

    torch.manual_seed(0)
    config = TOY_PUBLISHED
    dit = WanModel(config.dit)
    dit.init_weights(zero_head=False)
    write_dit_checkpoint(directory, dit.state_dict(), config.dit, shards=2)
    torch.save(WanVAE(config.vae).state_dict(), directory / config.vae.path)
    torch.save(wan_clip_state(config.image_encoder), directory / config.image_encoder.path)
    torch.save(wan_umt5_state(config.text_encoder), directory / config.text_encoder.path)
    assert umt5_tokenizer_dir(directory) == directory / config.text_encoder.tokenizer
    wav2vec2 = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**TOY_WAV2VEC2))
    write_wav2vec2_dir(directory / config.audio_encoder.path, TOY_WAV2VEC2, wav2vec2.state_dict())
    return directory
