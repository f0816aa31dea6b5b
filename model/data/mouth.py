"""How speech moves the mouth: per-frame openness from the audio envelope and width (spread vs rounded) from
the spectrum. This is the ground truth the renderer draws, so it is defined once, here.

Frame ``i`` shows the audio in ``[i, i + 1) / fps`` seconds (50 ms at 20 fps): its RMS level relative to the
clip's loud speech gives the openness (smoothed with a fast attack and a slower release, and exactly 0 below
a silence gate once the release has run out); its spectral centroid gives the width: low (``oo``) is rounded,
high (``ee``) is wide.
"""

from __future__ import annotations

import numpy as np

SILENCE_RMS = 10 ** (-50 / 20)      # below -50 dBFS a frame counts as silence
LEVEL_FLOOR_DB = -30.0              # relative to the clip's loud speech: at or below this the mouth is closed
LEVEL_RANGE_DB = 30.0               # dB above the floor for a fully open mouth
ATTACK = 0.75                       # fraction of the way to a louder target covered per frame
RELEASE = 0.45                      # ... to a quieter target (mouths close more slowly than they open)
CLOSED_BELOW = 0.03                 # smoothed openness under this is drawn (and reported) as closed
CENTROID_ROUNDED_HZ = 500.0         # centroid at or below: fully rounded (width 0)
CENTROID_WIDE_HZ = 2800.0           # centroid at or above: fully wide (width 1)
NEUTRAL_WIDTH = 0.5


def frame_windows(audio: np.ndarray, n_frames: int, sample_rate: int, fps: int) -> np.ndarray:
    """The audio under each frame, [n_frames, samples_per_frame], zero-padded past the end."""
    hop = sample_rate // fps
    padded = np.zeros(n_frames * hop, np.float32)
    usable = min(len(audio), len(padded))
    padded[:usable] = audio[:usable]
    return padded.reshape(n_frames, hop)


def _smooth(target: np.ndarray, attack: float, release: float, start: float) -> np.ndarray:
    out = np.empty_like(target)
    value = start
    for i, goal in enumerate(target):
        value += (attack if goal > value else release) * (goal - value)
        out[i] = value
    return out


def mouth_from_audio(
    audio: np.ndarray, n_frames: int, *, sample_rate: int = 16000, fps: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (openness 0-1, width 0-1) for ``audio`` (float PCM)."""
    windows = frame_windows(np.asarray(audio, np.float32), n_frames, sample_rate, fps)
    rms = np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1))
    voiced = rms > SILENCE_RMS
    # Loud speech is the 90th percentile of the voiced frames, so espeak's level, or a quiet voice, opens
    # the mouth as wide as a loud one.
    reference = np.percentile(rms[voiced], 90) if voiced.any() else 1.0
    level_db = 20 * np.log10(np.maximum(rms, 1e-9) / reference)
    target_open = np.clip((level_db - LEVEL_FLOOR_DB) / LEVEL_RANGE_DB, 0.0, 1.0)
    target_open[~voiced] = 0.0
    openness = _smooth(target_open, ATTACK, RELEASE, 0.0)
    openness[openness < CLOSED_BELOW] = 0.0

    spectrum = np.abs(np.fft.rfft(windows * np.hanning(windows.shape[1]), axis=1)) ** 2
    freqs = np.fft.rfftfreq(windows.shape[1], 1.0 / sample_rate)
    band = (freqs >= 80) & (freqs <= 6000)
    power = spectrum[:, band]
    centroid = (power * freqs[band]).sum(axis=1) / np.maximum(power.sum(axis=1), 1e-12)
    target_width = np.clip(
        np.log(np.maximum(centroid, 1.0) / CENTROID_ROUNDED_HZ) / np.log(CENTROID_WIDE_HZ / CENTROID_ROUNDED_HZ),
        0.0, 1.0,
    )
    # Silence and near-silence relax to the neutral width rather than following noise.
    target_width[target_open <= 0.0] = NEUTRAL_WIDTH
    width = _smooth(target_width, 0.6, 0.35, NEUTRAL_WIDTH)
    return openness.astype(np.float32), width.astype(np.float32)
