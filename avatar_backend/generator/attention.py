"""Attention behind one dispatch function, with selectable backends.

Every attention of the DiT (self-attention over the ConvKV cache, text/image cross-attention, per-frame audio
attention) calls :func:`attention` on [B, L, heads, head_dim] tensors, the reference's layout, unmasked, with the
default 1/sqrt(head_dim) scale. Under sequence parallelism the all-to-all wraps this call (dit.py), so a backend
never sees ranks.

Backends:

- ``sdpa`` (default): torch's scaled_dot_product_attention, which picks flash, memory-efficient or cuDNN kernels
  itself on a GPU and a fused kernel on a CPU.
- ``flash``: FlashAttention 2/3 (``flash_attn`` package, bf16/fp16 on NVIDIA GPUs); takes this layout without
  transposes.
- ``sage``: SageAttention (``sageattention`` package; INT8 QK and FP8 PV on Hopper), what the reference uses when
  it imports.
- ``math``: softmax(QK^T)V written out in float32: the slow, exact reference the others are checked against.

The backend is chosen once per process (:func:`set_attention_backend`, from ``serve --attention``); choosing one
whose package is not installed fails at once with the package's name, not at the first block.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BACKENDS", "AttentionBackendError", "attention", "attention_backend", "available_backends",
           "get_attention_backend", "set_attention_backend"]

AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class AttentionBackendError(ValueError):
    """An unknown attention backend, or one whose package is not installed."""


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _math(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    scores = torch.einsum("blhd,bmhd->bhlm", q.float(), k.float()) / math.sqrt(q.shape[-1])
    return torch.einsum("bhlm,bmhd->blhd", scores.softmax(dim=-1), v.float()).to(q.dtype)


def _flash(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return _optional("flash", "flash_attn").flash_attn_func(q, k, v)


def _sage(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return _optional("sage", "sageattention").sageattn(q, k, v, tensor_layout="NHD", is_causal=False)


# name -> (function, the package it needs or None)
BACKENDS: dict[str, tuple[AttentionFn, str | None]] = {
    "sdpa": (_sdpa, None),
    "flash": (_flash, "flash_attn"),
    "sage": (_sage, "sageattention"),
    "math": (_math, None),
}

_modules: dict[str, object] = {}
_current = "sdpa"


def _optional(backend: str, package: str):
    module = _modules.get(package)
    if module is None:
        try:
            module = importlib.import_module(package)
        except ImportError as err:
            raise AttentionBackendError(f"attention backend {backend!r} needs the {package!r} package, which does "
                                        f"not import here ({err}); use 'sdpa'") from None
        _modules[package] = module
    return module


def available_backends() -> list[str]:
    """The backends whose packages import in this process."""
    names = []
    for name, (_, package) in BACKENDS.items():
        try:
            if package is not None:
                _optional(name, package)
        except AttentionBackendError:
            continue
        names.append(name)
    return names


def set_attention_backend(name: str) -> None:
    """Use ``name`` for every attention of this process from now on (AttentionBackendError if it cannot run)."""
    global _current
    if name not in BACKENDS:
        raise AttentionBackendError(f"unknown attention backend {name!r}; known: {', '.join(BACKENDS)}")
    package = BACKENDS[name][1]
    if package is not None:
        _optional(name, package)
    _current = name


def get_attention_backend() -> str:
    return _current


@contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """The backend ``name`` inside the block, the previous one after it."""
    previous = _current
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Unmasked attention on [B, L, heads, head_dim] tensors with the current backend."""
    return BACKENDS[_current][0](q, k, v)
