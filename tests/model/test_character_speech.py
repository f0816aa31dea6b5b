"""espeak-ng utterances for the procedural clips: format, pauses, who spoke, and the mouth they drive."""

from __future__ import annotations

import numpy as np

from avatar_backend.media.mouth import mouth_from_audio
from model.data.speech import (
    PHRASES,
    SAMPLE_RATE,
    VARIANTS,
    random_utterance,
    synthesize,
)


def test_synthesize_gives_16k_float_speech(needs_espeak):
    audio = synthesize("Hello there, traveller.", "en-us+f3", speed=170, pitch=60)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.6 < len(audio) / SAMPLE_RATE < 3.0
    assert 0.05 < np.abs(audio).max() <= 1.0


def test_random_utterance_has_pauses_and_says_who_spoke(needs_espeak):
    utterance = random_utterance(np.random.default_rng(3), 5.0, pause_range=(0.4, 0.8))
    assert len(utterance.audio) == 5 * SAMPLE_RATE and utterance.sample_rate == SAMPLE_RATE
    assert utterance.language in PHRASES and utterance.speaker in VARIANTS
    assert utterance.voice == f"{PHRASES[utterance.language][0]}+{utterance.speaker}"
    assert len(utterance.spans) >= 2 and len(utterance.phrases) == len(utterance.spans)
    # Between two phrases the audio is silent, and the mouth closes there.
    first_end, second_start = utterance.spans[0][1], utterance.spans[1][0]
    gap = utterance.audio[int(first_end * SAMPLE_RATE) + 1: int(second_start * SAMPLE_RATE)]
    assert len(gap) >= 0.4 * SAMPLE_RATE and not gap.any()
    openness, _ = mouth_from_audio(utterance.audio, 100)
    assert openness[int(second_start * 20) - 2] == 0.0
    assert openness.max() > 0.8
    metadata = utterance.metadata()
    assert "audio" not in metadata and metadata["voice"] == utterance.voice


def test_utterances_vary_and_repeat_by_seed(needs_espeak):
    made = [random_utterance(np.random.default_rng(s), 2.0) for s in range(8)]
    assert len({u.language for u in made}) >= 3 and len({u.speaker for u in made}) >= 3
    again = random_utterance(np.random.default_rng(0), 2.0)
    assert again.voice == made[0].voice and np.array_equal(again.audio, made[0].audio)
    only_french = random_utterance(np.random.default_rng(9), 1.0, languages=("fr",), speakers=("m3",))
    assert only_french.voice == "fr-fr+m3"
