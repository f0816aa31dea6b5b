"""Reference images: every PNG/JPEG mode stored with the right pixels, decoding bounded in pixels and in
concurrency, oversized images refused before they are decoded."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib

import grpc
import numpy as np
import pytest
from gateway_harness import (
    async_test,
    expect_rpc_error,
    register_character,
    running_gateway,
)
from PIL import Image, ImageFile, JpegImagePlugin

from avatar_backend.gateway import characters
from avatar_backend.gateway.characters import (
    MAX_CONCURRENT_DECODES,
    REFERENCE_SHORT_SIDE,
    TRANSPARENT_BACKGROUND,
    prepare_reference_image,
    to_rgb,
)
from avatar_backend.gateway.status import RpcFailure
from avatar_backend.proto_gen import avatar_service_pb2 as pb

WHITE = TRANSPARENT_BACKGROUND


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_file(rows: np.ndarray, color_type: int, bit_depth: int, trns: bytes | None = None,
             width: int | None = None) -> bytes:
    """A PNG written chunk by chunk, for the layouts Pillow does not write (16-bit colour, 16-bit gray + alpha,
    2-bit gray). ``rows``: one row of samples (big-endian for 16 bits) or packed bytes per image row."""
    samples_per_pixel = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    height = rows.shape[0]
    width = width or rows.shape[1] // samples_per_pixel
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(height))  # filter type 0 on every row
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + (chunk(b"tRNS", trns) if trns else b"") + chunk(b"IDAT", zlib.compress(raw))
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


def stored_pixels(data: bytes, **kw) -> np.ndarray:
    png, width, height = prepare_reference_image(data, **kw)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (width, height)
        return np.asarray(image).astype(int)


def row_of(values, width: int = 16) -> np.ndarray:
    """Each value repeated over a 16x16 block, side by side (images must be at least 16 pixels a side)."""
    return np.repeat(np.repeat(np.asarray(values)[None, :], width, axis=1), 16, axis=0)


def samples(pixels: np.ndarray, count: int) -> list[tuple[int, int, int]]:
    """The colour at the centre of each 16-pixel block."""
    return [tuple(int(c) for c in pixels[8, 16 * i + 8]) for i in range(count)]


def blend(value: int, alpha: int, background: int = 255) -> float:
    return value * alpha / 255 + background * (255 - alpha) / 255


# -- modes ------------------------------------------------------------------------------------------------------


def test_sixteen_bit_grayscale_keeps_its_tones():
    # The reported bug: 16-bit values were clipped at 255, storing the picture 97 % white.
    values = np.array([0, 1000, 16448, 30000, 32896, 65535], dtype=np.uint16)
    pixels = stored_pixels(encoded(Image.fromarray(row_of(values).astype(np.uint16))))
    expected = np.rint(values / 257).astype(int)                  # 0, 4, 64, 117, 128, 255
    assert samples(pixels, 6) == [(v, v, v) for v in expected]
    assert (pixels > 250).mean() < 0.2


def test_sixteen_bit_big_endian_and_32_bit_integer_images_scale_the_same():
    values = np.array([0, 1000, 30000, 65535], dtype=np.uint16)
    expected = [(v, v, v) for v in np.rint(values / 257).astype(int)]
    block = row_of(values)
    big_endian = Image.frombytes("I;16B", (block.shape[1], 16), block.astype(">u2").tobytes())
    assert big_endian.mode == "I;16B"
    assert samples(np.asarray(to_rgb(big_endian)).astype(int), 4) == expected
    assert samples(stored_pixels(encoded(big_endian)), 4) == expected       # and through a PNG file
    as_int = Image.fromarray(block.astype(np.int32))
    assert as_int.mode == "I"
    assert samples(np.asarray(to_rgb(as_int)).astype(int), 4) == expected


def test_float_images_are_on_the_8_bit_scale():
    image = Image.fromarray(row_of([-5.0, 0.0, 12.4, 200.6, 300.0]).astype(np.float32))
    assert image.mode == "F"
    assert samples(np.asarray(to_rgb(image)).astype(int), 5) == [(0, 0, 0), (0, 0, 0), (12, 12, 12),
                                                                   (201, 201, 201), (255, 255, 255)]


def test_one_bit_and_low_bit_depth_grayscale():
    one_bit = Image.fromarray(row_of([False, True, False]))
    assert one_bit.mode == "1"
    assert samples(stored_pixels(encoded(one_bit)), 3) == [(0, 0, 0), WHITE, (0, 0, 0)]
    two_bit = png_file(_two_bit_rows(), 0, 2, width=64)
    assert samples(stored_pixels(two_bit), 4) == [(0, 0, 0), (85, 85, 85), (170, 170, 170), (255, 255, 255)]


def _two_bit_rows() -> np.ndarray:
    # 64 pixels a row at 2 bits: 16 bytes; each group of 16 pixels (4 bytes) has one value 0..3.
    row = np.concatenate([np.full(4, v * 0b01010101, np.uint8) for v in range(4)])
    return np.tile(row, (16, 1))


def test_grayscale_with_and_without_a_transparent_value():
    gray = Image.fromarray(row_of([0, 77, 200, 255]).astype(np.uint8))
    assert samples(stored_pixels(encoded(gray)), 4) == [(0, 0, 0), (77, 77, 77), (200, 200, 200), (255, 255, 255)]
    keyed = stored_pixels(encoded(gray, transparency=77))
    assert samples(keyed, 4) == [(0, 0, 0), WHITE, (200, 200, 200), (255, 255, 255)]
    sixteen = png_file(row_of([0, 1000, 30000]).astype(">u2"), 0, 16, trns=struct.pack(">H", 30000))
    assert samples(stored_pixels(sixteen), 3) == [(0, 0, 0), (4, 4, 4), WHITE]


def test_gray_with_alpha_is_blended_over_the_background():
    la = Image.merge("LA", [Image.fromarray(row_of([100, 100, 100, 30]).astype(np.uint8)),
                            Image.fromarray(row_of([255, 128, 0, 64]).astype(np.uint8))])
    got = samples(stored_pixels(encoded(la)), 4)
    want = [100, blend(100, 128), 255, blend(30, 64)]
    assert all(abs(g[0] - w) <= 1 and g[0] == g[1] == g[2] for g, w in zip(got, want)), (got, want)
    sixteen = png_file(np.stack([row_of([25700, 25700]), row_of([65535, 32896])], axis=-1).reshape(16, -1)
                       .astype(">u2"), 4, 16)
    got = samples(stored_pixels(sixteen), 2)
    assert got[0] == (100, 100, 100) and abs(got[1][0] - blend(100, 128)) <= 1


def test_palette_images_with_and_without_transparency():
    palette = [10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (256 * 3 - 9)
    indices = row_of([0, 1, 2]).astype(np.uint8)
    p = Image.frombytes("P", (indices.shape[1], 16), indices.tobytes())
    p.putpalette(palette)
    assert samples(stored_pixels(encoded(p)), 3) == [(10, 20, 30), (200, 100, 50), (0, 255, 0)]
    assert samples(stored_pixels(encoded(p, transparency=1)), 3) == [(10, 20, 30), WHITE, (0, 255, 0)]
    # A tRNS chunk with one alpha per palette entry: entry 2 half transparent.
    partial = stored_pixels(encoded(p, transparency=bytes([255, 0, 128])))
    got = samples(partial, 3)
    assert got[0] == (10, 20, 30) and got[1] == WHITE
    assert all(abs(g - blend(c, 128)) <= 1 for g, c in zip(got[2], (0, 255, 0))), got[2]


def test_rgb_rgba_and_a_transparent_rgb_colour():
    rgb = np.stack([row_of([255, 10, 0]), row_of([0, 20, 128]), row_of([0, 30, 255])], axis=-1).astype(np.uint8)
    image = Image.fromarray(rgb)
    assert samples(stored_pixels(encoded(image)), 3) == [(255, 0, 0), (10, 20, 30), (0, 128, 255)]
    assert samples(stored_pixels(encoded(image, transparency=(10, 20, 30))), 3) == [(255, 0, 0), WHITE, (0, 128, 255)]
    alpha = row_of([255, 128, 0]).astype(np.uint8)[..., None]
    rgba = Image.fromarray(np.concatenate([rgb, alpha], axis=-1))
    got = samples(stored_pixels(encoded(rgba)), 3)
    assert got[0] == (255, 0, 0) and got[2] == WHITE
    assert all(abs(g - blend(c, 128)) <= 1 for g, c in zip(got[1], (10, 20, 30))), got[1]


def test_sixteen_bit_colour_pngs_keep_the_high_byte():
    rows = np.stack([row_of([65535, 2570]), row_of([0, 5140]), row_of([32896, 7710])], axis=-1).reshape(16, -1)
    assert samples(stored_pixels(png_file(rows.astype(">u2"), 2, 16)), 2) == [(255, 0, 128), (10, 20, 30)]
    rgba = np.stack([row_of([51400, 51400]), row_of([25700, 25700]), row_of([0, 0]), row_of([65535, 32896])],
                    axis=-1).reshape(16, -1)
    got = samples(stored_pixels(png_file(rgba.astype(">u2"), 6, 16)), 2)
    assert got[0] == (200, 100, 0)
    assert all(abs(g - blend(c, 128)) <= 1 for g, c in zip(got[1], (200, 100, 0))), got[1]


def test_cmyk_and_grayscale_jpegs():
    cmyk = np.stack([row_of([0, 255, 0, 0]), row_of([255, 0, 0, 0]), row_of([255, 0, 0, 0]),
                     row_of([0, 0, 0, 255])], axis=-1).astype(np.uint8)
    image = Image.frombytes("CMYK", (cmyk.shape[1], 16), cmyk.tobytes())
    data = encoded(image, "JPEG", quality=100)
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode == "CMYK"
    got = samples(stored_pixels(data), 4)
    for colour, want in zip(got, [(255, 0, 0), (0, 255, 255), (255, 255, 255), (0, 0, 0)]):
        assert max(abs(c - w) for c, w in zip(colour, want)) <= 4, (got, want)

    gray = encoded(Image.fromarray(row_of([30, 128, 220]).astype(np.uint8)), "JPEG", quality=100)
    for colour, want in zip(samples(stored_pixels(gray), 3), (30, 128, 220)):
        assert colour[0] == colour[1] == colour[2] and abs(colour[0] - want) <= 2


def test_a_sideways_phone_jpeg_is_stored_upright():
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 32, 32))              # left half red
    exif = Image.Exif()
    exif[0x0112] = 6                                      # "rotate 90 degrees clockwise to view"
    pixels = stored_pixels(encoded(image, "JPEG", quality=100, exif=exif.tobytes()))
    assert pixels.shape == (64, 32, 3)
    assert pixels[8, 16][0] > 200 and pixels[56, 16][2] > 200   # red on top, blue below


# -- bounds -----------------------------------------------------------------------------------------------------


def huge_png(width: int, height: int) -> bytes:
    """A real, small file of a huge grayscale image (the compressed zeros of every row)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded(monkeypatch):
    decoded = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or original_load(self))
    data = huge_png(8192, 8192)
    assert len(data) < 200_000
    with pytest.raises(RpcFailure) as err:
        prepare_reference_image(data, max_pixels=4096 * 4096)
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.message.startswith("reference_image:") and "67108864 pixels" in err.value.message
    assert "max_reference_image_pixels" in err.value.message
    assert decoded == []


def test_big_images_are_reduced_jpegs_already_while_decoding(monkeypatch):
    decoded_at = []
    original_load = JpegImagePlugin.JpegImageFile.load
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load",
                        lambda self: decoded_at.append(self.size) or original_load(self))
    photo = encoded(Image.new("RGB", (4000, 3000), (90, 140, 200)), "JPEG", quality=90)
    png, width, height = prepare_reference_image(photo)
    assert (width, height) == (1365, REFERENCE_SHORT_SIDE)
    assert decoded_at and decoded_at[0] == (2000, 1500)   # the decoder made a quarter of the pixels
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (1365, 1024)
        assert max(abs(c - w) for c, w in zip(image.getpixel((600, 500)), (90, 140, 200))) <= 3

    scan = encoded(Image.new("L", (1536, 2048), 77))
    _, width, height = prepare_reference_image(scan)
    assert (width, height) == (REFERENCE_SHORT_SIDE, 1365)
    small = encoded(Image.new("RGB", (640, 480), (1, 2, 3)))
    assert prepare_reference_image(small)[1:] == (640, 480)   # never enlarged


def test_at_most_a_few_images_are_decoded_at_once(monkeypatch):
    inside = 0
    most = 0
    lock = threading.Lock()
    original = characters._decode_within_bounds

    def slow_decode(data, max_pixels):
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.1)
        with lock:
            inside -= 1
        return original(data, max_pixels)

    monkeypatch.setattr(characters, "_decode_within_bounds", slow_decode)
    data = encoded(Image.new("RGB", (32, 32), (1, 2, 3)))
    threads = [threading.Thread(target=prepare_reference_image, args=(data,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most == MAX_CONCURRENT_DECODES == 2


@async_test
async def test_register_character_refuses_too_many_pixels_and_server_info_publishes_the_limits(tmp_path):
    async with running_gateway(tmp_path, max_reference_image_pixels=100 * 100, max_stored_npcs=7,
                               max_stored_npc_bytes=3 << 30, max_parked_memory_bytes=5 << 20,
                               npc_snapshot_interval_s=45) as h:
        err = await expect_rpc_error(
            register_character(h.stub, reference_image=encoded(Image.new("RGB", (101, 100)))),
            grpc.StatusCode.INVALID_ARGUMENT)
        assert err.details().startswith("reference_image:") and "10100 pixels" in err.details()
        stored = await register_character(h.stub, reference_image=encoded(Image.new("RGB", (100, 100))))
        assert (stored.reference_width, stored.reference_height) == (100, 100)

        limits = (await h.stub.GetServerInfo(pb.GetServerInfoRequest())).limits
        assert (limits.max_reference_image_pixels, limits.max_stored_npcs, limits.max_stored_npc_bytes,
                limits.max_parked_memory_bytes, limits.npc_snapshot_interval_s) == (10000, 7, 3 << 30, 5 << 20, 45)
