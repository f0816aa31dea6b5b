"""The GPU benchmark of the published model's DiT: ``python -m avatar_backend.gpu_bench``.

Builds the full-size DiT (liveact-18b) with random weights directly on the GPU (no checkpoint needed) and, per
frame size and variant, streams blocks through the real sampler and ConvKV caches: seconds per block (blocks 2
on, those that compress, median), frames per second, time to the first block (of a new NPC, after warm-up
blocks on a memory thrown away), the warm-up's time (a fresh model's first block of each kind: kernels loaded,
graphs compiled), TFLOP per frame counted from the shapes, the TFLOP/s that makes, peak GPU memory, and the VAE's
streaming decode as serving runs it (float32 weights, float32 or bfloat16 autocast, 1, 2 or 8 latents per pass) in
ms per frame, and compiled, with each setting's frames' error. One variant's stream (``--end-to-end``) then goes on
through DiT and decode together, one after the other and overlapped (each block's decode beside the next block's
DiT), with the fastest eager float32 and bfloat16 decode and the compiled one: the end-to-end FPS of one GPU.
Writes the numbers as JSON (after every row) and one row per variant to docs/PERFORMANCE.md with the device and
the date.

Variants: ``bf16`` (the default path), ``fp8-kv`` (the FP8 ConvKV cache), ``fp8-gemm`` (the transformer blocks'
linear layers as FP8 GEMMs), ``compiled`` (torch.compile of the transformer blocks) and ``fastest`` (all three).
Every variant runs the same weights, inputs and noise, so each reports its quality guard: the relative L2 error of
its blocks' latents against the bf16 variant's. ``--attention`` picks the attention backend for all of them.

``--sp-devices cuda:0,cuda:1`` also runs the bf16 variant sequence-parallel on those devices (one process per
device, NCCL) and reports its speed-up over one device. ``--smoke`` runs a small config on the CPU (what CI runs;
with ``--sp-devices cpu,cpu`` over gloo): the same code paths, no meaningful numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import gc
import itertools
import json
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avatar_backend.generator.config import ATTENTION_BACKENDS, LIVEACT_18B, TINY, ExecutionConfig, ModelConfig
from avatar_backend.generator.convkv import ConvKVMemory
from avatar_backend.generator.dit import WanModel
from avatar_backend.generator.parallel import SequenceParallel
from avatar_backend.generator.pipeline import (DECODE_LATENTS_PER_PASS, GPU_DECODE_LATENTS_PER_PASS,
                                               apply_execution, decode_block, decode_latents_per_pass)
from avatar_backend.generator.sampler import GeneratorNoise, denoise_block
from avatar_backend.generator.schedule import StreamSchedule
from avatar_backend.generator.vae import WanVAE


@dataclass(frozen=True)
class Variant:
    kv_cache: str = "model"
    gemm: str = "model"
    compile: bool = False


VARIANTS = {
    "bf16": Variant(),
    "fp8-kv": Variant(kv_cache="fp8"),
    "fp8-gemm": Variant(gemm="fp8"),
    "compiled": Variant(compile=True),
    "fastest": Variant(kv_cache="fp8", gemm="fp8", compile=True),
}
# Later blocks per decode setting and mode in the end-to-end measurement.
END_TO_END_BLOCKS = 5
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


def bench_variant(config: ModelConfig, name: str, width: int, height: int, blocks: int, device: str,
                  attention: str = "sdpa", parallel: SequenceParallel | None = None,
                  end_to_end: tuple[dict[bool, WanVAE], list[DecodeSetting]] | None = None,
                  resident_bytes: int = 0) -> dict:
    """Stream ``blocks`` blocks of one variant; its numbers, and each block's latents (on the host) as "x0s".

    With ``end_to_end`` (the VAEs of :func:`build_vaes` and decode settings), the stream then goes on through DiT
    and decode for each setting: one after the other, and with a block's decode beside the next block's DiT (see
    :func:`_end_to_end`). ``resident_bytes`` (the VAEs' weights on the device) are left out of the peak.
    """
    variant = VARIANTS[name]
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    config = dataclasses.replace(config, sampler=dataclasses.replace(config.sampler, kv_cache=variant.kv_cache))
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)   # built in its dtype where it runs: no fp32 copy of 18B parameters (76 GB)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = WanModel(config.dit)
            model.init_weights(zero_head=False)   # a zero head would make every variant's latents the noise alone
    finally:
        torch.set_default_dtype(default_dtype)
    model.eval().requires_grad_(False)
    apply_execution(model, ExecutionConfig(attention=attention, gemm=variant.gemm, compile=variant.compile), device)
    schedule = StreamSchedule.from_model_config(config, width, height)
    h, w = height // config.vae.spatial_stride, width // config.vae.spatial_stride
    window = sum(config.sampler.block_sizes)
    generator = torch.Generator().manual_seed(1)   # the same inputs for every variant, on every rank

    def inputs(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device, dtype)

    y = inputs(1, config.dit.in_dim - config.dit.out_dim, window, h, w)
    text = inputs(config.dit.text_len, config.dit.text_dim)
    clip = inputs(1, config.dit.clip_tokens, config.dit.clip_dim)
    audio = inputs(1, 1 + config.dit.vae_scale * (window - 1), config.dit.audio_window, config.dit.audio_layers,
                   config.dit.audio_channels)

    def allocate() -> ConvKVMemory:
        return ConvKVMemory.allocate(config, width, height, device=device, dtype=dtype,
                                     head_shards=parallel.world_size if parallel else 1)

    times, x0s = [], []
    with torch.inference_mode():
        context = model.encode_context(text, clip)
        # Blocks 0, 1 and 2 (one of each kind: the first, the first after it, the first that compresses) once on
        # a memory thrown away: the timed blocks are then what a new NPC meets on a running server (kernels
        # loaded, graphs compiled), not the start of a process. Their time is what a server spends on its first
        # NPC's first blocks, compiling included.
        _sync(device)
        started = time.perf_counter()
        warm_up, warm_up_noise = allocate(), GeneratorNoise(0)
        for index in (0, 1, 2):
            denoise_block(model, warm_up, schedule.block(index), y=y, context=context, audio_window=audio,
                          noise=warm_up_noise, sampler=config.sampler, functional=False, parallel=parallel)
        _sync(device)
        warm_up_s = time.perf_counter() - started
        del warm_up
        memory, noise = allocate(), GeneratorNoise(0)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)

        def denoise(index: int) -> torch.Tensor:
            return denoise_block(model, memory, schedule.block(index), y=y, context=context, audio_window=audio,
                                 noise=noise, sampler=config.sampler, functional=False, parallel=parallel).x0

        for index in range(blocks):
            _sync(device)
            started = time.perf_counter()
            x0 = denoise(index)
            _sync(device)
            times.append(time.perf_counter() - started)
            x0s.append(x0.float().cpu())
        # The rows' peak: weights, one NPC's caches and activations.
        peak_gpu_bytes = torch.cuda.max_memory_allocated(device) - resident_bytes if device.startswith("cuda") else 0
        end_to_end_s = {}
        if end_to_end is not None:
            vaes, settings = end_to_end
            start = blocks
            for setting in settings:
                for overlap in (False, True):
                    indices = range(start, start + END_TO_END_BLOCKS)
                    end_to_end_s[setting.name, overlap] = _end_to_end(
                        denoise, indices, vaes, setting, overlap, width, height, config.sampler.block_sizes[1], device)
                    start = indices.stop
    later = times[2:] or times[-1:]
    block_s = statistics.median(later)
    frames = config.frames_per_block(2)
    steps = config.sampler.num_steps
    flops = sum(dit_flops_per_call(config, width, height, config.sampler.block_sizes[1], config.sampler.memory_slots,
                                   audio=i > 0 or not config.sampler.skip_audio_at_first_step) for i in range(steps))
    return {
        "variant": name, "width": width, "height": height, "device": _device_name(device), "attention": attention,
        "ranks": parallel.world_size if parallel else 1,
        "block_s": round(block_s, 4), "fps": round(frames / block_s, 2), "first_block_s": round(times[0], 4),
        "warm_up_s": round(warm_up_s, 2),
        "flop_per_frame": flops / frames, "tflop_per_frame": round(flops / frames / 1e12, 2),
        "tflops": round(flops / block_s / 1e12, 1),
        "peak_gpu_bytes": peak_gpu_bytes,
        "blocks_s": [round(t, 4) for t in times], "x0s": x0s,
        **({"end_to_end": _end_to_end_report(end_to_end_s, frames)} if end_to_end_s else {}),
    }


def _resident_bytes(vaes: dict[bool, WanVAE]) -> int:
    """Bytes of the VAEs' weights (they stay on the device through every variant: moving a compiled decoder
    recompiles it)."""
    return sum(t.numel() * t.element_size() for vae in vaes.values()
               for t in itertools.chain(vae.parameters(), vae.buffers()))


def _end_to_end_report(seconds: dict[tuple[str, bool], list[float]], frames: int) -> dict:
    """Per decode setting: seconds per block (median) and FPS, one after the other and overlapped."""
    report = {}
    for (setting, overlap), times in seconds.items():
        block_s = statistics.median(times)
        report.setdefault(setting, {})["overlapped" if overlap else "sequential"] = {
            "block_s": round(block_s, 4), "fps": round(frames / block_s, 2), "blocks_s": [round(t, 4) for t in times]}
    return report


def _end_to_end(denoise, indices: range, vaes: dict[bool, WanVAE], setting: DecodeSetting, overlap: bool,
                width: int, height: int, block_latents: int, device: str) -> list[float]:
    """Seconds per block of DiT and decode together over the blocks ``indices`` (later blocks, ``block_latents``
    latent frames each).

    One after the other: a block's DiT, then its decode. Overlapped: a block's DiT on this thread while the
    previous block's latents decode on a second thread and (on a GPU) its own CUDA stream, as a server that
    decodes beside the DiT would; each block waits for both. This measures whether the GPU has room for both at
    once, which the per-part timings cannot say.
    """
    config = vaes[False].config
    state = vaes[False].init_decoder_state(width, height, device=device)
    h, w = height // config.spatial_stride, width // config.spatial_stride
    stream = torch.cuda.Stream(device) if device.startswith("cuda") and overlap else None

    def decode(latents: torch.Tensor) -> None:
        # Inference mode and autocast are per thread: set them again here.
        with torch.inference_mode(), (torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()):
            setting.decode(vaes, latents, state)
            if stream is not None:
                stream.synchronize()

    times = []
    with ThreadPoolExecutor(max_workers=1) as decoder_thread:
        # The stream's first latent (decoded alone), then a later block, untimed, where the timed decodes will run:
        # a compiled decoder compiles its graphs here, before anything runs beside it (a graph traced on one thread
        # while a compiled function runs on another fails: the tracer patches every module's call).
        for latents in (1, block_latents):
            warm_up = torch.zeros(1, config.z_dim, latents, h, w, device=device)
            if overlap:
                decoder_thread.submit(decode, warm_up).result()
            else:
                decode(warm_up)
        previous = warm_up
        for index in indices:
            _sync(device)
            started = time.perf_counter()
            if overlap:
                decoded = decoder_thread.submit(decode, previous)
                x0 = denoise(index)
                _sync(device)
                decoded.result()
            else:
                x0 = denoise(index)
                decode(x0)
                _sync(device)
            times.append(time.perf_counter() - started)
            previous = x0   # held until its decode next block, so its memory is not reused under it
    return times


def latent_error(x0s: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """The largest relative L2 error of a variant's block latents against the reference variant's."""
    return max(float((a - b).norm() / b.norm()) for a, b in zip(x0s, reference))


def bench_sequence_parallel(config: ModelConfig, width: int, height: int, blocks: int, devices: list[str],
                            attention: str) -> dict:
    """The bf16 variant on ``devices``, one process each (NCCL on GPUs, gloo on CPUs); rank 0's numbers."""
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as scratch:
        out = Path(scratch) / "rank0.pt"
        mp.spawn(_sp_rank, args=(devices, f"tcp://127.0.0.1:{_free_port()}", config, width, height, blocks,
                                 attention, str(out)), nprocs=len(devices))
        return torch.load(out, weights_only=False)


def _sp_rank(rank: int, devices: list[str], init_method: str, config: ModelConfig, width: int, height: int,
             blocks: int, attention: str, out: str) -> None:
    device = devices[rank]
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", init_method=init_method, rank=rank,
                            world_size=len(devices))
    try:
        result = bench_variant(config, "bf16", width, height, blocks, device, attention,
                               parallel=SequenceParallel.from_process_group())
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def _release(device: str) -> None:
    """Free the last variant's model and compiled graphs before the next is built (each 18B model is 38 GB)."""
    torch._dynamo.reset()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class DecodeSetting:
    """How a block is decoded: the VAE's compute dtype under autocast (None: float32), latents per pass, and whether
    the decoder runs compiled (torch.compile, as serving's ``--compile`` runs it)."""
    autocast: torch.dtype | None
    latents_per_pass: int
    compiled: bool = False

    @property
    def name(self) -> str:
        dtype = str(self.autocast or torch.float32).removeprefix("torch.")
        return f"{dtype} x{self.latents_per_pass}{' compiled' if self.compiled else ''}"

    def decode(self, vaes: dict[bool, WanVAE], latents: torch.Tensor, state) -> torch.Tensor:
        return decode_block(vaes[self.compiled], latents, state, self.autocast, self.latents_per_pass)


DECODE_SETTINGS = ([DecodeSetting(dtype, n) for dtype in (None, torch.bfloat16)
                    for n in sorted({1, DECODE_LATENTS_PER_PASS, GPU_DECODE_LATENTS_PER_PASS})]
                   + [DecodeSetting(torch.bfloat16, GPU_DECODE_LATENTS_PER_PASS, compiled=True)])


def build_vaes(config: ModelConfig, device: str) -> dict[bool, WanVAE]:
    """The VAE with random weights (seeded), float32 as serving holds it, by whether its decoder is compiled (two
    copies of the same weights: compiling is in place)."""
    torch.manual_seed(0)
    with torch.device(device):
        vae = WanVAE(config.vae).eval()
    compiled = copy.deepcopy(vae)
    compiled.compile_decoder()
    return {False: vae, True: compiled}


def bench_decode(vaes: dict[bool, WanVAE], width: int, height: int, device: str, setting: DecodeSetting,
                 latents: int = 8) -> tuple[float, torch.Tensor]:
    """The streaming decode of a later block (``setting``): ms per video frame and the frames it made (on the host,
    fp32). Every setting decodes the same weights and latents; a compiled one is timed after a first block."""
    config = vaes[False].config
    h, w = height // config.spatial_stride, width // config.spatial_stride
    z = torch.randn(1, config.z_dim, 1 + latents, h, w, generator=torch.Generator().manual_seed(2)).to(device)
    with torch.inference_mode():
        if setting.compiled:   # compiles the graphs of both kinds of call
            warm_up = vaes[False].init_decoder_state(width, height, device=device)
            setting.decode(vaes, z[:, :, :1], warm_up)
            setting.decode(vaes, z[:, :, 1:], warm_up)
        state = vaes[False].init_decoder_state(width, height, device=device)
        setting.decode(vaes, z[:, :, :1], state)
        _sync(device)
        started = time.perf_counter()
        frames = setting.decode(vaes, z[:, :, 1:], state)
        _sync(device)
    return (time.perf_counter() - started) * 1000 / frames.shape[2], frames.float().cpu()


def bench_decodes(vaes: dict[bool, WanVAE], width: int, height: int, device: str) -> dict:
    """Every decode setting's ms per frame and its frames' relative L2 error against float32 one latent per pass."""
    reference, timings = None, {}
    for setting in DECODE_SETTINGS:
        ms, frames = bench_decode(vaes, width, height, device, setting)
        reference = frames if reference is None else reference
        timings[setting.name] = {"ms_per_frame": round(ms, 2),
                                 "error": float((frames - reference).norm() / reference.norm())}
    return timings


def end_to_end_decodes(timings: dict) -> list[DecodeSetting]:
    """The decode settings an end-to-end stream runs: the fastest eager one of each dtype, and the compiled one."""
    eager = [s for s in DECODE_SETTINGS if not s.compiled]
    fastest = [min((s for s in eager if s.autocast == dtype), key=lambda s: timings[s.name]["ms_per_frame"])
               for dtype in (None, torch.bfloat16)]
    return fastest + [s for s in DECODE_SETTINGS if s.compiled]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"


def write_performance_rows(results: list[dict], path: Path = PERFORMANCE_FILE) -> None:
    """Append one row per variant to docs/PERFORMANCE.md (the table is created when missing)."""
    header = ("# GPU performance of the published DiT\n\n| date | device | size | variant | attention | ranks | "
              "s/block | FPS | first block s | TFLOP/frame | TFLOP/s | peak GPU GB | VAE ms/frame fp32 / bf16 | "
              "latent error |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    text = path.read_text() if path.is_file() else header
    today = datetime.date.today().isoformat()
    for r in results:
        error = r.get("latent_error")
        vae = " / ".join(str(r[k]) for k in ("vae_ms_per_frame", "vae_bf16_ms_per_frame") if k in r)
        text += (f"| {today} | {r['device']} | {r['width']}x{r['height']} | {r['variant']} | {r['attention']} | "
                 f"{r['ranks']} | {r['block_s']} | {r['fps']} | {r['first_block_s']} | {r['tflop_per_frame']} | "
                 f"{r['tflops']} | {r['peak_gpu_bytes'] / 1e9:.1f} | {vae} | "
                 f"{'' if error is None else f'{error:.2%}'} |\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avatar_backend.gpu_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="default cuda:0 (with --smoke: cpu)")
    parser.add_argument("--sizes", default="512x512,416x720")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--attention", default="sdpa", choices=ATTENTION_BACKENDS)
    parser.add_argument("--sp-devices", default="", metavar="DEV,DEV",
                        help="also run bf16 sequence-parallel on these devices and report the speed-up")
    parser.add_argument("--blocks", type=int, default=6, help="blocks per run (the median is over blocks 2 on)")
    parser.add_argument("--end-to-end", default="fastest", metavar="VARIANT",
                        help="the variant whose stream goes on through DiT and decode, one after the other and "
                             "overlapped, with the fastest eager float32 and bfloat16 decode and the compiled one "
                             "(if it is among --variants)")
    parser.add_argument("--json", type=Path, default=Path("out/gpu_bench.json"))
    parser.add_argument("--no-docs", action="store_true", help="do not append rows to docs/PERFORMANCE.md")
    parser.add_argument("--smoke", action="store_true", help="the tiny config on the CPU: the code path only")
    args = parser.parse_args(argv)
    config = TINY if args.smoke else LIVEACT_18B
    device = args.device or ("cpu" if args.smoke else "cuda:0")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run with --smoke for the CPU code path", file=sys.stderr)
        return 2
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")] if not args.smoke else [(64, 64)]
    results = []
    for width, height in sizes:
        vaes = build_vaes(config, device)
        decodes = bench_decodes(vaes, width, height, device)
        for setting, timing in decodes.items():
            print(f"{width}x{height} VAE decode ({setting} latents per pass): {timing['ms_per_frame']:.2f} ms/frame "
                  f"({timing['error']:.2%} off float32 x1)", flush=True)
        # The rows' decode: fp32 and bf16 autocast, at the latents per pass serving takes on this device.
        serving = {dtype: DecodeSetting(dtype, decode_latents_per_pass(device)).name for dtype in (None, torch.bfloat16)}
        decode = {"vae_ms_per_frame": decodes[serving[None]]["ms_per_frame"],
                  "vae_bf16_ms_per_frame": decodes[serving[torch.bfloat16]]["ms_per_frame"],
                  "vae_bf16_error": decodes[serving[torch.bfloat16]]["error"], "vae_decode": decodes}
        end_to_end = (vaes, end_to_end_decodes(decodes))
        _release(device)
        baseline = None
        for variant in variants:
            result = bench_variant(config, variant, width, height, args.blocks, device, args.attention,
                                   end_to_end=end_to_end if variant == args.end_to_end else None,
                                   resident_bytes=_resident_bytes(vaes))
            x0s = result.pop("x0s")
            baseline = x0s if variant == "bf16" else baseline
            if baseline is not None and variant != "bf16":
                result["latent_error"] = latent_error(x0s, baseline)
            result.update(decode)
            results.append(result)
            _report(result)
            _write_json(args.json, config, results)   # after every row: a run stopped early keeps what it measured
            _release(device)
        del vaes, end_to_end
        _release(device)
        if args.sp_devices:
            result = bench_sequence_parallel(config, width, height, args.blocks, args.sp_devices.split(","),
                                             args.attention)
            x0s = result.pop("x0s")
            if baseline is not None:
                result["latent_error"] = latent_error(x0s, baseline)
                one_device = results[-len(variants) + variants.index("bf16")]   # this size's bf16 row
                result["speedup"] = round(one_device["block_s"] / result["block_s"], 2)
            result.update(decode)
            results.append(result)
            _report(result)
            _write_json(args.json, config, results)
    if not args.smoke and not args.no_docs:
        write_performance_rows(results)
    return 0


def _write_json(path: Path, config: ModelConfig, results: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": config.name, "results": results}, indent=2))


def _report(r: dict) -> None:
    extra = "".join([f", latents {r['latent_error']:.2%} off bf16" if "latent_error" in r else "",
                     f", {r['speedup']}x over one device" if "speedup" in r else ""])
    print(f"{r['width']}x{r['height']} {r['variant']} on {r['ranks']} device(s): {r['block_s']:.3f} s/block, "
          f"{r['fps']:.1f} FPS, first block {r['first_block_s']:.2f} s (warm-up {r['warm_up_s']:.1f} s), "
          f"{r['tflop_per_frame']} TFLOP/frame = "
          f"{r['tflops']} TFLOP/s, peak {r['peak_gpu_bytes'] / 1e9:.1f} GB, VAE {r['vae_ms_per_frame']} ms/frame"
          f"{extra}", flush=True)
    for setting, modes in r.get("end_to_end", {}).items():
        print(f"  with decode {setting}: " + ", ".join(f"{mode} {m['block_s']:.3f} s/block = {m['fps']:.1f} FPS"
                                                     for mode, m in modes.items()), flush=True)


if __name__ == "__main__":
    sys.exit(main())
