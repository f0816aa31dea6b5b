"""The NPC's voice of one session: numbered packets in, contiguous float32 PCM at the model's 16 kHz out.

Opus voice comes out of the decoder late by the encoder's look-ahead; those first samples (the "pre-skip")
are dropped once, at the start of the stream, so the voice lines up with what the client sent.
"""

from __future__ import annotations

import numpy as np

from avatar_backend.media.jitter import JitterBuffer, JitterStats
from avatar_backend.media.resample import MODEL_SAMPLE_RATE, Resampler
from avatar_backend.proto_gen import converse_pb2

__all__ = ["AudioInput"]

_EMPTY = np.zeros(0, dtype=np.float32)
OPUS_PRE_SKIP_RATE = 48_000  # the rate a pre-skip is counted at (RFC 7845)


class AudioInput:
    def __init__(self, codec: int, sample_rate: int, opus_pre_skip: int = 0):
        self._skip = 0
        if codec == converse_pb2.AUDIO_CODEC_OPUS:
            # Opus decodes to any rate directly, so it goes straight to the model's rate with no resampler.
            self._jitter = JitterBuffer("opus", MODEL_SAMPLE_RATE)
            self._resampler = None
            self._skip = opus_pre_skip * MODEL_SAMPLE_RATE // OPUS_PRE_SKIP_RATE
        else:
            self._jitter = JitterBuffer("pcm16", sample_rate)
            self._resampler = None if sample_rate == MODEL_SAMPLE_RATE else Resampler(sample_rate)

    @property
    def stats(self) -> JitterStats:
        return self._jitter.stats

    @property
    def waiting_for_missing_packet(self) -> bool:
        """Packets are held back until a missing one arrives or times out (see :meth:`pull`)."""
        return self._jitter.buffered_packets > 0

    @property
    def reorder_timeout_s(self) -> float:
        return self._jitter.reorder_timeout_s or 0.0

    def push(self, sequence_number: int, payload: bytes, restart_sequence: bool = False) -> np.ndarray:
        """Add one packet; returns the audio that became ready (often the packet's own)."""
        self._jitter.push(sequence_number, payload, restart_sequence=restart_sequence)
        return self.pull()

    def pull(self) -> np.ndarray:
        """Audio ready now; also declares a missing packet lost once it waited too long."""
        return self._convert(self._jitter.pull())

    def end_utterance(self) -> np.ndarray:
        """Everything still held: missing packets are declared lost, the resampler's tail is released."""
        self._jitter.flush()
        audio = self.pull()
        if self._resampler is None:
            return audio
        tail = self._resampler.flush()
        return np.concatenate([audio, tail]) if tail.size else audio

    def interrupt(self) -> int:
        """Drop everything not yet handed out; returns the 16 kHz samples dropped.

        Packets held behind a missing one are played out first and the missing one is concealed as lost, as
        at the end of an utterance: every packet the client sent then lands in the counters, and the samples
        dropped are as many as the client counted for that voice (its ``at_voice_sample`` count)."""
        return self.end_utterance().size

    def _convert(self, audio: np.ndarray) -> np.ndarray:
        if self._skip and audio.size:
            skipped = min(self._skip, audio.size)
            audio, self._skip = audio[skipped:], self._skip - skipped
        if self._resampler is None or audio.size == 0:
            return audio if audio.size else _EMPTY
        return self._resampler.process(audio)
