"""Where every NPC memory of a worker lives: live, parked resident, or parked on disk.

- live: in a session right now; exactly one session per NPC, because a memory has one writer.
- resident ("parked"): closed recently and kept in host memory, least recently used first out, bounded by a
  byte budget (``--max-parked-memory-bytes``); reopening one costs nothing. Beyond the budget a memory goes to
  disk only: a session is never refused for it.
- on disk: ``<data>/npcs/<id>.npcmem``, written atomically when a session closes and on shutdown; listed by
  reading snapshot headers only.

A resident memory is always on disk too (it is saved when its session closes), so evicting one only drops the
reference; a failed save keeps it marked dirty and is retried on eviction and at shutdown.

Periodic snapshots (``snapshot_interval_s``): a live memory that changed is written every interval, so a
worker crash loses at most that much of an NPC, and an NPC created in the crashed session still exists. The
worker loop calls :meth:`MemoryPool.snapshot_due` between blocks; it copies one memory to the host (a quick
copy, the only part on the loop) and a background thread writes the file. At most one write is in flight;
a session never waits for it, and any other file operation on that NPC waits for it first, so an older
snapshot can never land over a newer one.

Stored NPCs are capped in number and bytes on disk (``max_stored_npcs``, ``max_stored_bytes``; 0: no cap):
a new NPC beyond either is refused with RESOURCE_EXHAUSTED; existing NPCs keep working.

Errors are :class:`PoolError` with a grpc status code name, which the worker passes to the gateway as is.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatar_backend.proto_gen import worker_pb2
from avatar_backend.store import DataDir, now_ms, valid_id

from .executor import ExecutorLost

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
    version: int = 0             # counts changes, so a background snapshot knows whether it is still current
    snapshot_due_at: float = 0.0  # clock time of the next periodic snapshot while live


@dataclass
class _SnapshotWrite:
    """The one periodic snapshot being written in the background."""

    npc_id: str
    entry: _Entry
    version: int                 # the entry's version the copy was taken at
    blocks: int                  # blocks the copied memory had generated
    future: Future


class MemoryPool:
    """NPC memories of one worker (see the module doc). Not thread-safe: the worker loop owns it."""

    def __init__(
        self,
        pipeline: Any,
        data_dir: DataDir,
        codec: MemoryCodec,
        resident_budget_bytes: int = 1 << 30,
        max_live: int = 0,
        *,
        max_stored_npcs: int = 0,
        max_stored_bytes: int = 0,
        snapshot_interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.pipeline = pipeline
        self.data_dir = data_dir.prepare()
        self.codec = codec
        self.resident_budget_bytes = resident_budget_bytes
        self.max_live = max_live
        self.max_stored_npcs = max_stored_npcs
        self.max_stored_bytes = max_stored_bytes
        self.snapshot_interval_s = snapshot_interval_s
        self._clock = clock
        self._live: dict[str, _Entry] = {}
        self._resident: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        # Bytes on disk per stored NPC: this worker is the only writer of the NPC directory, so one scan at
        # start-up and the pool's own writes and deletes keep it exact without listing the directory again.
        self._stored_bytes: dict[str, int] = self.data_dir.npc_memory_sizes()
        self._snapshot_writer: ThreadPoolExecutor | None = None
        self._writing: _SnapshotWrite | None = None

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

    @property
    def stored_npcs(self) -> int:
        """NPCs this worker stores: on disk, plus live ones not written yet."""
        return len(self._stored_bytes.keys() | self._live.keys() | self._resident.keys())

    @property
    def stored_bytes(self) -> int:
        """Bytes of stored NPC memories: the snapshot files, plus the size of live ones not written yet."""
        unsaved = sum(e.memory.nbytes() for nid, e in self._live.items() if nid not in self._stored_bytes)
        return sum(self._stored_bytes.values()) + unsaved

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

        self._settle_snapshot(npc_id)
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
            if npc_id not in self._stored_bytes and npc_id not in self._resident:
                self._check_room_for_new_npc(npc_id, *self._video_size(width, height))
            memory = self._new(npc_id, character_id, width, height, fps, seed)
            self._resident.pop(npc_id, None)
            resumed = False
        self._live[npc_id] = _Entry(memory, session_id=session_id, dirty=not resumed, updated_ms=now_ms(),
                                    snapshot_due_at=self._clock() + self.snapshot_interval_s)
        return memory, resumed

    def mark_updated(self, npc_id: str) -> None:
        """The live memory generated a block (it now differs from its snapshot)."""
        entry = self._live[npc_id]
        entry.dirty = True
        entry.version += 1
        entry.updated_ms = now_ms()

    def snapshot_due(self) -> bool:
        """Between blocks: start writing the live memory whose periodic snapshot is most overdue, unless a
        write is still in flight. Never waits for a file; True when a write was started."""
        if self.snapshot_interval_s <= 0:
            return False
        if self._writing is not None:
            if not self._writing.future.done():
                return False
            self._finish_snapshot()
        now = self._clock()
        due = [(e.snapshot_due_at, nid) for nid, e in self._live.items() if e.dirty and e.snapshot_due_at <= now]
        if not due:
            return False
        npc_id = min(due)[1]
        entry = self._live[npc_id]
        entry.snapshot_due_at = now + self.snapshot_interval_s
        # The copy is what the loop pays for: the next block changes the memory in place, the file is written
        # from the copy while it runs.
        try:
            frozen = self.pipeline.host_copy(entry.memory)
        except ExecutorLost:
            raise
        except Exception:
            log.exception("could not copy the memory of NPC %r for its periodic snapshot (retried later)", npc_id)
            return False
        if self._snapshot_writer is None:
            self._snapshot_writer = ThreadPoolExecutor(1, thread_name_prefix="npc-snapshot")
        future = self._snapshot_writer.submit(frozen.save, self.data_dir.npc_memory_path(npc_id))
        self._writing = _SnapshotWrite(npc_id, entry, entry.version, int(frozen.blocks_generated), future)
        return True

    @property
    def snapshot_in_flight(self) -> str:
        """The NPC whose periodic snapshot is being written ("" when none)."""
        return self._writing.npc_id if self._writing is not None and not self._writing.future.done() else ""

    def release(self, npc_id: str) -> worker_pb2.NpcState:
        """The session ended: snapshot the memory to disk and keep it resident (within the budget)."""
        self._settle_snapshot(npc_id)
        entry = self._live.pop(npc_id)
        entry.session_id = ""
        self.pipeline.park(entry.memory)  # to the host first: the snapshot is written from there without a copy
        self._save(npc_id, entry)
        self._park(npc_id, entry)
        return self._state(npc_id, entry.memory, live=False, updated_ms=entry.updated_ms)

    def abandon(self, npc_id: str) -> None:
        """The session failed: forget the live memory without saving it; the NPC goes back to its last
        snapshot (a half-generated block may have left the memory inconsistent)."""
        entry = self._live.pop(npc_id, None)
        if entry is None:
            return
        if entry.dirty:
            self.pipeline.discard(entry.memory)
        else:
            entry.session_id = ""
            self._park(npc_id, entry)

    def drop_live(self) -> list[str]:
        """Forget every live memory without saving it (the ranks that held them are gone); their NPCs go back
        to their last snapshots. Returns their ids."""
        dropped = list(self._live)
        self._live.clear()
        return dropped

    def save_all(self) -> int:
        """Write every memory that changed since its last snapshot (shutdown). Returns how many were written."""
        if self._writing is not None:
            self._settle_snapshot(self._writing.npc_id)
        written = 0
        for npc_id, entry in [*self._live.items(), *self._resident.items()]:
            if entry.dirty and self._save(npc_id, entry):
                written += 1
        return written

    # -- management -------------------------------------------------------------------------------------------

    def query(self, npc_id: str = "", character_id: str = "") -> list[worker_pb2.NpcState]:
        """Live, resident and on-disk NPCs (one NPC when ``npc_id`` is set), sorted by id. Unknown: [].

        One NPC whose snapshot is unreadable is DATA_LOSS, as opening a session on it is. A listing leaves such
        NPCs out with a warning, so that one corrupt file does not hide the others; DeleteNpc still removes it.
        """
        if npc_id:
            if not valid_id(npc_id):
                raise PoolError("INVALID_ARGUMENT", f"npc_id {npc_id!r} is not valid")
            state = self._state_of(npc_id)
            return [state] if state is not None and (not character_id or state.character_id == character_id) else []
        states = []
        for nid in sorted(set(self._live) | set(self._resident) | set(self.data_dir.list_npc_ids())):
            try:
                state = self._state_of(nid)
            except PoolError as err:
                log.warning("NPC %r left out of the listing: %s", nid, err.message)
                continue
            if state is not None and (not character_id or state.character_id == character_id):
                states.append(state)
        return states

    def reset(self, npc_id: str) -> worker_pb2.NpcState:
        """A fresh memory for the NPC (same character, size and fps), written to disk at once."""
        existing = self._require_parked(npc_id)
        memory = self._new(npc_id, existing["character_id"], existing["width"], existing["height"],
                           existing["fps"], existing["seed"])
        self.pipeline.park(memory)  # a new memory is live (on several ranks, split): whole before it is saved
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
        self._settle_snapshot(npc_id)
        path = self.data_dir.npc_memory_path(npc_id)
        # No header read: deleting must work for an unreadable snapshot too.
        if self._resident.pop(npc_id, None) is None and not path.is_file():
            raise PoolError("NOT_FOUND", f"no NPC {npc_id!r}")
        path.unlink(missing_ok=True)
        self._stored_bytes.pop(npc_id, None)

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
                            f"character_id: {character_id!r} differs from NPC {npc_id!r}'s character "
                            f"{existing['character_id']!r} (leave it empty, or reset the NPC)")
        if (width or height) and (width, height) != (existing["width"], existing["height"]):
            raise PoolError("INVALID_ARGUMENT",
                            f"{'video.width' if width != existing['width'] else 'video.height'}: {width}x{height}, "
                            f"but NPC {npc_id!r}'s memory was made for {existing['width']}x{existing['height']} "
                            "(use that size, or reset the NPC)")
        if fps and fps != existing["fps"]:
            raise PoolError("INVALID_ARGUMENT",
                            f"video.fps: {fps}, but NPC {npc_id!r}'s memory was made at {existing['fps']} fps")
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
        entry = self._resident.get(npc_id)
        if entry is not None:
            with self._device_room(npc_id):   # refused, it stays parked as it was
                memory = self.pipeline.activate(entry.memory)
            del self._resident[npc_id]
            return memory
        path = self.data_dir.npc_memory_path(npc_id)
        try:
            stored = self.codec.load(path, "cpu")
        except FileNotFoundError:
            raise PoolError("NOT_FOUND", f"the memory of NPC {npc_id!r} disappeared") from None
        except Exception as err:
            raise PoolError("DATA_LOSS", f"the memory snapshot of NPC {npc_id!r} cannot be loaded: {err}") from None
        with self._device_room(npc_id):
            return self.pipeline.activate(stored)

    def _video_size(self, width: int, height: int) -> tuple[int, int]:
        """The requested size, or the model's default for 0x0."""
        config = self.pipeline.config
        return (width, height) if (width or height) else (config.width, config.height)

    def _check_room_for_new_npc(self, npc_id: str, width: int, height: int) -> None:
        """RESOURCE_EXHAUSTED when one more NPC would exceed a storage cap (the message says which and how to
        make room)."""
        room = ("delete NPCs that are no longer needed (DeleteNpc; `avatar-backend npc rm ID`) or raise the "
                "limit with `avatar-backend serve {flag} N`")
        count = self.stored_npcs
        if self.max_stored_npcs and count >= self.max_stored_npcs:
            raise PoolError("RESOURCE_EXHAUSTED",
                            f"cannot create NPC {npc_id!r}: the server already stores {count} NPCs, its limit "
                            f"max_stored_npcs ({self.max_stored_npcs}); "
                            + room.format(flag="--max-stored-npcs"))
        if self.max_stored_bytes:
            needed = int(self.pipeline.memory_bytes(width, height))
            used = self.stored_bytes
            if used + needed > self.max_stored_bytes:
                raise PoolError("RESOURCE_EXHAUSTED",
                                f"cannot create NPC {npc_id!r}: its {width}x{height} memory ({needed} bytes) would "
                                f"take the stored NPC memories from {used} to {used + needed} bytes, over the limit "
                                f"max_stored_npc_bytes ({self.max_stored_bytes}); "
                                + room.format(flag="--max-stored-npc-bytes"))

    def _new(self, npc_id: str, character_id: str, width: int, height: int, fps: int, seed: int) -> Any:
        config = self.pipeline.config
        width, height = self._video_size(width, height)
        if not config.supports_size(width, height):
            raise PoolError("INVALID_ARGUMENT",
                            f"video size {width}x{height} is not supported (one of: {config.sizes_text()})")
        fps = fps or config.fps
        try:
            with self._device_room(npc_id):
                return self.pipeline.new_memory(npc_id, character_id, width, height, fps, seed or derive_seed(npc_id))
        except ValueError as err:
            raise PoolError("INVALID_ARGUMENT", str(err)) from None

    @contextlib.contextmanager
    def _device_room(self, npc_id: str):
        """A memory that does not fit on the device refuses its NPC (the live ones go on), not the worker."""
        try:
            yield
        except Exception as err:
            torch = sys.modules.get("torch")  # no torch loaded (a stand-in generator): no device to run out of
            if torch is None or not isinstance(err, torch.OutOfMemoryError):
                raise
            raise PoolError("RESOURCE_EXHAUSTED",
                            f"no device memory left for NPC {npc_id!r} beside the {len(self._live)} live on this "
                            "worker; retry when a session ends, or serve fewer NPCs at once (serve "
                            "--max-sessions; `avatar-backend memory-plan` says how many fit)") from None

    def _save(self, npc_id: str, entry: _Entry) -> bool:
        self._settle_snapshot(npc_id)
        path = self.data_dir.npc_memory_path(npc_id)
        try:
            entry.memory.save(path)
        except Exception:
            log.exception("could not save the memory of NPC %r (kept in memory, retried later)", npc_id)
            return False
        entry.dirty = False
        self._note_stored(npc_id, path)
        return True

    def _note_stored(self, npc_id: str, path: Path) -> None:
        try:
            self._stored_bytes[npc_id] = path.stat().st_size
        except FileNotFoundError:
            self._stored_bytes.pop(npc_id, None)

    def _settle_snapshot(self, npc_id: str) -> None:
        """Wait for the background snapshot of ``npc_id`` if one is in flight (at most one file write), so
        the caller's own read, write or delete of that NPC's file comes after it."""
        if self._writing is not None and self._writing.npc_id == npc_id:
            self._finish_snapshot()

    def _finish_snapshot(self) -> None:
        writing, self._writing = self._writing, None
        assert writing is not None
        try:
            writing.future.result()
        except Exception:
            log.exception("periodic snapshot of NPC %r failed (retried at the next interval)", writing.npc_id)
            return
        if writing.entry.version == writing.version:
            writing.entry.dirty = False  # no block ran since the copy: the file holds the memory as it is
        self._note_stored(writing.npc_id, self.data_dir.npc_memory_path(writing.npc_id))
        log.debug("NPC %r snapshotted after %d block(s)", writing.npc_id, writing.blocks)

    def _park(self, npc_id: str, entry: _Entry) -> None:
        # Parked memories wait in host memory so the accelerator holds only live NPCs.
        self.pipeline.park(entry.memory)
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
        h = self._describe(npc_id)   # DATA_LOSS when the snapshot cannot be read
        if h is None:
            return None
        try:
            return worker_pb2.NpcState(
                npc_id=npc_id, character_id=h["character_id"], memory_bytes=int(h.get("memory_bytes", 0)),
                blocks_generated=int(h.get("blocks_generated", 0)),
                frames_generated=int(h.get("frames_generated", 0)), live=False,
                resume_token=str(h.get("resume_token", "")), width=int(h["width"]), height=int(h["height"]),
                updated_unix_ms=int(h.get("updated_unix_ms", 0)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise PoolError("DATA_LOSS", f"the memory snapshot of NPC {npc_id!r} is unreadable: its header is "
                                         f"incomplete ({type(err).__name__}: {err})") from None

    def _state(self, npc_id: str, memory: Any, *, live: bool, updated_ms: int) -> worker_pb2.NpcState:
        # A live memory may be split over ranks: its whole size is the model's figure for its frame size.
        size = self.pipeline.memory_bytes(memory.width, memory.height) if live else memory.nbytes()
        return worker_pb2.NpcState(
            npc_id=npc_id, character_id=memory.character_id, memory_bytes=int(size),
            blocks_generated=int(memory.blocks_generated), frames_generated=int(memory.frames_generated),
            live=live, resume_token=memory.resume_token(), width=int(memory.width), height=int(memory.height),
            updated_unix_ms=int(updated_ms),
        )
