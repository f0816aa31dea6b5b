"""A compiled worker (``--compile``) compiles before it serves: the first NPC's first blocks compile nothing,
neither in the DiT nor in the VAE decoder (which ``--compile`` compiles on GPUs: this CPU is made to, too)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch._dynamo.utils import counters  # noqa: E402

from avatar_backend.generator import pipeline as pipeline_module  # noqa: E402
from avatar_backend.generator.config import ExecutionConfig  # noqa: E402
from avatar_backend.generator.runner import BlockInput  # noqa: E402
from avatar_backend.store import CharacterRecord  # noqa: E402
from avatar_backend.worker.config import WorkerConfig  # noqa: E402
from avatar_backend.worker.main import build_executor  # noqa: E402
from avatar_backend.worker.warm_up import WARM_UP_BLOCKS  # noqa: E402

pytestmark = pytest.mark.slow


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()   # the compiled graphs go with this test


@pytest.mark.parametrize("decoder_compiled", [False, True], ids=["cpu", "decoder-compiled-as-on-gpus"])
def test_a_compiled_worker_compiles_every_block_kind_before_its_first_npc(tmp_path, fresh_dynamo, monkeypatch,
                                                                         decoder_compiled):
    monkeypatch.setattr(pipeline_module, "compiles_decoder", lambda device: decoder_compiled)
    before = compiled_graphs()
    executor, _ = build_executor(WorkerConfig(endpoint="", data_dir=tmp_path, execution=ExecutionConfig(compile=True)))
    runner = executor.runner
    # Three block kinds, each with and without audio (the first denoising step skips it), and the decoder's
    # stream start (its first latent, on an empty state) and the passes after it.
    assert compiled_graphs() - before >= 2 * WARM_UP_BLOCKS + 2 * decoder_compiled
    warmed_up = compiled_graphs()

    # A player's NPC at the model's size: a character of its own, speech, more blocks than the warm-up ran.
    config = runner.config
    png = (resources.files("avatar_backend") / "assets" / "default_character.png").read_bytes()
    conditioning = runner.prepare_character(CharacterRecord("guard", "a guard talking"), png, config.width,
                                            config.height)
    memory = runner.new_memory("guard-1", "guard", config.width, config.height, config.fps, seed=7)
    rng = np.random.default_rng(0)
    for _ in range(WARM_UP_BLOCKS + 1):
        consume, lookahead = runner.block_audio_samples(memory)
        speech = (0.2 * np.sin(np.arange(consume + lookahead) / 9) * rng.random(consume + lookahead))
        frames = executor.execute([BlockInput(memory, conditioning, speech.astype(np.float32))])[0]
        assert frames.shape[1:] == (config.height, config.width, 3)
    assert compiled_graphs() == warmed_up
