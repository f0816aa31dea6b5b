"""ConvKV memory: the constant-size self-attention key/value caches of one NPC (LIVEACT_SPEC.md §4, §5.2, §8).

Every self-attention layer attends to 14 latent frames ("slots") of keys and values, whatever the stream length:

    slot  0  1 | 2                     | 3                   | 4  5        | 6 .. 13
          sink | long-term (recursive) | previous block (C)  | short-term  | current block

A slot is ``frame_tokens`` consecutive rows of the cache, and the slot index is the key's temporal RoPE position
("RoPE reset": positions never grow). Block 0 writes its 6 frames into slots 0..5, block 1 writes slots 6..13, and
from block 2 on the memory is first compressed and then the current block overwrites slots 6..13.

The compressor C turns 5 slots into 1 with a depthwise Conv1d (kernel = stride = 5) over the flattened token
sequence, so it merges 5 consecutive tokens, and groups straddle row and frame ends when the frame is not a
multiple of 5 wide. Which 5 slots feed each compressed slot is the "grouping":

- ``single-device`` (the reference's 1-GPU path): slot 2 <- C(2, 3, 4, 5, 6), slot 3 <- C(7..11), slots 4, 5 <- 12, 13.
- ``two-device`` (the reference's 2-GPU path, where each rank compresses its own half of the sequence):
  slot 2 <- C(2, 6, 7, 8, 9), slot 3 <- C(3, 4, 5, 10, 11), slots 4, 5 <- 12, 13.

Neighbor Forcing keeps one cache per denoising step, so block b at step i attends to block b-1 seen at the same
noise level; audio CFG adds a second set for the audio-free branch.

Two update paths compute the same thing: a functional one that builds new tensors (for training through the
rollout with autograd) and an in-place one that writes into preallocated tensors (for inference, no copies).

Caches carry a batch dimension, one row per NPC: a batch of NPCs at the same block kind runs through the DiT
in one call (``ConvKVMemory.stack`` gathers their caches, ``scatter_into`` writes them back). One NPC's memory
is a batch of one, and its snapshot tensors are that row without the batch dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .config import DiTConfig, ModelConfig, SamplerConfig
from .fp8 import FP8, dequantize_fp8, quantize_fp8

# Slot plans by grouping name: (target slot, the 5 source slots it compresses, in order) and (target, source) copies.
# Slot indices are RoPE temporal positions. The two-device plan is the 2-rank reference emulated on one device:
# rank 0 holds positions (0, 1, 2, 6, 7, 8, 9) and compresses its local slots 2..6 into position 2; rank 1 holds
# (3, 4, 5, 10, 11, 12, 13), compresses its local slots 0..4 into position 3 and shifts 12, 13 down to 4, 5.
# ``sliding-window`` is not LiveAct: it is the evaluation's ablation with the same 14 slots, the sink and the
# last 4 frames of the previous block kept exactly, nothing compressed (older frames are simply forgotten).
_COMPRESSIONS: dict[str, tuple[tuple[int, tuple[int, ...]], ...]] = {
    "single-device": ((2, (2, 3, 4, 5, 6)), (3, (7, 8, 9, 10, 11))),
    "two-device": ((2, (2, 6, 7, 8, 9)), (3, (3, 4, 5, 10, 11))),
    "sliding-window": (),
}
_COPIES: dict[str, tuple[tuple[int, int], ...]] = {
    "single-device": ((4, 12), (5, 13)),
    "two-device": ((4, 12), (5, 13)),
    "sliding-window": ((2, 10), (3, 11), (4, 12), (5, 13)),
}


@dataclass(frozen=True)
class SlotLayout:
    """Where each latent frame of the stream lives in a 14-slot cache, and how the memory is compressed."""

    first_block: int = 6
    block: int = 8
    kernel: int = 5
    grouping: str = "single-device"
    v_compression: str = "k_conv"

    def __post_init__(self) -> None:
        if (self.first_block, self.block, self.kernel) != (6, 8, 5):
            raise ValueError(
                "the ConvKV slot plan is defined for blocks of 6 then 8 latent frames and a kernel of 5, "
                f"got blocks ({self.first_block}, {self.block}) and kernel {self.kernel}"
            )
        if self.grouping not in _COMPRESSIONS:
            raise ValueError(f"unknown memory grouping {self.grouping!r}; known: {sorted(_COMPRESSIONS)}")
        if self.v_compression not in ("k_conv", "v_conv"):
            raise ValueError(f"v_compression must be 'k_conv' or 'v_conv', got {self.v_compression!r}")

    @classmethod
    def from_config(cls, sampler: SamplerConfig, dit: DiTConfig) -> "SlotLayout":
        layout = cls(
            first_block=sampler.block_sizes[0], block=sampler.block_sizes[1], kernel=dit.memory_kernel,
            grouping=sampler.memory_grouping, v_compression=sampler.v_compression,
        )
        if sampler.memory_slots != layout.slots:
            raise ValueError(f"memory_slots {sampler.memory_slots} does not match the slot plan ({layout.slots})")
        return layout

    @property
    def slots(self) -> int:
        return self.first_block + self.block

    @property
    def compressions(self) -> tuple[tuple[int, tuple[int, ...]], ...]:
        return _COMPRESSIONS[self.grouping]

    @property
    def copies(self) -> tuple[tuple[int, int], ...]:
        return _COPIES[self.grouping]


def compress(frames: Tensor, weight: Tensor) -> Tensor:
    """The ConvKV compressor C: ``kernel`` slots [..., kernel * fs, heads, head_dim] -> one slot [..., fs, heads,
    head_dim] (leading dimensions, such as the batch, are kept).

    Output token j of channel c is sum_m weight[c, 0, m] * input token (kernel * j + m) of channel c, with
    c = head * head_dim + d: a depthwise Conv1d with kernel = stride over the flattened token sequence.
    Accumulates in fp32 so a bf16 cache loses nothing beyond its own rounding.
    """
    channels, _, kernel = weight.shape
    *lead, tokens, heads, head_dim = frames.shape
    if heads * head_dim != channels or tokens % kernel:
        raise ValueError(f"cannot compress {tuple(frames.shape)} with a conv of weight {tuple(weight.shape)}")
    groups = frames.reshape(*lead, tokens // kernel, kernel, channels).float()
    merged = (groups * weight.reshape(channels, kernel).t().float()).sum(dim=-2)
    return merged.reshape(*lead, tokens // kernel, heads, head_dim).to(frames.dtype)


@dataclass(frozen=True)
class CacheWrite:
    """What one forward pass does to the cache of each layer: compress (blocks >= 2), then write the current block."""

    layout: SlotLayout
    frame_tokens: int
    start_frame: int          # first slot the current block goes to: 0 for block 0, 6 after
    frames: int               # latent frames in the current block
    compress: bool
    inplace: bool

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.frames

    def apply(
        self, k_cache: Tensor, v_cache: Tensor, k_new: Tensor, v_new: Tensor, k_conv: Tensor, v_conv: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Update one layer's caches [B, slots * fs, heads, head_dim] with the block's keys/values
        [B, frames * fs, heads, head_dim].

        Returns the caches to attend to: the same tensors, written in place, or new ones (functional path).
        """
        v_conv = self._v_conv(k_conv, v_conv)
        return self._apply_one(k_cache, k_new, k_conv), self._apply_one(v_cache, v_new, v_conv)

    def apply_quantized(
        self, k_cache: Tensor, v_cache: Tensor, k_scale: Tensor, v_scale: Tensor, k_new: Tensor, v_new: Tensor,
        k_conv: Tensor, v_conv: Tensor,
    ) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        """Update one layer's FP8 caches in place: slots that move keep their stored values and scales (exactly,
        however long the stream), and only what the block computes (the compressed slots, its own frames) is
        quantized. Returns, for K and V, what it computed unquantized, by first row, so the block's attention
        can read it as computed."""
        if not self.inplace:
            raise ValueError("an FP8 cache is an inference cache: it has no functional (training) path")
        v_conv = self._v_conv(k_conv, v_conv)
        return (self._apply_quantized_one(k_cache, k_scale, k_new, k_conv),
                self._apply_quantized_one(v_cache, v_scale, v_new, v_conv))

    def _v_conv(self, k_conv: Tensor, v_conv: Tensor) -> Tensor:
        # The reference compresses V with the K conv; memory_proj_v is then never used.
        return k_conv if self.layout.v_compression == "k_conv" else v_conv

    def _check(self, cache: Tensor, new: Tensor) -> None:
        if (new.shape[1] != self.frames * self.frame_tokens or cache.shape[1] != self.layout.slots * self.frame_tokens
                or new.shape[0] != cache.shape[0]):
            raise ValueError(f"cache {tuple(cache.shape)} / block {tuple(new.shape)} do not match {self}")

    @property
    def block_rows(self) -> slice:
        """The cache rows the current block's own frames are written to."""
        return slice(self.start_frame * self.frame_tokens, self.end_frame * self.frame_tokens)

    def _memory_updates(self, read: Callable[[tuple[int, ...]], Tensor], conv: Tensor) -> dict[int, Tensor | int]:
        """What compression does to the memory: slot -> its new value, or the slot it is copied from, in the order
        they must be written (none before block 2). ``read(slots)``: those slots' values, concatenated.

        Compressed slots are computed from the old memory before any write, and the copies are applied before
        the current block overwrites their sources (12, 13): both update paths see the memory as it was.
        """
        updates: dict[int, Tensor | int] = {}
        if self.compress:
            for target, sources in self.layout.compressions:
                updates[target] = compress(read(sources), conv)
            for target, source in self.layout.copies:
                updates[target] = source
        return updates

    def _apply_one(self, cache: Tensor, new: Tensor, conv: Tensor) -> Tensor:
        self._check(cache, new)
        slots = list(cache.split(self.frame_tokens, dim=1))
        updates = self._memory_updates(lambda sources: torch.cat([slots[s] for s in sources], dim=1), conv)
        if self.inplace:
            for slot, value in updates.items():
                slots[slot].copy_(slots[value] if isinstance(value, int) else value)
            cache[:, self.block_rows].copy_(new)
            return cache
        memory = list(slots)
        for slot, value in updates.items():
            slots[slot] = memory[value] if isinstance(value, int) else value.to(cache.dtype)
        for offset, frame in enumerate(new.split(self.frame_tokens, dim=1)):
            slots[self.start_frame + offset] = frame.to(cache.dtype)
        return torch.cat(slots, dim=1)

    def _apply_quantized_one(self, cache: Tensor, scale: Tensor, new: Tensor, conv: Tensor) -> dict[int, Tensor]:
        self._check(cache, new)
        fs = self.frame_tokens
        # e4m3 values move as bytes: exact, and a write into part of an FP8 tensor is what torch.compile's
        # code generation cannot lower (it would mix a mask with FP8 values).
        raw = cache.view(torch.uint8)
        slots, scales = list(raw.split(fs, dim=1)), list(scale.split(fs, dim=1))

        def read(sources: tuple[int, ...]) -> Tensor:
            return dequantize_fp8(torch.cat([slots[s] for s in sources], dim=1).view(FP8),
                                  torch.cat([scales[s] for s in sources], dim=1))

        computed: dict[int, Tensor] = {}
        for slot, value in self._memory_updates(read, conv).items():
            if isinstance(value, int):
                slots[slot].copy_(slots[value])
                scales[slot].copy_(scales[value])
            else:
                stored, stored_scale = quantize_fp8(value)
                slots[slot].copy_(stored.view(torch.uint8))
                scales[slot].copy_(stored_scale)
                computed[slot * fs] = value
        stored, stored_scale = quantize_fp8(new)
        raw[:, self.block_rows].copy_(stored.view(torch.uint8))
        scale[:, self.block_rows].copy_(stored_scale)
        computed[self.block_rows.start] = new
        return computed


@dataclass
class StepCache:
    """The keys and values of every layer for one denoising step (and one CFG branch).

    k holds post-RMSNorm, pre-RoPE keys and v raw values, both [layers, batch, slots * frame_tokens, heads,
    head_dim]. An FP8 cache holds them as e4m3 with fp32 scales [..., 1] per token and head in k_scale and
    v_scale; its heads can be split over sequence-parallel ranks like any other cache's, scales with them.
    """

    k: Tensor
    v: Tensor
    layout: SlotLayout
    k_scale: Tensor | None = None
    v_scale: Tensor | None = None

    @property
    def quantized(self) -> bool:
        return self.k_scale is not None

    def tensors(self) -> list[Tensor]:
        return [self.k, self.v] + ([self.k_scale, self.v_scale] if self.quantized else [])

    @property
    def frame_tokens(self) -> int:
        return self.k.shape[2] // self.layout.slots

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors())

    def select(self, rows: Tensor) -> "StepCache":
        """A copy of some streams' rows of the batch (``rows``: their indices), to write into while this one
        stays as it is."""
        tensors = {name: getattr(self, name) for name in ("k", "v", "k_scale", "v_scale")}
        return replace(self, **{name: t.index_select(1, rows) for name, t in tensors.items() if t is not None})


def _null_audio_steps(sampler: SamplerConfig) -> tuple[int, ...]:
    """Steps that run the audio-free CFG branch: those where audio is used at all, and only when cfg > 1."""
    if sampler.audio_cfg <= 1.0:
        return ()
    first = 1 if sampler.skip_audio_at_first_step else 0
    return tuple(range(first, sampler.num_steps))


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return resolved


def cache_elements(model_config: ModelConfig, width: int, height: int) -> int:
    """Elements of one NPC's ConvKV memory (keys and values of every step cache and layer)."""
    dit, sampler = model_config.dit, model_config.sampler
    step_caches = sampler.num_steps + len(_null_audio_steps(sampler))
    return step_caches * 2 * dit.num_layers * sampler.memory_slots * model_config.frame_tokens(width, height) * dit.dim


def cache_bytes(model_config: ModelConfig, width: int, height: int, dtype: torch.dtype | str | None = None) -> int:
    """Bytes of one NPC's ConvKV memory, computed from the config alone (before anything is allocated): in the
    config's cache format, or in ``dtype``."""
    elements = cache_elements(model_config, width, height)
    if dtype is None and model_config.sampler.kv_cache == "fp8":
        return fp8_cache_bytes(model_config, width, height)
    return elements * torch.empty((), dtype=_dtype(dtype or model_config.dtype)).element_size()


def fp8_cache_bytes(model_config: ModelConfig, width: int, height: int) -> int:
    """Bytes of one NPC's FP8 ConvKV memory: a byte per element and an fp32 scale per token and head."""
    elements = cache_elements(model_config, width, height)
    return elements + elements // model_config.dit.head_dim * 4


@dataclass
class ConvKVMemory:
    """All step caches of one NPC: ``steps[i]`` for denoising step i, ``null_audio[i]`` for the CFG branch."""

    steps: list[StepCache]
    null_audio: dict[int, StepCache] = field(default_factory=dict)

    @classmethod
    def allocate(
        cls,
        model_config: ModelConfig,
        width: int,
        height: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
        batch_size: int = 1,
        head_shards: int = 1,
    ) -> "ConvKVMemory":
        dit, sampler = model_config.dit, model_config.sampler
        return cls.allocate_for(
            dit, sampler, model_config.frame_tokens(width, height), device=device,
            dtype=_dtype(dtype or model_config.dtype), batch_size=batch_size, head_shards=head_shards,
        )

    @classmethod
    def allocate_for(
        cls, dit: DiTConfig, sampler: SamplerConfig, frame_tokens: int, *,
        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, batch_size: int = 1,
        head_shards: int = 1,
    ) -> "ConvKVMemory":
        """Zero-filled caches; blocks 0 and 1 overwrite every slot before it is read. With ``head_shards`` N,
        one sequence-parallel rank's share: num_heads / N heads."""
        layout = SlotLayout.from_config(sampler, dit)
        heads = dit.num_heads // head_shards
        shape = (dit.num_layers, batch_size, layout.slots * frame_tokens, heads, dit.head_dim)

        def step() -> StepCache:
            if sampler.kv_cache == "fp8":
                scales = (*shape[:-1], 1)
                return StepCache(torch.zeros(shape, device=device, dtype=FP8), torch.zeros(shape, device=device,
                                 dtype=FP8), layout, torch.ones(scales, device=device), torch.ones(scales, device=device))
            zeros = torch.zeros(shape, device=device, dtype=dtype)
            return StepCache(zeros, torch.zeros_like(zeros), layout)

        return cls(
            steps=[step() for _ in range(sampler.num_steps)],
            null_audio={i: step() for i in _null_audio_steps(sampler)},
        )

    @property
    def layout(self) -> SlotLayout:
        return self.steps[0].layout

    @property
    def frame_tokens(self) -> int:
        return self.steps[0].frame_tokens

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.steps) + sum(c.nbytes for c in self.null_audio.values())

    @property
    def batch_size(self) -> int:
        return self.steps[0].batch_size

    def caches(self) -> list[StepCache]:
        """Every step cache, the audio-free CFG branch's after the others, in a fixed order."""
        return [*self.steps, *(self.null_audio[i] for i in sorted(self.null_audio))]

    @classmethod
    def stack(cls, memories: list["ConvKVMemory"]) -> "ConvKVMemory":
        """One batch holding a copy of each memory's caches, in order (see :meth:`scatter_into`)."""
        first = memories[0]
        if any(m.layout != first.layout or sorted(m.null_audio) != sorted(first.null_audio) for m in memories):
            raise ValueError("memories of different layouts cannot run in one batch")

        def cat(caches: list[StepCache]) -> StepCache:
            parts = [torch.cat(tensors, dim=1) for tensors in zip(*(c.tensors() for c in caches))]
            return StepCache(*parts[:2], first.layout, *parts[2:])

        return cls(steps=[cat([m.steps[i] for m in memories]) for i in range(len(first.steps))],
                   null_audio={i: cat([m.null_audio[i] for m in memories]) for i in first.null_audio})

    def scatter_into(self, memories: list["ConvKVMemory"]) -> None:
        """Write each batch row back into the memory it was stacked from (the inverse of :meth:`stack`)."""
        if sum(m.batch_size for m in memories) != self.batch_size:
            raise ValueError(f"a batch of {self.batch_size} cannot be written back into {len(memories)} memories")
        row = 0
        for memory in memories:
            rows = slice(row, row + memory.batch_size)
            for batched, own in zip(self.caches(), memory.caches()):
                for source, target in zip(batched.tensors(), own.tensors()):
                    target.copy_(source[:, rows])
            row = rows.stop

    def state_tensors(self) -> dict[str, Tensor]:
        """Flat name -> tensor map for a snapshot (``step{i}.k``, ``null_audio.step{i}.v`` ...) of a memory of
        one NPC: views [layers, slots * frame_tokens, heads, head_dim] of its caches, without the batch row."""
        if self.batch_size != 1:
            raise ValueError(f"a snapshot holds one NPC's memory, not a batch of {self.batch_size}")
        tensors: dict[str, Tensor] = {}
        for prefix, caches in (("", dict(enumerate(self.steps))), ("null_audio.", self.null_audio)):
            for i, cache in caches.items():
                tensors[f"{prefix}step{i}.k"] = cache.k[:, 0]
                tensors[f"{prefix}step{i}.v"] = cache.v[:, 0]
                if cache.quantized:
                    tensors[f"{prefix}step{i}.k_scale"] = cache.k_scale[:, 0]
                    tensors[f"{prefix}step{i}.v_scale"] = cache.v_scale[:, 0]
        return tensors

    @classmethod
    def from_state_tensors(cls, tensors: Mapping[str, Tensor], layout: SlotLayout) -> "ConvKVMemory":
        """Inverse of :meth:`state_tensors` (a batch of one; the caches are views of ``tensors``, so writes reach
        them). The layout is not stored in the tensors: NpcMemory.memory_layout records it."""
        steps: dict[int, StepCache] = {}
        null_audio: dict[int, StepCache] = {}
        for name in tensors:
            branch, _, rest = name.rpartition("step")
            index, kind = rest.split(".")
            if kind != "k":
                continue
            target = {"": steps, "null_audio.": null_audio}.get(branch)
            if target is None:
                raise ValueError(f"unexpected memory tensor {name!r}")
            scales = [tensors[f"{branch}step{index}.{s}"].unsqueeze(1) for s in ("k_scale", "v_scale")
                      if f"{branch}step{index}.{s}" in tensors]
            target[int(index)] = StepCache(tensors[name].unsqueeze(1), tensors[f"{branch}step{index}.v"].unsqueeze(1),
                                           layout, *scales)
        if sorted(steps) != list(range(len(steps))) or not steps:
            raise ValueError(f"memory snapshot has step caches {sorted(steps)}, expected 0..n-1")
        shapes = {tuple(c.k.shape) for c in [*steps.values(), *null_audio.values()]}
        shapes |= {tuple(c.v.shape) for c in [*steps.values(), *null_audio.values()]}
        if len(shapes) != 1 or next(iter(shapes))[2] % layout.slots:
            raise ValueError(f"inconsistent memory tensor shapes {sorted(shapes)}")
        return cls(steps=[steps[i] for i in range(len(steps))], null_audio=null_audio)
