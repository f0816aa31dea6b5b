"""Checking and storing characters (the gateway is the only writer of characters in the data directory).

A reference image is decoded within bounds: its header is read first and an image over
``Limits.max_reference_image_pixels`` is refused before any pixel is decoded; a JPEG is decoded straight at a
reduced scale when it is bigger than the model can use; at most ``MAX_CONCURRENT_DECODES`` images are decoded
at once. Whatever PNG or JPEG mode it comes in, it is stored as an 8-bit RGB PNG with the same picture (see
:func:`to_rgb`).
"""

from __future__ import annotations

import io
import json
import threading
from importlib import resources

import grpc
import numpy as np
from PIL import Image, ImageOps

from avatar_backend import DEFAULT_CHARACTER_ID
from avatar_backend.proto_gen import avatar_service_pb2
from avatar_backend.store import CharacterRecord, DataDir, now_ms, valid_id

from .limits import Limits
from .status import RpcFailure

__all__ = [
    "character_to_proto",
    "check_character_request",
    "default_character_files",
    "ensure_default_character",
    "prepare_reference_image",
    "to_rgb",
]


# MPO is what many cameras write: a JPEG with extra pictures appended (the first one is used).
ACCEPTED_IMAGE_FORMATS = ("PNG", "JPEG", "MPO")
MIN_IMAGE_SIDE = 16
MAX_IMAGE_SIDE = 8192
MAX_PROMPT_NAME_CHARS = 64
MAX_NAMED_PROMPTS = 64
# The model center-crops the reference to the video size (at most 832 pixels a side in any config): an image
# whose shorter side is longer than this is reduced to it, which keeps every crop at full detail.
REFERENCE_SHORT_SIDE = 1024
# Transparent pixels are composited over white, the background of a blank page (and of the default character).
TRANSPARENT_BACKGROUND = (255, 255, 255)
# Decoding holds the whole image in memory (up to 4 bytes per pixel within the pixel limit): bound how many
# RegisterCharacter calls do that at once. The others wait in their threads.
MAX_CONCURRENT_DECODES = 2
_decode_slots = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)
# 16-bit grayscale PNGs open as one of these (or as "I" in some Pillow versions), with values 0-65535.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _invalid(message: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, message)


def check_character_request(request: avatar_service_pb2.RegisterCharacterRequest, limits: Limits) -> None:
    """Everything but the image's content; raises RpcFailure naming the field."""
    if not valid_id(request.character_id):
        raise _invalid(f"character_id: {request.character_id!r} is not a valid id "
                       "(1-128 characters of [A-Za-z0-9_.-])")
    if not request.reference_image:
        raise _invalid("reference_image: required (a PNG or JPEG of the character)")
    size, limit = len(request.reference_image), limits.max_reference_image_bytes
    if size > limit:
        raise RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"reference_image: {size} bytes is over the limit of {limit} bytes "
                         "(ServerInfo.limits.max_reference_image_bytes)")
    _check_prompt("base_prompt", request.base_prompt, limits, allow_empty=True)
    _check_named_prompts("emotion_prompts", request.emotion_prompts, limits)
    _check_named_prompts("action_prompts", request.action_prompts, limits)


def _check_prompt(field: str, prompt: str, limits: Limits, *, allow_empty: bool = False) -> None:
    if not allow_empty and not prompt.strip():
        raise _invalid(f"{field}: the prompt is empty")
    if len(prompt) > limits.max_prompt_chars:
        raise _invalid(f"{field}: {len(prompt)} characters is over the limit of {limits.max_prompt_chars} "
                       "(ServerInfo.limits.max_prompt_chars)")


def _check_named_prompts(field: str, prompts, limits: Limits) -> None:
    if len(prompts) > MAX_NAMED_PROMPTS:
        raise _invalid(f"{field}: {len(prompts)} entries is over the limit of {MAX_NAMED_PROMPTS}")
    for name, prompt in prompts.items():
        if not 1 <= len(name) <= MAX_PROMPT_NAME_CHARS or name.strip() != name or not name.isprintable():
            raise _invalid(f"{field}: name {name!r} must be 1-{MAX_PROMPT_NAME_CHARS} printable characters "
                           "without surrounding spaces")
        _check_prompt(f"{field}[{name}]", prompt, limits)


def prepare_reference_image(data: bytes,
                            max_pixels: int = Limits.max_reference_image_pixels) -> tuple[bytes, int, int]:
    """The image as an RGB PNG, with its width and height; RpcFailure(INVALID_ARGUMENT) when it is not a
    PNG or JPEG that decodes, or has more than ``max_pixels`` pixels. CPU-bound: run it in a thread."""
    with _decode_slots:
        image = _decode_within_bounds(data, max_pixels)
        # Phones store JPEGs sideways with an orientation tag; the model must see the upright picture.
        image = to_rgb(ImageOps.exif_transpose(image))
        reduced = reduced_size(*image.size)
        if reduced != image.size:
            image = image.resize(reduced, Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue(), image.width, image.height


def reduced_size(width: int, height: int) -> tuple[int, int]:
    """The size an image is stored at: scaled down so its shorter side is REFERENCE_SHORT_SIDE, if longer."""
    short = min(width, height)
    if short <= REFERENCE_SHORT_SIDE:
        return width, height
    return max(1, round(width * REFERENCE_SHORT_SIDE / short)), max(1, round(height * REFERENCE_SHORT_SIDE / short))


def _decode_within_bounds(data: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        if image.format not in ACCEPTED_IMAGE_FORMATS:
            raise _invalid(f"reference_image: {image.format or 'this'} format is not accepted; send a PNG or JPEG")
        width, height = image.size
        if not (MIN_IMAGE_SIDE <= width <= MAX_IMAGE_SIDE and MIN_IMAGE_SIDE <= height <= MAX_IMAGE_SIDE):
            raise _invalid(f"reference_image: {width}x{height} pixels; each side must be "
                           f"{MIN_IMAGE_SIDE}-{MAX_IMAGE_SIDE}")
        if width * height > max_pixels:
            raise _invalid(_too_many_pixels(f"{width}x{height} is {width * height} pixels", max_pixels))
        if image.format in ("JPEG", "MPO"):
            # DCT scaling: the decoder itself produces 1/2, 1/4 or 1/8 of the size, never below what is kept.
            image.draft(image.mode, reduced_size(width, height))
        image.load()
    except RpcFailure:
        raise
    except Image.DecompressionBombError as err:  # Pillow's own guard, hit before the header is checked
        raise _invalid(_too_many_pixels(str(err), max_pixels)) from None
    except Exception as err:  # Pillow raises many kinds for a broken file
        raise _invalid(f"reference_image: does not decode as a PNG or JPEG ({err})") from None
    return image


def _too_many_pixels(what: str, max_pixels: int) -> str:
    return (f"reference_image: {what}, over the limit of {max_pixels} pixels "
            "(ServerInfo.limits.max_reference_image_pixels); send a smaller image")


def to_rgb(image: Image.Image) -> Image.Image:
    """An image of any mode PNG or JPEG decode to, as 8-bit RGB with the same picture.

    - 16-bit grayscale (I;16, I;16B, ... and I, which Pillow gives 16-bit PNGs too): 0-65535 scaled to 0-255;
    - F (32-bit float): on Pillow's 8-bit scale (0-255), rounded and clipped;
    - 1, L, P, RGB, CMYK, YCbCr: Pillow's conversion (CMYK without a colour profile);
    - transparency (an alpha band, or a transparent colour or palette entries in a PNG's tRNS chunk):
      composited over TRANSPARENT_BACKGROUND, partial alpha blended.
    """
    mode = image.mode
    transparency = image.info.get("transparency")
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        values = np.asarray(image)
        scale = 1.0 if mode == "F" else 255.0 / 65535.0
        gray = Image.fromarray(np.clip(np.rint(values.astype(np.float64) * scale), 0, 255).astype(np.uint8))
        if isinstance(transparency, int) and mode != "F":
            alpha = np.where(values == transparency, 0, 255).astype(np.uint8)
            gray = Image.merge("LA", (gray, Image.fromarray(alpha)))
            return _over_background(gray.convert("RGBA"))
        return gray.convert("RGB")
    if "A" in image.getbands() or "a" in image.getbands() or transparency is not None:
        # convert("RGBA") applies a tRNS colour or palette alpha and un-premultiplies "RGBa"/"La".
        return _over_background(image.convert("RGBA"))
    return image.convert("RGB")


def _over_background(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def character_to_proto(record: CharacterRecord, npc_count: int) -> avatar_service_pb2.Character:
    return avatar_service_pb2.Character(
        character_id=record.character_id, base_prompt=record.base_prompt,
        emotion_prompts=record.emotion_prompts, action_prompts=record.action_prompts,
        reference_width=record.reference_width, reference_height=record.reference_height,
        created_unix_ms=record.created_unix_ms, npc_count=npc_count,
    )


def default_character_files() -> tuple[dict, bytes]:
    """The embedded default character: its prompts (JSON) and its reference image (PNG bytes)."""
    assets = resources.files("avatar_backend") / "assets"
    spec = json.loads((assets / "default_character.json").read_text())
    return spec, (assets / spec.get("image", "default_character.png")).read_bytes()


def ensure_default_character(data_dir: DataDir) -> bool:
    """Write the default character into ``data_dir`` unless one of that id exists; True when written.

    The server does this at start-up, before it serves, so the data dir has no other writer at that moment.
    """
    if data_dir.has_character(DEFAULT_CHARACTER_ID):
        return False
    spec, png = default_character_files()
    with Image.open(io.BytesIO(png)) as image:
        width, height = image.size
    data_dir.write_character(CharacterRecord(
        character_id=DEFAULT_CHARACTER_ID,
        base_prompt=spec["base_prompt"],
        emotion_prompts=dict(spec.get("emotion_prompts", {})),
        action_prompts=dict(spec.get("action_prompts", {})),
        reference_width=width,
        reference_height=height,
        created_unix_ms=now_ms(),
    ), png)
    return True
