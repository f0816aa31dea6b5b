"""Where every NPC memory of a worker lives: live, parked resident, or parked on disk.

- live: in a session right now; exactly one session per NPC, because a memory has one writer.
- resident: closed recently and kept in memory, least recently used first out, bounded by a byte budget;
  reopening one costs nothing.
- on disk: ``<data>/npcs/<id>.npcmem``, written atomically when a session closes and on shutdown; listed by
  reading snapshot headers only.

A resident memory is always on disk too (it is saved when its session closes), so evicting one only drops the
reference; a failed save keeps it marked dirty and is retried on eviction and at shutdown.

Errors are :class:`PoolError` with a grpc status code name, which the worker passes to the gateway as is.
"""

from __future__ import annotations

import collections
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatar_backend.proto_gen import worker_pb2
from avatar_backend.store import DataDir, now_ms, valid_id

__all__ = ["MemoryCodec", "MemoryPool", "PoolError", "derive_seed"]

log = logging.getLogger(__name__)


class PoolError(Exception):
    """A memory request that cannot be served; ``code`` is a grpc.StatusCode name."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class MemoryCodec:
    """How snapshots are read: ``NpcMemory.load`` and ``read_memory_header`` for the real generator."""

    load: Callable[[Path, str], Any]
    read_header: Callable[[Path], dict[str, Any]]


def derive_seed(npc_id: str) -> int:
    """The noise seed of an NPC whose session asked for seed 0: stable across runs and machines."""
    return int.from_bytes(hashlib.sha256(npc_id.encode()).digest()[:8], "little") & ((1 << 63) - 1)


@dataclass
class _Entry:
    memory: Any
    session_id: str = ""         # non-empty while live
    dirty: bool = False          # changed since it was last written to disk
    updated_ms: int = 0


class MemoryPool:
    """NPC memories of one worker (see the module doc). Not thread-safe: the worker loop owns it."""

    def __init__(
        self,
        pipeline: Any,
        data_dir: DataDir,
        codec: MemoryCodec,
        resident_budget_bytes: int = 2 << 30,
        max_live: int = 0,
    ):
        self.pipeline = pipeline
        self.data_dir = data_dir.ensure()
        self.codec = codec
        self.resident_budget_bytes = resident_budget_bytes
        self.max_live = max_live
        self._live: dict[str, _Entry] = {}
        self._resident: collections.OrderedDict[str, _Entry] = collections.OrderedDict()

    # -- state ----------------------------------------------------------------------------------------------

    def is_live(self, npc_id: str) -> bool:
        return npc_id in self._live

    @property
    def live_ids(self) -> list[str]:
        return list(self._live)

    @property
    def resident_ids(self) -> list[str]:
        """Resident NPCs, least recently used first."""
        return list(self._resident)

    @property
    def resident_bytes(self) -> int:
        return sum(e.memory.nbytes() for e in self._resident.values())

    # -- sessions -------------------------------------------------------------------------------------------

    def acquire(
        self,
        npc_id: str,
        session_id: str,
        *,
        character_id: str = "",
        width: int = 0,
        height: int = 0,
        fps: int = 0,
        seed: int = 0,
        reset: bool = False,
        resume_token: str = "",
    ) -> tuple[Any, bool]:
        """Make the NPC live in ``session_id``: its memory, and whether it continues an earlier one.

        ``width``/``height``/``fps`` of 0 mean the NPC's own (or the model's default for a new NPC).
        """
        if not valid_id(npc_id):
            raise PoolError("INVALID_ARGUMENT", f"npc_id {npc_id!r} is not 1-128 characters of [A-Za-z0-9_.-]")
        if npc_id in self._live:
            raise PoolError("ABORTED", f"NPC {npc_id!r} is already live in another session")
        if self.max_live and len(self._live) >= self.max_live:
            raise PoolError("RESOURCE_EXHAUSTED", f"this worker already runs {len(self._live)} live NPCs")

        try:
            existing = self._describe(npc_id)
        except PoolError:
            if not reset:
                raise
            existing = None  # an unreadable snapshot is replaced by the fresh memory
        if existing is not None and not reset:
            memory = self._resume(npc_id, existing, character_id, width, height, fps, resume_token)
            resumed = True
        else:
            if resume_token and (existing is None or resume_token != existing["resume_token"]):
                raise PoolError("FAILED_PRECONDITION",
                                f"resume_token does not match the memory of NPC {npc_id!r} (it changed or is gone)")
            if existing is not None:
                character_id = character_id or existing["character_id"]
                seed = seed or existing["seed"]   # a reset NPC keeps its noise seed unless given a new one
            if not character_id:
                raise PoolError("INVALID_ARGUMENT", f"character_id is required for the new NPC {npc_id!r}")
            memory = self._new(npc_id, character_id, width, height, fps, seed)
            self._resident.pop(npc_id, None)
            resumed = False
        self._live[npc_id] = _Entry(memory, session_id=session_id, dirty=not resumed, updated_ms=now_ms())
        return memory, resumed

    def mark_updated(self, npc_id: str) -> None:
        """The live memory generated a block (it now differs from its snapshot)."""
        entry = self._live[npc_id]
        entry.dirty = True
        entry.updated_ms = now_ms()

    def release(self, npc_id: str) -> worker_pb2.NpcState:
        """The session ended: snapshot the memory to disk and keep it resident (within the budget)."""
        entry = self._live.pop(npc_id)
        entry.session_id = ""
        entry.memory.to("cpu")  # to the host first, so the snapshot is written from there without another copy
        self._save(npc_id, entry)
        self._park(npc_id, entry)
        return self._state(npc_id, entry.memory, live=False, updated_ms=entry.updated_ms)

    def abandon(self, npc_id: str) -> None:
        """The session failed: forget the live memory without saving it; the NPC goes back to its last
        snapshot (a half-generated block may have left the memory inconsistent)."""
        entry = self._live.pop(npc_id, None)
        if entry is not None and not entry.dirty:
            entry.session_id = ""
            self._park(npc_id, entry)

    def save_all(self) -> int:
        """Write every memory that changed since its last snapshot (shutdown). Returns how many were written."""
        written = 0
        for npc_id, entry in [*self._live.items(), *self._resident.items()]:
            if entry.dirty and self._save(npc_id, entry):
                written += 1
        return written

    # -- management -------------------------------------------------------------------------------------------

    def query(self, npc_id: str = "", character_id: str = "") -> list[worker_pb2.NpcState]:
        """Live, resident and on-disk NPCs (one NPC when ``npc_id`` is set), sorted by id. Unknown: []."""
        if npc_id:
            if not valid_id(npc_id):
                raise PoolError("INVALID_ARGUMENT", f"npc_id {npc_id!r} is not valid")
            ids = [npc_id]
        else:
            ids = sorted(set(self._live) | set(self._resident) | set(self.data_dir.list_npc_ids()))
        states = []
        for nid in ids:
            state = self._state_of(nid)
            if state is not None and (not character_id or state.character_id == character_id):
                states.append(state)
        return states

    def reset(self, npc_id: str) -> worker_pb2.NpcState:
        """A fresh memory for the NPC (same character, size and fps), written to disk at once."""
        existing = self._require_parked(npc_id)
        memory = self._new(npc_id, existing["character_id"], existing["width"], existing["height"],
                           existing["fps"], existing["seed"])
        entry = _Entry(memory, dirty=True, updated_ms=now_ms())
        self._resident.pop(npc_id, None)
        if not self._save(npc_id, entry):
            raise PoolError("INTERNAL", f"could not write the memory of NPC {npc_id!r}")
        self._park(npc_id, entry)
        return self._state(npc_id, memory, live=False, updated_ms=entry.updated_ms)

    def delete(self, npc_id: str) -> None:
        if not valid_id(npc_id):
            raise PoolError("INVALID_ARGUMENT", f"npc_id {npc_id!r} is not valid")
        if npc_id in self._live:
            raise PoolError("ABORTED", f"NPC {npc_id!r} is live in a session")
        path = self.data_dir.npc_memory_path(npc_id)
        # No header read: deleting must work for an unreadable snapshot too.
        if self._resident.pop(npc_id, None) is None and not path.is_file():
            raise PoolError("NOT_FOUND", f"no NPC {npc_id!r}")
        path.unlink(missing_ok=True)

    # -- internals --------------------------------------------------------------------------------------------

    def _require_parked(self, npc_id: str) -> dict[str, Any]:
        if not valid_id(npc_id):
            raise PoolError("INVALID_ARGUMENT", f"npc_id {npc_id!r} is not valid")
        if npc_id in self._live:
            raise PoolError("ABORTED", f"NPC {npc_id!r} is live in a session")
        existing = self._describe(npc_id)
        if existing is None:
            raise PoolError("NOT_FOUND", f"no NPC {npc_id!r}")
        return existing

    def _describe(self, npc_id: str) -> dict[str, Any] | None:
        """The parked NPC's identity and counters (from the resident memory or the snapshot header)."""
        entry = self._resident.get(npc_id)
        if entry is not None:
            m = entry.memory
            return {"character_id": m.character_id, "width": m.width, "height": m.height, "fps": m.fps,
                    "seed": m.seed, "resume_token": m.resume_token(), "model_name": m.model_name,
                    "memory_layout": m.memory_layout}
        path = self.data_dir.npc_memory_path(npc_id)
        if not path.is_file():
            return None
        try:
            return self.codec.read_header(path)
        except Exception as err:
            raise PoolError("DATA_LOSS", f"the memory snapshot of NPC {npc_id!r} is unreadable: {err}") from None

    def _resume(self, npc_id: str, existing: dict[str, Any], character_id: str, width: int, height: int,
                fps: int, resume_token: str) -> Any:
        if character_id and character_id != existing["character_id"]:
            raise PoolError("INVALID_ARGUMENT",
                            f"character_id {character_id!r} differs from NPC {npc_id!r}'s character "
                            f"{existing['character_id']!r} (leave it empty, or reset the NPC)")
        if (width or height) and (width, height) != (existing["width"], existing["height"]):
            raise PoolError("INVALID_ARGUMENT",
                            f"video size {width}x{height}: NPC {npc_id!r}'s memory was made for "
                            f"{existing['width']}x{existing['height']} (use that size, or reset the NPC)")
        if fps and fps != existing["fps"]:
            raise PoolError("INVALID_ARGUMENT",
                            f"fps {fps}: NPC {npc_id!r}'s memory was made at {existing['fps']} fps")
        model_name = existing.get("model_name")
        if model_name and model_name != self.pipeline.config.name:
            raise PoolError("FAILED_PRECONDITION",
                            f"NPC {npc_id!r}'s memory was made by model {model_name!r}, this worker runs "
                            f"{self.pipeline.config.name!r} (reset the NPC to continue)")
        layout = existing.get("memory_layout")
        if layout and layout != self.pipeline.memory_layout:
            raise PoolError("FAILED_PRECONDITION",
                            f"NPC {npc_id!r}'s memory uses the ConvKV layout {layout!r}, this worker runs "
                            f"{self.pipeline.memory_layout!r} (reset the NPC to continue)")
        if resume_token and resume_token != existing["resume_token"]:
            raise PoolError("FAILED_PRECONDITION",
                            f"resume_token does not match the memory of NPC {npc_id!r} (it changed since)")
        entry = self._resident.pop(npc_id, None)
        if entry is not None:
            return entry.memory.to(self.pipeline.device)
        path = self.data_dir.npc_memory_path(npc_id)
        try:
            return self.codec.load(path, self.pipeline.device)
        except FileNotFoundError:
            raise PoolError("NOT_FOUND", f"the memory of NPC {npc_id!r} disappeared") from None
        except Exception as err:
            raise PoolError("DATA_LOSS", f"the memory snapshot of NPC {npc_id!r} cannot be loaded: {err}") from None

    def _new(self, npc_id: str, character_id: str, width: int, height: int, fps: int, seed: int) -> Any:
        config = self.pipeline.config
        width, height = (width, height) if (width or height) else (config.width, config.height)
        if (width, height) not in {tuple(s) for s in config.sizes}:
            sizes = ", ".join(f"{w}x{h}" for w, h in config.sizes)
            raise PoolError("INVALID_ARGUMENT", f"video size {width}x{height} is not supported (one of: {sizes})")
        fps = fps or config.fps
        try:
            return self.pipeline.new_memory(npc_id, character_id, width, height, fps, seed or derive_seed(npc_id))
        except ValueError as err:
            raise PoolError("INVALID_ARGUMENT", str(err)) from None

    def _save(self, npc_id: str, entry: _Entry) -> bool:
        try:
            entry.memory.save(self.data_dir.npc_memory_path(npc_id))
        except Exception:
            log.exception("could not save the memory of NPC %r (kept in memory, retried later)", npc_id)
            return False
        entry.dirty = False
        return True

    def _park(self, npc_id: str, entry: _Entry) -> None:
        # Parked memories wait in host memory so the accelerator holds only live NPCs.
        entry.memory.to("cpu")
        self._resident[npc_id] = entry
        self._resident.move_to_end(npc_id)
        self._evict()

    def _evict(self) -> None:
        total = self.resident_bytes
        while self._resident and total > self.resident_budget_bytes:
            npc_id, entry = next(iter(self._resident.items()))
            if entry.dirty and not self._save(npc_id, entry):
                # Dropping it would lose the NPC's memory; keep it over budget rather than lose data.
                self._resident.move_to_end(npc_id)
                if all(e.dirty for e in self._resident.values()):
                    break
                continue
            del self._resident[npc_id]
            total -= entry.memory.nbytes()
            log.debug("NPC %r evicted from memory (on disk only now)", npc_id)

    def _state_of(self, npc_id: str) -> worker_pb2.NpcState | None:
        entry = self._live.get(npc_id)
        if entry is not None:
            return self._state(npc_id, entry.memory, live=True, updated_ms=entry.updated_ms)
        entry = self._resident.get(npc_id)
        if entry is not None:
            return self._state(npc_id, entry.memory, live=False, updated_ms=entry.updated_ms)
        path = self.data_dir.npc_memory_path(npc_id)
        if not path.is_file():
            return None
        try:
            h = self.codec.read_header(path)
        except Exception as err:
            log.warning("skipping the unreadable memory snapshot %s: %s", path, err)
            return None
        return worker_pb2.NpcState(
            npc_id=npc_id, character_id=h["character_id"], memory_bytes=int(h.get("memory_bytes", 0)),
            blocks_generated=int(h.get("blocks_generated", 0)), frames_generated=int(h.get("frames_generated", 0)),
            live=False, resume_token=str(h.get("resume_token", "")), width=int(h["width"]),
            height=int(h["height"]), updated_unix_ms=int(h.get("updated_unix_ms", 0)),
        )

    @staticmethod
    def _state(npc_id: str, memory: Any, *, live: bool, updated_ms: int) -> worker_pb2.NpcState:
        return worker_pb2.NpcState(
            npc_id=npc_id, character_id=memory.character_id, memory_bytes=int(memory.nbytes()),
            blocks_generated=int(memory.blocks_generated), frames_generated=int(memory.frames_generated),
            live=live, resume_token=memory.resume_token(), width=int(memory.width), height=int(memory.height),
            updated_unix_ms=int(updated_ms),
        )
