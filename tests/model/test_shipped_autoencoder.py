"""The shipped autoencoder on a character no training clip has: a stream's later frames come back as sharp and
as true to colour as its first ones (decoded as serving streams them)."""

import pytest
import torch

from avatar_backend.generator.pipeline import LiveActPipeline, shipped_weights
from model.data.render import render_clip
from model.evaluate.__main__ import autoencoded
from model.evaluate.metrics import colour_similarity, psnr

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shipped_weights("tiny") is None, reason="no shipped tiny weights")]


@torch.inference_mode()
def test_a_long_stream_decodes_as_well_at_its_end_as_at_its_start():
    pipeline = LiveActPipeline.from_config("tiny", weights=shipped_weights("tiny"))
    truth = render_clip(9001, None, seconds=4.05).frames                  # 81 frames: 21 latents
    decoded = autoencoded(pipeline, truth)        # encoded, then decoded as serving streams it
    assert decoded.shape == truth.shape

    first, late = slice(0, 9), slice(41, 81)   # late: past every causal conv's reach from the stream's start
    first_db, late_db = psnr(decoded[first], truth[first]), psnr(decoded[late], truth[late])
    assert late_db >= 23.0 and late_db >= first_db - 2.0, (first_db, late_db)
    # Colours hold: the 8-level colour histogram of the late frames keeps most of the truth's.
    assert colour_similarity(decoded[late], truth[late]) >= 0.5
