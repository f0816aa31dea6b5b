"""The shipped autoencoder on a character no training clip has: a stream's later frames come back as sharp and
as true to colour as its first ones (decoded block by block, as serving streams them)."""

import numpy as np
import pytest
import torch

from avatar_backend.generator.pipeline import LiveActPipeline, shipped_weights
from avatar_backend.generator.vae import frames_to_uint8
from model.data.render import render_clip
from model.evaluate.metrics import colour_similarity, psnr
from model.train.clips import video_to_tensor

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shipped_weights("tiny") is None, reason="no shipped tiny weights")]


@torch.inference_mode()
def test_a_long_stream_decodes_as_well_at_its_end_as_at_its_start():
    vae = LiveActPipeline.from_config("tiny", weights=shipped_weights("tiny")).vae
    truth = render_clip(9001, None, seconds=4.05).frames                  # 81 frames: 21 latents
    latents = vae.encode(video_to_tensor(truth))
    state = vae.init_decoder_state(truth.shape[2], truth.shape[1])
    blocks = [latents[:, :, i:i + n] for i, n in ((0, 6), (6, 8), (14, 7))]  # the worker's block sizes
    decoded = frames_to_uint8(torch.cat([vae.decode_stream(b, state, latents_per_pass=2) for b in blocks], 2))[0].numpy()
    assert decoded.shape == truth.shape

    first, late = slice(0, 9), slice(41, 81)   # late: past every causal conv's reach from the stream's start
    first_db, late_db = psnr(decoded[first], truth[first]), psnr(decoded[late], truth[late])
    assert late_db >= 23.0 and late_db >= first_db - 2.0, (first_db, late_db)
    # Colours hold: the 8-level colour histogram of the late frames keeps most of the truth's.
    assert colour_similarity(decoded[late], truth[late]) >= 0.5
