"""Loading the DiT from the published layout: diffusers config.json and sharded safetensors with their index."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from avatar_backend.generator.checkpoint import CheckpointError, dit_config_from_json, load_dit
from avatar_backend.generator.config import TINY
from avatar_backend.generator.convkv import ConvKVMemory
from avatar_backend.generator.dit import WanModel
from published_files import write_dit_checkpoint

# Small, but with the published text width: the published class never reads text_dim from its config.json.
CONFIG = dataclasses.replace(TINY.dit, text_dim=4096)


@pytest.fixture(scope="module")
def reference() -> WanModel:
    torch.manual_seed(3)
    model = WanModel(CONFIG)
    model.init_weights(zero_head=False)
    return model.eval()


def test_config_json_maps_onto_the_dit_config(tmp_path, reference):
    write_dit_checkpoint(tmp_path, reference.state_dict(), CONFIG)
    assert dit_config_from_json(tmp_path / "config.json") == CONFIG


def test_sharded_weights_load_straight_into_a_meta_built_model(tmp_path, reference):
    write_dit_checkpoint(tmp_path, reference.state_dict(), CONFIG, shards=3)
    result = load_dit(tmp_path, dtype=torch.float32, expected=CONFIG)
    assert result.shards == 3 and result.tensors == len(reference.state_dict()) and not result.initialised
    assert result.peak_host_rss_bytes > 0
    loaded = result.model
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    # The loaded model computes what the original does.
    torch.manual_seed(0)
    latent, y = torch.randn(1, 16, 6, 8, 8), torch.randn(1, 20, 6, 8, 8)
    text, clip = torch.randn(12, CONFIG.text_dim), torch.randn(1, CONFIG.clip_tokens, CONFIG.clip_dim)

    def run(model):
        memory = ConvKVMemory.allocate_for(model.config, TINY.sampler, frame_tokens=16)
        return model(latent, torch.tensor([937.5]), y, cache=memory.steps[0], start_frame=0, compress=False,
                     context=model.encode_context(text, clip), functional=False).velocity

    # The weights are bit-identical (above); the outputs may differ in the last float32 bit, because the CPU
    # matrix kernels may take other paths (and round differently) for tensors at other memory alignments.
    with torch.inference_mode():
        torch.testing.assert_close(run(loaded), run(reference), rtol=1e-5, atol=1e-6)
    bf16 = load_dit(tmp_path)
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert bf16.bytes == sum(t.numel() for t in reference.state_dict().values()) * 2


def test_missing_and_unexpected_keys_are_named_with_their_count(tmp_path, reference):
    state = reference.state_dict()
    dropped = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
    write_dit_checkpoint(tmp_path / "missing", dropped, CONFIG)
    with pytest.raises(CheckpointError, match=r"parameters missing from the files \((\d+): blocks\.1\."):
        load_dit(tmp_path / "missing")
    extra = dict(state, **{f"lora.{i}": torch.zeros(2) for i in range(7)})
    write_dit_checkpoint(tmp_path / "unexpected", extra, CONFIG)
    with pytest.raises(CheckpointError, match=r"not parameters of the model \(7: lora\.0, lora\.1, .*, \.\.\.\)"):
        load_dit(tmp_path / "unexpected")
    write_dit_checkpoint(tmp_path / "other", state, CONFIG, config={"num_layers": CONFIG.num_layers + 1})
    with pytest.raises(CheckpointError, match="num_layers differ"):
        load_dit(tmp_path / "other", expected=CONFIG)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_dit(tmp_path / "nothing-here")


def test_absent_compressor_weights_start_as_mean_pooling(tmp_path, reference):
    state = {k: v for k, v in reference.state_dict().items() if "memory_proj" not in k}
    write_dit_checkpoint(tmp_path, state, CONFIG, shards=1)
    result = load_dit(tmp_path, dtype=torch.float32)
    assert len(result.initialised) == 2 * CONFIG.num_layers
    conv = result.model.blocks[0].self_attn.memory_proj_k.weight
    assert torch.equal(conv, torch.full_like(conv, 1 / CONFIG.memory_kernel))
