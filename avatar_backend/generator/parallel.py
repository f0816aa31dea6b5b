"""Sequence parallelism (Ulysses, LIVEACT_SPEC.md §8): one DiT call spread over N ranks by its token sequence.

Each rank keeps the block's tokens of its own whole latent frames (block 0: 6 / N frames, later blocks 8 / N)
for everything that is per token: embeddings, cross-attention, audio attention, the FFN and the head. Only
self-attention needs the whole sequence: an all-to-all turns [local tokens, all heads] into [all tokens, the
rank's heads] before it and back after it, and the rank attends with its heads over every token.

The ConvKV cache is sharded by heads, not by tokens as in the reference: after the all-to-all a rank holds the
current block's keys and values of its heads for all tokens, writes them into its head shard of the cache and
compresses there. The compressor is depthwise (one filter per channel), so a head shard compresses exactly like
the same heads of the whole cache: any slot grouping runs unchanged on N ranks, the cache's bytes split N ways
as the reference's do, and cached keys and values never cross ranks (the reference moves them through the
all-to-all on every call). A memory's snapshot is the whole cache, whichever the number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["SequenceParallel"]


@dataclass(frozen=True)
class SequenceParallel:
    """This rank's place in a sequence-parallel group (``group`` None: the default process group)."""

    rank: int
    world_size: int
    group: Any = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a group of {self.world_size}")

    @classmethod
    def from_process_group(cls, group: Any = None) -> "SequenceParallel":
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    # -- what this rank holds --------------------------------------------------------------------------------

    def check(self, num_heads: int, block_sizes: tuple[int, ...]) -> None:
        """The model splits over this group: whole heads and whole latent frames per rank."""
        if num_heads % self.world_size or any(size % self.world_size for size in block_sizes):
            raise ValueError(f"{self.world_size} ranks need heads ({num_heads}) and block sizes {block_sizes} "
                             "that they divide")

    def local_frames(self, frames: int) -> slice:
        """The block's latent frames this rank holds."""
        per_rank = frames // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def local_heads(self, num_heads: int) -> slice:
        per_rank = num_heads // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    # -- communication ---------------------------------------------------------------------------------------

    def scatter_heads(self, x: Tensor) -> Tensor:
        """[B, local tokens, H, D] on every rank -> [B, all tokens, H / N, D]: each rank's tokens of its heads,
        in rank order (the ranks' tokens are consecutive runs of the sequence)."""
        batch, tokens, heads, dim = x.shape
        n = self.world_size
        send = x.reshape(batch, tokens, n, heads // n, dim).permute(2, 0, 1, 3, 4).contiguous()
        received = torch.empty_like(send)
        dist.all_to_all_single(received, send, group=self.group)   # [N source ranks, B, tokens, H / N, D]
        return received.permute(1, 0, 2, 3, 4).reshape(batch, n * tokens, heads // n, dim)

    def gather_heads(self, x: Tensor) -> Tensor:
        """The inverse of :meth:`scatter_heads`: [B, all tokens, H / N, D] -> [B, local tokens, H, D]."""
        batch, tokens, heads, dim = x.shape
        n = self.world_size
        send = x.reshape(batch, n, tokens // n, heads, dim).transpose(0, 1).contiguous()
        received = torch.empty_like(send)
        dist.all_to_all_single(received, send, group=self.group)   # [N source ranks (head groups), B, t, h, D]
        return received.permute(1, 2, 0, 3, 4).reshape(batch, tokens // n, n * heads, dim)

    def gather_tokens(self, x: Tensor) -> Tensor:
        """[B, local tokens, C] -> [B, all tokens, C] on every rank, in rank order."""
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)
