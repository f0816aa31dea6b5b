"""The A/V clock: exact frame times on the audio timeline, for hours."""

from __future__ import annotations

import numpy as np
import pytest

from avatar_backend.media.clock import FrameClock

TEN_HOURS_S = 10 * 3600


@pytest.mark.parametrize("fps", [20, 24])
@pytest.mark.parametrize("sample_rate", [16000, 48000])
def test_ten_hours_of_frames_without_drift(fps: int, sample_rate: int) -> None:
    clock = FrameClock(sample_rate, fps)
    frames = TEN_HOURS_S * fps + 1
    pts = np.fromiter((clock.pts(n) for n in range(frames)), dtype=np.int64, count=frames)
    pts_us = np.fromiter((clock.pts_us(n) for n in range(frames)), dtype=np.int64, count=frames)

    assert np.all(np.diff(pts) > 0) and np.all(np.diff(pts_us) > 0)
    # Each time is the exact instant n / fps rounded down: off by less than one unit, never accumulating.
    n = np.arange(frames, dtype=np.int64)
    assert np.all((n * sample_rate - pts * fps >= 0) & (n * sample_rate - pts * fps < fps))
    assert np.all((n * 1_000_000 - pts_us * fps >= 0) & (n * 1_000_000 - pts_us * fps < fps))
    assert pts[-1] == TEN_HOURS_S * sample_rate
    assert pts_us[-1] == TEN_HOURS_S * 1_000_000
    # Frame durations are the ideal one, give or take a sample.
    ideal = sample_rate / fps
    assert np.all(np.abs(np.diff(pts) - ideal) < 1)


@pytest.mark.parametrize(("sample_rate", "fps"), [(16000, 20), (16000, 24), (48000, 24), (44100, 30)])
def test_audio_slices_tile_the_timeline(sample_rate: int, fps: int) -> None:
    clock = FrameClock(sample_rate, fps)
    slices = [clock.audio_slice(n) for n in range(5000)]
    assert slices[0][0] == 0
    assert all(end == next_start for (_, end), (next_start, _) in zip(slices, slices[1:]))
    assert all(start == clock.pts(n) for n, (start, _) in enumerate(slices))


def test_pts_us_agrees_with_the_sample_clock() -> None:
    clock = FrameClock(48000, 24)
    for n in range(0, 10_000, 7):
        assert abs(clock.pts_us(n) - clock.pts(n) * 1_000_000 // 48000) < 1_000_000 / 48000 + 1


def test_invalid_clocks_are_rejected() -> None:
    with pytest.raises(ValueError):
        FrameClock(16000, 0)
    with pytest.raises(ValueError):
        FrameClock(0, 20)
