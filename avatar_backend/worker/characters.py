"""Characters on the worker: their conditioning prepared once per (character, revision, size), LRU-bounded."""

from __future__ import annotations

import collections
from typing import Any

from avatar_backend.store import CharacterRecord

from .errors import RequestError

__all__ = ["LISTENING_PROMPT_NAME", "CharacterCache", "listening_prompt"]

# A character prompt of this name (action or emotion) is what the NPC shows while listening.
LISTENING_PROMPT_NAME = "listening"


def listening_prompt(record: CharacterRecord) -> str:
    """What a listening NPC is conditioned on: the character's "listening" prompt if it has one."""
    return (record.action_prompts.get(LISTENING_PROMPT_NAME) or record.emotion_prompts.get(LISTENING_PROMPT_NAME)
            or f"{record.base_prompt}, listening attentively")


class CharacterCache:
    """Character conditioning per (character_id, revision, width, height), prepared once, LRU-bounded."""

    def __init__(self, runner: Any, capacity: int = 64):
        self.runner = runner
        self.capacity = capacity
        self._cache: collections.OrderedDict[tuple[str, int, int, int], Any] = collections.OrderedDict()

    def get(self, record: CharacterRecord, png: bytes, width: int, height: int) -> Any:
        """The conditioning of ``record`` (its reference image ``png``) at a size; prepared on first use."""
        character_id = record.character_id
        key = (character_id, record.revision, width, height)
        cond = self._cache.get(key)
        if cond is None:
            try:
                cond = self.runner.prepare_character(record, png, width, height)
            except ValueError as err:  # the generator's GeneratorError: this character cannot be used
                raise RequestError("INVALID_ARGUMENT", str(err)) from None
            # Older revisions of this character are never used again; other sizes of this one still are.
            for stale in [k for k in self._cache if k[0] == character_id and k[1] != record.revision]:
                del self._cache[stale]
            self._cache[key] = cond
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return cond

    def drop(self, character_id: str) -> int:
        stale = [k for k in self._cache if k[0] == character_id]
        for k in stale:
            del self._cache[k]
        return len(stale)
