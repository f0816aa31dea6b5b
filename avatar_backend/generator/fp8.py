"""FP8 (e4m3) arithmetic of the generator: quantization with one scale per row, and the FP8 GEMM linear layer.

The same quantizer serves the FP8 ConvKV cache (a row is one token's head: one scale per token and head) and
:class:`FP8Linear` (a row of the weight is one output channel; a row of the input is one token).

:class:`FP8Linear` is W8A8: the weight is quantized once, per output channel; every call quantizes its input per
token (dynamic scales) and multiplies with ``torch._scaled_mm``, which runs on FP8 tensor cores (Hopper, Ada,
Blackwell) and, more slowly, on CPUs. The reference's FP8 GEMM (vLLM's kernels) scales its weights per tensor;
per channel costs the same and loses less. The bf16 weight is dropped, so the DiT's weights take half the memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FP8", "FP8_MAX", "FP8Linear", "dequantize_fp8", "fp8_gemm_supported", "quantize_fp8",
           "quantize_linears"]

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0   # the largest finite e4m3 value
# torch._scaled_mm on CUDA needs every matrix dimension to be a multiple of 16; rows are padded to it.
GEMM_ALIGNMENT = 16


def quantize_fp8(values: Tensor) -> tuple[Tensor, Tensor]:
    """e4m3 values and fp32 scales [..., 1] of ``values`` [..., n], one scale per row (its largest magnitude maps
    to FP8_MAX)."""
    values = values.float()
    scale = values.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (values / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def dequantize_fp8(values: Tensor, scale: Tensor) -> Tensor:
    return values.float() * scale


def fp8_gemm_supported(device: torch.device | str) -> bool:
    """Whether ``torch._scaled_mm`` runs FP8 on ``device``: CPUs, and CUDA GPUs of compute capability 8.9+."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 9)
    return device.type == "cpu"


class FP8Linear(nn.Module):
    """A linear layer whose weight is e4m3 with a scale per output channel; inputs are quantized per token."""

    def __init__(self, weight: Tensor, weight_scale: Tensor, bias: Tensor | None, out_dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.out_dtype = out_dtype
        self.register_buffer("weight", weight)               # [out, in] e4m3
        self.register_buffer("weight_scale", weight_scale)   # [out, 1] fp32
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "FP8Linear":
        weight, scale = quantize_fp8(linear.weight.detach())
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(weight, scale, bias, linear.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)
        pad = -rows.shape[0] % GEMM_ALIGNMENT
        if pad:
            rows = F.pad(rows, (0, 0, 0, pad))
        values, scale = quantize_fp8(rows)
        # The weight [out, in] row-major, transposed: the column-major right operand _scaled_mm wants.
        out = torch._scaled_mm(values, self.weight.t(), scale_a=scale, scale_b=self.weight_scale.t(),
                               out_dtype=self.out_dtype)
        if pad:
            out = out[: out.shape[0] - pad]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 per-channel"


def quantize_linears(model: nn.Module, under: str = "blocks.") -> int:
    """Replace every nn.Linear whose name starts with ``under`` (the transformer blocks: more than 99% of the
    DiT's multiply-adds) and whose sizes are multiples of 16 by an :class:`FP8Linear`; returns how many.
    Embeddings, the head and the audio adapter stay in the model's dtype."""
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and name.startswith(under)
               and not (module.in_features % GEMM_ALIGNMENT or module.out_features % GEMM_ALIGNMENT)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, FP8Linear.from_linear(linear))
    return len(targets)
