"""Micro-benchmark of the gateway's media work per video frame (CPU time of this process).

Per frame the gateway decodes the Opus audio the frame covers (at 20 fps and 20 ms packets, 2.5 packets)
and encodes one RGB frame as JPEG. The frame is synthetic but not flat: a lit face-sized oval with features
and hair-like texture over a gradient background, plus sensor-like noise, so that the encoder does a
realistic amount of work.

    python -m avatar_backend.media.bench
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import numpy as np

from .encoders import DEFAULT_JPEG_QUALITY, JpegEncoder
from .jitter import JitterBuffer
from .opus import OpusDecoder, OpusEncoder
from .resample import MODEL_SAMPLE_RATE

__all__ = ["gateway_cpu_per_frame", "synthetic_face_frame", "synthetic_voice"]

_OPUS_RATE = 48000
_PACKET_MS = 20


def synthetic_voice(seconds: float, sample_rate: int = _OPUS_RATE, seed: int = 0) -> np.ndarray:
    """A voice-like float32 signal: a gliding harmonic source with syllable-rate loudness, plus breath noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 140 + 25 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 0.5
    signal = 0.15 * voiced * syllables + 0.01 * rng.standard_normal(t.size)
    return signal.astype(np.float32)


def synthetic_face_frame(width: int = 512, height: int = 512, seed: int = 0) -> np.ndarray:
    """A uint8 RGB frame with the texture statistics of a talking-head video frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / width, y / height
    background = np.stack([60 + 80 * u, 70 + 60 * v, 110 - 40 * u * v], axis=-1)
    # An oval face lit from the upper left.
    fx, fy = (u - 0.5) / 0.28, (v - 0.52) / 0.38
    face_mask = (fx**2 + fy**2 < 1.0)[..., None]
    shade = np.clip(1.0 - 0.35 * (fx + 0.6 * fy) - 0.25 * (fx**2 + fy**2), 0.4, 1.2)[..., None]
    face = np.array([205, 160, 135], dtype=np.float32) * shade
    image = np.where(face_mask, face, background)
    # Eyes, brows and a mouth: small high-contrast edges.
    for cx in (0.40, 0.60):
        eye = ((u - cx) / 0.045) ** 2 + ((v - 0.45) / 0.022) ** 2 < 1.0
        image[eye] = (35, 30, 30)
        brow = (np.abs(v - 0.40 + 0.02 * np.sin((u - cx) * 30)) < 0.008) & (np.abs(u - cx) < 0.06)
        image[brow] = (70, 45, 35)
    mouth = ((u - 0.5) / 0.09) ** 2 + ((v - 0.68) / 0.03) ** 2 < 1.0
    image[mouth] = (140, 60, 60)
    # Hair: fine oriented stripes above the face.
    hair = (v < 0.30 + 0.1 * np.cos((u - 0.5) * 6)) & (np.abs(u - 0.5) < 0.33)
    strands = 40 + 25 * np.sin(x * 0.9 + 3 * np.sin(y * 0.05))
    image[hair] = np.stack([strands[hair], strands[hair] * 0.8, strands[hair] * 0.6], axis=-1)
    image += rng.normal(0, 4.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _median_cpu_ms(action: Callable[[], object], repetitions: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        action()
    samples = []
    for _ in range(repetitions):
        start = time.process_time()
        action()
        samples.append(time.process_time() - start)
    return statistics.median(samples) * 1000.0


def gateway_cpu_per_frame(
    width: int = 512,
    height: int = 512,
    fps: int = 20,
    *,
    repetitions: int = 300,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
) -> dict:
    """Median CPU milliseconds per video frame for the gateway's media work, in total and by part.

    ``opus_decode_ms``: decoding the frame's share of 48 kHz Opus (``packets_per_frame`` 20 ms packets);
    ``jpeg_encode_ms``: one ``width`` x ``height`` frame; ``total_ms``: their sum. For context,
    ``audio_path_ms`` is the gateway's whole audio input path for the frame's share: the jitter buffer,
    decoding straight to the model's 16 kHz (Opus decodes to any of its rates, so no resampler is needed).
    """
    packets_per_frame = 1000 / fps / _PACKET_MS
    voice = synthetic_voice(2.0)
    encoder = OpusEncoder(_OPUS_RATE, frame_ms=_PACKET_MS, bitrate=32000, inband_fec=True, packet_loss_percent=5)
    packets = encoder.encode_all(voice)

    decoder = OpusDecoder(_OPUS_RATE)
    packet_cycle = iter(())

    def decode_one() -> None:
        nonlocal packet_cycle
        packet = next(packet_cycle, None)
        if packet is None:
            decoder.reset()
            packet_cycle = iter(packets)
            packet = next(packet_cycle)
        decoder.decode(packet)

    per_packet_ms = _median_cpu_ms(decode_one, repetitions * 4)

    jitter = JitterBuffer("opus", MODEL_SAMPLE_RATE)
    sequence = 0

    def audio_path_one() -> None:
        nonlocal sequence
        jitter.push(sequence, packets[sequence % len(packets)])
        sequence += 1
        jitter.pull()

    per_packet_path_ms = _median_cpu_ms(audio_path_one, repetitions * 4)

    frame = synthetic_face_frame(width, height)
    jpeg = JpegEncoder(jpeg_quality)
    jpeg_ms = _median_cpu_ms(lambda: jpeg.encode(frame), repetitions)
    jpeg_bytes = len(jpeg.encode(frame).data)

    opus_ms = per_packet_ms * packets_per_frame
    return {
        "width": width,
        "height": height,
        "fps": fps,
        "jpeg_quality": jpeg_quality,
        "jpeg_bytes": jpeg_bytes,
        "packets_per_frame": packets_per_frame,
        "opus_decode_ms": opus_ms,
        "jpeg_encode_ms": jpeg_ms,
        "total_ms": opus_ms + jpeg_ms,
        "audio_path_ms": per_packet_path_ms * packets_per_frame,
        "repetitions": repetitions,
    }


if __name__ == "__main__":
    print(json.dumps(gateway_cpu_per_frame(), indent=2))
