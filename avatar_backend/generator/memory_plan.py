"""The memory plan of a model config before anything is loaded: weights per device, one NPC's memory per frame
size, KV-cache precision and number of ranks, and how many NPCs fit on a GPU of a given size.

Sizes come from the config and from the modules built on torch's meta device (shapes only, no bytes): the DiT,
the VAE and the encoders the config runs (umT5-XXL, the CLIP ViT-H/14 tower as far as its penultimate block,
wav2vec2-base for the published model). The last column counts NPCs with ``--gemm fp8``, whose transformer
blocks hold their linear weights in e4m3 (plus an fp32 scale per output channel): half the DiT's bytes.

Layout under sequence parallelism (see :mod:`.parallel`): every rank holds the DiT's weights and its share of
each NPC's ConvKV caches (its heads); rank 0 also holds the VAE, the image and audio encoders, each NPC's
streaming-decoder state and audio tail. The text encoder may stay on the host (it runs once per prompt).
FP8 caches store e4m3 keys and values with one fp32 scale per token and head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .audio_encoder import build_audio_encoder
from .config import ExecutionConfig, ModelConfig
from .convkv import cache_bytes, fp8_cache_bytes
from .dit import WanModel
from .fp8 import quantize_linears
from .image_encoder import build_image_encoder
from .published import ENCODER_DTYPE
from .text_encoder import build_text_encoder
from .vae import WanVAE, decoder_state_bytes

__all__ = ["EncoderSize", "MemoryPlan", "NpcPlan", "encoder_sizes", "format_plan", "memory_plan"]

GIB = 1 << 30
KV_FORMATS = ("bf16", "fp8")
# Activations of a block call and the allocator's slack, kept free on every device.
DEFAULT_WORKSPACE_BYTES = 8 * GIB


@dataclass(frozen=True)
class EncoderSize:
    name: str
    parameters: int
    dtype: torch.dtype
    on_host: bool = False       # runs on the CPU (once per prompt, not per block)

    @property
    def bytes(self) -> int:
        return self.parameters * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class NpcPlan:
    width: int
    height: int
    kv: str                     # "bf16" or "fp8"
    ranks: int
    kv_bytes_per_rank: int
    rank0_extra_bytes: int      # decoder state, audio tail, noise state (rank 0 only)
    npcs_per_gpu: int           # NPCs that fit on the busiest rank of a GPU of the plan's size
    npcs_per_gpu_fp8_gemm: int  # the same with the DiT's block weights in FP8 (--gemm fp8)


@dataclass(frozen=True)
class MemoryPlan:
    config_name: str
    gpu_bytes: int
    workspace_bytes: int
    dit_parameters: int
    dit_bytes: int              # on every rank
    dit_fp8_gemm_bytes: int     # on every rank, with --gemm fp8
    vae_bytes: int              # on rank 0
    encoders: tuple[EncoderSize, ...]
    npcs: tuple[NpcPlan, ...]

    def rank0_weight_bytes(self, dit_bytes: int | None = None) -> int:
        dit = self.dit_bytes if dit_bytes is None else dit_bytes
        return dit + self.vae_bytes + sum(e.bytes for e in self.encoders if not e.on_host)

    def host_weight_bytes(self) -> int:
        return sum(e.bytes for e in self.encoders if e.on_host)


def kv_cache_bytes(config: ModelConfig, width: int, height: int, kv: str) -> int:
    """One NPC's ConvKV caches, all ranks together."""
    if kv == "bf16":
        return cache_bytes(config, width, height, torch.bfloat16)
    if kv == "fp8":
        return fp8_cache_bytes(config, width, height)
    raise ValueError(f"unknown KV format {kv!r}; known: {', '.join(KV_FORMATS)}")


def _on_meta(factory):
    with torch.device("meta"):
        return factory()


def _parameters(factory) -> int:
    return sum(p.numel() for p in _on_meta(factory).parameters())


def _tensor_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def encoder_sizes(config: ModelConfig) -> tuple[EncoderSize, ...]:
    """The published encoders ``config`` runs, as built (the tiny model's learned encoders are too small to
    count)."""
    on_host = ExecutionConfig().text_encoder_device == "cpu"
    sizes = []
    if config.text_encoder.kind != "learned":
        sizes.append(EncoderSize("umT5-XXL text encoder", _parameters(lambda: build_text_encoder(config.text_encoder)),
                                 ENCODER_DTYPE, on_host=on_host))
    if config.image_encoder.kind != "learned":
        sizes.append(EncoderSize("CLIP ViT-H/14 visual tower (31 blocks)",
                                 _parameters(lambda: build_image_encoder(config.image_encoder)), ENCODER_DTYPE))
    if config.audio_encoder.kind != "learned":
        sizes.append(EncoderSize("wav2vec2-base", _parameters(lambda: build_audio_encoder(config.audio_encoder)),
                                 ENCODER_DTYPE))
    return tuple(sizes)


def memory_plan(config: ModelConfig, gpu_bytes: int, ranks: tuple[int, ...] = (1, 2),
                workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> MemoryPlan:
    """The plan of ``config`` for GPUs of ``gpu_bytes`` on each rank count of ``ranks`` (nothing is loaded)."""
    dtype = getattr(torch, config.dtype)
    dit = _on_meta(lambda: WanModel(config.dit)).to(dtype)
    dit_parameters, dit_bytes = sum(p.numel() for p in dit.parameters()), _tensor_bytes(dit)
    quantize_linears(dit)
    dit_fp8_gemm_bytes = _tensor_bytes(dit)
    vae_bytes = _parameters(lambda: WanVAE(config.vae)) * 4        # the VAE runs in float32
    encoders = encoder_sizes(config)
    on_rank0 = vae_bytes + sum(e.bytes for e in encoders if not e.on_host)
    audio_tail = 4 * config.audio_encoder.sample_rate * 4          # at most 4 s of float32 PCM

    def fitting(weights: int, per_rank: int, rank0_extra: int, count: int) -> int:
        npcs = max(0, (gpu_bytes - workspace_bytes - weights - on_rank0) // (per_rank + rank0_extra))
        if count > 1:
            # Rank 0 holds the decoder states too; the others only their caches, so rank 0 decides.
            npcs = min(npcs, max(0, (gpu_bytes - workspace_bytes - weights) // per_rank))
        return int(npcs)

    plan_npcs = []
    for width, height in config.sizes:
        rank0_extra = decoder_state_bytes(config.vae, width, height, torch.float32) + audio_tail
        for kv in KV_FORMATS:
            total = kv_cache_bytes(config, width, height, kv)
            for count in ranks:
                per_rank = total // count
                plan_npcs.append(NpcPlan(width, height, kv, count, per_rank, rank0_extra,
                                         fitting(dit_bytes, per_rank, rank0_extra, count),
                                         fitting(dit_fp8_gemm_bytes, per_rank, rank0_extra, count)))
    return MemoryPlan(config.name, gpu_bytes, workspace_bytes, dit_parameters, dit_bytes, dit_fp8_gemm_bytes,
                      vae_bytes, encoders, tuple(plan_npcs))


def format_plan(plan: MemoryPlan) -> str:
    def gb(n: int) -> str:
        return f"{n / 1e9:.1f} GB"

    lines = [f"memory plan of {plan.config_name} (nothing loaded; GPU of {gb(plan.gpu_bytes)}, "
             f"{gb(plan.workspace_bytes)} kept free for activations)",
             f"weights: DiT {plan.dit_parameters / 1e9:.2f} B parameters = {gb(plan.dit_bytes)} on every rank "
             f"({gb(plan.dit_fp8_gemm_bytes)} with --gemm fp8); VAE {gb(plan.vae_bytes)} on rank 0"]
    for encoder in plan.encoders:
        where = "the host (--text-encoder-device cpu)" if encoder.on_host else "rank 0"
        lines.append(f"  {encoder.name}: {encoder.parameters / 1e9:.2f} B parameters = {gb(encoder.bytes)} on "
                     f"{where}")
    lines.append(f"rank 0 weights {gb(plan.rank0_weight_bytes())}, host {gb(plan.host_weight_bytes())}")
    lines.append("")
    lines.append(f"{'size':>9}  {'KV':>4}  {'ranks':>5}  {'KV per rank':>11}  {'rank 0 extra':>12}  "
                 f"{'NPCs per GPU':>12}  {'with FP8 GEMM':>13}")
    for npc in plan.npcs:
        lines.append(f"{npc.width:>4}x{npc.height:<4}  {npc.kv:>4}  {npc.ranks:>5}  {gb(npc.kv_bytes_per_rank):>11}  "
                     f"{gb(npc.rank0_extra_bytes):>12}  {npc.npcs_per_gpu:>12}  {npc.npcs_per_gpu_fp8_gemm:>13}")
    return "\n".join(lines)
