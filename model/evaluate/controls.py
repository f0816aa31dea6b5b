"""Control response: does an emotion or action event show on the generated frames, and how soon?

A small classifier learns emotion and action from ground-truth renders only. It sees a frame at full size with
two differences beside it: from the frame ``LAG`` before (so motion shows) and from the character's neutral
still, the image a server is given (so the expression shows apart from who the character is). Its accuracy on
held-out ground truth is reported beside its accuracy on generated frames, with the share of the frames showing
an emotion or an action that it reads as such (frame accuracy alone is mostly the neutral frames), and for each
event of a held-out clip the time from the event to the first frame the classifier reads as that event, on
generated frames and, as the floor of what the classifier can see at all, on the clip's ground truth.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.data.dataset import clip_seed, make_clip
from model.data.render import render_still
from model.data.timeline import ACTIONS, EMOTIONS, Event

CLASSIFIER_DATA_SEED = 9101
LAG = 4                       # frames between the frame and the one its motion is measured from
BATCH = 64
HOLD_FRAMES = 3               # frames in a row an event must be read for to count as visible
SHOWN_INTENSITY = 0.5         # an emotion drawn fainter than this is labelled neutral: the classifier reads none


def labels(truth: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: emotion (neutral unless drawn at intensity >= SHOWN_INTENSITY) and action (none outside its
    middle)."""
    emotion = np.where(truth["emotion_intensity"] >= SHOWN_INTENSITY, truth["emotion"], 0)
    phase = truth["action_phase"]
    action = np.where((phase > 0.15) & (phase < 0.85), truth["action"], 0)
    return emotion.astype(np.int64), action.astype(np.int64)


def readable(event: Event) -> bool:
    """Whether the classifier can read the event at all: an action, or an emotion other than neutral drawn at
    ``SHOWN_INTENSITY`` or more (a fainter one is labelled neutral, so it is not counted as one to show)."""
    if event.kind == "action":
        return True
    return event.kind == "emotion" and event.name != "neutral" and event.intensity >= SHOWN_INTENSITY


def _pixels(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def augment(x: torch.Tensor, before: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random colour shift, blur and noise on a frame and its earlier frame: generated frames drift in
    colour and are softer than renders, and that must not read as an emotion or an action."""
    n = x.shape[0]
    gain = 1 + 0.25 * (2 * torch.rand(n, 3, 1, 1, generator=generator) - 1)
    offset = 0.2 * (2 * torch.rand(n, 3, 1, 1, generator=generator) - 1)
    blur = (torch.rand(n, 1, 1, 1, generator=generator) < 0.5).float()

    def one(image: torch.Tensor) -> torch.Tensor:
        soft = F.avg_pool2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        image = blur * soft + (1 - blur) * image
        return image * gain + offset

    noise = 0.03 * torch.randn(x.shape, generator=generator)
    return one(x) + noise, one(before) + noise


def inputs(frames: np.ndarray, still: np.ndarray, index: np.ndarray,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """The classifier's input for frames ``index`` of a clip: [n, 9, H, W], each frame, its change over ``LAG``
    frames (the first frames measure from frame 0) and its difference from the neutral ``still``; augmented
    (:func:`augment`) when a ``generator`` is given."""
    x = _pixels(frames[index])
    before = _pixels(frames[np.maximum(index - LAG, 0)])
    if generator is not None:
        x, before = augment(x, before, generator)
    return torch.cat([x, x - before, x - _pixels(still[None])], dim=1)


class ControlClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        widths = (9, 32, 48, 64, 96, 96)
        layers: list[nn.Module] = []
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.SiLU()]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.emotion = nn.Linear(widths[-1], len(EMOTIONS))
        self.action = nn.Linear(widths[-1], len(ACTIONS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.emotion(h), self.action(h)

    @torch.no_grad()
    def predict(self, frames: np.ndarray, still: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per frame of a clip (uint8 [T, H, W, 3]) of the character of ``still``: emotion and action indices."""
        emotion, action = [], []
        for start in range(0, len(frames), 256):
            e, a = self(inputs(frames, still, np.arange(start, min(start + 256, len(frames)))))
            emotion.append(e.argmax(1).numpy())
            action.append(a.argmax(1).numpy())
        return np.concatenate(emotion), np.concatenate(action)


def ground_truth_set(count: int, size: int, fps: int, seed: int = CLASSIFIER_DATA_SEED):
    """``count`` rendered clips at ``fps``: (frames, still, emotion labels, action labels) per clip."""
    clips = []
    for i in range(count):
        clip = make_clip(clip_seed(seed, i), size=size, seconds=6.0, fps=fps)[0]
        emotion, action = labels(clip.truth)
        clips.append((clip.frames, render_still(clip.identity, size), emotion, action))
    return clips


def train_classifier(size: int, fps: int, clips: int = 80, steps: int = 1200,
                     seed: int = 0) -> tuple[ControlClassifier, dict]:
    """Train on ground-truth renders at the model's size and frame rate; accuracy on held-out ground truth (other
    identities and voices)."""
    torch.manual_seed(seed)
    train = ground_truth_set(clips, size, fps)
    held_out = ground_truth_set(max(8, clips // 5), size, fps, seed=CLASSIFIER_DATA_SEED + 1)
    model = ControlClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        # A few frames from each of several clips: each clip's still is computed with it.
        picks = rng.integers(len(train), size=8)
        x, e, a = [], [], []
        for c in picks:
            frames, still, emotion, action = train[c]
            index = rng.integers(len(frames), size=BATCH // len(picks))
            x.append(inputs(frames, still, index, generator))
            e.append(torch.from_numpy(emotion[index]))
            a.append(torch.from_numpy(action[index]))
        pe, pa = model(torch.cat(x))
        loss = F.cross_entropy(pe, torch.cat(e)) + F.cross_entropy(pa, torch.cat(a))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    hits = np.zeros(2)
    frames_seen = 0
    for frames, still, emotion, action in held_out:
        pe, pa = model.predict(frames, still)
        hits += [(pe == emotion).sum(), (pa == action).sum()]
        frames_seen += len(frames)
    accuracy = {"emotion": float(hits[0] / frames_seen), "action": float(hits[1] / frames_seen)}
    return model, accuracy


def response(classifier: ControlClassifier, frames: np.ndarray, still: np.ndarray, truth: dict[str, np.ndarray],
             events: list[dict], fps: int, within_frames: int) -> dict:
    """Frame accuracy of the classifier on ``frames`` against the clip's truth, per :func:`readable` event whether
    (and how soon) the frames show it within ``within_frames`` of the event, what each true label's frames were
    read as, and the frames read as an action where the truth shows none, by whether the clip asked for it within
    ``within_frames``."""
    n = len(frames)
    emotion, action = classifier.predict(frames, still)
    true_emotion, true_action = labels({k: v[:n] for k, v in truth.items()})
    shown = []
    for event in events:
        start = int(round(event["time"] * fps))
        if start >= n or not readable(Event.from_dict(event)):
            continue
        predicted = emotion if event["kind"] == "emotion" else action
        wanted = (EMOTIONS if event["kind"] == "emotion" else ACTIONS).index(event["name"])
        # Visible: read as the event for HOLD_FRAMES frames in a row that start within the window (one frame
        # read right could be the classifier's noise).
        shown_run = np.convolve(predicted[start: start + within_frames + HOLD_FRAMES - 1] == wanted,
                                np.ones(HOLD_FRAMES), "valid") == HOLD_FRAMES
        hits = np.nonzero(shown_run)[0]
        shown.append({"kind": event["kind"], "name": event["name"], "visible": bool(len(hits)),
                      "seconds_to_visible": float(hits[0] / fps) if len(hits) else None})
    # Most frames are neutral and without an action, so frame accuracy rewards a model that never shows one;
    # the frames that do show an emotion or an action in the truth, and how many of them read as it, do not.
    emotional, acting = true_emotion > 0, true_action > 0
    # An action read where the truth shows none is the clip's own action drawn early or late (within one block of
    # that action's time in the truth: a matter of when) or one the clip did not ask for there (of what is drawn).
    near_its_event = np.zeros((len(ACTIONS), n), bool)
    for event in events:
        if event["kind"] == "action":
            start = int(round(event["time"] * fps))
            end = start + int(round(Event.from_dict(event).seconds * fps))
            near_its_event[ACTIONS.index(event["name"]), max(0, start - within_frames): end + within_frames] = True
    misread = ~acting & (action > 0)
    drawn_out_of_time = misread & near_its_event[action, np.arange(n)]
    return {"emotion_accuracy": float((emotion == true_emotion).mean()),
            "action_accuracy": float((action == true_action).mean()), "events": shown,
            "emotion_frames": int(emotional.sum()), "emotion_frames_read": int((emotion == true_emotion)[emotional].sum()),
            "action_frames": int(acting.sum()), "action_frames_read": int((action == true_action)[acting].sum()),
            "emotion_confusion": _confusion(true_emotion, emotion, len(EMOTIONS)),
            "action_confusion": _confusion(true_action, action, len(ACTIONS)),
            "action_read_out_of_time": int(drawn_out_of_time.sum()),
            "action_read_unasked": int((misread & ~drawn_out_of_time).sum())}


def _confusion(truth: np.ndarray, read: np.ndarray, classes: int) -> list[list[int]]:
    """Frames per (true label, label read): row = truth, column = reading."""
    return np.bincount(truth * classes + read, minlength=classes * classes).reshape(classes, classes).tolist()


def confusion(responses: list[dict], kind: str) -> dict[str, dict[str, int]]:
    """Pooled over :func:`response` results: for each true emotion (``kind`` "emotion") or action ("action"),
    how many of its frames the classifier read as each label; labels no frame had or was read as are left out."""
    names = EMOTIONS if kind == "emotion" else ACTIONS
    counts = np.sum([r[f"{kind}_confusion"] for r in responses], axis=0)
    return {names[t]: {names[r]: int(counts[t, r]) for r in range(len(names)) if counts[t, r]}
            for t in range(len(names)) if counts[t].any()}


def recall(responses: list[dict], kind: str) -> float | None:
    """Of all frames whose truth shows an emotion (``kind`` "emotion") or an action ("action"), the share the
    classifier reads as that emotion or action, pooled over :func:`response` results; None without such frames."""
    frames = sum(r[f"{kind}_frames"] for r in responses)
    return sum(r[f"{kind}_frames_read"] for r in responses) / frames if frames else None
