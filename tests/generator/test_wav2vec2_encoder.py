"""The published audio front end: chinese-wav2vec2-base from its own directory layout, with the reference's recipe.

The reference vectors (golden/audio_features.safetensors) were computed by the reference's Wav2Vec2Model
subclass; here the same weights are written as a published model directory (config.json, pytorch_model.bin with
the pretraining model's names, preprocessor_config.json) and loaded the way ``serve`` loads them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from avatar_backend.generator.audio_encoder import (
    AudioEncoder, Wav2Vec2AudioEncoder, build_audio_encoder, change_tempo, load_wav2vec2,
)
from avatar_backend.generator.checkpoint import CheckpointError
from avatar_backend.generator.config import AudioEncoderConfig
from published_files import write_wav2vec2_dir

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-5  # max abs error relative to the reference's max abs value (both ran in float32)


@pytest.fixture(scope="module")
def golden(golden_dir):
    with safe_open(str(golden_dir / "audio_features.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["config"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    return meta, tensors


def golden_weights(tensors):
    return {k.removeprefix("wav2vec2."): v for k, v in tensors.items() if k.startswith("wav2vec2.")}


def golden_encoder_config(meta) -> AudioEncoderConfig:
    return AudioEncoderConfig(kind="wav2vec2", layers=meta["layers"], channels=meta["hidden"])


def test_published_layout_reproduces_the_reference_features(golden, tmp_path):
    meta, tensors = golden
    directory = write_wav2vec2_dir(tmp_path / "chinese-wav2vec2-base", meta["config"], golden_weights(tensors))
    encoder = load_wav2vec2(directory, golden_encoder_config(meta), dtype=torch.float32)
    assert isinstance(encoder, AudioEncoder)
    features = encoder.hidden_states(tensors["input_values"], meta["seq_len"])
    expected = tensors["features"]
    assert features.shape == expected.shape == (meta["seq_len"], meta["layers"], meta["hidden"])
    error = float((features - expected).abs().max() / expected.abs().max())
    assert error <= TOLERANCE, f"max abs error {error:.2e} of the reference's max abs value"


def test_features_apply_gain_and_normalisation_and_one_row_per_video_frame(golden, tmp_path):
    meta, tensors = golden
    directory = write_wav2vec2_dir(tmp_path / "w2v", meta["config"], golden_weights(tensors))
    encoder = load_wav2vec2(directory, golden_encoder_config(meta), dtype=torch.float32)
    pcm = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32))

    at_25 = encoder.features(pcm, 25)
    scaled = pcm.numpy() * 3.0
    normalised = (scaled - scaled.mean()) / np.sqrt(scaled.var() + 1e-7)
    expected = encoder.hidden_states(torch.from_numpy(normalised)[None], 25)
    assert at_25.shape == (25, meta["layers"], meta["hidden"])
    assert torch.allclose(at_25, expected, atol=1e-5)

    # At 20 fps the audio is sped up 1.25x first: 20 frames for one second, unlike the 25 fps features.
    at_20 = encoder.features(pcm, 20)
    assert at_20.shape == (20, meta["layers"], meta["hidden"])
    sped_up = change_tempo(pcm.numpy(), 16000, 1.25) * 3.0
    sped_up = (sped_up - sped_up.mean()) / np.sqrt(sped_up.var() + 1e-7)
    assert torch.allclose(at_20, encoder.hidden_states(torch.from_numpy(sped_up)[None], 20), atol=1e-5)


def test_tempo_change_keeps_pitch_and_shortens_by_the_factor():
    rate = 16000
    tone = np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate).astype(np.float32)
    faster = change_tempo(tone, rate, 1.25)
    assert abs(len(faster) - len(tone) / 1.25) < 0.01 * len(tone)
    spectrum = np.abs(np.fft.rfft(faster[4000:12000]))
    assert abs(np.argmax(spectrum) * rate / 8000 - 440) <= 2


def test_a_missing_or_foreign_tensor_fails_the_load_naming_it(golden, tmp_path):
    meta, tensors = golden
    weights = golden_weights(tensors)
    config = golden_encoder_config(meta)
    missing = dict(weights)
    del missing["encoder.layers.1.attention.q_proj.weight"]
    with pytest.raises(CheckpointError, match=r"missing .*1: encoder\.layers\.1\.attention\.q_proj\.weight"):
        load_wav2vec2(write_wav2vec2_dir(tmp_path / "missing", meta["config"], missing), config, dtype=torch.float32)
    foreign = {"wav2vec2.encoder.layers.7.attention.q_proj.weight": torch.zeros(32, 32)}
    with pytest.raises(CheckpointError, match=r"not parameters .*1: .*layers\.7\.attention\.q_proj\.weight"):
        load_wav2vec2(write_wav2vec2_dir(tmp_path / "foreign", meta["config"], weights, extra=foreign), config,
                      dtype=torch.float32)
    with pytest.raises(CheckpointError, match="needs 2 of"):
        load_wav2vec2(write_wav2vec2_dir(tmp_path / "other", meta["config"], weights),
                      AudioEncoderConfig(kind="wav2vec2", layers=2, channels=meta["hidden"]), dtype=torch.float32)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_wav2vec2(tmp_path / "nowhere", config)


def test_random_wav2vec2_of_a_small_size_builds_and_runs():
    encoder = build_audio_encoder(AudioEncoderConfig(kind="wav2vec2", layers=2, channels=64))
    assert isinstance(encoder, Wav2Vec2AudioEncoder)
    features = encoder.features(torch.randn(8000) * 0.1, 20)
    assert features.shape == (10, 2, 64)
    assert encoder.context_frames(20) == 0
