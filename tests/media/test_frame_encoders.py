"""Frame encoders and the codec registry."""

from __future__ import annotations

import numpy as np
import pytest
import simplejpeg

from avatar_backend.media import encoders
from avatar_backend.media.bench import synthetic_face_frame
from avatar_backend.media.encoders import (
    EncodedFrame,
    EncoderSettings,
    JpegEncoder,
    RawRgbEncoder,
    UnsupportedCodecError,
    create_encoder,
    register_encoder,
    supported_codecs,
)


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


# A tiny frame is mostly edges and chroma detail, which 4:2:0 subsampling averages away.
@pytest.mark.parametrize(("width", "height", "min_psnr_db"), [(512, 512, 33), (480, 272, 33), (33, 17, 27)])
def test_jpeg_round_trip_is_close_to_the_input(width: int, height: int, min_psnr_db: float) -> None:
    frame = synthetic_face_frame(width, height)
    encoded = JpegEncoder(85).encode(frame)
    assert encoded.keyframe is True
    assert encoded.data[:2] == b"\xff\xd8" and encoded.data[-2:] == b"\xff\xd9"
    decoded = simplejpeg.decode_jpeg(encoded.data, colorspace="RGB")
    assert decoded.shape == frame.shape
    assert psnr_db(decoded, frame) > min_psnr_db


def test_jpeg_uses_420_subsampling() -> None:
    encoded = JpegEncoder().encode(synthetic_face_frame(64, 64))
    width, height, colorspace, subsampling = simplejpeg.decode_jpeg_header(encoded.data)
    assert (width, height, subsampling) == (64, 64, "420")


def test_jpeg_quality_trades_size_for_fidelity() -> None:
    frame = synthetic_face_frame()
    low, high = JpegEncoder(40).encode(frame), JpegEncoder(95).encode(frame)
    assert len(low.data) < len(high.data)
    assert psnr_db(simplejpeg.decode_jpeg(low.data), frame) < psnr_db(simplejpeg.decode_jpeg(high.data), frame)


def test_raw_rgb_is_the_frame_bytes_even_for_a_strided_view() -> None:
    frame = synthetic_face_frame(64, 48)
    view = frame[:, ::2]  # not contiguous
    encoded = RawRgbEncoder().encode(view)
    assert encoded == EncodedFrame(np.ascontiguousarray(view).tobytes(), keyframe=True)
    assert len(encoded.data) == 48 * 32 * 3


@pytest.mark.parametrize("encoder", [JpegEncoder(), RawRgbEncoder()], ids=["jpeg", "raw_rgb"])
@pytest.mark.parametrize(
    "bad_frame",
    [
        np.zeros((16, 16, 3), np.float32),
        np.zeros((16, 16), np.uint8),
        np.zeros((16, 16, 4), np.uint8),
        np.zeros((0, 16, 3), np.uint8),
    ],
    ids=["float", "grey", "rgba", "empty"],
)
def test_bad_frames_are_rejected(encoder, bad_frame: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encoder.encode(bad_frame)


def test_jpeg_quality_is_validated() -> None:
    with pytest.raises(ValueError, match="1-100"):
        JpegEncoder(0)
    with pytest.raises(ValueError, match="1-100"):
        JpegEncoder(101)


def test_registry_serves_jpeg_and_raw() -> None:
    assert supported_codecs() == ("jpeg", "raw_rgb")
    jpeg = create_encoder("jpeg", EncoderSettings(jpeg_quality=60))
    assert isinstance(jpeg, JpegEncoder) and jpeg.codec == "jpeg" and jpeg.quality == 60
    assert create_encoder("jpeg").quality == encoders.DEFAULT_JPEG_QUALITY
    assert create_encoder("raw_rgb").codec == "raw_rgb"


def test_h264_is_named_but_not_served() -> None:
    with pytest.raises(UnsupportedCodecError, match="not served") as error:
        create_encoder("h264")
    assert error.value.codec == "h264"
    assert isinstance(error.value, ValueError)


def test_unknown_codecs_are_refused() -> None:
    with pytest.raises(UnsupportedCodecError, match="unknown video codec 'vp9'"):
        create_encoder("vp9")


def test_a_registered_encoder_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoders, "_FACTORIES", dict(encoders._FACTORIES))

    class FakeH264:
        codec = "h264"

        def __init__(self, settings: EncoderSettings) -> None:
            self.settings = settings

        def encode(self, rgb: np.ndarray) -> EncodedFrame:
            return EncodedFrame(b"\x00\x00\x00\x01", keyframe=False)

    register_encoder("h264", FakeH264)
    assert supported_codecs() == ("jpeg", "raw_rgb", "h264")
    encoder = create_encoder("h264", EncoderSettings(width=512, height=512, fps=20))
    assert encoder.settings.fps == 20
