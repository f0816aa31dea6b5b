"""The prompts the tiny model is trained with, and which of them a moment of a clip shows.

The tiny model's text encoder reads at most 15 bytes, so its prompts are the state words themselves; the
default character (``avatar_backend/assets/default_character.json``) uses exactly these, and so should any
character served by the tiny model. Serving picks a block's prompt the same way :func:`block_prompt` does:
the emotion (blended from the base prompt by its intensity) unless an action started in the block, or the
NPC is listening in silence.
"""

from __future__ import annotations

from dataclasses import dataclass

BASE_PROMPT = "talking"
EMOTION_PROMPTS = {"happy": "happy", "sad": "sad", "angry": "angry", "surprised": "surprised"}
ACTION_PROMPTS = {
    "nod": "nod", "shake_head": "shake head", "look_around": "look around", "think": "think", "wave": "wave",
    "listening": "listening",
}


@dataclass(frozen=True)
class BlockPrompt:
    """A block's conditioning: ``prompt`` (None: the base prompt) at ``intensity``."""

    prompt: str | None
    intensity: float = 1.0


def block_prompt(*, emotion: str, intensity: float, action_started: str | None, listening_silent: bool) -> BlockPrompt:
    """The prompt serving would use for a block (see the module docstring)."""
    if action_started:
        return BlockPrompt(ACTION_PROMPTS[action_started])
    if listening_silent:
        return BlockPrompt(ACTION_PROMPTS["listening"])
    if emotion == "neutral" or intensity <= 0.0:
        return BlockPrompt(None)
    return BlockPrompt(EMOTION_PROMPTS[emotion], intensity)
