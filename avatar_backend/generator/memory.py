"""The NPC memory: everything needed to continue one NPC's stream, as one typed object.

It holds the ConvKV step caches (Neighbor Forcing: one per denoising step), the streaming VAE decoder's causal
cache, the audio tail the next block's audio window reaches back into, the noise generator's state (always a
CPU generator's) and the stream counters. Blocks read and update these objects directly; the memory becomes a
flat dict of named tensors only to be saved, parked or snapshotted (:meth:`NpcMemory.state_tensors`). Its size
is known from the config before allocation (``LiveActPipeline.memory_bytes``) and does not change once
allocated, so an NPC can talk for hours in constant memory.

Snapshot format (``.npcmem``): a safetensors file whose metadata entry ``avatar_npc_memory`` is a JSON header
with the format version, the stream state and a SHA-256 over every tensor's bytes in name order. Files are
written atomically and verified on load; restoring is bit-exact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from avatar_backend.store import atomic_write_with, now_ms

from .convkv import ConvKVMemory, SlotLayout
from .vae import CausalCache

FORMAT = "avatar-npc-memory"
FORMAT_VERSION = 1
HEADER_KEY = "avatar_npc_memory"

# Names of the memory's tensors in a snapshot (the ConvKV and decoder states keep their own names under these
# prefixes).
CONVKV_PREFIX = "convkv."
DECODER_PREFIX = "vae_decoder."
AUDIO_TAIL = "audio_tail"
NOISE_STATE = "noise_state"


class MemorySnapshotError(RuntimeError):
    """A snapshot file is not a valid NPC memory (wrong format, version, or a checksum mismatch)."""


def memory_layout_name(layout: SlotLayout) -> str:
    """How a memory records the ConvKV layout its caches were made with."""
    return f"{layout.grouping}/{layout.v_compression}"


def slot_layout(memory_layout: str) -> SlotLayout:
    """The inverse of :func:`memory_layout_name` ("" for the default layout)."""
    if not memory_layout:
        return SlotLayout()
    grouping, _, v_compression = memory_layout.partition("/")
    return SlotLayout(grouping=grouping, v_compression=v_compression or "k_conv")


@dataclass
class NpcMemory:
    npc_id: str
    character_id: str
    model_name: str
    width: int
    height: int
    fps: int
    seed: int
    convkv: ConvKVMemory = field(repr=False)      # a batch of one: this NPC's step caches
    decoder: CausalCache = field(repr=False)      # the streaming VAE decoder's state
    audio_tail: torch.Tensor = field(repr=False)  # float32 PCM the next block's audio features reach back into
    noise_state: torch.Tensor = field(repr=False)  # a CPU torch.Generator state (uint8)
    blocks_generated: int = 0
    frames_generated: int = 0
    timeline_samples: int = 0            # 16 kHz samples of the timeline the generated video covers
    prompt: str | None = None            # the active prompt; None means the character's base prompt
    intensity: float = 1.0               # how strongly the active prompt replaces the base prompt
    # The prompt the last block was drawn under (an action's or listening's as well; None: the base prompt), which
    # the next block's prompt onset sets in from.
    last_block_prompt: str | None = None
    last_block_intensity: float = 1.0
    memory_layout: str = ""              # ConvKV grouping and V compression the caches were made with
    lineage: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # new for every fresh memory
    updated_unix_ms: int = field(default_factory=now_ms)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The whole state as named tensors (views, not copies): what a snapshot stores."""
        tensors = {CONVKV_PREFIX + k: v for k, v in self.convkv.state_tensors().items()}
        tensors |= {DECODER_PREFIX + k: v for k, v in self.decoder.to_tensors().items()}
        tensors[AUDIO_TAIL] = self.audio_tail
        tensors[NOISE_STATE] = self.noise_state
        return tensors

    def with_state_tensors(self, tensors: dict[str, torch.Tensor]) -> "NpcMemory":
        """A memory of the same stream over ``tensors`` (the inverse of :meth:`state_tensors`)."""
        return dataclasses.replace(
            self, convkv=ConvKVMemory.from_state_tensors(_strip(tensors, CONVKV_PREFIX), slot_layout(self.memory_layout)),
            decoder=CausalCache.from_tensors(_strip(tensors, DECODER_PREFIX)), audio_tail=tensors[AUDIO_TAIL],
            noise_state=tensors[NOISE_STATE])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_tensors().values())

    def to(self, device: str | torch.device) -> "NpcMemory":
        """Move the model-side state (e.g. park on the host, resume on the GPU); the noise state stays on the
        CPU, where its generator runs. Returns self."""
        tensors = {name: t if name == NOISE_STATE else t.to(device) for name, t in self.state_tensors().items()}
        moved = self.with_state_tensors(tensors)
        self.convkv, self.decoder, self.audio_tail = moved.convkv, moved.decoder, moved.audio_tail
        return self

    def host_copy(self) -> "NpcMemory":
        """A copy on the host that later blocks do not change (a periodic snapshot is written from it in the
        background while the NPC goes on talking)."""
        return self.with_state_tensors(
            {name: t.detach().to("cpu", copy=True) for name, t in self.state_tensors().items()})

    def resume_token(self) -> str:
        """Changes whenever the memory changes: a fresh memory gets a new lineage, every block a new count."""
        return f"{self.lineage}-{self.blocks_generated}"

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": FORMAT_VERSION,
            "npc_id": self.npc_id, "character_id": self.character_id, "model_name": self.model_name,
            "width": self.width, "height": self.height, "fps": self.fps, "seed": self.seed,
            "blocks_generated": self.blocks_generated, "frames_generated": self.frames_generated,
            "timeline_samples": self.timeline_samples, "prompt": self.prompt, "intensity": self.intensity,
            "last_block_prompt": self.last_block_prompt, "last_block_intensity": self.last_block_intensity,
            "memory_layout": self.memory_layout, "lineage": self.lineage,
            "updated_unix_ms": self.updated_unix_ms, "memory_bytes": self.nbytes(),
            "resume_token": self.resume_token(),
        }

    # -- snapshots ----------------------------------------------------------------------------------------

    def _snapshot(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        # No copy for a memory already on the host (park it first: NpcMemory.to("cpu")).
        tensors = {name: t.detach().contiguous().cpu() for name, t in self.state_tensors().items()}
        header = self.header()
        header["sha256"] = _checksum(tensors)
        return tensors, {HEADER_KEY: json.dumps(header, sort_keys=True)}

    def save(self, path: Path | str) -> None:
        """Write the snapshot atomically, streaming the tensors to the file (no whole-file copy in memory)."""
        tensors, metadata = self._snapshot()
        atomic_write_with(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: Path | str, device: str | torch.device = "cpu") -> "NpcMemory":
        """Read and verify a snapshot; MemorySnapshotError when it is not a valid, intact NPC memory."""
        header = read_memory_header(path)
        tensors = load_file(str(path))
        if _checksum(tensors) != header.get("sha256"):
            raise MemorySnapshotError(f"NPC memory {header.get('npc_id')!r}: checksum mismatch (file corrupted)")
        tensors = {name: t if name == NOISE_STATE else t.to(device) for name, t in tensors.items()}
        layout = header.get("memory_layout", "")
        try:
            convkv = ConvKVMemory.from_state_tensors(_strip(tensors, CONVKV_PREFIX), slot_layout(layout))
            decoder = CausalCache.from_tensors(_strip(tensors, DECODER_PREFIX))
            audio_tail, noise_state = tensors[AUDIO_TAIL], tensors[NOISE_STATE]
        except (KeyError, ValueError) as err:
            raise MemorySnapshotError(f"NPC memory {header.get('npc_id')!r}: incomplete state ({err})") from None
        return cls(
            npc_id=header["npc_id"], character_id=header["character_id"], model_name=header["model_name"],
            width=header["width"], height=header["height"], fps=header["fps"], seed=header["seed"],
            convkv=convkv, decoder=decoder, audio_tail=audio_tail, noise_state=noise_state,
            blocks_generated=header["blocks_generated"], frames_generated=header["frames_generated"],
            timeline_samples=header["timeline_samples"], prompt=header.get("prompt"),
            intensity=header.get("intensity", 1.0), memory_layout=layout,
            # A snapshot from before prompt onsets: its last block was under its mood's prompt, as far as it says.
            last_block_prompt=header.get("last_block_prompt", header.get("prompt")),
            last_block_intensity=header.get("last_block_intensity", header.get("intensity", 1.0)),
            lineage=header["lineage"],
            updated_unix_ms=header["updated_unix_ms"],
        )


def read_memory_header(path: Path | str) -> dict[str, Any]:
    """A snapshot's header without loading its tensors (for listing parked NPCs)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(HEADER_KEY)
    except FileNotFoundError:
        raise
    except Exception as err:  # safetensors raises its own error types for foreign or truncated files
        raise MemorySnapshotError(f"not an NPC memory snapshot: {err}") from None
    return _validate_header(text)


def _validate_header(text: str | None) -> dict[str, Any]:
    if not text:
        raise MemorySnapshotError("not an NPC memory snapshot: no header")
    try:
        header = json.loads(text)
    except json.JSONDecodeError as err:
        raise MemorySnapshotError(f"not an NPC memory snapshot: header is not JSON ({err})") from None
    if header.get("format") != FORMAT:
        raise MemorySnapshotError(f"not an NPC memory snapshot: format {header.get('format')!r}")
    if header.get("version") != FORMAT_VERSION:
        raise MemorySnapshotError(
            f"NPC memory format version {header.get('version')} is not supported (this build reads {FORMAT_VERSION})")
    return header


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        # A byte view of any dtype (bf16 and float8 have no numpy equivalent); hashed in place, not copied.
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
