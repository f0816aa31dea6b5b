"""The GPU benchmark of the published model's DiT: ``python -m avatar_backend.gpu_bench``.

Builds the full-size DiT (liveact-18b) with random weights directly on the GPU (no checkpoint needed) and, per
frame size and variant, streams blocks through the real sampler and ConvKV caches: seconds per block (later
blocks, median), frames per second, time to the first block, TFLOP per frame counted from the shapes, the
TFLOP/s that makes, peak GPU memory, and the VAE's streaming decode in ms per frame. Writes the numbers as JSON
and one row per variant to docs/PERFORMANCE.md with the device and the date.

Variants: ``bf16`` (the default path), ``fp8-kv`` (the FP8 ConvKV cache), ``compiled`` (torch.compile of the
DiT). An FP8 GEMM path is not built yet; it is listed as such. ``--smoke`` runs a small config on the CPU
(what CI runs): the same code path, no meaningful numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from avatar_backend.generator.config import LIVEACT_18B, TINY, ModelConfig
from avatar_backend.generator.convkv import ConvKVMemory
from avatar_backend.generator.dit import WanModel
from avatar_backend.generator.sampler import GeneratorNoise, denoise_block
from avatar_backend.generator.schedule import StreamSchedule
from avatar_backend.generator.vae import WanVAE

VARIANTS = ("bf16", "fp8-kv", "compiled")
NOT_BUILT = {"fp8-gemm": "FP8 GEMM (torch._scaled_mm) is not built yet"}
PERFORMANCE_FILE = Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md"


def dit_flops_per_call(config: ModelConfig, width: int, height: int, latent_frames: int, visible_frames: int,
                       audio: bool = True) -> float:
    """Multiply-adds x 2 of one DiT call: the linear layers and attention of every block (embeddings, the head
    and the per-prompt cross-attention keys/values are left out: under 1%)."""
    d, f = config.dit.dim, config.dit.ffn_dim
    tokens = latent_frames * config.frame_tokens(width, height)
    keys = visible_frames * config.frame_tokens(width, height)
    context = config.dit.text_len + config.dit.clip_tokens
    per_layer = 2 * tokens * d * d * 4                 # self-attention q, k, v, o
    per_layer += 2 * 2 * tokens * keys * d            # self-attention scores and values
    per_layer += 2 * tokens * d * d * 2               # cross-attention q, o
    per_layer += 2 * 2 * tokens * context * d         # cross-attention over text and image tokens
    if audio:
        per_layer += 2 * tokens * d * d * 2           # audio attention q, proj
        per_layer += 2 * 2 * tokens * config.dit.context_tokens * d
    per_layer += 2 * tokens * d * f * 2               # FFN
    return config.dit.num_layers * per_layer


def bench_variant(config: ModelConfig, variant: str, width: int, height: int, blocks: int, device: str) -> dict:
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if variant == "fp8-kv":
        config = dataclasses.replace(config, sampler=dataclasses.replace(config.sampler, kv_cache="fp8"))
    with torch.device(device):
        torch.manual_seed(0)
        model = WanModel(config.dit).to(dtype).eval().requires_grad_(False)
    step_model = torch.compile(model) if variant == "compiled" else model
    schedule = StreamSchedule.from_model_config(config, width, height)
    memory = ConvKVMemory.allocate(config, width, height, device=device, dtype=dtype)
    h, w = height // config.vae.spatial_stride, width // config.vae.spatial_stride
    window = sum(config.sampler.block_sizes)
    y = torch.randn(1, config.dit.in_dim - config.dit.out_dim, window, h, w, device=device, dtype=dtype)
    text = torch.randn(config.dit.text_len, config.dit.text_dim, device=device, dtype=dtype)
    clip = torch.randn(1, config.dit.clip_tokens, config.dit.clip_dim, device=device, dtype=dtype)
    window_frames = 1 + config.dit.vae_scale * (window - 1)
    audio = torch.randn(1, window_frames, config.dit.audio_window, config.dit.audio_layers,
                        config.dit.audio_channels, device=device, dtype=dtype)
    noise = GeneratorNoise(0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.inference_mode():
        context = model.encode_context(text, clip)
        for index in range(blocks):
            plan = schedule.block(index)
            _sync(device)
            started = time.perf_counter()
            denoise_block(step_model, memory, plan, y=y, context=context, audio_window=audio, noise=noise,
                          sampler=config.sampler, functional=False)
            _sync(device)
            times.append(time.perf_counter() - started)
    later = times[2:] or times[-1:]
    block_s = statistics.median(later)
    frames = config.frames_per_block(2)
    steps = config.sampler.num_steps
    flops = sum(dit_flops_per_call(config, width, height, config.sampler.block_sizes[1], config.sampler.memory_slots,
                                   audio=i > 0 or not config.sampler.skip_audio_at_first_step) for i in range(steps))
    return {
        "variant": variant, "width": width, "height": height, "device": _device_name(device),
        "block_s": round(block_s, 4), "fps": round(frames / block_s, 2), "first_block_s": round(times[0], 4),
        "flop_per_frame": flops / frames, "tflop_per_frame": round(flops / frames / 1e12, 2),
        "tflops": round(flops / block_s / 1e12, 1),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if device.startswith("cuda") else 0,
        "blocks_s": [round(t, 4) for t in times],
    }


def bench_decode(config: ModelConfig, width: int, height: int, device: str, latents: int = 8) -> float:
    """The VAE's streaming decode, ms per video frame (later blocks)."""
    with torch.device(device):
        vae = WanVAE(config.vae).eval()
    state = vae.init_decoder_state(width, height, device=device)
    h, w = height // config.vae.spatial_stride, width // config.vae.spatial_stride
    with torch.inference_mode():
        vae.decode_stream(torch.randn(1, config.vae.z_dim, 1, h, w, device=device), state)
        _sync(device)
        started = time.perf_counter()
        frames = vae.decode_stream(torch.randn(1, config.vae.z_dim, latents, h, w, device=device), state).shape[2]
        _sync(device)
    return (time.perf_counter() - started) * 1000 / frames


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"


def write_performance_rows(results: list[dict], path: Path = PERFORMANCE_FILE) -> None:
    """Append one row per variant to docs/PERFORMANCE.md (the table is created when missing)."""
    header = ("# GPU performance of the published DiT\n\n| date | device | size | variant | s/block | FPS | "
              "first block s | TFLOP/frame | TFLOP/s | peak GPU GB | VAE ms/frame |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|\n")
    text = path.read_text() if path.is_file() else header
    today = datetime.date.today().isoformat()
    for r in results:
        text += (f"| {today} | {r['device']} | {r['width']}x{r['height']} | {r['variant']} | {r['block_s']} | "
                 f"{r['fps']} | {r['first_block_s']} | {r['tflop_per_frame']} | {r['tflops']} | "
                 f"{r['peak_gpu_bytes'] / 1e9:.1f} | {r.get('vae_ms_per_frame', '')} |\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avatar_backend.gpu_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--sizes", default="512x512,416x720")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--blocks", type=int, default=6, help="blocks per run (the first two are warm-up)")
    parser.add_argument("--json", type=Path, default=Path("out/gpu_bench.json"))
    parser.add_argument("--no-docs", action="store_true", help="do not append rows to docs/PERFORMANCE.md")
    parser.add_argument("--smoke", action="store_true", help="the tiny config on the CPU: the code path only")
    args = parser.parse_args(argv)
    config, device = (TINY, "cpu") if args.smoke else (LIVEACT_18B, args.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run with --smoke for the CPU code path", file=sys.stderr)
        return 2
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")] if not args.smoke else [(64, 64)]
    results = []
    for width, height in sizes:
        decode_ms = round(bench_decode(config, width, height, device), 2)
        for variant in args.variants.split(","):
            if variant in NOT_BUILT:
                print(f"{variant}: {NOT_BUILT[variant]}")
                continue
            result = bench_variant(config, variant, width, height, args.blocks, device)
            result["vae_ms_per_frame"] = decode_ms
            results.append(result)
            print(f"{width}x{height} {variant}: {result['block_s']:.3f} s/block, {result['fps']:.1f} FPS, first block "
                  f"{result['first_block_s']:.2f} s, {result['tflop_per_frame']} TFLOP/frame = {result['tflops']} "
                  f"TFLOP/s, peak {result['peak_gpu_bytes'] / 1e9:.1f} GB, VAE {decode_ms} ms/frame")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"config": config.name, "results": results}, indent=2))
    if not args.smoke and not args.no_docs:
        write_performance_rows(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
