"""The memory plan of a model config before anything is loaded: weights per device, one NPC's memory per frame
size, KV-cache precision and number of ranks, and how many NPCs fit on a GPU of a given size.

Sizes come from the config and from the modules built on torch's meta device (shapes only, no bytes). The
encoders of the published model that this build does not construct yet (umT5-XXL, CLIP ViT-H/14,
chinese-wav2vec2-base) are counted at their published parameter counts, and marked so.

Layout under sequence parallelism (see :mod:`.parallel`): every rank holds the DiT's weights and its share of
each NPC's ConvKV caches (its heads); rank 0 also holds the VAE, the image and audio encoders, each NPC's
streaming-decoder state and audio tail. The text encoder may stay on the host (it runs once per prompt).
FP8 caches store e4m3 keys and values with one fp32 scale per token and head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ModelConfig
from .convkv import cache_bytes, fp8_cache_bytes
from .dit import WanModel
from .vae import WanVAE, decoder_state_bytes

__all__ = ["EncoderSize", "MemoryPlan", "NpcPlan", "format_plan", "memory_plan"]

GIB = 1 << 30
KV_FORMATS = ("bf16", "fp8")
# Activations of a block call and the allocator's slack, kept free on every device.
DEFAULT_WORKSPACE_BYTES = 8 * GIB


@dataclass(frozen=True)
class EncoderSize:
    name: str
    parameters: int
    dtype: torch.dtype
    on_host: bool = False       # may run on the CPU (once per prompt or character, not per block)
    published: bool = False     # counted from the published model, not from a module of this build

    @property
    def bytes(self) -> int:
        return self.parameters * torch.empty((), dtype=self.dtype).element_size()


# The published model's encoders, by parameter count (this build does not construct them yet).
PUBLISHED_ENCODERS = (
    EncoderSize("umT5-XXL text encoder", 5_680_000_000, torch.bfloat16, on_host=True, published=True),
    EncoderSize("CLIP ViT-H/14 visual tower", 632_000_000, torch.float16, published=True),
    EncoderSize("chinese-wav2vec2-base", 95_000_000, torch.bfloat16, published=True),
)


@dataclass(frozen=True)
class NpcPlan:
    width: int
    height: int
    kv: str                     # "bf16" or "fp8"
    ranks: int
    kv_bytes_per_rank: int
    rank0_extra_bytes: int      # decoder state, audio tail, noise state (rank 0 only)
    npcs_per_gpu: int           # NPCs that fit on the busiest rank of a GPU of the plan's size


@dataclass(frozen=True)
class MemoryPlan:
    config_name: str
    gpu_bytes: int
    workspace_bytes: int
    dit_parameters: int
    dit_bytes: int              # on every rank
    vae_bytes: int              # on rank 0
    encoders: tuple[EncoderSize, ...]
    npcs: tuple[NpcPlan, ...]

    def rank0_weight_bytes(self) -> int:
        return self.dit_bytes + self.vae_bytes + sum(e.bytes for e in self.encoders if not e.on_host)

    def host_weight_bytes(self) -> int:
        return sum(e.bytes for e in self.encoders if e.on_host)


def kv_cache_bytes(config: ModelConfig, width: int, height: int, kv: str) -> int:
    """One NPC's ConvKV caches, all ranks together."""
    if kv == "bf16":
        return cache_bytes(config, width, height, torch.bfloat16)
    if kv == "fp8":
        return fp8_cache_bytes(config, width, height)
    raise ValueError(f"unknown KV format {kv!r}; known: {', '.join(KV_FORMATS)}")


def _parameters(factory) -> int:
    with torch.device("meta"):
        module = factory()
    return sum(p.numel() for p in module.parameters())


def memory_plan(config: ModelConfig, gpu_bytes: int, ranks: tuple[int, ...] = (1, 2),
                workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> MemoryPlan:
    """The plan of ``config`` for GPUs of ``gpu_bytes`` on each rank count of ``ranks`` (nothing is loaded)."""
    dtype = getattr(torch, config.dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    dit_parameters = _parameters(lambda: WanModel(config.dit))
    vae_bytes = _parameters(lambda: WanVAE(config.vae)) * 4        # the VAE runs in float32
    encoders = PUBLISHED_ENCODERS if config.name == "liveact-18b" else ()
    audio_tail = 4 * config.audio_encoder.sample_rate * 4          # at most 4 s of float32 PCM
    plan_npcs = []
    for width, height in config.sizes:
        decoder = decoder_state_bytes(config.vae, width, height, torch.float32)
        for kv in KV_FORMATS:
            total = kv_cache_bytes(config, width, height, kv)
            for count in ranks:
                per_rank = total // count
                weights = dit_parameters * itemsize
                rank0 = weights + vae_bytes + sum(e.bytes for e in encoders if not e.on_host)
                free = gpu_bytes - workspace_bytes - rank0
                npcs = max(0, free // (per_rank + decoder + audio_tail))
                if count > 1:
                    # Rank 0 holds the decoder states too; the others only their caches, so rank 0 decides.
                    npcs = min(npcs, max(0, (gpu_bytes - workspace_bytes - weights) // per_rank))
                plan_npcs.append(NpcPlan(width, height, kv, count, per_rank, decoder + audio_tail, int(npcs)))
    return MemoryPlan(config.name, gpu_bytes, workspace_bytes, dit_parameters, dit_parameters * itemsize,
                      vae_bytes, encoders, tuple(plan_npcs))


def format_plan(plan: MemoryPlan) -> str:
    def gb(n: int) -> str:
        return f"{n / 1e9:.1f} GB"

    lines = [f"memory plan of {plan.config_name} (nothing loaded; GPU of {gb(plan.gpu_bytes)}, "
             f"{gb(plan.workspace_bytes)} kept free for activations)",
             f"weights: DiT {plan.dit_parameters / 1e9:.2f} B parameters = {gb(plan.dit_bytes)} on every rank; "
             f"VAE {gb(plan.vae_bytes)} on rank 0"]
    for encoder in plan.encoders:
        where = "the host" if encoder.on_host else "rank 0"
        lines.append(f"  {encoder.name}: {gb(encoder.bytes)} on {where}"
                     + (" (published size; not built yet)" if encoder.published else ""))
    lines.append(f"rank 0 weights {gb(plan.rank0_weight_bytes())}, host {gb(plan.host_weight_bytes())}")
    lines.append("")
    lines.append(f"{'size':>9}  {'KV':>4}  {'ranks':>5}  {'KV per rank':>11}  {'rank 0 extra':>12}  {'NPCs per GPU':>12}")
    for npc in plan.npcs:
        lines.append(f"{npc.width:>4}x{npc.height:<4}  {npc.kv:>4}  {npc.ranks:>5}  {gb(npc.kv_bytes_per_rank):>11}  "
                     f"{gb(npc.rank0_extra_bytes):>12}  {npc.npcs_per_gpu:>12}")
    return "\n".join(lines)
