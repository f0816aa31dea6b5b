"""Procedural training data for the tiny model: cartoon characters that talk, emote and act, with the truth
of every frame (``render_clip``), espeak-ng speech to drive them (``random_utterance``), a dataset writer and
reader, and measures that read the truth back from pixels (``measure_mouth_openness``)."""

from .identity import DEFAULT_IDENTITY, CharacterIdentity, describe_identity, identity_from_seed
from .measure import measure_eye_whites, measure_mouth_dark_area, measure_mouth_openness, region_change
from .render import Clip, neutral_state, render_clip, render_still
from .timeline import ACTION_SECONDS, ACTIONS, EMOTIONS, Event

__all__ = [
    "ACTIONS", "ACTION_SECONDS", "CharacterIdentity", "Clip", "DEFAULT_IDENTITY", "EMOTIONS", "Event",
    "describe_identity", "identity_from_seed", "measure_eye_whites", "measure_mouth_dark_area",
    "measure_mouth_openness", "neutral_state", "region_change", "render_clip", "render_still",
]
