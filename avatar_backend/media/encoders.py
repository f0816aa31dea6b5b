"""Video frame encoders: uint8 RGB frames [height, width, 3] in, one compressed frame out.

Encoders are looked up by the codec names of the public contract (``"jpeg"``, ``"raw_rgb"``, ``"h264"``).
A codec the contract names but this server does not build raises :class:`UnsupportedCodecError`, which
the gateway answers with INVALID_ARGUMENT. Another module can add an encoder with :func:`register_encoder`.

JPEG and raw frames are independent, so every frame is a keyframe and an encoder may be shared by the
frames of one session in any order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import simplejpeg

__all__ = [
    "DEFAULT_JPEG_QUALITY",
    "KNOWN_CODECS",
    "EncodedFrame",
    "EncoderSettings",
    "FrameEncoder",
    "JpegEncoder",
    "RawRgbEncoder",
    "UnsupportedCodecError",
    "create_encoder",
    "register_encoder",
    "supported_codecs",
]

#: Every codec name of the public contract, served or not.
KNOWN_CODECS: Final = ("jpeg", "raw_rgb", "h264")
DEFAULT_JPEG_QUALITY: Final = 85


class UnsupportedCodecError(ValueError):
    """The codec is unknown, or known to the contract but not served by this server."""

    def __init__(self, codec: str, message: str) -> None:
        super().__init__(message)
        self.codec = codec


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One compressed frame."""

    data: bytes
    #: Whether the frame decodes on its own (always true for JPEG and raw RGB).
    keyframe: bool


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    """What a session asked for; each encoder uses the fields it needs. 0 means "the default"."""

    width: int = 0
    height: int = 0
    fps: int = 0
    jpeg_quality: int = 0


class FrameEncoder(Protocol):
    """An encoder of one session's frames (stateful codecs keep their state between frames)."""

    #: The contract's codec name, e.g. ``"jpeg"``.
    codec: str

    def encode(self, rgb: np.ndarray) -> EncodedFrame: ...


def _check_rgb_frame(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise ValueError(f"expected a uint8 RGB frame of shape [height, width, 3], got {shape} {dtype}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"frame has no pixels: shape {rgb.shape}")
    return np.ascontiguousarray(rgb)


class JpegEncoder:
    """Baseline JPEG with 4:2:0 chroma subsampling and the fast integer DCT (libjpeg-turbo)."""

    codec = "jpeg"

    def __init__(self, quality: int = DEFAULT_JPEG_QUALITY) -> None:
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be within 1-100, got {quality}")
        self.quality = quality

    def encode(self, rgb: np.ndarray) -> EncodedFrame:
        data = simplejpeg.encode_jpeg(
            _check_rgb_frame(rgb), quality=self.quality, colorspace="RGB", colorsubsampling="420", fastdct=True
        )
        return EncodedFrame(data, keyframe=True)


class RawRgbEncoder:
    """The frame's bytes as they are: row-major RGB24, no padding."""

    codec = "raw_rgb"

    def encode(self, rgb: np.ndarray) -> EncodedFrame:
        return EncodedFrame(_check_rgb_frame(rgb).tobytes(), keyframe=True)


EncoderFactory = Callable[[EncoderSettings], FrameEncoder]

_FACTORIES: dict[str, EncoderFactory] = {
    "jpeg": lambda settings: JpegEncoder(settings.jpeg_quality or DEFAULT_JPEG_QUALITY),
    "raw_rgb": lambda settings: RawRgbEncoder(),
}


def register_encoder(codec: str, factory: EncoderFactory) -> None:
    """Serve ``codec`` with encoders made by ``factory`` (replaces an earlier registration)."""
    _FACTORIES[codec] = factory


def supported_codecs() -> tuple[str, ...]:
    """The codec names this server can encode, in the contract's order."""
    known = [name for name in KNOWN_CODECS if name in _FACTORIES]
    return tuple(known + sorted(name for name in _FACTORIES if name not in KNOWN_CODECS))


def create_encoder(codec: str, settings: EncoderSettings | None = None) -> FrameEncoder:
    """A new encoder for one session; raises :class:`UnsupportedCodecError` for a codec not served."""
    factory = _FACTORIES.get(codec)
    if factory is None:
        served = ", ".join(supported_codecs())
        if codec in KNOWN_CODECS:
            raise UnsupportedCodecError(
                codec, f"video codec {codec!r} is not served by this server (served: {served})"
            )
        raise UnsupportedCodecError(codec, f"unknown video codec {codec!r} (served: {served})")
    return factory(settings or EncoderSettings())
