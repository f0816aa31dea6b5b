"""Character conditioning is prepared once per (character, revision, size) and reused."""

from __future__ import annotations

from avatar_backend.store import CharacterRecord
from avatar_backend.worker.characters import CharacterCache


class CountingPipeline:
    def __init__(self):
        self.prepared: list[tuple[str, int, int, int]] = []

    def prepare_character(self, record, png, width, height):
        self.prepared.append((record.character_id, record.revision, width, height))
        return object()


SMITH = CharacterRecord("smith", "a blacksmith")


def test_sizes_of_one_character_are_cached_side_by_side():
    pipeline = CountingPipeline()
    cache = CharacterCache(pipeline)
    small, large = cache.get(SMITH, b"png", 64, 64), cache.get(SMITH, b"png", 128, 128)
    assert cache.get(SMITH, b"png", 64, 64) is small and cache.get(SMITH, b"png", 128, 128) is large
    assert pipeline.prepared == [("smith", 1, 64, 64), ("smith", 1, 128, 128)]


def test_a_replaced_character_is_prepared_again_and_old_revisions_are_dropped():
    pipeline = CountingPipeline()
    cache = CharacterCache(pipeline)
    old = cache.get(SMITH, b"png", 64, 64)
    replaced = CharacterRecord("smith", "an old blacksmith", revision=2)
    assert cache.get(replaced, b"png2", 64, 64) is not old
    assert pipeline.prepared == [("smith", 1, 64, 64), ("smith", 2, 64, 64)]
    assert all(key[1] == 2 for key in cache._cache)
