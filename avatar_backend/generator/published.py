"""The published LiveAct checkpoint from one weights directory: which file holds which module, and loading them.

The directory is the reference's ``ckpt_dir`` (LIVEACT_SPEC.md §1.1) with wav2vec2 beside the rest::

    config.json, diffusion_pytorch_model*.safetensors [+ index]   the DiT           checkpoint.load_dit
    Wan2.1_VAE.pth                                                 the VAE           vae.load_wan_vae
    models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth        CLIP ViT-H/14     image_encoder.load_clip_vision
    models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/              umT5-XXL          text_encoder.load_umt5
    chinese-wav2vec2-base/                                         wav2vec2-base     audio_encoder.load_wav2vec2

The names after the DiT's come from the model config (each part's ``path``, relative to the directory), so a
config can point elsewhere. Every file is checked for before anything is read, so a missing one fails in
seconds, not after 40 GB of DiT. Dtypes: the DiT in the config's dtype (bf16), the encoders in bf16 as the
reference runs them, the VAE in fp32 (its causal decoder cache is kept in fp32).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .audio_encoder import load_wav2vec2
from .checkpoint import CONFIG_FILE, CheckpointError, DiTLoad, dit_shards, load_dit, peak_host_rss_bytes
from .config import ModelConfig
from .image_encoder import load_clip_vision
from .text_encoder import load_umt5
from .vae import load_wan_vae

__all__ = ["PublishedLoad", "load_published", "published_files"]

log = logging.getLogger(__name__)

ENCODER_DTYPE = torch.bfloat16


@dataclass(frozen=True)
class PublishedLoad:
    modules: dict[str, nn.Module]   # by the pipeline's module names
    fingerprint: str                # SHA-256 of the files' names and sizes and the DiT's config and index
    dit: DiTLoad
    seconds: float
    peak_host_rss_bytes: int


def published_files(config: ModelConfig, directory: Path | str) -> dict[str, Path]:
    """Where each part of ``config`` lies in ``directory``; CheckpointError listing every file that is missing."""
    directory = Path(directory)
    parts = {  # part -> (its name in the directory, whether it is a directory)
        "vae": (config.vae.path, False),
        "image_encoder": (config.image_encoder.path, False),
        "text_encoder": (config.text_encoder.path, False),
        "tokenizer": (config.text_encoder.tokenizer, True),
        "audio_encoder": (config.audio_encoder.path, True),
    }
    unnamed = [part for part, (name, _) in parts.items() if not name]
    if unnamed:
        raise CheckpointError(f"model config {config.name!r} names no file for: {', '.join(unnamed)}")
    files = {part: directory / name for part, (name, _) in parts.items()}
    missing = [str(files[part]) for part, (_, is_dir) in parts.items()
               if not (files[part].is_dir() if is_dir else files[part].is_file())]
    if not (directory / CONFIG_FILE).is_file():
        missing.insert(0, str(directory / CONFIG_FILE))
    if missing:
        raise CheckpointError(f"{directory}: {len(missing)} published file(s) missing: {', '.join(missing)} "
                              "(README: 'The published model')")
    dit_shards(directory)   # the DiT's weights, whichever layout
    return files


def fingerprint(directory: Path, files: dict[str, Path]) -> str:
    """A digest that changes when any file changes size or the DiT's config or index changes. Hashing the
    contents would read 60 GB at every start."""
    digest = hashlib.sha256()
    paths = sorted(p for path in files.values() for p in ([path] if path.is_file() else path.rglob("*"))
                   if p.is_file())
    paths += sorted(dit_shards(directory))
    for path in paths:
        digest.update(f"{path.relative_to(directory)} {path.stat().st_size}\n".encode())
    for small in sorted(directory.glob("*.json")):
        digest.update(small.read_bytes())
    return digest.hexdigest()


def load_published(config: ModelConfig, directory: Path | str, *, device: str | torch.device = "cpu",
                   text_encoder_device: str | torch.device = "cpu", dit_only: bool = False) -> PublishedLoad:
    """Every module of ``config`` from the published files in ``directory``, each straight onto its device
    (``dit_only``: the DiT alone, what a follower rank runs)."""
    directory = Path(directory)
    started = time.perf_counter()
    files = published_files(config, directory)
    modules: dict[str, nn.Module] = {} if dit_only else {
        "audio_encoder": load_wav2vec2(files["audio_encoder"], config.audio_encoder, device=device,
                                       dtype=ENCODER_DTYPE),
        "image_encoder": load_clip_vision(files["image_encoder"], config.image_encoder, device=device,
                                          dtype=ENCODER_DTYPE),
        "text_encoder": load_umt5(files["text_encoder"], files["tokenizer"], config.text_encoder,
                                  device=text_encoder_device, dtype=ENCODER_DTYPE),
        "vae": load_wan_vae(files["vae"], config.vae, device=device, dtype=torch.float32),
    }
    dit = load_dit(directory, device=device, dtype=getattr(torch, config.dtype), expected=config.dit)
    modules["dit"] = dit.model
    seconds = time.perf_counter() - started
    peak = peak_host_rss_bytes()
    log.info("published model from %s: DiT %d tensors in %d shard(s), %.1f GB on %s; %.0f s; peak host RAM "
             "%.1f GB", directory, dit.tensors, dit.shards, dit.bytes / 1e9, device, seconds, peak / 1e9)
    return PublishedLoad(modules=modules, fingerprint=fingerprint(directory, files), dit=dit, seconds=seconds,
                         peak_host_rss_bytes=peak)
