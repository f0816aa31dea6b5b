"""Character conditioning is prepared once per (character, revision, size) and reused."""

from __future__ import annotations

import pytest

from avatar_backend.store import CharacterRecord, DataDir
from avatar_backend.worker.main import CharacterCache, RequestError


class CountingPipeline:
    def __init__(self):
        self.prepared: list[tuple[str, int, int, int]] = []

    def prepare_character(self, record, png, width, height):
        self.prepared.append((record.character_id, record.revision, width, height))
        return object()


@pytest.fixture
def data(tmp_path):
    d = DataDir(tmp_path).ensure()
    d.write_character(CharacterRecord("smith", "a blacksmith"), b"png")
    return d


def test_sizes_of_one_character_are_cached_side_by_side(data):
    pipeline = CountingPipeline()
    cache = CharacterCache(pipeline, data)
    small, large = cache.get("smith", 64, 64), cache.get("smith", 128, 128)
    assert cache.get("smith", 64, 64) is small and cache.get("smith", 128, 128) is large
    assert pipeline.prepared == [("smith", 1, 64, 64), ("smith", 1, 128, 128)]


def test_a_replaced_character_is_prepared_again_and_old_revisions_are_dropped(data):
    pipeline = CountingPipeline()
    cache = CharacterCache(pipeline, data)
    old = cache.get("smith", 64, 64)
    data.write_character(CharacterRecord("smith", "an old blacksmith", revision=2), b"png2")
    assert cache.get("smith", 64, 64) is not old
    assert pipeline.prepared == [("smith", 1, 64, 64), ("smith", 2, 64, 64)]
    assert all(key[1] == 2 for key in cache._cache)


def test_unknown_character_is_an_invalid_argument(data):
    with pytest.raises(RequestError) as err:
        CharacterCache(CountingPipeline(), data).get("nobody", 64, 64)
    assert err.value.code == "INVALID_ARGUMENT"
