"""An NPC memory is only continued under the ConvKV layout it was made with."""

from __future__ import annotations

import numpy as np
import pytest
from stand_in_generator import StandInGenerator

from avatar_backend.worker.memory_pool import MemoryPool, PoolError


def test_a_memory_made_under_another_layout_is_refused_until_reset(pipeline, data_dir):
    pool = MemoryPool(pipeline, data_dir, StandInGenerator.codec)
    memory, _ = pool.acquire("guard", "s1", character_id="villager")
    consume, lookahead = pipeline.block_audio_samples(memory)
    pipeline.generate_block(memory, None, np.zeros(consume + lookahead, np.float32), None)
    pool.release("guard")

    pipeline.memory_layout = "two-device/k_conv"        # the server was restarted with another grouping
    with pytest.raises(PoolError) as err:
        pool.acquire("guard", "s2")
    assert err.value.code == "FAILED_PRECONDITION" and "layout" in err.value.message
    fresh, resumed = pool.acquire("guard", "s3", reset=True)
    assert not resumed and fresh.blocks_generated == 0
