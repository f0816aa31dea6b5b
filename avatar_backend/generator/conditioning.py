"""What a block is conditioned on, as functions that serving and training share.

The pipeline calls these once per character or once per block; the trainer (``model/train``) calls the very
same functions on whole clips, so the model learns from exactly the inputs it is served:

- :func:`reference_pixels`: a reference image, cropped and scaled the reference's way, as [3, H, W] in [-1, 1];
- :func:`padded_text`: a prompt's embedding zero-padded to the DiT's text length;
- :func:`blended_text`: an emotion's text at an intensity (the base prompt's embedding blended towards it);
- :func:`audio_tail_frames`: how much past audio (zeros before the stream starts) a block's features are computed
  over;
- :func:`block_audio_window`: a block's audio window from per-video-frame features that start at any frame.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .schedule import BlockLayout, StreamSchedule, audio_window


def center_crop_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height (bicubic), then centre-crop, as the reference prepares its image."""
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                           Image.BICUBIC)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def reference_pixels(image: Image.Image | np.ndarray, width: int, height: int) -> Tensor:
    """An RGB image (PIL, or uint8 [H, W, 3]) -> float32 [3, height, width] in [-1, 1], cropped to cover."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image, "RGB")
    image = center_crop_resize(image.convert("RGB"), width, height)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
    return pixels / 127.5 - 1.0


def padded_text(embedding: Tensor, text_len: int) -> Tensor:
    """[L, dim] -> [text_len, dim]: rows past the prompt are zeros (the model attends them; there is no mask)."""
    padded = embedding.new_zeros(text_len, embedding.shape[-1])
    rows = min(embedding.shape[0], text_len)
    return torch.cat([embedding[:rows], padded[rows:]]) if rows < text_len else embedding[:text_len]


def quantized_intensity(intensity: float) -> float:
    """Intensity clamped to [0, 1] in steps of 0.05 (so a character's prompt cache stays small)."""
    return round(min(max(float(intensity), 0.0), 1.0) * 20) / 20


def is_base_prompt(base_prompt: str, prompt: str | None, intensity: float) -> bool:
    """Whether a block under ``prompt`` (None: the base prompt) at ``intensity`` is under the base prompt."""
    return prompt is None or prompt == base_prompt or quantized_intensity(intensity) == 0.0


def prompt_key(base_prompt: str, prompt: str | None, intensity: float) -> tuple[str | None, float]:
    """What a block is drawn under, one way for every spelling of it: (None, 1.0) for the base prompt, else the
    prompt and its quantized intensity."""
    if is_base_prompt(base_prompt, prompt, intensity):
        return None, 1.0
    return prompt, quantized_intensity(intensity)


def blended_text(base: Tensor, prompt: Tensor, intensity: float) -> Tensor:
    """A prompt at ``intensity``: the base prompt's padded embedding moved towards the prompt's (1: the prompt)."""
    intensity = quantized_intensity(intensity)
    return prompt if intensity == 1.0 else torch.lerp(base, prompt, intensity)


def audio_tail_frames(schedule: StreamSchedule, encoder_context_frames: int) -> int:
    """Video frames of past audio a block's features reach back to before its first new frame.

    A later block's window starts ``first_video_frames + audio_radius`` frames before its first output frame
    (block b >= 2: window start 32(b-1), outputs from 21 + 32(b-1), and frame n reads n - 2), and the audio
    front end needs ``encoder_context_frames`` of its own history before that. Block 0's tail is zeros.
    """
    return schedule.first_video_frames + schedule.audio_radius + encoder_context_frames


def block_audio_window(features: Tensor, first_frame: int, plan: BlockLayout, radius: int) -> Tensor:
    """The block's audio window [1, audio_frames, 2 * radius + 1, layers, ch].

    ``features`` [S, layers, ch] are per-video-frame features whose first row is absolute video frame
    ``first_frame`` of the stream (negative when the audio before the stream's start is zeros). The stream starts
    at frame 0, and the window's indices are clamped there as the reference clamps them.
    """
    rows, start = block_audio_rows(features, first_frame, plan, radius)
    return audio_window(rows, start, plan.audio_frames, radius)


def block_audio_rows(features: Tensor, first_frame: int, plan: BlockLayout, radius: int) -> tuple[Tensor, int]:
    """The rows of ``features`` (as in :func:`block_audio_window`) that the block's window reads, and the row of
    its first frame: ``audio_window(rows, start, plan.audio_frames, radius)`` is the block's window. A fifth of
    the window's size (it repeats each row 2 * radius + 1 times): what a follower rank is sent."""
    features = features[max(0, -first_frame):]
    start = plan.audio_start - max(0, first_frame)
    # Where the window is clamped at either end, the rows keep that end, so the clamping is the same.
    low, high = max(0, start - radius), min(features.shape[0], start + plan.audio_frames + radius)
    return features[low:high], start - low
