"""The jitter buffer: numbered audio packets of one stream in, contiguous float32 PCM out.

Audio for an NPC usually comes from TTS, faster than real time, so the buffer does not pace anything: it
releases audio as soon as it is contiguous and waits for a missing packet only as long as needed to tell
"reordered" from "lost". A missing packet is declared lost when

- ``reorder_depth`` later packets have arrived (the newest sequence number is that far ahead of it), or
- the first packet waiting behind it has waited ``reorder_timeout_s`` (checked on every push and pull), or
- the utterance ends (:meth:`JitterBuffer.flush`).

Every packet slot becomes audio exactly once, in sequence order: decoded, or concealed when it was lost or
undecodable (Opus PLC, Opus FEC from the next packet when that one is here and carries it, silence for PCM16).
Undecodable ("garbage") payloads are recognised on arrival; their slot waits for the next packet, whose FEC
may recover it, under the same rules as a missing packet. Late and duplicate packets are dropped. Nothing in
here raises because of what a client sent.

The first packet received starts the stream: one with a lower sequence number arriving after it is late.
Sequence numbers are uint32 and wrap around; they are unwrapped against the play-out position. A packet
behind the play-out position is late or a duplicate whatever the distance (a packet re-sent long after is
never played twice). A jump of more than ``max_gap_packets`` forward is a discontinuity (a client that
skipped ahead, or a hostile one): what is buffered is played out, the gap is skipped without audio, and the
stream continues from the new packet. That bounds both the packets held and the concealed audio one push
can produce. A count that really starts again is told apart only by the sender (``restart_sequence``): then
the new packet's number becomes the play-out position, whatever it is.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from .opus import OpusDecodeError, OpusDecoder, is_valid_packet

__all__ = ["AudioCodecName", "JitterBuffer", "JitterStats"]

AudioCodecName = Literal["opus", "pcm16"]

_SEQUENCE_MODULUS: Final = 1 << 32
_HALF_SEQUENCE: Final = 1 << 31
_PCM16_SCALE: Final = 1.0 / 32768.0


@dataclass
class JitterStats:
    """What happened to the packets of one stream (the contract's AudioCounters, plus discontinuities).

    Every slot without usable audio is concealed exactly once, so
    ``concealed_plc + recovered_fec == lost + garbage``.
    """

    #: Packets handed to :meth:`JitterBuffer.push`, whatever became of them.
    received: int = 0
    #: Packets whose sequence number had already been received; dropped.
    duplicates: int = 0
    #: Packets that arrived after their slot was concealed as lost (or too old to tell); dropped.
    late: int = 0
    #: Slots whose packet never arrived in time.
    lost: int = 0
    #: Slots concealed by Opus packet-loss concealment (silence for PCM16): lost or garbage ones.
    concealed_plc: int = 0
    #: Slots recovered from the in-band FEC of the next packet.
    recovered_fec: int = 0
    #: Packets that arrived but could not be decoded; their slot is concealed like a lost one.
    garbage: int = 0
    #: Sequence jumps beyond ``max_gap_packets``: the stream restarted from the new packet.
    discontinuities: int = 0


@dataclass(slots=True)
class _Pending:
    payload: bytes | None  # None: the packet arrived but is not valid for the codec
    arrived_at: float


class JitterBuffer:
    """Reorders, de-duplicates and conceals one mono audio stream; see the module documentation.

    ``codec`` is ``"opus"`` (one raw Opus packet per payload) or ``"pcm16"`` (little-endian signed 16-bit
    samples). Output is float32 at ``sample_rate``. ``default_packet_ms`` is the length assumed for a lost
    packet before any packet could be decoded; afterwards the length of the last good packet is used.

    Not thread-safe: one buffer per stream, used from one thread (or one asyncio loop).
    """

    def __init__(
        self,
        codec: AudioCodecName = "opus",
        sample_rate: int = 48000,
        *,
        reorder_depth: int = 3,
        reorder_timeout_s: float | None = 0.2,
        max_gap_packets: int = 50,
        default_packet_ms: float = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if codec not in ("opus", "pcm16"):
            raise ValueError(f"audio codec must be 'opus' or 'pcm16', got {codec!r}")
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {sample_rate}")
        if reorder_depth < 0:
            raise ValueError(f"reorder_depth must be >= 0, got {reorder_depth}")
        if max_gap_packets < max(1, reorder_depth):
            raise ValueError(f"max_gap_packets must be >= max(1, reorder_depth), got {max_gap_packets}")
        if reorder_timeout_s is not None and reorder_timeout_s < 0:
            raise ValueError(f"reorder_timeout_s must be >= 0 or None, got {reorder_timeout_s}")
        self.codec: AudioCodecName = codec
        self.sample_rate = sample_rate
        self.reorder_depth = reorder_depth
        self.reorder_timeout_s = reorder_timeout_s
        self.max_gap_packets = max_gap_packets
        self._clock = clock
        self._decoder = OpusDecoder(sample_rate) if codec == "opus" else None
        if self._decoder is not None:
            # Opus conceals in steps of 2.5 ms.
            step = sample_rate // 400
            self._packet_samples = max(step, round(sample_rate * default_packet_ms / 1000 / step) * step)
        else:
            self._packet_samples = max(1, round(sample_rate * default_packet_ms / 1000))
        self.stats = JitterStats()

        # Sequence numbers are kept unwrapped ("extended") so that ordering is plain integer ordering.
        self._next: int | None = None  # extended sequence number of the next slot to play out
        self._newest: int | None = None  # highest extended sequence number buffered
        self._pending: dict[int, _Pending] = {}
        # Slots played out from a received packet, to tell a duplicate from a late packet afterwards.
        self._history_size = 2 * max_gap_packets
        self._received_history: collections.deque[int] = collections.deque()
        self._received_set: set[int] = set()
        self._ready: list[np.ndarray] = []
        self._ready_samples = 0

    # -- input -------------------------------------------------------------------------------------------

    def push(self, sequence_number: int, payload: bytes, *, restart_sequence: bool = False) -> None:
        """Add one packet; audio that became contiguous is decoded and made ready for :meth:`pull`.

        ``restart_sequence``: the sender started a new count with this packet."""
        self.stats.received += 1
        sequence_number &= _SEQUENCE_MODULUS - 1
        now = self._clock()
        if self._next is None:
            self._next = self._newest = sequence_number
        delta = (sequence_number - self._next) % _SEQUENCE_MODULUS
        if delta >= _HALF_SEQUENCE:
            delta -= _SEQUENCE_MODULUS
        if delta > self.max_gap_packets or (restart_sequence and delta != 0):
            self._restart_at(self._next + delta)
            delta = 0
        extended = self._next + delta

        if delta < 0:
            if extended in self._received_set:
                self.stats.duplicates += 1
            else:
                self.stats.late += 1
            return
        if extended in self._pending:
            self.stats.duplicates += 1
            return
        payload = bytes(payload)
        if not self._is_valid(payload):
            self.stats.garbage += 1
            payload = None
        self._pending[extended] = _Pending(payload, now)
        if self._newest is None or extended > self._newest:
            self._newest = extended
        self._release(now)

    def flush(self) -> None:
        """End of utterance: declare every missing packet up to the newest one lost and release all audio.

        The next utterance continues the sequence count; nothing is reset.
        """
        self._release(self._clock(), declare_all_lost=True)

    # -- output ------------------------------------------------------------------------------------------

    def pull(self) -> np.ndarray:
        """All audio ready now, in order, as float32 (possibly empty). Also applies the reorder timeout."""
        if self._pending:
            self._release(self._clock())
        if not self._ready:
            return np.zeros(0, dtype=np.float32)
        audio = self._ready[0] if len(self._ready) == 1 else np.concatenate(self._ready)
        self._ready.clear()
        self._ready_samples = 0
        return audio

    @property
    def ready_samples(self) -> int:
        """Samples that :meth:`pull` would return now (before applying the timeout)."""
        return self._ready_samples

    @property
    def buffered_packets(self) -> int:
        """Packets held back waiting for a missing one."""
        return len(self._pending)

    @property
    def next_sequence_number(self) -> int | None:
        """The sequence number of the next slot to play out (None before the first packet)."""
        return None if self._next is None else self._next % _SEQUENCE_MODULUS

    # -- play-out ----------------------------------------------------------------------------------------

    def _release(self, now: float, *, declare_all_lost: bool = False) -> None:
        while self._pending:
            slot = self._next
            pending = self._pending.get(slot)
            if pending is not None and pending.payload is not None:
                del self._pending[slot]
                self._remember_received(slot)
                self._play(slot, pending.payload)
            elif pending is not None:
                # Garbage is known to be unusable, but its slot waits for the next packet (whose FEC may
                # recover it) as long as a missing packet would.
                if self._decoder is not None and slot + 1 not in self._pending:
                    if not (declare_all_lost or self._gap_expired(slot, now)):
                        return
                del self._pending[slot]
                self._remember_received(slot)
                self._conceal(slot)
            elif declare_all_lost or self._gap_expired(slot, now):
                self.stats.lost += 1
                self._conceal(slot)
            else:
                return
            self._next = slot + 1

    def _gap_expired(self, missing: int, now: float) -> bool:
        if self._newest - missing >= self.reorder_depth:
            return True
        if self.reorder_timeout_s is None:
            return False
        first_waiting = min(p.arrived_at for p in self._pending.values())
        return now - first_waiting >= self.reorder_timeout_s

    def _is_valid(self, payload: bytes) -> bool:
        if self._decoder is None:
            return len(payload) > 0 and len(payload) % 2 == 0
        return is_valid_packet(payload)

    def _play(self, slot: int, payload: bytes) -> None:
        if self._decoder is None:
            audio = np.frombuffer(payload, dtype="<i2").astype(np.float32) * np.float32(_PCM16_SCALE)
        else:
            try:
                audio = self._decoder.decode(payload)
            except OpusDecodeError:
                # Well-formed but still refused: libopus has the last word on what is garbage.
                self.stats.garbage += 1
                self._conceal(slot)
                return
        self._packet_samples = len(audio)
        self._emit(audio)

    def _conceal(self, slot: int) -> None:
        """Fill a slot without usable audio: FEC from the next packet when possible, else PLC or silence."""
        samples = self._packet_samples
        if self._decoder is None:
            self.stats.concealed_plc += 1
            self._emit(np.zeros(samples, dtype=np.float32))
            return
        following = self._pending.get(slot + 1)
        if (
            following is not None
            and following.payload is not None
            and self._decoder.can_decode_fec(following.payload, samples)
        ):
            try:
                audio = self._decoder.decode_fec(following.payload, samples)
            except OpusDecodeError:
                pass
            else:
                self.stats.recovered_fec += 1
                self._emit(audio)
                return
        self.stats.concealed_plc += 1
        self._emit(self._decoder.decode_plc(samples))

    def _emit(self, audio: np.ndarray) -> None:
        self._ready.append(audio)
        self._ready_samples += len(audio)

    def _remember_received(self, slot: int) -> None:
        self._received_history.append(slot)
        self._received_set.add(slot)
        if len(self._received_history) > self._history_size:
            self._received_set.discard(self._received_history.popleft())

    def _restart_at(self, extended: int) -> None:
        """A discontinuity: play out what is buffered, then continue from ``extended`` without a gap."""
        self.stats.discontinuities += 1
        self._release(self._clock(), declare_all_lost=True)
        self._received_history.clear()
        self._received_set.clear()
        self._next = self._newest = extended
