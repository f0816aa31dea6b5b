"""Prompt encoders: text -> [L, dim] embeddings, trimmed to the true token count like umT5's output in LiveAct.

The published model uses the umT5-XXL encoder (width 4096, LIVEACT_SPEC.md §7.3): :class:`UMT5TextEncoder` is
transformers' ``UMT5EncoderModel``, and :func:`load_umt5` fills it from Wan's own ``.pth`` file
(``models_t5_umt5-xxl-enc-bf16.pth``, named like Wan's ``T5Encoder``) through a key map (:func:`umt5_key`), with
the tokenizer of the ``google/umt5-xxl`` directory. Prompts are cleaned the way Wan cleans them before tokenizing.
transformers (and ftfy, for the cleaning) are imported only when an umT5 encoder is built or used.

The tiny model uses :class:`LearnedTextEncoder`: a byte-level tokenizer and a small bidirectional transformer.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import CheckpointError, check_keys, load_pth_state
from .config import TextEncoderConfig

PAD_ID = 0  # reserved; prompts are encoded alone, so it never reaches the model
BYTE_OFFSET = 1  # token id = UTF-8 byte + 1
EOS_ID = 257  # closes every prompt, so even "" has one token (umT5 appends </s> the same way)
VOCAB_SIZE = 258
LEARNED_HEAD_DIM = 16


def tokenize(text: str, max_len: int) -> Tensor:
    """UTF-8 bytes + 1, then EOS; truncated to ``max_len`` tokens with EOS kept last. Returns int64 [L]."""
    if max_len < 1:
        raise ValueError("max_len must be at least 1")
    ids = [b + BYTE_OFFSET for b in text.encode("utf-8")][: max_len - 1]
    return torch.tensor([*ids, EOS_ID], dtype=torch.long)


class LearnedTextEncoder(nn.Module):
    """Byte embeddings + learned positions -> ``layers`` pre-norm transformer layers -> final LayerNorm."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        if config.layers < 1:
            raise ValueError("the learned text encoder needs layers >= 1")
        if config.dim % LEARNED_HEAD_DIM:
            raise ValueError(f"dim {config.dim} is not a multiple of the head width {LEARNED_HEAD_DIM}")
        self.max_len = config.max_len
        self.dim = config.dim
        self.token_embedding = nn.Embedding(VOCAB_SIZE, config.dim)
        self.position_embedding = nn.Parameter(torch.randn(config.max_len, config.dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.dim, config.dim // LEARNED_HEAD_DIM, 4 * config.dim, dropout=0.0, activation="gelu",
                batch_first=True, norm_first=True,
            )
            for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, token_ids: Tensor) -> Tensor:
        """Token ids [L] (L <= max_len) -> embeddings [L, dim]."""
        if token_ids.dim() != 1 or not 0 < token_ids.shape[0] <= self.max_len:
            raise ValueError(f"expected token ids [L] with 1 <= L <= {self.max_len}, got {tuple(token_ids.shape)}")
        positions = self.position_embedding[: token_ids.shape[0]]
        x = (self.token_embedding(token_ids.to(positions.device)) + positions)[None]
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)[0]

    def encode(self, text: str) -> Tensor:
        """A prompt -> [L, dim], L = its token count (at most ``max_len``)."""
        return self(tokenize(text, self.max_len))


# -- umT5-XXL ------------------------------------------------------------------------------------------------------

UMT5_LAYER_NORM_EPS = 1e-6  # Wan's T5LayerNorm default, the eps of its RMS norms
# Wan's T5Encoder names -> transformers' UMT5EncoderModel names. Per block (``blocks.N.`` -> ``encoder.block.N.``):
_BLOCK_KEYS = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    # umT5 has a relative position bias in every block (Wan: shared_pos=False)
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    # gated GELU: Wan computes fc1(x) * gelu_tanh(gate(x)); transformers gelu_new(wi_0(x)) * wi_1(x)
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_TOP_KEYS = {
    "token_embedding.weight": "shared.weight",  # encoder.embed_tokens is tied to it
    "norm.weight": "encoder.final_layer_norm.weight",
}
_TIED_KEY = "encoder.embed_tokens.weight"
_WAN_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_HF_BLOCK = re.compile(r"encoder\.block\.(\d+)\.(.+)")
_HF_TOP_KEYS = {v: k for k, v in _TOP_KEYS.items()}
_HF_BLOCK_KEYS = {v: k for k, v in _BLOCK_KEYS.items()}


def umt5_key(wan_key: str) -> str:
    """The transformers name of a tensor of Wan's umT5 file. Names that are not Wan's T5Encoder names come back
    unchanged (so a key check reports them as they are in the file)."""
    if wan_key in _TOP_KEYS:
        return _TOP_KEYS[wan_key]
    match = _WAN_BLOCK.fullmatch(wan_key)
    if match and match[2] in _BLOCK_KEYS:
        return f"encoder.block.{match[1]}.{_BLOCK_KEYS[match[2]]}"
    return wan_key


def wan_umt5_key(hf_key: str) -> str:
    """The inverse of :func:`umt5_key`: the name in Wan's file of a transformers parameter."""
    if hf_key in _HF_TOP_KEYS:
        return _HF_TOP_KEYS[hf_key]
    match = _HF_BLOCK.fullmatch(hf_key)
    if match and match[2] in _HF_BLOCK_KEYS:
        return f"blocks.{match[1]}.{_HF_BLOCK_KEYS[match[2]]}"
    return hf_key


def clean_prompt(text: str) -> str:
    """Wan's ``clean='whitespace'``: ftfy's ``fix_text``, HTML entities unescaped twice, stripped; then every run of
    whitespace becomes one space, stripped again."""
    try:
        import ftfy
    except ImportError as error:
        raise ImportError("the umT5 prompt cleaning needs ftfy (pip install ftfy)") from error
    import regex  # what Wan uses for the whitespace runs (a transformers dependency)

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip()


def umt5_hf_config(config: TextEncoderConfig) -> Any:
    """The transformers ``UMT5Config`` of the encoder ``config`` describes (no dropout: inference only)."""
    from transformers import UMT5Config

    return UMT5Config(
        vocab_size=config.vocab_size, d_model=config.dim, d_kv=config.head_dim, d_ff=config.ffn_dim,
        num_layers=config.layers, num_heads=config.heads, relative_attention_num_buckets=config.relative_buckets,
        relative_attention_max_distance=config.relative_max_distance, dropout_rate=0.0,
        layer_norm_epsilon=UMT5_LAYER_NORM_EPS, feed_forward_proj="gated-gelu",
    )


class UMT5TextEncoder(nn.Module):
    """umT5's encoder (transformers ``UMT5EncoderModel``, held as ``model``) and, optionally, its tokenizer.

    Built from a config alone its weights are random and it has no tokenizer: :meth:`forward` on token ids works,
    :meth:`encode` needs the tokenizer that :func:`load_umt5` attaches.
    """

    def __init__(self, config: TextEncoderConfig, tokenizer: Any = None):
        super().__init__()
        from transformers import UMT5EncoderModel

        self.max_len = config.max_len
        self.dim = config.dim
        self.model = UMT5EncoderModel(umt5_hf_config(config)).eval()
        self.tokenizer = tokenizer

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    def forward(self, token_ids: Tensor) -> Tensor:
        """Token ids [L] (1 <= L <= max_len) -> embeddings [L, dim] in the module's dtype, on its device."""
        if token_ids.dim() != 1 or not 0 < token_ids.shape[0] <= self.max_len:
            raise ValueError(f"expected token ids [L] with 1 <= L <= {self.max_len}, got {tuple(token_ids.shape)}")
        return self.model(input_ids=token_ids.to(self.device)[None]).last_hidden_state[0]

    def token_ids(self, text: str) -> Tensor:
        """A prompt, cleaned as Wan cleans it -> int64 ids [L]: its tokens then ``</s>``, truncated to max_len."""
        if self.tokenizer is None:
            raise RuntimeError(
                "this umT5 encoder has no tokenizer; encoding text needs the tokenizer directory "
                "(google/umt5-xxl in the Wan weights): load the encoder with load_umt5(path, tokenizer_dir, config)"
            )
        encoded = self.tokenizer(clean_prompt(text), truncation=True, max_length=self.max_len,
                                 add_special_tokens=True, return_tensors="pt")
        return encoded["input_ids"][0].long()

    def encode(self, text: str) -> Tensor:
        """A prompt -> [L, dim], L = its token count including ``</s>`` (at most ``max_len``).

        Wan pads the ids to max_len, runs the encoder with the padding masked out and keeps the first L rows. The
        masked padding never reaches a real token and the position bias depends only on relative positions, so
        running the L unpadded ids gives the same rows without the padding's cost.
        """
        return self(self.token_ids(text))


def load_umt5_tokenizer(directory: Path | str) -> Any:
    """The tokenizer of a local directory (``google/umt5-xxl`` in the Wan weights); nothing is downloaded."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: the umT5 tokenizer directory (google/umt5-xxl of the Wan weights, with "
                              "tokenizer.json and tokenizer_config.json) does not exist")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{directory}: not a tokenizer directory ({error})") from error


def load_umt5(path: Path | str, tokenizer_dir: Path | str | None, config: TextEncoderConfig, *,
              device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16) -> UMT5TextEncoder:
    """The umT5 encoder of Wan's ``.pth`` file on ``device`` in ``dtype``, with the tokenizer of ``tokenizer_dir``
    (None: no tokenizer). CheckpointError when the file does not fit ``config``.

    The model is built on the meta device and the file is memory-mapped, so each tensor goes from the file to its
    parameter (converted on the way) without a second copy of the weights in host RAM.
    """
    tokenizer = None if tokenizer_dir is None else load_umt5_tokenizer(tokenizer_dir)
    state = load_pth_state(path)
    mapped = {umt5_key(key): tensor for key, tensor in state.items()}
    del state
    with torch.device("meta"):
        encoder = UMT5TextEncoder(config, tokenizer)
    model = encoder.model
    shapes = {key: value.shape for key, value in model.state_dict().items() if key != _TIED_KEY}
    try:
        check_keys(path, shapes, mapped)
    except CheckpointError as error:
        missing = sorted(set(shapes) - set(mapped))
        if not missing:
            raise
        raise CheckpointError(f"{error}; in the file's naming: {', '.join(map(wan_umt5_key, missing[:5]))}") from error
    for key, tensor in mapped.items():
        if tensor.shape != shapes[key]:
            raise CheckpointError(f"{path}: {wan_umt5_key(key)} ({key}) is {tuple(tensor.shape)}, the model's is "
                                  f"{tuple(shapes[key])}")
    # assign: the meta parameters are replaced by these tensors (already on the device, in the dtype).
    model.load_state_dict({key: tensor.to(device=device, dtype=dtype) for key, tensor in mapped.items()},
                          strict=False, assign=True)
    del mapped
    model.set_input_embeddings(model.shared)  # re-tie: encoder.embed_tokens is the loaded token embedding
    left = [name for name, tensor in (*model.named_parameters(remove_duplicate=False),
                                      *model.named_buffers(remove_duplicate=False)) if tensor.is_meta]
    if left:
        raise CheckpointError(f"{path}: tensors left unloaded ({len(left)}: {', '.join(left[:5])})")
    return encoder.eval().requires_grad_(False)


def build_text_encoder(config: TextEncoderConfig) -> nn.Module:
    """The text encoder named by ``config.kind``, randomly initialised (umT5's weights come from :func:`load_umt5`;
    built here it has no tokenizer)."""
    if config.kind == "learned":
        return LearnedTextEncoder(config)
    if config.kind == "umt5-xxl":
        return UMT5TextEncoder(config)
    raise ValueError(f"unknown text encoder kind {config.kind!r}; known: 'learned', 'umt5-xxl'")
