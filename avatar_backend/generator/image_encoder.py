"""Reference-image encoders: one RGB image -> [1, tokens, dim] features for the DiT's image cross-attention.

The published model uses CLIP ViT-H/14 (the output of its penultimate block: CLS + 16 x 16 patches = 257 tokens
of width 1280), LIVEACT_SPEC.md section 7.2. :class:`ClipVisionEncoder` runs it with transformers'
``CLIPVisionModel`` built with only the blocks that run; :func:`load_clip_vision` reads the vision tower from
Wan's own ``.pth`` file (open-clip XLM-RoBERTa-large ViT-H-14 in the naming of Wan2.1's ``wan/modules/clip.py``)
through a key map. open_clip is not used: it requires torchvision, whose PyPI build does not import beside the
pinned CPU torch.

The tiny model uses :class:`LearnedImageEncoder`, a small ViT with the same output layout.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import CheckpointError, check_keys, load_pth_state
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


# CLIP's input normalisation (OpenAI's ImageNet-like statistics; the spec's and Wan's transforms).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_LAYER_NORM_EPS = 1e-5

# Tensors of Wan's CLIP file that the penultimate-block output never reads, so they are not loaded: the text
# tower and the contrastive logit scale (CLIP's text side), the vision tower's final norm and projection head
# (applied only after the last block, for the pooled embedding), and the last block itself, whose prefix
# ``visual.transformer.{layers - 1}.`` depends on the config and is added by :func:`clip_ignored`.
CLIP_IGNORED_PREFIXES = ("textual.", "visual.post_norm.", "visual.head.")
CLIP_IGNORED_KEYS = ("log_scale", "visual.head")

_BLOCK_KEY = re.compile(r"visual\.transformer\.(\d+)\.(.+)")
# Inside one block: Wan's AttentionBlock names -> transformers' CLIPEncoderLayer names. The fused qkv
# (``attn.to_qkv``) is split separately; ``mlp.1`` is the parameterless GELU.
_BLOCK_NAMES = {
    "norm1.weight": "layer_norm1.weight", "norm1.bias": "layer_norm1.bias",
    "attn.proj.weight": "self_attn.out_proj.weight", "attn.proj.bias": "self_attn.out_proj.bias",
    "norm2.weight": "layer_norm2.weight", "norm2.bias": "layer_norm2.bias",
    "mlp.0.weight": "mlp.fc1.weight", "mlp.0.bias": "mlp.fc1.bias",
    "mlp.2.weight": "mlp.fc2.weight", "mlp.2.bias": "mlp.fc2.bias",
}
_TOWER_NAMES = {
    "visual.patch_embedding.weight": "embeddings.patch_embedding.weight",
    "visual.cls_embedding": "embeddings.class_embedding",
    "visual.pos_embedding": "embeddings.position_embedding.weight",
    "visual.pre_norm.weight": "pre_layrnorm.weight",
    "visual.pre_norm.bias": "pre_layrnorm.bias",
}


class ClipVisionEncoder(nn.Module):
    """CLIP ViT-H/14's vision tower up to its penultimate block (Wan's ``use_31_block``), on transformers'
    ``CLIPVisionModel``: patch embedding (no bias), CLS token, learned positions, a pre-norm, then pre-norm
    blocks with exact GELU; no final norm or pooling. It holds ``layers - 1`` blocks: the last one never runs.
    """

    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        if config.dim % config.heads:
            raise ValueError(f"dim {config.dim} is not a multiple of heads {config.heads}")
        if config.layers < 2:
            raise ValueError(f"layers must be at least 2 (the output is that of block layers - 1), got {config.layers}")
        self.image_size = config.image_size
        self.tokens = config.tokens
        self.dim = config.dim
        self.layers = config.layers
        hf_config = CLIPVisionConfig(
            hidden_size=config.dim, intermediate_size=config.mlp_dim, num_hidden_layers=config.layers - 1,
            num_attention_heads=config.heads, num_channels=3, image_size=config.image_size,
            patch_size=config.patch_size, hidden_act="gelu", layer_norm_eps=CLIP_LAYER_NORM_EPS,
            attention_dropout=0.0,
        )
        self.vision = CLIPVisionModel(hf_config)
        # Only the pooled output passes through the final norm; the penultimate-block tokens never do.
        self.vision.post_layernorm = nn.Identity()

    @property
    def dtype(self) -> torch.dtype:
        return self.vision.embeddings.patch_embedding.weight.dtype

    def forward(self, image: Tensor) -> Tensor:
        """RGB [3, H, W] (or [B, 3, H, W]) in [-1, 1] -> [B, tokens, dim]: resized bicubically to image_size,
        mapped to [0, 1], normalised with CLIP's mean and std (in float32), then the tower in its own dtype."""
        if image.dim() == 3:
            image = image[None]
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"expected RGB [3, H, W] or [B, 3, H, W], got {tuple(image.shape)}")
        image = image.float()
        if image.shape[-2:] != (self.image_size, self.image_size):
            image = F.interpolate(image, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        mean = torch.tensor(CLIP_MEAN, device=image.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=image.device).view(1, 3, 1, 1)
        pixels = ((image * 0.5 + 0.5) - mean) / std
        return self.vision(pixel_values=pixels.to(self.dtype)).last_hidden_state


def clip_ignored(key: str, layers: int) -> bool:
    """Whether a key of Wan's CLIP file is one the penultimate-block output never reads (see above)."""
    return (key in CLIP_IGNORED_KEYS or key.startswith(CLIP_IGNORED_PREFIXES)
            or key.startswith(f"visual.transformer.{layers - 1}."))


def map_clip_key(key: str, tensor: Tensor) -> list[tuple[str, Tensor]]:
    """One tensor of Wan's vision tower -> (transformers name, tensor) pairs, as views. The fused ``to_qkv``
    ([3 * dim, dim], rows q then k then v, each head-major) gives three; a key without a counterpart is returned
    under its own name so that the key check reports it."""
    if key == "visual.cls_embedding" and tensor.dim() == 3 and tensor.shape[:2] == (1, 1):
        return [(_TOWER_NAMES[key], tensor[0, 0])]                      # [1, 1, dim] -> [dim]
    if key == "visual.pos_embedding" and tensor.dim() == 3 and tensor.shape[0] == 1:
        return [(_TOWER_NAMES[key], tensor[0])]                         # [1, tokens, dim] -> [tokens, dim]
    if key in _TOWER_NAMES:
        return [(_TOWER_NAMES[key], tensor)]
    match = _BLOCK_KEY.fullmatch(key)
    if match is None:
        return [(key, tensor)]
    index, name = match.groups()
    prefix = f"encoder.layers.{index}."
    if name in ("attn.to_qkv.weight", "attn.to_qkv.bias"):
        kind = name.rsplit(".", 1)[1]
        if tensor.shape[0] % 3:
            return [(f"{prefix}self_attn.{p}_proj.{kind}", tensor) for p in "qkv"]  # fails the shape check
        q, k, v = tensor.chunk(3, dim=0)
        return [(f"{prefix}self_attn.q_proj.{kind}", q), (f"{prefix}self_attn.k_proj.{kind}", k),
                (f"{prefix}self_attn.v_proj.{kind}", v)]
    if name in _BLOCK_NAMES:
        return [(prefix + _BLOCK_NAMES[name], tensor)]
    return [(key, tensor)]


def load_clip_vision(path: Path | str, config: ImageEncoderConfig, *, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.bfloat16) -> ClipVisionEncoder:
    """The CLIP vision tower of Wan's ``.pth`` file on ``device`` in ``dtype`` (CheckpointError when the file
    does not fit ``config``). The model is built on the meta device and takes the file's tensors (memory-mapped,
    converted one at a time), so the host holds no second copy of the weights."""
    if config.kind != "clip-vit-h-14":
        raise ValueError(f"load_clip_vision needs an image encoder of kind 'clip-vit-h-14', got {config.kind!r}")
    state = load_pth_state(path)
    last_block = f"visual.transformer.{config.layers - 1}."
    if not any(k.startswith(last_block) for k in state):
        # Without its last block the file holds another tower, whose penultimate block is not block layers - 1.
        raise CheckpointError(f"{path}: the vision tower has fewer than {config.layers} blocks (no {last_block}*)")
    with torch.device("meta"):
        model = ClipVisionEncoder(config)
    wanted = model.vision.state_dict()
    mapped: dict[str, tuple[str, Tensor]] = {}
    for key, tensor in state.items():
        if clip_ignored(key, config.layers):
            continue
        for name, value in map_clip_key(key, tensor):
            mapped[name] = (key, value)
    check_keys(path, wanted, mapped)
    for name, (key, value) in mapped.items():
        if value.shape != wanted[name].shape:
            raise CheckpointError(f"{path}: {key} is {tuple(state[key].shape)}, which gives {name} "
                                  f"{tuple(value.shape)}; the model's is {tuple(wanted[name].shape)}")
    tensors = {name: value.to(device=device, dtype=dtype) for name, (_, value) in mapped.items()}
    del mapped, state
    # assign: the meta parameters are replaced by these tensors, on the target device, without a copy.
    model.vision.load_state_dict(tensors, strict=True, assign=True)
    del tensors
    embeddings = model.vision.embeddings
    # Not in any state dict (non-persistent), so still on the meta device: set it as the constructor does.
    embeddings.position_ids = torch.arange(embeddings.num_positions, device=device).expand((1, -1))
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left on the meta device after loading {path}: {left}")
    return model.eval().requires_grad_(False)


def build_image_encoder(config: ImageEncoderConfig) -> nn.Module:
    """The image encoder named by ``config.kind``."""
    if config.kind == "learned":
        return LearnedImageEncoder(config)
    if config.kind == "clip-vit-h-14":
        return ClipVisionEncoder(config)  # random weights; load_clip_vision reads the published file
    raise ValueError(f"unknown image encoder kind {config.kind!r}; known: 'learned', 'clip-vit-h-14'")
