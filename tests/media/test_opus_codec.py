"""Opus encode/decode round trips, packet inspection, PLC/FEC and the missing-library error."""

from __future__ import annotations

import ctypes.util
import sys

import numpy as np
import pytest

from avatar_backend.media import opus
from avatar_backend.media.opus import (
    FRAME_DURATIONS_MS,
    OpusDecodeError,
    OpusDecoder,
    OpusEncoder,
    OpusUnavailableError,
    check_opus_available,
    packet_has_fec,
    packet_samples,
)
from avatar_backend.media.resample import resample

INVALID_PACKETS = [
    b"\x03\x00",  # code 3 with a frame count of zero
    b"\x03",  # code 3 without its frame-count byte
    b"\xff\xff\xff",
    b"garbage bytes!!",
]


def aligned_snr_db(reference: np.ndarray, decoded: np.ndarray, max_lag: int) -> tuple[float, float, int]:
    """SNR and correlation of ``decoded`` against ``reference`` at the codec delay that fits best."""
    usable = len(reference) - max_lag
    scores = [np.dot(reference[:usable], decoded[lag : lag + usable]) for lag in range(max_lag)]
    lag = int(np.argmax(scores))
    ref, out = reference[:usable], decoded[lag : lag + usable]
    snr = 10 * np.log10(np.sum(ref**2) / np.sum((ref - out) ** 2))
    return float(snr), float(np.corrcoef(ref, out)[0, 1]), lag


def test_libopus_is_available() -> None:
    assert check_opus_available().startswith("libopus")


@pytest.mark.parametrize("sample_rate", [16000, 48000])
def test_speech_round_trip(speech, sample_rate: int) -> None:
    pcm = resample(speech.samples, speech.sample_rate, sample_rate)
    encoder = OpusEncoder(sample_rate, frame_ms=20, bitrate=32000)
    packets = encoder.encode_all(pcm)
    decoder = OpusDecoder(sample_rate)
    decoded = [decoder.decode(packet) for packet in packets]

    frame = sample_rate // 50
    assert encoder.frame_samples == frame
    assert all(len(chunk) == frame for chunk in decoded)
    out = np.concatenate(decoded)
    assert len(out) == len(packets) * frame == len(pcm) + (-len(pcm) % frame)
    assert out.dtype == np.float32

    snr, correlation, lag = aligned_snr_db(pcm, out, max_lag=2 * encoder.lookahead_samples)
    # The codec's delay is about its look-ahead; speech at 32 kb/s keeps its waveform closely.
    assert abs(lag - encoder.lookahead_samples) <= sample_rate // 1000
    assert correlation > 0.95, f"correlation {correlation:.3f}"
    assert snr > 10.0, f"SNR {snr:.1f} dB"


def test_int16_and_float32_decoding_agree(speech) -> None:
    pcm = resample(speech.samples, speech.sample_rate, 48000)[:48000]
    packets = OpusEncoder(48000).encode_all(pcm)
    as_float = np.concatenate([d for d in map(OpusDecoder(48000).decode, packets)])
    int_decoder = OpusDecoder(48000)
    as_int16 = np.concatenate([int_decoder.decode(p, dtype=np.int16) for p in packets])
    assert as_int16.dtype == np.int16
    np.testing.assert_allclose(as_int16 / 32768.0, as_float, atol=2e-3)


@pytest.mark.parametrize("frame_ms", FRAME_DURATIONS_MS)
@pytest.mark.parametrize("sample_rate", [16000, 48000])
def test_every_packet_duration(frame_ms: float, sample_rate: int) -> None:
    t = np.arange(sample_rate // 5) / sample_rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    encoder = OpusEncoder(sample_rate, frame_ms=frame_ms)
    decoder = OpusDecoder(sample_rate)
    for packet in encoder.encode_all(tone):
        assert packet_samples(packet, sample_rate) == encoder.frame_samples
        assert len(decoder.decode(packet)) == encoder.frame_samples


def test_encoder_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="sample rate"):
        OpusEncoder(44100)
    with pytest.raises(ValueError, match="frame duration"):
        OpusEncoder(48000, frame_ms=30)
    with pytest.raises(ValueError, match="application"):
        OpusEncoder(48000, application="music")
    with pytest.raises(ValueError, match="packet loss"):
        OpusEncoder(48000, packet_loss_percent=101)
    with pytest.raises(ValueError, match="960"):
        OpusEncoder(48000).encode(np.zeros(480, dtype=np.float32))


@pytest.mark.parametrize("packet", INVALID_PACKETS)
def test_invalid_packets_raise_a_decode_error(packet: bytes) -> None:
    decoder = OpusDecoder(48000)
    with pytest.raises(OpusDecodeError):
        decoder.decode(packet)
    assert packet_has_fec(packet) is False


def test_empty_packet_is_not_silently_concealed() -> None:
    with pytest.raises(OpusDecodeError, match="empty"):
        OpusDecoder(48000).decode(b"")
    with pytest.raises(OpusDecodeError):
        packet_samples(b"", 48000)


def test_plc_produces_the_requested_length() -> None:
    decoder = OpusDecoder(16000)
    decoder.decode(OpusEncoder(16000).encode(np.zeros(320, dtype=np.float32)))
    assert len(decoder.decode_plc(320)) == 320
    assert len(decoder.decode_plc(40)) == 40  # 2.5 ms
    with pytest.raises(ValueError, match="2.5 ms"):
        decoder.decode_plc(100)
    with pytest.raises(ValueError):
        decoder.decode_plc(0)


def test_fec_recovers_a_lost_packet_better_than_plc(speech) -> None:
    rate, frame = 48000, 960
    pcm = resample(speech.samples, speech.sample_rate, rate)
    encoder = OpusEncoder(rate, bitrate=32000, inband_fec=True, packet_loss_percent=20)
    packets = encoder.encode_all(pcm)
    carries_fec = [packet_has_fec(p) for p in packets]
    assert sum(carries_fec) > len(packets) // 3, "speech at 20% expected loss should carry in-band FEC"
    assert not any(packet_has_fec(p) for p in OpusEncoder(rate, bitrate=32000).encode_all(pcm))

    def decode_losing(lost: set[int], use_fec: bool) -> np.ndarray:
        decoder = OpusDecoder(rate)
        out = []
        for i, packet in enumerate(packets):
            if i not in lost:
                out.append(decoder.decode(packet))
            elif use_fec:
                assert decoder.can_decode_fec(packets[i + 1], frame)
                out.append(decoder.decode_fec(packets[i + 1], frame))
            else:
                out.append(decoder.decode_plc(frame))
        return np.concatenate(out)

    clean = decode_losing(set(), use_fec=False)
    # Lose every fifth packet whose successor carries FEC.
    lost = {i for i in range(10, len(packets) - 1, 5) if carries_fec[i + 1]}
    assert len(lost) >= 10
    with_fec = decode_losing(lost, use_fec=True)
    with_plc = decode_losing(lost, use_fec=False)
    assert len(with_fec) == len(with_plc) == len(clean)

    def error_in_lost_slots(decoded: np.ndarray) -> float:
        slots = [slice(i * frame, (i + 1) * frame) for i in lost]
        return sum(float(np.sum((decoded[s] - clean[s]) ** 2)) for s in slots)

    assert error_in_lost_slots(with_fec) < 0.5 * error_in_lost_slots(with_plc)


def test_fec_is_not_claimed_for_a_gap_shorter_than_the_fec_frame(speech) -> None:
    pcm = resample(speech.samples, speech.sample_rate, 48000)
    packets = OpusEncoder(48000, inband_fec=True, packet_loss_percent=20).encode_all(pcm)
    with_fec = next(p for p in packets[20:] if packet_has_fec(p))
    decoder = OpusDecoder(48000)
    decoder.decode(packets[0])
    assert decoder.can_decode_fec(with_fec, 960)
    assert decoder.can_decode_fec(with_fec, 1920)  # the start of the gap is then concealed by PLC
    assert not decoder.can_decode_fec(with_fec, 480)


def test_missing_library_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "opuslib" or m.startswith("opuslib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    opus._load_libopus.cache_clear()
    try:
        with pytest.raises(OpusUnavailableError) as error:
            check_opus_available()
        with pytest.raises(OpusUnavailableError):
            OpusDecoder(48000)
    finally:
        opus._load_libopus.cache_clear()
    message = str(error.value)
    assert "apt-get install libopus0" in message
    assert "brew install opus" in message
    assert "./buildall.sh" in message


def test_missing_binding_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opuslib", None)
    opus._load_libopus.cache_clear()
    try:
        with pytest.raises(OpusUnavailableError, match="pip install opuslib"):
            OpusEncoder(48000)
    finally:
        opus._load_libopus.cache_clear()
