"""What the character does over a clip: the event timeline (emotion, action and listening changes with their
start times) and the per-frame performance computed from it, the audio and the idle motion (blinks,
breathing, head sway). Every number the renderer draws from comes from here, and it is also the clip's truth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from avatar_backend.media.mouth import mouth_from_audio
from avatar_backend.media.resample import MODEL_SAMPLE_RATE

EMOTIONS = ("neutral", "happy", "sad", "angry", "surprised")
ACTIONS = ("none", "nod", "shake_head", "look_around", "think", "wave")
# How long each action's motion takes, in seconds (an event may ask for another duration).
ACTION_SECONDS = {"nod": 1.2, "shake_head": 1.4, "look_around": 2.0, "think": 2.0, "wave": 1.8}
EMOTION_FADE_SECONDS = 0.15         # the old emotion fades out, then the new one fades in, each this long
BLINK_SECONDS = 0.15
BLINK_GAP_SECONDS = (3.0, 6.0)
LISTENING_TILT = 0.05               # radians of attentive head tilt while listening

EVENT_KINDS = ("emotion", "action", "listening")


@dataclass(frozen=True)
class Event:
    """One change at ``time`` seconds: ``emotion`` (name, intensity 0-1), ``action`` (name, optional
    duration) or ``listening`` (``on`` true/false)."""

    time: float
    kind: str
    name: str = ""
    intensity: float = 1.0
    duration: float = 0.0
    on: bool = False

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"event kind must be one of {EVENT_KINDS}, got {self.kind!r}")
        if self.kind == "emotion" and self.name not in EMOTIONS:
            raise ValueError(f"unknown emotion {self.name!r}; known: {EMOTIONS}")
        if self.kind == "action" and self.name not in ACTIONS[1:]:
            raise ValueError(f"unknown action {self.name!r}; known: {ACTIONS[1:]}")
        if not 0.0 <= self.intensity <= 1.0:
            raise ValueError(f"intensity must be in [0, 1], got {self.intensity}")

    @classmethod
    def emotion(cls, time: float, name: str, intensity: float = 1.0) -> "Event":
        return cls(time=time, kind="emotion", name=name, intensity=intensity)

    @classmethod
    def action(cls, time: float, name: str, duration: float = 0.0) -> "Event":
        return cls(time=time, kind="action", name=name, duration=duration)

    @classmethod
    def listening(cls, time: float, on: bool) -> "Event":
        return cls(time=time, kind="listening", on=on)

    @property
    def seconds(self) -> float:
        """An action's duration (its own, or the action's default)."""
        return self.duration or ACTION_SECONDS.get(self.name, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Event":
        return cls(**data)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _hold(phase: np.ndarray, ramp: float = 0.25) -> np.ndarray:
    """0 -> 1 over the first ``ramp`` of the phase, held, back to 0 over the last ``ramp``."""
    return _smoothstep(phase / ramp) * _smoothstep((1 - phase) / ramp)


def _action_motion(name: str, phase: np.ndarray) -> dict[str, np.ndarray]:
    """Pose, gaze and arm offsets of an action at ``phase`` (0-1); all are 0 at phase 0 and 1."""
    zero = np.zeros_like(phase)
    out = {k: zero.copy() for k in ("yaw", "pitch", "roll", "gaze_x", "gaze_y", "arm_raise", "hand_chin", "wave")}
    if name == "nod":
        out["pitch"] = 0.17 * np.sin(2 * np.pi * phase) ** 2          # down and up, twice
    elif name == "shake_head":
        out["yaw"] = 0.38 * np.sin(4 * np.pi * phase) * np.sin(np.pi * phase)
    elif name == "look_around":
        out["yaw"] = 0.32 * np.sin(2 * np.pi * phase) * _hold(phase, 0.15)
        out["gaze_x"] = 0.8 * np.sin(2 * np.pi * phase)
    elif name == "think":
        hold = _hold(phase)
        out["hand_chin"] = hold
        out["gaze_x"] = 0.55 * hold
        out["gaze_y"] = -0.75 * hold
        out["roll"] = 0.07 * hold
        out["pitch"] = -0.06 * hold
    elif name == "wave":
        hold = _hold(phase)
        out["arm_raise"] = hold
        out["wave"] = np.sin(8 * np.pi * phase) * hold
    return out


def _emotion_track(events: Sequence[Event], t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame emotion index and drawn intensity. A change fades the old expression out, then the new in,
    so every frame shows exactly one emotion at a known intensity."""
    names = np.zeros(len(t), np.int64)
    intensity = np.ones(len(t), np.float32)
    changes = sorted((e for e in events if e.kind == "emotion"), key=lambda e: e.time)
    previous = Event.emotion(-1e9, "neutral", 1.0)
    for index, event in enumerate(changes):
        end = changes[index + 1].time if index + 1 < len(changes) else np.inf
        mask = (t >= event.time) & (t < end)
        since = t[mask] - event.time
        if previous.name == event.name:
            ramp = np.clip(since / (2 * EMOTION_FADE_SECONDS), 0, 1)
            names[mask] = EMOTIONS.index(event.name)
            intensity[mask] = previous.intensity + (event.intensity - previous.intensity) * ramp
        else:
            fading_out = since < EMOTION_FADE_SECONDS
            names[mask] = np.where(fading_out, EMOTIONS.index(previous.name), EMOTIONS.index(event.name))
            out_level = previous.intensity * (1 - since / EMOTION_FADE_SECONDS)
            in_level = event.intensity * np.clip(since / EMOTION_FADE_SECONDS - 1, 0, 1)
            intensity[mask] = np.where(fading_out, out_level, in_level)
        previous = event
    return names, intensity


def _blinks(rng: np.random.Generator, t: np.ndarray, fps: int) -> np.ndarray:
    blink = np.zeros(len(t), np.float32)
    centre = rng.uniform(0.6, 3.5)
    half = BLINK_SECONDS / 2
    end = t[-1] + 1 if len(t) else 0.0
    while centre < end:
        # Centred on a frame so that one frame shows the eyes fully shut.
        snapped = round(centre * fps) / fps
        blink = np.maximum(blink, np.clip(1 - np.abs(t - snapped) / half, 0, 1))
        centre += rng.uniform(*BLINK_GAP_SECONDS)
    return blink


def plan_performance(
    audio: np.ndarray,
    events: Iterable[Event],
    n_frames: int,
    *,
    seed: int,
    fps: int = 20,
    sample_rate: int = MODEL_SAMPLE_RATE,
    idle_motion: bool = True,
) -> dict[str, np.ndarray]:
    """Every per-frame quantity the renderer draws (and the truth reports), as float32/int64/bool arrays.

    ``idle_motion=False`` removes blinks, breathing and sway, leaving only what the audio and the events ask
    for (tests use it to see one cause at a time).
    """
    events = list(events)
    t = np.arange(n_frames) / fps
    rng = np.random.default_rng([int(seed), 0x3C])
    openness, width = mouth_from_audio(audio, n_frames, sample_rate=sample_rate, fps=fps)

    listening = np.zeros(n_frames, bool)
    for event in sorted((e for e in events if e.kind == "listening"), key=lambda e: e.time):
        listening[t >= event.time] = event.on
    openness[listening] = 0.0

    emotion, emotion_intensity = _emotion_track(events, t)

    action = np.zeros(n_frames, np.int64)
    action_phase = np.zeros(n_frames, np.float32)
    motion = _action_motion("none", action_phase)
    for event in sorted((e for e in events if e.kind == "action"), key=lambda e: e.time):
        # A later action replaces one still running.
        mask = (t >= event.time) & (t < event.time + event.seconds)
        action[mask] = ACTIONS.index(event.name)
        action_phase[mask] = (t[mask] - event.time) / event.seconds
    for index, name in enumerate(ACTIONS[1:], start=1):
        mask = action == index
        if mask.any():
            for key, values in _action_motion(name, action_phase[mask]).items():
                motion[key][mask] = values

    yaw, pitch, roll = motion["yaw"], motion["pitch"], motion["roll"]
    offset = np.zeros((n_frames, 2), np.float32)
    breath = np.zeros(n_frames, np.float32)
    blink = np.zeros(n_frames, np.float32)
    # Listening: an attentive tilt that eases in, and a small nod every few seconds.
    attentive = _smoothstep(np.convolve(listening.astype(np.float32), np.ones(6) / 6, mode="full")[:n_frames])
    roll = roll + LISTENING_TILT * attentive
    listen_nod = np.sin(2 * np.pi * t / 2.8) ** 8 * 0.06
    pitch = pitch + listen_nod * listening
    # Sad lowers the head a little, happy lifts it.
    sad = (emotion == EMOTIONS.index("sad")) * emotion_intensity
    happy = (emotion == EMOTIONS.index("happy")) * emotion_intensity
    pitch = pitch + 0.07 * sad - 0.03 * happy
    if idle_motion:
        def sway(amplitude: float, low: float, high: float) -> np.ndarray:
            f1, f2 = rng.uniform(low, high, 2)
            p1, p2 = rng.uniform(0, 2 * np.pi, 2)
            return amplitude * (0.7 * np.sin(2 * np.pi * f1 * t + p1) + 0.3 * np.sin(2 * np.pi * f2 * 1.7 * t + p2))

        yaw = yaw + sway(0.06, 0.08, 0.2)
        pitch = pitch + sway(0.035, 0.1, 0.25)
        roll = roll + sway(0.035, 0.07, 0.18)
        offset[:, 0] = sway(0.008, 0.05, 0.15)
        offset[:, 1] = sway(0.005, 0.08, 0.2)
        # Talking heads bob a little with the voice.
        pitch = pitch + 0.025 * np.convolve(openness, np.ones(5) / 5, mode="full")[2:2 + n_frames]
        period = rng.uniform(3.2, 4.6)
        breath = (0.5 - 0.5 * np.cos(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))).astype(np.float32)
        blink = _blinks(rng, t, fps)

    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    return {
        "mouth_open": f32(openness),
        "mouth_width": f32(width),
        "emotion": emotion,
        "emotion_intensity": f32(emotion_intensity),
        "action": action,
        "action_phase": f32(action_phase),
        "blink": f32(blink),
        "yaw": f32(yaw),
        "pitch": f32(pitch),
        "roll": f32(roll),
        "offset": f32(offset),
        "listening": listening,
        "breath": f32(breath),
        "gaze": f32(np.stack([motion["gaze_x"], motion["gaze_y"]], axis=1)),
        "arm_raise": f32(motion["arm_raise"]),
        "hand_chin": f32(motion["hand_chin"]),
        "wave": f32(motion["wave"]),
    }
