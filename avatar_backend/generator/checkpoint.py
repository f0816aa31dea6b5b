"""Loading the published DiT from its own files: a diffusers ``config.json`` and
``diffusion_pytorch_model*.safetensors`` (one file, or shards listed by their index), LIVEACT_SPEC.md section 1.

The model is built on torch's meta device (shapes only) and every tensor goes from its shard straight to the
target device in the target dtype, one shard at a time, so the host never holds a second copy of the weights.
Parameter names are the published ones (:mod:`.dit` keeps them), so no key map is needed.

Keys: every parameter must come from the files and every tensor in them must be a parameter; otherwise the load
fails naming the first few and the count. One exception: the spec leaves open whether the published files hold
the ConvKV compressors (``memory_proj_k``/``memory_proj_v``); when they are absent they start as mean pooling
(1 / kernel, what the reference's own initialisation sets) and the load says so.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors import safe_open

from .config import DiTConfig
from .dit import WanModel

__all__ = ["CheckpointError", "DiTLoad", "check_keys", "dit_config_from_json", "dit_shards", "load_dit",
           "load_pth_state", "peak_host_rss_bytes"]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"
# Constructor arguments the published class never reads from its config.json (its ``ignore_for_config``).
IGNORED_CONFIG_KEYS = ("patch_size", "cross_attn_norm", "qk_norm", "text_dim", "window_size")
MEMORY_PROJ = ("memory_proj_k.weight", "memory_proj_v.weight")
_SHOWN_KEYS = 5


class CheckpointError(ValueError):
    """The files are not a checkpoint of this model (missing files, other config, missing or unexpected keys)."""


@dataclass(frozen=True)
class DiTLoad:
    model: WanModel
    shards: int
    tensors: int
    bytes: int                  # of the loaded parameters, in the target dtype
    peak_host_rss_bytes: int    # the process's peak resident memory after the load
    initialised: tuple[str, ...]  # parameters not in the files, set as documented above


def dit_config_from_json(path: Path | str) -> DiTConfig:
    """The DiTConfig of a diffusers config.json: its keys that are DiTConfig fields, except those the published
    class ignores (their defaults apply, as they do there)."""
    data = json.loads(Path(path).read_text())
    if data.get("model_type", "i2v") != "i2v":
        raise CheckpointError(f"{path}: model_type {data['model_type']!r}, this model is 'i2v'")
    names = {f.name for f in fields(DiTConfig)}
    values = {k: v for k, v in data.items() if k in names and k not in IGNORED_CONFIG_KEYS}
    return DiTConfig(**values)


def dit_shards(directory: Path | str) -> list[Path]:
    """The weight files of a checkpoint directory: the index's shards in order, or the one file."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CheckpointError(f"{index}: {len(missing)} shard(s) missing, e.g. {missing[:_SHOWN_KEYS]}")
        return [directory / s for s in shards]
    single = directory / WEIGHTS_FILE
    if single.is_file():
        return [single]
    raise CheckpointError(f"{directory}: neither {INDEX_FILE} nor {WEIGHTS_FILE}")


def _listing(keys: list[str]) -> str:
    return f"{len(keys)}: {', '.join(sorted(keys)[:_SHOWN_KEYS])}{', ...' if len(keys) > _SHOWN_KEYS else ''}"


def check_keys(source: Path | str, expected: Iterable[str], found: Iterable[str]) -> None:
    """CheckpointError naming the first few and the count of parameters that ``source`` lacks, then of the
    tensors in it that are no parameters (keys already mapped to the model's names)."""
    expected, found = set(expected), set(found)
    missing = sorted(expected - found)
    if missing:
        raise CheckpointError(f"{source}: parameters missing from the files ({_listing(missing)})")
    unexpected = sorted(found - expected)
    if unexpected:
        raise CheckpointError(f"{source}: tensors that are not parameters of the model ({_listing(unexpected)})")


def load_pth_state(path: Path | str) -> dict[str, torch.Tensor]:
    """A ``torch.save``d state dict (the Wan ``.pth`` files), memory-mapped: tensors are read from the file as
    they are used, so loading does not hold a second copy in host RAM. Only tensors are unpickled."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return state


def load_dit(directory: Path | str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
             expected: DiTConfig | None = None) -> DiTLoad:
    """The DiT of a checkpoint directory on ``device`` in ``dtype`` (CheckpointError when the files do not fit)."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_FILE}")
    config = dit_config_from_json(config_path)
    if expected is not None and config != expected:
        differ = [f.name for f in fields(DiTConfig) if getattr(config, f.name) != getattr(expected, f.name)]
        raise CheckpointError(f"{config_path} describes another model: {', '.join(differ)} differ")
    shards = dit_shards(directory)
    with torch.device("meta"):
        model = WanModel(config)
    parameters = dict(model.named_parameters())
    unexpected: list[str] = []
    loaded: set[str] = set()
    total = 0
    for shard in shards:
        with safe_open(str(shard), framework="pt", device=str(device)) as f:
            part = {}
            for key in f.keys():
                if key not in parameters:
                    unexpected.append(key)
                    continue
                tensor = f.get_tensor(key).to(dtype)
                if tensor.shape != parameters[key].shape:
                    raise CheckpointError(f"{shard.name}: {key} is {tuple(tensor.shape)}, the model's is "
                                          f"{tuple(parameters[key].shape)}")
                part[key] = tensor
                total += tensor.numel() * tensor.element_size()
        # assign: the meta parameters are replaced by these tensors, on the target device, without a copy.
        model.load_state_dict(part, strict=False, assign=True)
        loaded.update(part)
        del part
    initialised = tuple(k for k in parameters if k not in loaded and k.endswith(MEMORY_PROJ))
    check_keys(directory, [k for k in parameters if k not in initialised], loaded | set(unexpected))
    for name in initialised:
        value = torch.full(parameters[name].shape, 1.0 / config.memory_kernel, dtype=dtype, device=device)
        model.load_state_dict({name: value}, strict=False, assign=True)
    if initialised:
        log.warning("%s: no ConvKV compressor weights in the files; %d start as mean pooling", directory,
                    len(initialised))
    model.eval().requires_grad_(False)
    return DiTLoad(model=model, shards=len(shards), tensors=len(loaded), bytes=total,
                   peak_host_rss_bytes=peak_host_rss_bytes(), initialised=initialised)


def peak_host_rss_bytes() -> int:
    """The process's peak resident memory so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024   # bytes on macOS, KiB on Linux
