"""Block plans of the streaming loop and the audio windowing (LIVEACT_SPEC §3, §6.3, §6.4)."""

from __future__ import annotations

import torch

from avatar_backend.generator.conditioning import block_audio_rows, block_audio_window
from avatar_backend.generator.config import TINY, DiTConfig, SamplerConfig
from avatar_backend.generator.dit import group_audio_window
from avatar_backend.generator.schedule import StreamSchedule, audio_window


def test_block_plans_match_the_reference_loop():
    fs = 1024  # 512x512
    schedule = StreamSchedule(SamplerConfig(), DiTConfig(), frame_tokens=fs)
    block0, block1, block2, block5 = (schedule.block(b) for b in (0, 1, 2, 5))

    assert (block0.latent_frames, block0.window_frames, block0.start_idx, block0.end_idx) == (6, slice(0, 6), 0, 6 * fs)
    assert (block1.latent_frames, block1.window_frames, block1.start_idx, block1.end_idx) == (
        8, slice(6, 14), 6 * fs, 14 * fs
    )
    assert [p.update_cache for p in (block0, block1, block2, block5)] == [False, False, True, True]
    assert [p.audio_start for p in (block0, block1, block2, block5)] == [0, 0, 32, 128]
    assert {p.audio_frames for p in (block0, block1, block2, block5)} == {53}
    assert (block0.video_start, block0.video_end) == (0, 21)
    for b in range(1, 8):
        plan = schedule.block(b)
        assert (plan.video_start, plan.video_end) == (21 + 32 * (b - 1), 53 + 32 * (b - 1))
        # A later block's frames are the last 32 of its audio window.
        assert plan.video_end == plan.audio_start + plan.audio_frames
        assert plan.audio_required == plan.video_end + 2  # 2 frames of look-ahead
    assert block0.audio_required == 23


def test_schedule_from_model_config_and_block_count():
    schedule = StreamSchedule.from_model_config(TINY, 128, 128)
    assert schedule.frame_tokens == 64 and schedule.block(0).frame_tokens == 64


def test_audio_window_clamps_to_the_available_frames():
    features = torch.arange(10.0)[:, None, None].expand(10, 2, 3)  # value = frame index
    window = audio_window(features, start=0, length=4, radius=2)
    assert window.shape == (1, 4, 5, 2, 3)
    assert window[0, :, :, 0, 0].tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 4], [1, 2, 3, 4, 5]]
    window = audio_window(features, start=7, length=3, radius=2)
    assert window[0, :, :, 1, 2].tolist() == [[5, 6, 7, 8, 9], [6, 7, 8, 9, 9], [7, 8, 9, 9, 9]]


def test_latent_groups_are_contiguous_eight_frame_runs():
    features = torch.arange(200.0)[:, None, None].expand(200, 1, 1)
    schedule = StreamSchedule(SamplerConfig(), DiTConfig(), frame_tokens=4)
    plan = schedule.block(3)
    first, later = group_audio_window(schedule.audio_window(features, plan), vae_scale=4)
    assert first[0, 0, :, 0, 0].tolist() == [plan.audio_start + o for o in (-2, -1, 0, 1, 2)]
    assert later.shape == (1, 13, 8, 1, 1)
    for j in range(1, 14):  # window latent j covers window frames 4j-3 .. 4j and sees audio 4j-5 .. 4j+2
        a = plan.audio_start + 4 * j - 3
        assert later[0, j - 1, :, 0, 0].tolist() == list(range(a - 2, a + 6))
    # The last group of a block reaches exactly its audio_required frame.
    assert later[0, -1, -1, 0, 0] == plan.audio_required - 1


def test_the_rows_a_follower_is_sent_make_the_blocks_window():
    """A follower rank rebuilds each block's audio window from the rows rank 0 sends: equal for every block of a
    stream, where the window is clamped at the stream's start and at the end of the look-ahead too."""
    schedule = StreamSchedule.from_model_config(TINY, 128, 128)
    radius = schedule.audio_radius
    for block in range(4):
        plan = schedule.block(block)
        for first_frame, extra in ((-30, 0), (plan.audio_start - 10, 0), (plan.audio_start - 10, -2)):
            # Features from frame ``first_frame`` to the window's end, or stopping short of it (clamped there).
            rows_total = plan.audio_start + plan.audio_frames + radius - first_frame + extra
            features = torch.randn(rows_total, 3, 4)
            rows, start = block_audio_rows(features, first_frame, plan, radius)
            assert rows.shape[0] <= plan.audio_frames + 2 * radius
            assert torch.equal(audio_window(rows, start, plan.audio_frames, radius),
                               block_audio_window(features, first_frame, plan, radius))
