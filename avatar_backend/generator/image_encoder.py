"""Reference-image encoders: one RGB image -> [1, tokens, dim] features for the DiT's image cross-attention.

The published model uses CLIP ViT-H/14 (the output of its penultimate block: CLS + 16 x 16 patches = 257 tokens
of width 1280). The tiny model uses :class:`LearnedImageEncoder`, a small ViT with the same output layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ImageEncoderConfig

# Architecture constants of the learned encoder (not in the config: the tiny model is trained with these).
LEARNED_LAYERS = 2
LEARNED_HEAD_DIM = 16


class LearnedImageEncoder(nn.Module):
    """A tiny ViT: patchify, prepend a CLS token, add learned positions, run pre-norm transformer layers.

    Like CLIP's penultimate-block output, the tokens come out without a final norm or pooling.
    """

    def __init__(self, config: ImageEncoderConfig, layers: int = LEARNED_LAYERS):
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError(f"image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
        grid = config.image_size // config.patch_size
        if config.tokens != 1 + grid * grid:
            raise ValueError(f"tokens must be 1 + (image_size / patch_size)^2 = {1 + grid * grid}, got {config.tokens}")
        if config.dim % LEARNED_HEAD_DIM:
            raise ValueError(f"dim {config.dim} is not a multiple of the head width {LEARNED_HEAD_DIM}")
        self.image_size = config.image_size
        self.tokens = config.tokens
        self.dim = config.dim

        self.patch_embedding = nn.Conv2d(3, config.dim, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, config.dim) * 0.02)
        self.position_embedding = nn.Parameter(torch.randn(1, config.tokens, config.dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.dim, config.dim // LEARNED_HEAD_DIM, 4 * config.dim, dropout=0.0, activation="gelu",
                batch_first=True, norm_first=True,
            )
            for _ in range(layers)
        )

    def forward(self, image: Tensor) -> Tensor:
        """RGB [3, H, W] (or [B, 3, H, W]) in [-1, 1] -> [B, tokens, dim]; resized bicubically like CLIP's input."""
        if image.dim() == 3:
            image = image[None]
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"expected RGB [3, H, W] or [B, 3, H, W], got {tuple(image.shape)}")
        image = image.to(self.position_embedding.dtype)
        if image.shape[-2:] != (self.image_size, self.image_size):
            image = F.interpolate(image, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        patches = self.patch_embedding(image).flatten(2).transpose(1, 2)  # [B, grid^2, dim], raster order
        x = torch.cat([self.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1) + self.position_embedding
        for layer in self.layers:
            x = layer(x)
        return x


def build_image_encoder(config: ImageEncoderConfig) -> nn.Module:
    """The image encoder named by ``config.kind``."""
    if config.kind == "learned":
        return LearnedImageEncoder(config)
    if config.kind == "clip-vit-h-14":
        raise NotImplementedError(
            "the CLIP ViT-H/14 image encoder (open-clip XLM-RoBERTa-large ViT-H-14, penultimate block, "
            "LIVEACT_SPEC.md §7.2) is not implemented yet; use kind='learned'"
        )
    raise ValueError(f"unknown image encoder kind {config.kind!r}; known: 'learned', 'clip-vit-h-14'")
