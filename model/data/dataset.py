"""Writing and reading datasets of rendered clips.

A dataset is a folder: ``manifest.json`` (format version, size, fps, and per clip its file, seed, identity,
voice/language/speaker, phrases and event timeline) and one ``clip_NNNNN.npz`` per clip holding ``frames``
(uint8 [T, H, W, 3]), ``audio`` (float32 16 kHz) and every truth array under ``truth/<name>``
(see ``render.TRUTH_DESCRIPTION``). npz is compressed losslessly, so training sees exactly the drawn pixels.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from avatar_backend.media.resample import MODEL_SAMPLE_RATE
from avatar_backend.store import atomic_write

from .identity import describe_identity
from .render import TRUTH_DESCRIPTION, Clip, render_clip
from .speech import espeak_available, random_utterance
from .timeline import ACTIONS, EMOTIONS, Event

FORMAT = "avatar-procedural-clips"
FORMAT_VERSION = 1


def random_events(rng: np.random.Generator, seconds: float, speech_spans: list[tuple[float, float]],
                  block_starts: tuple[float, ...] | None = None) -> list[Event]:
    """A plausible timeline: a starting emotion and a change or two, a few non-overlapping actions, and
    listening during some of the longer silences (where a real NPC would be listening to the player).

    With ``block_starts`` (seconds where the model's blocks begin), emotion changes and actions start only
    there, one per block start at most, as serving shows them: from the first frame of the block they condition.
    """
    events = [Event.emotion(0.0, str(rng.choice(EMOTIONS, p=(0.4, 0.15, 0.15, 0.15, 0.15))),
                            round(float(rng.uniform(0.4, 1.0)), 2))]
    if block_starts is not None:
        events += _events_at_block_starts(rng, seconds, block_starts, events[0])
    else:
        events += _events_anywhere(rng, seconds)
    silences, previous_end = [], 0.0
    for start, end in speech_spans:
        silences.append((previous_end, start))
        previous_end = end
    silences.append((previous_end, seconds))
    for start, end in silences:
        # Leave the mouth's release time before listening starts; keep only gaps long enough to show it.
        if end - start >= 1.0 and rng.random() < 0.5:
            events.append(Event.listening(round(start + 0.35, 2), True))
            if end < seconds:
                events.append(Event.listening(round(end - 0.05, 2), False))
    return sorted(events, key=lambda e: e.time)


def _events_anywhere(rng: np.random.Generator, seconds: float) -> list[Event]:
    events = []
    for _ in range(int(rng.integers(0, 3))):
        events.append(Event.emotion(round(float(rng.uniform(0.5, seconds - 0.5)), 2), str(rng.choice(EMOTIONS)),
                                    round(float(rng.uniform(0.4, 1.0)), 2)))
    busy_until = float(rng.uniform(0.0, 1.0))
    while True:
        name = str(rng.choice(ACTIONS[1:]))
        start = busy_until + float(rng.uniform(0.3, 2.5))
        event = Event.action(round(start, 2), name)
        if start + event.seconds > seconds:
            break
        events.append(event)
        busy_until = start + event.seconds
    return events


def _events_at_block_starts(rng: np.random.Generator, seconds: float, block_starts: tuple[float, ...],
                            first: Event) -> list[Event]:
    """At each block start: an emotion change (to another emotion), an action (unless one still runs), or
    nothing. An action may run past the clip's end."""
    events, emotion, busy_until = [], first.name, 0.0
    for start in block_starts:
        if start >= seconds:
            break
        draw = float(rng.random())
        if draw < 0.45 and start >= busy_until:
            event = Event.action(round(start, 2), str(rng.choice(ACTIONS[1:])))
            busy_until = start + event.seconds
            events.append(event)
        elif draw < 0.8 and start > 0.0:
            emotion = str(rng.choice([e for e in EMOTIONS if e != emotion]))
            events.append(Event.emotion(round(start, 2), emotion, round(float(rng.uniform(0.4, 1.0)), 2)))
    return events


def clip_seed(dataset_seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(dataset_seed), int(index)]).generate_state(1)[0])


def make_clip(seed: int, *, size: int, seconds: float, fps: int = 20, languages: tuple[str, ...] | None = None,
              speakers: tuple[str, ...] | None = None,
              block_starts: tuple[float, ...] | None = None) -> tuple[Clip, dict[str, Any]]:
    """One random clip (character, speech, timeline) from ``seed``, and its manifest entry. ``languages`` and
    ``speakers`` restrict the voices (None: all), so a language or a speaker can be held out of training;
    ``block_starts`` as in :func:`random_events`."""
    rng = np.random.default_rng([seed, 0x5E])
    utterance = random_utterance(rng, seconds, languages=languages, speakers=speakers)
    events = random_events(rng, seconds, utterance.spans, block_starts)
    clip = render_clip(seed, utterance.audio, events, size=size, fps=fps, seconds=seconds)
    entry = {
        "seed": seed,
        "frames": int(len(clip.frames)),
        "description": describe_identity(clip.identity),
        "identity": clip.identity.to_dict(),
        "speech": utterance.metadata(),
        "events": [e.to_dict() for e in events],
    }
    return clip, entry


def save_clip(path: Path, clip: Clip) -> None:
    arrays = {"frames": clip.frames, "audio": clip.audio}
    arrays.update({f"truth/{k}": v for k, v in clip.truth.items()})
    np.savez_compressed(path, **arrays)


def load_clip(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(frames, audio, truth) of one clip file."""
    with np.load(path) as data:
        truth = {k[len("truth/"):]: data[k] for k in data.files if k.startswith("truth/")}
        return data["frames"], data["audio"], truth


def read_manifest(folder: str | Path) -> dict[str, Any]:
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{folder} is not a {FORMAT} dataset")
    return manifest


def iter_clips(folder: str | Path) -> Iterator[tuple[dict[str, Any], np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """(manifest entry, frames, audio, truth) for every clip of a dataset, in order."""
    folder = Path(folder)
    for entry in read_manifest(folder)["clips"]:
        yield (entry, *load_clip(folder / entry["file"]))


def _write_one(job: tuple) -> dict[str, Any]:
    """Render and save clip ``index`` of a dataset; its manifest entry (a worker process runs this)."""
    out, index, seed, size, seconds, fps, languages, speakers, block_starts = job
    clip, entry = make_clip(clip_seed(seed, index), size=size, seconds=seconds, fps=fps, languages=languages,
                            speakers=speakers, block_starts=block_starts)
    entry = {"file": f"clip_{index:05d}.npz", "index": index, **entry}
    save_clip(out / entry["file"], clip)
    return entry


def write_dataset(
    out: str | Path,
    clips: int,
    *,
    size: int = 128,
    seconds: float = 6.0,
    seed: int = 0,
    fps: int = 20,
    workers: int = 1,
    languages: tuple[str, ...] | None = None,
    speakers: tuple[str, ...] | None = None,
    block_starts: tuple[float, ...] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Render ``clips`` random clips into ``out`` and write the manifest; returns it (with timing).
    ``block_starts``: events only there (:func:`random_events`).

    Clip ``i`` depends only on ``seed`` and ``i``, so ``workers`` processes give the same files as one.
    """
    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed (apt install espeak-ng); it voices the clips")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "format": FORMAT, "version": FORMAT_VERSION, "size": size, "fps": fps, "sample_rate": MODEL_SAMPLE_RATE,
        "seconds": seconds, "seed": seed,
        "languages": list(languages) if languages else None, "speakers": list(speakers) if speakers else None,
        "block_starts": list(block_starts) if block_starts is not None else None,
        "emotions": list(EMOTIONS), "actions": list(ACTIONS),
        "truth": TRUTH_DESCRIPTION, "clips": [],
    }
    jobs = [(out, index, seed, size, seconds, fps, languages, speakers, block_starts) for index in range(clips)]
    started = time.perf_counter()
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            entries = pool.map(_write_one, jobs)
            for done, entry in enumerate(entries, start=1):
                manifest["clips"].append(entry)
                if progress:
                    progress(done, clips)
    else:
        for done, job in enumerate(jobs, start=1):
            manifest["clips"].append(_write_one(job))
            if progress:
                progress(done, clips)
    manifest["render_seconds"] = round(time.perf_counter() - started, 3)
    # The manifest marks the dataset complete: written whole or not at all.
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False).encode())
    return manifest
