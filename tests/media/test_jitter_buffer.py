"""The jitter buffer: reordering, duplicates, late and lost packets, garbage, FEC, and hostile sequence jumps."""

from __future__ import annotations

import numpy as np
import pytest

from avatar_backend.media.bench import synthetic_voice
from avatar_backend.media.jitter import JitterBuffer, JitterStats
from avatar_backend.media.opus import OpusDecoder, OpusEncoder, packet_has_fec

PCM_PACKET = 160  # 10 ms at 16 kHz
OPUS_PACKET = 960  # 20 ms at 48 kHz


def ramp_packet(index: int) -> bytes:
    """PCM16 packet ``index`` of a ramp: sample values tell where each sample belongs."""
    return np.arange(index * PCM_PACKET, (index + 1) * PCM_PACKET, dtype="<i2").tobytes()


def expected_ramp(slots: list[int | None]) -> np.ndarray:
    """The float32 audio for these slots in order; None is a concealed (silent) slot."""
    parts = [
        np.zeros(PCM_PACKET, np.float32)
        if slot is None
        else np.arange(slot * PCM_PACKET, (slot + 1) * PCM_PACKET).astype(np.float32) / 32768.0
        for slot in slots
    ]
    return np.concatenate(parts)


def pcm_buffer(**options) -> JitterBuffer:
    options.setdefault("reorder_timeout_s", None)
    return JitterBuffer("pcm16", 16000, **options)


def assert_concealment_accounted(stats: JitterStats) -> None:
    assert stats.concealed_plc + stats.recovered_fec == stats.lost + stats.garbage


# ---------------------------------------------------------------------------------------------------------
# PCM16: exact checks on a ramp
# ---------------------------------------------------------------------------------------------------------


def test_reordered_duplicated_late_lost_and_garbage_packets() -> None:
    buffer = pcm_buffer(reorder_depth=3)
    out = []
    arrivals = [
        (0, ramp_packet(0)),
        (1, ramp_packet(1)),
        (3, ramp_packet(3)),  # ahead of 2: held back
        (2, ramp_packet(2)),  # reordered: releases 2 and 3
        (2, ramp_packet(2)),  # duplicate of a played packet
        (4, ramp_packet(4)),
        (6, ramp_packet(6)),  # 5 is missing
        (7, ramp_packet(7)),
        (7, ramp_packet(7)),  # duplicate of a buffered packet
        (8, ramp_packet(8)),  # three packets past 5: 5 is lost
        (5, ramp_packet(5)),  # late: its slot was concealed
        (9, ramp_packet(9)),
        (10, b"\x01\x02\x03"),  # odd length: not PCM16
        (11, ramp_packet(11)),
        (12, b""),  # empty: nothing to play
        (13, ramp_packet(13)),
    ]
    for sequence, payload in arrivals:
        buffer.push(sequence, payload)
        out.append(buffer.pull())
    buffer.flush()
    out.append(buffer.pull())

    expected = expected_ramp([0, 1, 2, 3, 4, None, 6, 7, 8, 9, None, 11, None, 13])
    np.testing.assert_array_equal(np.concatenate(out), expected)
    assert buffer.stats == JitterStats(
        received=16, duplicates=2, late=1, lost=1, concealed_plc=3, recovered_fec=0, garbage=2, discontinuities=0
    )
    assert_concealment_accounted(buffer.stats)


def test_audio_is_released_as_soon_as_it_is_contiguous() -> None:
    buffer = pcm_buffer(reorder_depth=3)
    buffer.push(0, ramp_packet(0))
    assert buffer.ready_samples == PCM_PACKET
    buffer.push(2, ramp_packet(2))
    buffer.push(3, ramp_packet(3))
    assert buffer.buffered_packets == 2
    np.testing.assert_array_equal(buffer.pull(), expected_ramp([0]))
    assert len(buffer.pull()) == 0
    buffer.push(1, ramp_packet(1))
    assert buffer.buffered_packets == 0
    np.testing.assert_array_equal(buffer.pull(), expected_ramp([1, 2, 3]))
    assert buffer.stats.lost == 0


def test_a_missing_packet_is_lost_once_reorder_depth_packets_follow_it() -> None:
    buffer = pcm_buffer(reorder_depth=3)
    buffer.push(0, ramp_packet(0))
    buffer.pull()
    for sequence in (2, 3):
        buffer.push(sequence, ramp_packet(sequence))
        assert buffer.ready_samples == 0
    buffer.push(4, ramp_packet(4))
    np.testing.assert_array_equal(buffer.pull(), expected_ramp([None, 2, 3, 4]))
    assert buffer.stats.lost == 1


def test_a_missing_packet_is_lost_after_the_reorder_timeout() -> None:
    now = [100.0]
    buffer = pcm_buffer(reorder_depth=10, reorder_timeout_s=0.25, clock=lambda: now[0])
    buffer.push(0, ramp_packet(0))
    buffer.push(2, ramp_packet(2))
    now[0] += 0.125
    np.testing.assert_array_equal(buffer.pull(), expected_ramp([0]))
    now[0] += 0.125
    np.testing.assert_array_equal(buffer.pull(), expected_ramp([None, 2]))
    assert buffer.stats.lost == 1


def test_sequence_numbers_wrap_around() -> None:
    first = 2**32 - 3
    buffer = pcm_buffer()
    order = [0, 2, 1, 3, 5, 4]  # offsets from `first`; 3 is sequence number 0 after the wrap
    for offset in order:
        buffer.push((first + offset) % 2**32, ramp_packet(offset))
    np.testing.assert_array_equal(buffer.pull(), expected_ramp([0, 1, 2, 3, 4, 5]))
    assert buffer.next_sequence_number == 3
    assert buffer.stats == JitterStats(received=6)


def test_flush_declares_missing_packets_lost_and_the_next_utterance_continues() -> None:
    buffer = pcm_buffer(reorder_depth=3)
    for sequence in (0, 2, 3):
        buffer.push(sequence, ramp_packet(sequence))
    buffer.flush()
    np.testing.assert_array_equal(buffer.pull(), expected_ramp([0, None, 2, 3]))
    for sequence in (4, 5):
        buffer.push(sequence, ramp_packet(sequence))
    np.testing.assert_array_equal(buffer.pull(), expected_ramp([4, 5]))
    assert buffer.stats.lost == 1


def test_concealed_pcm_packets_take_the_length_of_the_last_good_packet() -> None:
    buffer = pcm_buffer(reorder_depth=1)
    buffer.push(0, np.zeros(320, "<i2").tobytes())
    buffer.push(2, np.ones(320, "<i2").tobytes())
    out = buffer.pull()
    assert len(out) == 3 * 320
    assert not out[:640].any() and out[640:].all()


def test_a_huge_forward_gap_is_a_discontinuity_not_an_allocation() -> None:
    buffer = pcm_buffer(max_gap_packets=50)
    for sequence in (0, 1, 2):
        buffer.push(sequence, ramp_packet(sequence))
    buffer.push(4, ramp_packet(4))  # buffered behind the missing 3
    buffer.push(2_000_000_000, ramp_packet(7))
    buffer.push(2_000_000_001, ramp_packet(8))
    # What was buffered is played out (3 concealed), the gap is skipped without audio.
    np.testing.assert_array_equal(buffer.pull(), expected_ramp([0, 1, 2, None, 4, 7, 8]))
    assert buffer.stats.discontinuities == 1
    assert buffer.stats.lost == 1
    assert buffer.next_sequence_number == 2_000_000_002


@pytest.mark.parametrize("distance", [60, 450, 5_000, 1_500_000_000])
def test_a_packet_resent_long_after_is_dropped_as_late_whatever_the_distance(distance: int) -> None:
    buffer = pcm_buffer(max_gap_packets=50)
    # A stream that has moved on by ``distance`` packets (contiguously where that is cheap to send).
    sent = range(distance + 1) if distance < 1000 else (0, distance)
    for sequence in sent:
        buffer.push(sequence, ramp_packet(sequence % 100))
    assert buffer.pull().size > 0
    buffer.push(0, ramp_packet(0))  # re-sent
    buffer.push(distance + 1, ramp_packet(1))
    assert buffer.pull().size == PCM_PACKET  # only the new packet; the old one is not played again
    assert buffer.stats.late + buffer.stats.duplicates == 1


def test_a_restarted_count_is_declared_by_the_sender() -> None:
    buffer = pcm_buffer(max_gap_packets=50)
    for sequence in (1000, 1001):
        buffer.push(sequence, ramp_packet(sequence - 1000))
    buffer.push(0, ramp_packet(2), restart_sequence=True)  # the client restarted its count
    buffer.push(1, ramp_packet(3))
    np.testing.assert_array_equal(buffer.pull(), expected_ramp([0, 1, 2, 3]))
    assert buffer.stats.discontinuities == 1 and buffer.stats.late == 0
    # Without the flag the same jump back is late: the packet is not played.
    buffer.push(0, ramp_packet(9))
    assert buffer.pull().size == 0 and buffer.stats.late + buffer.stats.duplicates == 1


def test_a_gap_within_the_limit_is_concealed_slot_by_slot() -> None:
    buffer = pcm_buffer(max_gap_packets=50)
    buffer.push(0, ramp_packet(0))
    buffer.push(40, ramp_packet(40))
    # Slots 1-37 are lost (3 or more behind the newest); 38 and 39 may still arrive.
    np.testing.assert_array_equal(buffer.pull(), expected_ramp([0] + [None] * 37))
    assert buffer.buffered_packets == 1
    buffer.flush()
    np.testing.assert_array_equal(buffer.pull(), expected_ramp([None, None, 40]))
    assert buffer.stats.lost == 39 and buffer.stats.discontinuities == 0


def test_hostile_sequence_numbers_keep_memory_and_output_bounded() -> None:
    rng = np.random.default_rng(7)
    max_gap = 50
    buffer = pcm_buffer(max_gap_packets=max_gap)
    base = 123
    for i in range(5000):
        kind = i % 4
        if kind == 0:
            sequence = int(rng.integers(0, 2**32))  # anywhere
        elif kind == 1:
            sequence = base + int(rng.integers(-max_gap, max_gap + 1))  # near, to fill the buffer
        else:
            sequence = base + i
        if rng.random() < 0.8:
            payload = ramp_packet(0)
        else:
            payload = bytes(rng.integers(0, 256, int(rng.integers(0, 9)), np.uint8))
        buffer.push(sequence % 2**32, payload)
        assert buffer.buffered_packets <= max_gap
        # One push never yields more than a gap's worth of audio, plus what was buffered.
        assert len(buffer.pull()) <= (2 * max_gap + 1) * PCM_PACKET
    stats = buffer.stats
    assert stats.received == 5000
    assert stats.discontinuities > 0
    assert_concealment_accounted(stats)


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="codec"):
        JitterBuffer("mp3", 16000)
    with pytest.raises(ValueError, match="max_gap_packets"):
        JitterBuffer("pcm16", 16000, reorder_depth=8, max_gap_packets=4)


# ---------------------------------------------------------------------------------------------------------
# Opus: the buffer must drive the decoder exactly as an in-order decode with the same concealment would
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fec_packets() -> list[bytes]:
    encoder = OpusEncoder(48000, frame_ms=20, bitrate=32000, inband_fec=True, packet_loss_percent=20)
    return encoder.encode_all(synthetic_voice(3.0, 48000))


def reference_decode(packets: list[bytes], unusable: set[int]) -> tuple[np.ndarray, int, int]:
    """In-order decode where the ``unusable`` slots are concealed; returns audio, PLC count, FEC count."""
    decoder = OpusDecoder(48000)
    out, plc, fec = [], 0, 0
    for i, packet in enumerate(packets):
        next_usable = i + 1 < len(packets) and i + 1 not in unusable
        if i not in unusable:
            out.append(decoder.decode(packet))
        elif next_usable and decoder.can_decode_fec(packets[i + 1], OPUS_PACKET):
            out.append(decoder.decode_fec(packets[i + 1], OPUS_PACKET))
            fec += 1
        else:
            out.append(decoder.decode_plc(OPUS_PACKET))
            plc += 1
    return np.concatenate(out), plc, fec


def test_opus_reordering_and_duplicates_are_lossless(fec_packets: list[bytes]) -> None:
    packets = fec_packets[:60]
    order = list(range(60))
    # The first packet starts the stream, so it comes first; later ones are swapped with a neighbour or
    # moved two places later.
    for i in range(1, 55, 6):
        order[i], order[i + 1] = order[i + 1], order[i]
        order[i + 2 : i + 5] = [order[i + 3], order[i + 4], order[i + 2]]
    buffer = JitterBuffer("opus", 48000, reorder_timeout_s=None)
    out = []
    for step, index in enumerate(order):
        buffer.push(index, packets[index])
        if step % 7 == 0:
            buffer.push(index, packets[index])  # duplicate
        out.append(buffer.pull())
    buffer.flush()
    out.append(buffer.pull())

    expected, _, _ = reference_decode(packets, set())
    np.testing.assert_array_equal(np.concatenate(out), expected)
    assert buffer.stats.lost == buffer.stats.concealed_plc == buffer.stats.recovered_fec == 0
    assert buffer.stats.duplicates == 9 and buffer.stats.received == 69


def test_opus_losses_use_fec_when_the_next_packet_carries_it(fec_packets: list[bytes]) -> None:
    packets = fec_packets[:120]
    has_fec = [packet_has_fec(p) for p in packets]
    fec_slot = next(i for i in range(10, 110) if has_fec[i + 1])
    plc_slot = next(i for i in range(fec_slot + 5, 110) if not has_fec[i + 1])
    double = next(i for i in range(plc_slot + 5, 110) if has_fec[i + 2])  # double + 1 is lost too
    lost = {fec_slot, plc_slot, double, double + 1}
    late_arrival = fec_slot  # arrives after its slot was recovered

    buffer = JitterBuffer("opus", 48000, reorder_timeout_s=None)
    out = []
    for i, packet in enumerate(packets):
        if i not in lost:
            buffer.push(i, packet)
        if i == late_arrival + 5:
            buffer.push(late_arrival, packets[late_arrival])
        out.append(buffer.pull())
    buffer.flush()
    out.append(buffer.pull())

    expected, plc, fec = reference_decode(packets, lost)
    assert (plc, fec) == (2, 2)  # plc_slot and double by PLC; fec_slot and double + 1 from FEC
    audio = np.concatenate(out)
    assert len(audio) == len(packets) * OPUS_PACKET
    np.testing.assert_array_equal(audio, expected)
    assert buffer.stats == JitterStats(
        received=len(packets) - len(lost) + 1, late=1, lost=4, concealed_plc=2, recovered_fec=2
    )


def test_opus_garbage_is_concealed_like_a_lost_packet(fec_packets: list[bytes]) -> None:
    packets = list(fec_packets[:50])
    garbage_slots = {5, 17, 18, 30}
    sent = [b"\x03\x00" if i in garbage_slots else p for i, p in enumerate(packets)]
    sent[30] = b"garbage bytes!!"
    buffer = JitterBuffer("opus", 48000, reorder_timeout_s=None)
    for i, payload in enumerate(sent):
        buffer.push(i, payload)
    buffer.flush()
    audio = buffer.pull()

    expected, plc, fec = reference_decode(packets, garbage_slots)
    np.testing.assert_array_equal(audio, expected)
    assert len(audio) == 50 * OPUS_PACKET
    stats = buffer.stats
    assert (stats.garbage, stats.lost, stats.concealed_plc, stats.recovered_fec) == (4, 0, plc, fec)
    assert_concealment_accounted(stats)


def test_opus_garbage_never_raises(fec_packets: list[bytes]) -> None:
    rng = np.random.default_rng(3)
    buffer = JitterBuffer("opus", 48000, reorder_timeout_s=None)
    for i in range(2000):
        if rng.random() < 0.5:
            payload = fec_packets[i % len(fec_packets)]
        else:
            payload = bytes(rng.integers(0, 256, int(rng.integers(0, 60)), np.uint8))
        sequence = i + int(rng.integers(-2, 3))
        buffer.push(sequence, payload)
        buffer.pull()
    buffer.flush()
    buffer.pull()
    assert buffer.stats.garbage > 0
    assert_concealment_accounted(buffer.stats)


def test_opus_first_packet_lost_before_any_decode_uses_the_default_length() -> None:
    encoder = OpusEncoder(16000, frame_ms=20)
    packets = encoder.encode_all(np.zeros(16000, np.float32))
    buffer = JitterBuffer("opus", 16000, reorder_timeout_s=None, default_packet_ms=20)
    buffer.push(0, b"\x03\x00")  # garbage before any good packet
    buffer.push(1, packets[1])
    assert len(buffer.pull()) == 2 * 320
    assert buffer.stats.garbage == 1
