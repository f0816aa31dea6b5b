"""Mono Opus encoding and decoding over the system libopus (through opuslib).

The decoder turns one raw Opus packet (no Ogg framing) into PCM, conceals a lost packet (PLC) and recovers
one from the in-band FEC of the packet after it. The encoder exists for clients and tests; it can add in-band
FEC for an expected packet-loss rate.

libopus is loaded on first use, not at import, so that a server that only receives PCM16 still starts
without it. A missing library raises :class:`OpusUnavailableError` with the install hint; the server calls
:func:`check_opus_available` at start-up to fail early and clearly.

Packets are inspected without decoding (duration, whether they carry FEC) by reading the table-of-contents
byte and frame layout described in RFC 6716, section 3.
"""

from __future__ import annotations

import ctypes
import functools
from types import SimpleNamespace
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "FRAME_DURATIONS_MS",
    "INSTALL_HINT",
    "MAX_PACKET_MS",
    "SAMPLE_RATES",
    "OpusDecodeError",
    "OpusDecoder",
    "OpusEncoder",
    "OpusError",
    "OpusUnavailableError",
    "check_opus_available",
    "is_valid_packet",
    "packet_has_fec",
    "packet_samples",
]

#: Sample rates libopus encodes from and decodes to.
SAMPLE_RATES: Final = (8000, 12000, 16000, 24000, 48000)
#: Durations of one encoded packet the encoder accepts.
FRAME_DURATIONS_MS: Final = (2.5, 5, 10, 20, 40, 60)
#: Longest audio one Opus packet can hold (RFC 6716, section 3.2.5).
MAX_PACKET_MS: Final = 120
#: Output buffer for one encoded packet, as recommended by the libopus documentation.
_MAX_PACKET_BYTES: Final = 4000

_APPLICATIONS: Final = {"voip": 2048, "audio": 2049, "restricted_lowdelay": 2051}

INSTALL_HINT: Final = (
    "install the system Opus library: `apt-get install libopus0` on Debian/Ubuntu, `brew install opus` on "
    "macOS (`./buildall.sh` installs it when run as root)"
)


class OpusError(Exception):
    """Base class of the errors of this module."""


class OpusUnavailableError(OpusError, RuntimeError):
    """libopus (or the opuslib binding) cannot be loaded on this machine."""


class OpusDecodeError(OpusError, ValueError):
    """The decoder rejected a packet: the bytes are not a valid Opus packet."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        #: The libopus error code (negative), when libopus produced the error.
        self.code = code


@functools.cache
def _load_libopus() -> SimpleNamespace:
    """Import opuslib, which loads libopus; cached once it succeeds."""
    try:
        import opuslib  # noqa: F401  (imported for its side effect of loading libopus)
    except ImportError as exc:
        raise OpusUnavailableError(
            f"the Python package opuslib is not installed ({exc}); `pip install opuslib`, then {INSTALL_HINT}"
        ) from exc
    except Exception as exc:
        # opuslib raises a bare Exception when find_library finds nothing, and ctypes an OSError when the
        # library is found but cannot be loaded.
        raise OpusUnavailableError(f"libopus could not be loaded ({exc}); {INSTALL_HINT}") from exc
    import opuslib.api.ctl
    import opuslib.api.decoder
    import opuslib.api.encoder
    import opuslib.api.info

    return SimpleNamespace(
        ctl=opuslib.api.ctl,
        decoder=opuslib.api.decoder,
        encoder=opuslib.api.encoder,
        info=opuslib.api.info,
        float_pointer=opuslib.api.c_float_pointer,
        int16_pointer=opuslib.api.c_int16_pointer,
        library_error=opuslib.OpusError,
    )


def check_opus_available() -> str:
    """Load libopus now and return its version string (e.g. ``"libopus 1.3.1"``).

    Raises :class:`OpusUnavailableError`, whose message says how to install it, when it cannot be loaded.
    """
    lib = _load_libopus()
    return lib.info.get_version_string().decode("ascii", "replace")


def _strerror(lib: SimpleNamespace, code: int) -> str:
    return lib.info.strerror(code).decode("ascii", "replace")


def _check_sample_rate(sample_rate: int) -> int:
    if sample_rate not in SAMPLE_RATES:
        raise ValueError(f"Opus sample rate must be one of {SAMPLE_RATES} Hz, got {sample_rate}")
    return sample_rate


# ---------------------------------------------------------------------------------------------------------
# Packet inspection (no decoder state, no libopus)
# ---------------------------------------------------------------------------------------------------------

# Duration of one frame in quarters of 10 ms (2.5 ms units), by the configuration number in the TOC byte
# (RFC 6716, table 2): configs 0-11 are SILK (10/20/40/60 ms), 12-15 hybrid (10/20 ms), 16-31 CELT
# (2.5/5/10/20 ms).
_FRAME_QUARTERS_BY_CONFIG: Final = (4, 8, 16, 24) * 3 + (4, 8) * 2 + (1, 2, 4, 8) * 4
_FIRST_CELT_CONFIG: Final = 16


def _frame_count(packet: bytes) -> int:
    code = packet[0] & 0x3
    if code == 0:
        return 1
    if code in (1, 2):
        return 2
    if len(packet) < 2:
        raise OpusDecodeError("Opus packet with code 3 has no frame-count byte")
    count = packet[1] & 0x3F
    if count == 0:
        raise OpusDecodeError("Opus packet declares zero frames")
    return count


def packet_samples(packet: bytes, sample_rate: int) -> int:
    """Samples per channel that ``packet`` decodes to at ``sample_rate``, read from its header.

    Raises :class:`OpusDecodeError` for an empty packet or a header that no valid packet has.
    """
    if not packet:
        raise OpusDecodeError("empty Opus packet")
    quarters = _FRAME_QUARTERS_BY_CONFIG[packet[0] >> 3] * _frame_count(packet)
    if quarters * 2.5 > MAX_PACKET_MS:
        raise OpusDecodeError(f"Opus packet longer than {MAX_PACKET_MS} ms")
    return quarters * sample_rate // 400


def _is_celt_only(packet: bytes) -> bool:
    return (packet[0] >> 3) >= _FIRST_CELT_CONFIG


_MAX_FRAME_BYTES: Final = 1275


def _frame_length(packet: bytes, offset: int) -> tuple[int, int] | None:
    """A frame length coded in one or two bytes at ``offset``: (length, offset after it)."""
    if offset >= len(packet):
        return None
    first = packet[offset]
    if first < 252:
        return first, offset + 1
    if offset + 1 >= len(packet):
        return None
    return first + 4 * packet[offset + 1], offset + 2


def _frame_spans(packet: bytes) -> list[tuple[int, int]] | None:
    """(offset, length) of each compressed frame, or None when the framing is invalid (RFC 6716, 3.4)."""
    size = len(packet)
    code = packet[0] & 0x3
    if code == 0:
        spans = [(1, size - 1)]
    elif code == 1:
        if (size - 1) % 2:
            return None
        half = (size - 1) // 2
        spans = [(1, half), (1 + half, half)]
    elif code == 2:
        parsed = _frame_length(packet, 1)
        if parsed is None:
            return None
        first, offset = parsed
        if offset + first > size:
            return None
        spans = [(offset, first), (offset + first, size - offset - first)]
    else:
        if size < 2:
            return None
        count = packet[1] & 0x3F
        if count == 0:
            return None
        offset, padding = 2, 0
        if packet[1] & 0x40:
            # Padding length bytes: 255 means "254 bytes, and another length byte follows".
            while True:
                if offset >= size:
                    return None
                byte = packet[offset]
                offset += 1
                padding += 254 if byte == 255 else byte
                if byte != 255:
                    break
        if packet[1] & 0x80:
            # Variable-size frames: the lengths of all but the last one precede the data.
            lengths = []
            for _ in range(count - 1):
                parsed = _frame_length(packet, offset)
                if parsed is None:
                    return None
                length, offset = parsed
                lengths.append(length)
            last = size - offset - padding - sum(lengths)
            if last < 0:
                return None
            lengths.append(last)
        else:
            available = size - offset - padding
            if available < 0 or available % count:
                return None
            lengths = [available // count] * count
        spans = []
        for length in lengths:
            spans.append((offset, length))
            offset += length
    if any(length > _MAX_FRAME_BYTES for _, length in spans):
        return None
    return spans


def is_valid_packet(packet: bytes) -> bool:
    """Whether libopus will accept ``packet``: non-empty, with a valid header and frame layout.

    Decoding can still produce noise from random bytes that happen to be well-formed; no decoder can tell.
    """
    if not packet:
        return False
    try:
        packet_samples(packet, 48000)
    except OpusDecodeError:
        return False
    return _frame_spans(packet) is not None


def packet_has_fec(packet: bytes) -> bool:
    """Whether ``packet`` carries in-band FEC (SILK LBRR data) for the packet before it.

    Only SILK and hybrid packets can carry it. The flag is one of the first header bits of the first SILK
    frame, coded with probability 1/2 and therefore stored verbatim in the top bits of the first byte: one
    voice-activity bit per 20 ms SILK frame (one, two or three of them), then the LBRR flag (RFC 6716,
    section 4.2.3). Never raises: a packet with invalid framing carries no FEC.
    """
    if not is_valid_packet(packet) or _is_celt_only(packet):
        return False
    offset, length = _frame_spans(packet)[0]
    if length == 0:
        return False
    silk_frames = max(1, _FRAME_QUARTERS_BY_CONFIG[packet[0] >> 3] // 8)
    return bool((packet[offset] >> (7 - silk_frames)) & 1)


# ---------------------------------------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------------------------------------


class OpusDecoder:
    """Decodes one mono Opus stream, in order, to int16 or float32 PCM at ``sample_rate``.

    The decoder is stateful (each packet continues the previous one) and not thread-safe: use one per
    stream, from one thread at a time.
    """

    def __init__(self, sample_rate: int = 48000) -> None:
        self._lib = _load_libopus()
        self.sample_rate = _check_sample_rate(sample_rate)
        self._state = self._lib.decoder.create_state(sample_rate, 1)
        max_samples = sample_rate * MAX_PACKET_MS // 1000
        # Reused output buffers: decode results are copied out, so callers never see them change.
        self._float_out = np.empty(max_samples, dtype=np.float32)
        self._int16_out = np.empty(max_samples, dtype=np.int16)
        # libopus only applies FEC after a SILK or hybrid packet; it conceals by PLC after a CELT one.
        self._last_packet_celt_only = False

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Free the libopus state; the decoder cannot be used afterwards."""
        state = getattr(self, "_state", None)
        if state is not None:
            self._state = None
            self._lib.decoder.destroy(state)

    def reset(self) -> None:
        """Forget the stream so far, as a new decoder would (for a discontinuity)."""
        self._lib.decoder.decoder_ctl(self._require_state(), self._lib.ctl.reset_state)

    def decode(self, packet: bytes, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
        """Decode one packet; returns its samples (``packet_samples(packet, sample_rate)`` of them).

        ``dtype`` is ``np.float32`` (nominal range [-1, 1]) or ``np.int16``. Raises :class:`OpusDecodeError`
        when libopus rejects the packet; the decoder state is then unchanged.
        """
        if not packet:
            raise OpusDecodeError("empty Opus packet (use decode_plc to conceal a missing packet)")
        audio = self._run(packet, self._float_out.size, fec=False, dtype=dtype)
        self._last_packet_celt_only = _is_celt_only(packet)
        return audio

    def decode_plc(self, num_samples: int, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
        """Conceal ``num_samples`` of missing audio (a multiple of 2.5 ms) by packet-loss concealment."""
        self._check_concealed_length(num_samples)
        return self._run(None, num_samples, fec=False, dtype=dtype)

    def can_decode_fec(self, next_packet: bytes, num_samples: int) -> bool:
        """Whether :meth:`decode_fec` with these arguments would use FEC rather than fall back to PLC."""
        if self._last_packet_celt_only or not packet_has_fec(next_packet):
            return False
        try:
            frame_samples = packet_samples(next_packet, self.sample_rate) // _frame_count(next_packet)
        except OpusDecodeError:
            return False
        # The FEC data covers the first frame of the next packet; a shorter gap cannot use it.
        return num_samples >= frame_samples

    def decode_fec(
        self, next_packet: bytes, num_samples: int, dtype: npt.DTypeLike = np.float32
    ) -> np.ndarray:
        """Recover ``num_samples`` of a lost packet from the in-band FEC of the packet that followed it.

        Call it in place of the lost packet, then decode ``next_packet`` normally. The FEC covers the last
        frame's worth of the gap; anything before that is concealed by PLC. When FEC cannot be used (see
        :meth:`can_decode_fec`) libopus conceals it all by PLC instead. Raises :class:`OpusDecodeError` when
        ``next_packet`` is not valid Opus.
        """
        if not next_packet:
            raise OpusDecodeError("empty Opus packet given for FEC")
        self._check_concealed_length(num_samples)
        return self._run(next_packet, num_samples, fec=True, dtype=dtype)

    def _check_concealed_length(self, num_samples: int) -> None:
        step = self.sample_rate // 400
        if num_samples <= 0 or num_samples % step or num_samples > self._float_out.size:
            raise ValueError(
                f"concealed length must be a positive multiple of 2.5 ms ({step} samples) up to "
                f"{MAX_PACKET_MS} ms, got {num_samples} samples"
            )

    def _run(self, data: bytes | None, frame_size: int, *, fec: bool, dtype: npt.DTypeLike) -> np.ndarray:
        state = self._require_state()
        length = 0 if data is None else len(data)
        dtype = np.dtype(dtype)
        if dtype == np.float32:
            out = self._float_out
            result = self._lib.decoder.libopus_decode_float(
                state, data, length, out.ctypes.data_as(self._lib.float_pointer), frame_size, int(fec)
            )
        elif dtype == np.int16:
            out = self._int16_out
            result = self._lib.decoder.libopus_decode(
                state, data, length, out.ctypes.data_as(self._lib.int16_pointer), frame_size, int(fec)
            )
        else:
            raise ValueError(f"dtype must be float32 or int16, got {dtype}")
        if result < 0:
            raise OpusDecodeError(f"Opus decoder rejected the packet: {_strerror(self._lib, result)}", result)
        return out[:result].copy()

    def _require_state(self) -> object:
        if self._state is None:
            raise OpusError("the decoder is closed")
        return self._state


# ---------------------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------------------


class OpusEncoder:
    """Encodes mono PCM into Opus packets of ``frame_ms`` each.

    ``inband_fec`` with a non-zero ``packet_loss_percent`` makes each packet carry a low-bitrate copy of the
    one before it, which the receiver's jitter buffer uses when a packet is lost. In-band FEC is a SILK
    feature: it needs speech-like content at a bitrate where libopus picks SILK or hybrid mode, and frames
    of 10 ms or more.
    """

    def __init__(
        self,
        sample_rate: int = 48000,
        *,
        frame_ms: float = 20,
        application: str = "voip",
        bitrate: int | None = None,
        complexity: int | None = None,
        inband_fec: bool = False,
        packet_loss_percent: int = 0,
        dtx: bool = False,
    ) -> None:
        self._lib = _load_libopus()
        self.sample_rate = _check_sample_rate(sample_rate)
        if frame_ms not in FRAME_DURATIONS_MS:
            raise ValueError(f"Opus frame duration must be one of {FRAME_DURATIONS_MS} ms, got {frame_ms}")
        if application not in _APPLICATIONS:
            raise ValueError(f"application must be one of {tuple(_APPLICATIONS)}, got {application!r}")
        self.frame_ms = frame_ms
        self.frame_samples = int(sample_rate * frame_ms) // 1000
        self._state = self._lib.encoder.create_state(sample_rate, 1, _APPLICATIONS[application])
        self._out = ctypes.create_string_buffer(_MAX_PACKET_BYTES)
        if bitrate is not None:
            self._set(self._lib.ctl.set_bitrate, bitrate, "bitrate")
        if complexity is not None:
            self._set(self._lib.ctl.set_complexity, complexity, "complexity")
        self._set(self._lib.ctl.set_inband_fec, int(inband_fec), "inband_fec")
        self.set_packet_loss_percent(packet_loss_percent)
        self._set(self._lib.ctl.set_dtx, int(dtx), "dtx")

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Free the libopus state; the encoder cannot be used afterwards."""
        state = getattr(self, "_state", None)
        if state is not None:
            self._state = None
            self._lib.encoder.destroy(state)

    @property
    def lookahead_samples(self) -> int:
        """The encoder's look-ahead in samples: decoded audio lags the input by about this much."""
        return self._lib.encoder.encoder_ctl(self._require_state(), self._lib.ctl.get_lookahead)

    def set_packet_loss_percent(self, percent: int) -> None:
        """The loss rate to protect against (0-100); clients may update it as they observe loss."""
        if not 0 <= percent <= 100:
            raise ValueError(f"packet loss percentage must be within 0-100, got {percent}")
        self._set(self._lib.ctl.set_packet_loss_perc, percent, "packet_loss_percent")

    def reset(self) -> None:
        """Start a new stream, as a fresh encoder would."""
        self._lib.encoder.encoder_ctl(self._require_state(), self._lib.ctl.reset_state)

    def encode(self, frame: np.ndarray) -> bytes:
        """Encode exactly ``frame_samples`` samples (float32 in [-1, 1], or int16) into one packet."""
        frame = np.asarray(frame)
        if frame.shape != (self.frame_samples,):
            raise ValueError(f"expected {self.frame_samples} mono samples per packet, got shape {frame.shape}")
        state = self._require_state()
        if frame.dtype == np.int16:
            frame = np.ascontiguousarray(frame)
            result = self._lib.encoder.libopus_encode(
                state, frame.ctypes.data_as(self._lib.int16_pointer), self.frame_samples, self._out,
                _MAX_PACKET_BYTES,
            )
        else:
            frame = np.ascontiguousarray(frame, dtype=np.float32)
            result = self._lib.encoder.libopus_encode_float(
                state, frame.ctypes.data_as(self._lib.float_pointer), self.frame_samples, self._out,
                _MAX_PACKET_BYTES,
            )
        if result < 0:
            raise OpusError(f"Opus encoder failed: {_strerror(self._lib, result)}")
        return ctypes.string_at(self._out, result)

    def encode_all(self, pcm: np.ndarray) -> list[bytes]:
        """Split ``pcm`` into packets, zero-padding the last one to a whole frame."""
        pcm = np.asarray(pcm)
        if pcm.ndim != 1:
            raise ValueError(f"expected mono samples (1-D), got shape {pcm.shape}")
        tail = -len(pcm) % self.frame_samples
        if tail:
            pcm = np.concatenate([pcm, np.zeros(tail, dtype=pcm.dtype)])
        return [self.encode(pcm[i : i + self.frame_samples]) for i in range(0, len(pcm), self.frame_samples)]

    def _set(self, request: object, value: int, name: str) -> None:
        try:
            self._lib.encoder.encoder_ctl(self._require_state(), request, value)
        except self._lib.library_error as exc:
            raise ValueError(f"libopus refused {name}={value}: {exc}") from exc

    def _require_state(self) -> object:
        if self._state is None:
            raise OpusError("the encoder is closed")
        return self._state
