"""Checking and storing characters (the gateway is the only writer of characters in the data directory)."""

from __future__ import annotations

import io
import warnings

import grpc
from PIL import Image, ImageOps

from avatar_backend.proto_gen import avatar_service_pb2
from avatar_backend.store import CharacterRecord, valid_id

from .limits import Limits
from .status import RpcFailure

__all__ = ["character_to_proto", "check_character_request", "prepare_reference_image"]

# MPO is what many cameras write: a JPEG with extra pictures appended (the first one is used).
ACCEPTED_IMAGE_FORMATS = ("PNG", "JPEG", "MPO")
MIN_IMAGE_SIDE = 16
MAX_IMAGE_SIDE = 8192
MAX_PROMPT_NAME_CHARS = 64
MAX_NAMED_PROMPTS = 64


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


def prepare_reference_image(data: bytes) -> tuple[bytes, int, int]:
    """The image as an RGB PNG, with its width and height; RpcFailure(INVALID_ARGUMENT) when it is not a
    PNG or JPEG that decodes. CPU-bound: run it in a thread."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_IMAGE_FORMATS:
                raise _invalid(f"reference_image: {image.format or 'this'} format is not accepted; send a PNG or JPEG")
            width, height = image.size
            if not (MIN_IMAGE_SIDE <= width <= MAX_IMAGE_SIDE and MIN_IMAGE_SIDE <= height <= MAX_IMAGE_SIDE):
                raise _invalid(f"reference_image: {width}x{height} pixels; each side must be "
                               f"{MIN_IMAGE_SIDE}-{MAX_IMAGE_SIDE}")
            image.load()
    except RpcFailure:
        raise
    except Exception as err:  # Pillow raises many kinds for a broken file
        raise _invalid(f"reference_image: does not decode as a PNG or JPEG ({err})") from None
    # Phones store JPEGs sideways with an orientation tag; the model must see the upright picture.
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    else:
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue(), image.width, image.height


def character_to_proto(record: CharacterRecord, npc_count: int) -> avatar_service_pb2.Character:
    return avatar_service_pb2.Character(
        character_id=record.character_id, base_prompt=record.base_prompt,
        emotion_prompts=record.emotion_prompts, action_prompts=record.action_prompts,
        reference_width=record.reference_width, reference_height=record.reference_height,
        created_unix_ms=record.created_unix_ms, npc_count=npc_count,
    )
