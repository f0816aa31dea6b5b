"""The published model from one weights directory, as `serve --weights DIR` loads it: every file in its own
layout and names (sharded DiT, Wan2.1_VAE.pth, Wan's CLIP and umT5 files, the tokenizer and wav2vec2
directories), at toy sizes, through the pipeline that serves, frames out."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from avatar_backend.generator.checkpoint import CheckpointError
from avatar_backend.generator.config import LIVEACT_18B, AudioEncoderConfig
from avatar_backend.generator.pipeline import GeneratorError, LiveActPipeline
from avatar_backend.generator.published import published_files
from avatar_backend.store import CharacterRecord
from published_files import TOY_PUBLISHED, write_toy_published

pytest.importorskip("transformers")

SIZE = TOY_PUBLISHED.width

@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return write_toy_published(tmp_path_factory.mktemp("liveact"))


def character_png() -> bytes:
    image = Image.new("RGB", (96, 120), (150, 110, 90))
    image.paste((40, 30, 20), (30, 30, 66, 60))
    png = io.BytesIO()
    image.save(png, "PNG")
    return png.getvalue()


def test_the_files_of_the_published_layout_load_and_generate_frames(published):
    pipeline = LiveActPipeline.from_config(TOY_PUBLISHED, weights=published)
    assert not pipeline.random_weights and len(pipeline.weights_sha256) == 64
    assert pipeline.dit.dtype == torch.bfloat16
    assert next(pipeline.image_encoder.parameters()).dtype == torch.bfloat16
    assert next(pipeline.vae.parameters()).dtype == torch.float32
    assert not any(p.is_meta for m in (pipeline.dit, pipeline.vae, pipeline.image_encoder, pipeline.text_encoder,
                                       pipeline.audio_encoder) for p in m.parameters())

    character = pipeline.prepare_character(CharacterRecord("guard", "a guard talking"), character_png(), SIZE, SIZE)
    memory = pipeline.new_memory("npc", "guard", SIZE, SIZE, 20, seed=1)
    t = np.arange(16000 * 8) / 16000
    voice = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)
    frames = []
    for _ in range(3):
        consume, lookahead = pipeline.block_audio_samples(memory)
        start = memory.timeline_samples
        frames.append(pipeline.generate_block(memory, character, voice[start:start + consume + lookahead]))
    assert [f.shape for f in frames] == [(21, SIZE, SIZE, 3), (32, SIZE, SIZE, 3), (32, SIZE, SIZE, 3)]
    assert all(f.std() > 0 for f in frames)


def test_missing_files_are_all_named_before_anything_loads(published, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"5 published file\(s\) missing: .*Wan2\.1_VAE\.pth.*umt5-xxl"):
        published_files(TOY_PUBLISHED, tmp_path)
    assert set(published_files(TOY_PUBLISHED, published)) == {"vae", "image_encoder", "text_encoder", "tokenizer",
                                                      "audio_encoder"}


def test_the_published_config_without_its_files_is_refused_at_once():
    with pytest.raises(GeneratorError, match="needs its weights"):
        LiveActPipeline.from_config("liveact-18b")


def test_a_config_that_names_no_encoder_file_is_refused(published):
    unnamed = dataclasses.replace(TOY_PUBLISHED, audio_encoder=AudioEncoderConfig(kind="wav2vec2", layers=3, channels=32))
    with pytest.raises(CheckpointError, match="names no file for: audio_encoder"):
        LiveActPipeline.from_config(unnamed, weights=published)


def test_published_configs_name_the_published_files():
    assert (LIVEACT_18B.vae.path, LIVEACT_18B.image_encoder.path, LIVEACT_18B.text_encoder.path,
            LIVEACT_18B.text_encoder.tokenizer, LIVEACT_18B.audio_encoder.path) == (
        "Wan2.1_VAE.pth", "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
        "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl", "chinese-wav2vec2-base")
