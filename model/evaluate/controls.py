"""Control response: does an emotion or action event show on the generated frames, and how soon?

A small classifier learns emotion and action from ground-truth renders only (a frame and the frame 4 before,
at half size, so motion shows). Its accuracy on held-out ground truth is reported beside its accuracy on
generated frames, and for each event of a held-out clip the time from the event to the first generated frame
the classifier reads as that event.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.data.dataset import clip_seed, make_clip
from model.data.timeline import ACTIONS, EMOTIONS

CLASSIFIER_DATA_SEED = 9101
LAG = 4                       # frames between the two the classifier sees


def labels(truth: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: emotion (neutral unless drawn at intensity >= 0.5) and action (none outside its middle)."""
    emotion = np.where(truth["emotion_intensity"] >= 0.5, truth["emotion"], 0)
    phase = truth["action_phase"]
    action = np.where((phase > 0.15) & (phase < 0.85), truth["action"], 0)
    return emotion.astype(np.int64), action.astype(np.int64)


def inputs(frames: np.ndarray) -> torch.Tensor:
    """[T, H, W, 3] uint8 -> [T, 6, H/2, W/2]: each frame with the one LAG before it (the first repeats)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    x = F.avg_pool2d(x, 2)
    before = torch.cat([x[:1].expand(LAG, -1, -1, -1), x[:-LAG]])
    return torch.cat([x, x - before], dim=1)


class ControlClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(6, 24, 3, stride=2, padding=1), nn.SiLU(), nn.Conv2d(24, 48, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(48, 64, 3, stride=2, padding=1), nn.SiLU(), nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.emotion = nn.Linear(64, len(EMOTIONS))
        self.action = nn.Linear(64, len(ACTIONS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.emotion(h), self.action(h)

    @torch.no_grad()
    def predict(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emotion, action = [], []
        for start in range(0, len(frames), 256):
            x = inputs(frames[max(0, start - LAG): start + 256])[min(start, LAG):]
            e, a = self(x)
            emotion.append(e.argmax(1).numpy())
            action.append(a.argmax(1).numpy())
        return np.concatenate(emotion), np.concatenate(action)


def ground_truth_set(count: int, size: int, seed: int = CLASSIFIER_DATA_SEED):
    clips = [make_clip(clip_seed(seed, i), size=size, seconds=6.0)[0] for i in range(count)]
    x = torch.cat([inputs(c.frames) for c in clips])
    e, a = zip(*(labels(c.truth) for c in clips))
    return x, torch.from_numpy(np.concatenate(e)), torch.from_numpy(np.concatenate(a))


def train_classifier(size: int, clips: int = 80, steps: int = 800, seed: int = 0) -> tuple[ControlClassifier, dict]:
    """Train on ground-truth renders; accuracy on held-out ground truth (other identities and voices)."""
    torch.manual_seed(seed)
    x, e, a = ground_truth_set(clips, size)
    hx, he, ha = ground_truth_set(max(8, clips // 5), size, seed=CLASSIFIER_DATA_SEED + 1)
    model = ControlClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(len(x), (64,), generator=generator)
        pe, pa = model(x[batch])
        loss = F.cross_entropy(pe, e[batch]) + F.cross_entropy(pa, a[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        pe, pa = model(hx)
    accuracy = {"emotion": float((pe.argmax(1) == he).float().mean()),
                "action": float((pa.argmax(1) == ha).float().mean())}
    return model, accuracy


def response(classifier: ControlClassifier, frames: np.ndarray, truth: dict[str, np.ndarray], events: list[dict],
             fps: int, within_frames: int) -> dict:
    """Frame accuracy of the classifier on generated frames against the clip's truth, and per event whether
    (and how soon) the generated frames show it within ``within_frames``."""
    n = len(frames)
    emotion, action = classifier.predict(frames)
    true_emotion, true_action = labels({k: v[:n] for k, v in truth.items()})
    shown = []
    for event in events:
        start = int(round(event["time"] * fps))
        if event["kind"] not in ("emotion", "action") or start >= n or (event["kind"] == "emotion" and event["name"] == "neutral"):
            continue
        predicted = emotion if event["kind"] == "emotion" else action
        wanted = (EMOTIONS if event["kind"] == "emotion" else ACTIONS).index(event["name"])
        window = predicted[start: start + within_frames]
        hits = np.nonzero(window == wanted)[0]
        shown.append({"kind": event["kind"], "name": event["name"], "visible": bool(len(hits)),
                      "seconds_to_visible": float(hits[0] / fps) if len(hits) else None})
    return {"emotion_accuracy": float((emotion == true_emotion).mean()),
            "action_accuracy": float((action == true_action).mean()), "events": shown}
