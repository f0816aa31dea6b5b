"""Streaming resampling to the model's 16 kHz."""

from __future__ import annotations

import numpy as np
import pytest

from avatar_backend.media.resample import MODEL_SAMPLE_RATE, Resampler, resample


def chunked(signal: np.ndarray, rng: np.random.Generator, largest: int) -> list[np.ndarray]:
    """``signal`` cut at random points, including some one-sample and empty chunks."""
    cuts = np.sort(rng.integers(0, len(signal), size=len(signal) // (largest // 2)))
    cuts = np.concatenate([cuts, cuts[::7]])  # repeated cut points give empty chunks
    return np.split(signal, np.sort(cuts))


@pytest.mark.parametrize("input_rate", [8000, 22050, 24000, 44100, 48000])
def test_chunked_input_gives_the_same_output_as_one_call(input_rate: int) -> None:
    rng = np.random.default_rng(input_rate)
    signal = (0.1 * rng.standard_normal(input_rate * 2)).astype(np.float32)
    whole = resample(signal, input_rate)

    resampler = Resampler(input_rate)
    pieces = [resampler.process(chunk) for chunk in chunked(signal, rng, largest=2000)]
    pieces.append(resampler.flush())
    streamed = np.concatenate(pieces)

    assert abs(len(whole) - 2 * MODEL_SAMPLE_RATE) <= 2
    assert len(streamed) == len(whole)
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


def test_output_keeps_pace_while_streaming() -> None:
    """Only the filter's latency is held back between calls, not whole chunks."""
    resampler = Resampler(48000)
    produced = 0
    for i in range(1, 101):
        produced += len(resampler.process(np.zeros(960, np.float32)))  # 20 ms per call
        assert abs(produced - i * 320) <= 64
    produced += len(resampler.flush())
    assert produced == 100 * 320


def test_a_tone_keeps_its_frequency() -> None:
    t = np.arange(48000) / 48000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    out = resample(tone, 48000)
    spectrum = np.abs(np.fft.rfft(out[1000:-1000] * np.hanning(len(out) - 2000)))
    peak_hz = np.argmax(spectrum) * MODEL_SAMPLE_RATE / (len(out) - 2000)
    assert abs(peak_hz - 1000) < 2
    assert 0.45 < np.max(np.abs(out[1000:-1000])) < 0.55


def test_content_above_the_new_nyquist_is_removed() -> None:
    t = np.arange(48000) / 48000
    out = resample((0.5 * np.sin(2 * np.pi * 12000 * t)).astype(np.float32), 48000)
    assert np.sqrt(np.mean(out[1000:-1000] ** 2)) < 0.01  # would alias to 4 kHz


def test_16k_input_passes_through_as_a_copy() -> None:
    resampler = Resampler(16000)
    assert resampler.is_identity
    chunk = np.linspace(-1, 1, 320, dtype=np.float32)
    out = resampler.process(chunk)
    np.testing.assert_array_equal(out, chunk)
    chunk[:] = 0
    assert out.any(), "the output must not alias the caller's buffer"
    assert len(resampler.flush()) == 0


def test_int16_input_is_scaled_to_float() -> None:
    out = Resampler(16000).process(np.array([0, 16384, -32768], dtype=np.int16))
    np.testing.assert_array_equal(out, np.array([0.0, 0.5, -1.0], dtype=np.float32))
    assert resample(np.full(4800, 16384, np.int16), 48000).dtype == np.float32


def test_a_resampler_can_be_reused_after_flush() -> None:
    signal = (0.1 * np.random.default_rng(0).standard_normal(4800)).astype(np.float32)
    resampler = Resampler(48000)
    first = np.concatenate([resampler.process(signal), resampler.flush()])
    second = np.concatenate([resampler.process(signal), resampler.flush()])
    np.testing.assert_array_equal(first, second)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError):
        Resampler(0)
    with pytest.raises(ValueError, match="mono"):
        Resampler(48000).process(np.zeros((2, 480), np.float32))
