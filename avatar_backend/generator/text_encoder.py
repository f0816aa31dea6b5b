"""Prompt encoders: text -> [L, dim] embeddings, trimmed to the true token count like umT5's output in LiveAct.

The published model uses the umT5-XXL encoder (width 4096). The tiny model uses :class:`LearnedTextEncoder`:
a byte-level tokenizer and a small bidirectional transformer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

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


def build_text_encoder(config: TextEncoderConfig) -> nn.Module:
    """The text encoder named by ``config.kind``."""
    if config.kind == "learned":
        return LearnedTextEncoder(config)
    if config.kind == "umt5-xxl":
        raise NotImplementedError(
            "the umT5-XXL text encoder (24 layers, width 4096, output trimmed to the token count, "
            "LIVEACT_SPEC.md §7.3) is not implemented yet; use kind='learned'"
        )
    raise ValueError(f"unknown text encoder kind {config.kind!r}; known: 'learned', 'umt5-xxl'")
