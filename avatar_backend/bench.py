"""The benchmark behind ``avatar-backend bench``: prints its numbers and writes them to a JSON file.

1. Generator: seconds per block and frames per second of a model config (default ``tiny`` at its default
   size) on this machine, median over blocks after a warm-up, with the torch thread count stated; then the
   same for batches of NPCs generated in one call (1, 2, 4, 8): blocks per second, per-NPC real-time factor
   and how many NPCs one worker keeps in real time; then one NPC with each decoder precision
   (``--decode-precision``) in alternating rounds, the VAE decoders (Wan, light, light at the encoder's
   mirror widths, or light at widths named on the command line) on one block (with ``--compiled``, each of
   these compiled as well, as ``serve --compile`` runs), and NPCs talking at real-time pace through a real
   worker.
2. Gateway CPU per video frame at 512x512: Opus decode of the frame's audio + JPEG encode (the media path)
   + sending the VideoFrame over a real gRPC stream on loopback (this process's CPU time per frame; the
   reading client runs in another process so its CPU is not counted).
3. Memory per NPC: the tiny config at its default size and the published 18B config at 512x512 (analytic,
   from the configs alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from avatar_backend.generator.config import DECODE_PRECISIONS, VAE_PARTS, VAEConfig, get_config

# The light decoder at the encoder's mirror widths, which a config's narrower light decoder replaced
# (VAEConfig.light_decoder_dims): timed beside it as one more of --decoders; so is the light decoder at any
# widths, named by them ("light-64-32-24-8"), before one is trained.
MIRROR_DECODER = "light-mirror"
BENCH_DECODERS = (*VAE_PARTS, MIRROR_DECODER)
LIGHT_WIDTHS_PREFIX = "light-"


def widths_named_by(name: str) -> tuple[int, ...] | None:
    """The widths a --decoders name such as "light-64-32-24-8" gives the light decoder (VAEConfig.light_decoder_dims,
    from latent to full resolution); None for any other name."""
    widths = name.removeprefix(LIGHT_WIDTHS_PREFIX).split("-")
    if not name.startswith(LIGHT_WIDTHS_PREFIX) or not all(w.isdigit() and int(w) > 0 for w in widths):
        return None
    return tuple(int(w) for w in widths)


class TimedBlock(NamedTuple):
    seconds: float      # the whole generate_block call
    dit_s: float        # its DiT (the sampler's steps)
    decode_s: float     # its streaming decode
    frames: int


def time_blocks(pipeline, memory, conditioning, blocks: int) -> list[TimedBlock]:
    """``blocks`` blocks of one NPC voiced with noise (a fixed seed), each timed."""
    rng = np.random.default_rng(0)
    timed = []
    for _ in range(blocks):
        consume, lookahead = pipeline.block_audio_samples(memory)
        audio = (0.1 * rng.standard_normal(consume + lookahead)).astype(np.float32)
        started = time.perf_counter()
        frames = pipeline.generate_block(memory, conditioning, audio).shape[0]
        timings = pipeline.last_timings
        timed.append(TimedBlock(time.perf_counter() - started, timings["dit_s"], timings["decode_s"], frames))
    return timed


def bench_generator(config: str, blocks: int, threads: int, width: int = 0, height: int = 0) -> dict:
    import torch
    from PIL import Image

    from avatar_backend.generator.pipeline import LiveActPipeline, shipped_weights
    from avatar_backend.store import CharacterRecord

    torch.set_num_threads(threads)
    pipeline = LiveActPipeline.from_config(config, weights=shipped_weights(config))
    width, height = width or pipeline.config.width, height or pipeline.config.height
    fps = pipeline.config.fps
    image = Image.open(Path(__file__).parent / "assets" / "default_character.png")
    png = io.BytesIO()
    image.save(png, "PNG")

    started = time.perf_counter()
    conditioning = pipeline.prepare_character(CharacterRecord("bench", "a person talking"), png.getvalue(),
                                              width, height)
    prepare_s = time.perf_counter() - started
    memory = pipeline.new_memory("bench", "bench", width, height, fps, seed=0)
    timed = time_blocks(pipeline, memory, conditioning, blocks)
    block_s, frames = [t.seconds for t in timed], [t.frames for t in timed]
    later = block_s[2:] if blocks > 3 else block_s[1:]
    later_frames = frames[-1]
    median_s = statistics.median(later)
    return {
        "config": config, "width": width, "height": height, "fps": fps, "torch_threads": threads,
        "random_weights": pipeline.random_weights, "parameters": pipeline.parameters,
        "prepare_character_s": round(prepare_s, 4),
        "first_block_s": round(block_s[0], 4), "first_block_frames": frames[0],
        "block_s_median": round(median_s, 4), "block_s_all": [round(s, 4) for s in block_s],
        "block_frames": later_frames,
        "generated_fps": round(later_frames / median_s, 2),
        "realtime_factor": round(later_frames / fps / median_s, 3),
        "npc_memory_bytes": memory.nbytes(),
    }


def bench_batches(config: str, sizes: tuple[int, ...], blocks: int, threads: int) -> dict:
    """Blocks per second and per-NPC real-time factor when ``n`` NPCs' blocks run in one call, for each n.

    Every NPC has its own memory, seed and voice; calls are timed at the steady-state block kind (blocks 0 and
    1 are warm-up), median over ``blocks`` calls. ``compute_keeps_up_npcs``: the most NPCs of the sizes measured
    whose blocks one call makes at least as fast as they play (compute alone; what a worker keeps in real time,
    with voice arriving and scheduling, is :func:`bench_worker_realtime`'s).
    """
    import torch

    from avatar_backend.generator.pipeline import LiveActPipeline, shipped_weights
    from avatar_backend.generator.runner import BlockInput
    from avatar_backend.store import CharacterRecord

    torch.set_num_threads(threads)
    pipeline = LiveActPipeline.from_config(config, weights=shipped_weights(config))
    width, height, fps = pipeline.config.width, pipeline.config.height, pipeline.config.fps
    png = (Path(__file__).parent / "assets" / "default_character.png").read_bytes()
    conditioning = pipeline.prepare_character(CharacterRecord("bench", "talking"), png, width, height)
    rng = np.random.default_rng(0)
    rows = []
    for size in sizes:
        memories = [pipeline.new_memory(f"npc{i}", "bench", width, height, fps, seed=i) for i in range(size)]
        calls, stages, frames = [], [], 0
        for call in range(2 + blocks):
            inputs = []
            for memory in memories:
                consume, lookahead = pipeline.block_audio_samples(memory)
                audio = (0.1 * rng.standard_normal(consume + lookahead)).astype(np.float32)
                inputs.append(BlockInput(memory, conditioning, audio))
            started = time.perf_counter()
            out = pipeline.generate_blocks(inputs)
            if call >= 2:
                calls.append(time.perf_counter() - started)
                stages.append(pipeline.last_timings)
                frames = out[0].shape[0]
        median_s = statistics.median(calls)
        per_npc_rtf = frames / fps / median_s
        rows.append({
            "npcs": size, "call_s_median": round(median_s, 4), "calls_s": [round(c, 4) for c in calls],
            "dit_s_median": round(statistics.median(t["dit_s"] for t in stages), 4),
            "decode_s_median": round(statistics.median(t["decode_s"] for t in stages), 4),
            "blocks_per_s": round(size / median_s, 3), "frames_per_block": frames,
            "per_npc_realtime_factor": round(per_npc_rtf, 3),
        })
    keeps_up = max((r["npcs"] for r in rows if r["per_npc_realtime_factor"] >= 1.0), default=0)
    return {"config": config, "width": width, "height": height, "fps": fps, "torch_threads": threads,
            "random_weights": pipeline.random_weights, "batches": rows, "compute_keeps_up_npcs": keeps_up}


def bench_decode_precisions(config: str, precisions: tuple[str, ...], blocks: int, threads: int,
                            rounds: int = 3, compiled: bool = False) -> dict:
    """One NPC's blocks with each decoder precision (``serve --decode-precision``), side by side: the
    precisions take turns, ``rounds`` times, each a fresh NPC of ``blocks`` blocks (the first two warm-up);
    medians over all rounds of the whole block, its DiT and its decode, and each one's speed-up over the first.

    ``compiled``: each precision also with ``serve --compile`` (the DiT's blocks, and on GPUs the decoder), after
    one untimed round in which every variant builds its graphs."""
    import torch

    from avatar_backend.generator.config import ExecutionConfig
    from avatar_backend.generator.pipeline import LiveActPipeline, shipped_weights
    from avatar_backend.store import CharacterRecord

    torch.set_num_threads(threads)
    variants = [(p, False) for p in precisions] + ([(p, True) for p in precisions] if compiled else [])
    pipelines = {v: LiveActPipeline.from_config(config, weights=shipped_weights(config), execution=ExecutionConfig(
        decode_precision=v[0], compile=v[1])) for v in variants}
    first = pipelines[variants[0]]
    width, height, fps = first.config.width, first.config.height, first.config.fps
    png = (Path(__file__).parent / "assets" / "default_character.png").read_bytes()
    conditionings = {v: pipeline.prepare_character(CharacterRecord("bench", "talking"), png, width, height)
                     for v, pipeline in pipelines.items()}
    timings: dict[tuple[str, bool], list[TimedBlock]] = {v: [] for v in variants}
    untimed_rounds = 1 if compiled else 0
    for round_index in range(untimed_rounds + rounds):
        for variant, pipeline in pipelines.items():
            memory = pipeline.new_memory("bench", "bench", width, height, fps, seed=0)
            timed = time_blocks(pipeline, memory, conditionings[variant], 2 + blocks)[2:]
            if round_index >= untimed_rounds:
                timings[variant] += timed
    rows = []
    for variant in variants:
        block_s = statistics.median(t.seconds for t in timings[variant])
        rows.append({"decode_precision": variant[0], "compiled": variant[1],
                     "decode_dtype": pipelines[variant].decode_dtype_name,
                     "block_s_median": round(block_s, 4),
                     "dit_s_median": round(statistics.median(t.dit_s for t in timings[variant]), 4),
                     "decode_s_median": round(statistics.median(t.decode_s for t in timings[variant]), 4),
                     "realtime_factor": round(timings[variant][-1].frames / fps / block_s, 2)})
    for row in rows:
        row["block_speedup"] = round(rows[0]["block_s_median"] / row["block_s_median"], 2)
        row["decode_speedup"] = round(rows[0]["decode_s_median"] / row["decode_s_median"], 2)
    return {"config": config, "width": width, "height": height, "torch_threads": threads, "rounds": rounds,
            "blocks_per_round": blocks, "precisions": rows}


def bench_decoder_config(vae: VAEConfig, kind: str) -> VAEConfig:
    """``vae`` with the decoder a --decoders name asks for; ValueError where the config refuses its widths."""
    widths = () if kind == MIRROR_DECODER else widths_named_by(kind)
    if widths is None:
        return dataclasses.replace(vae, decoder=kind)
    return dataclasses.replace(vae, decoder="light", light_decoder_dims=widths)


def bench_decoders(config: str, kinds: tuple[str, ...], threads: int, rounds: int = 5,
                   compiled: bool = False) -> dict:
    """The VAE decoders of ``config`` (``VAEConfig.decoder``) side by side at its default size: each decodes a
    stream's first latent, then one block of latents as serving does; they take turns ``rounds`` times (the
    first round warms up, and builds the graphs of ``compiled`` ones) and the medians are compared with the
    first's. float32 with untrained weights: the time does not depend on their values.

    ``compiled``: each decoder also torch.compiled (``WanVAE.compile_decoder``, what ``serve --compile`` does on
    GPUs)."""
    if rounds < 2:
        raise ValueError(f"the decoders need 2 rounds or more (the first warms up), got {rounds}")
    import copy

    import torch

    from avatar_backend.generator.pipeline import DECODE_LATENTS_PER_PASS
    from avatar_backend.generator.vae import CausalCache, WanVAE

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    model = get_config(config)
    built = {kind: bench_decoder_config(model.vae, kind) for kind in kinds}
    vaes = {(kind, False): WanVAE(vae_config).eval() for kind, vae_config in built.items()}
    if compiled:
        for kind in kinds:
            vaes[kind, True] = copy.deepcopy(vaes[kind, False])
            vaes[kind, True].compile_decoder()
    stride = model.vae.spatial_stride
    block_latents = model.sampler.block_sizes[-1]
    latents = torch.randn(1, model.vae.z_dim, 1 + block_latents, model.height // stride, model.width // stride,
                          generator=torch.Generator().manual_seed(0))
    seconds: dict[tuple[str, bool], list[float]] = {variant: [] for variant in vaes}
    with torch.inference_mode():
        for _ in range(rounds):
            for variant, vae in vaes.items():
                state = CausalCache()
                vae.decode_stream(latents[:, :, :1], state)
                started = time.perf_counter()
                frames = vae.decode_stream(latents[:, :, 1:], state, DECODE_LATENTS_PER_PASS).shape[2]
                seconds[variant].append(time.perf_counter() - started)
    rows = [{"decoder": kind, "compiled": is_compiled,
             "parameters": sum(p.numel() for p in vaes[kind, is_compiled].decoder.parameters()),
             "block_s_median": round(statistics.median(seconds[kind, is_compiled][1:]), 4)}
            for kind, is_compiled in vaes]
    for row in rows:
        row["speedup"] = round(rows[0]["block_s_median"] / row["block_s_median"], 2)
    return {"config": config, "width": model.width, "height": model.height, "torch_threads": threads,
            "block_frames": frames, "latents_per_pass": DECODE_LATENTS_PER_PASS, "rounds": rounds,
            "decoders": rows}


def bench_worker_realtime(config: str, npc_counts: tuple[int, ...], seconds: float, prompt: str = "") -> dict:
    """NPCs talking at once through a real worker process (engine, scheduler, batches) at real-time pace.

    Each NPC gets speech-like voice in 20 ms chunks as a microphone sends it (3.2 s utterances, 0.8 s pauses)
    for ``seconds``, from this process over the worker link, as the gateway sends it, under ``prompt`` as an
    emotion's prompt (empty: its character's base prompt). A block is late when it
    arrives after its NPC's playback reaches it, playback starting at the NPC's first frame; voice is chopped
    when the worker had to put silence inside an utterance.
    """
    import asyncio
    import tempfile

    from avatar_backend.media.synthetic_voice import speech_like_voice
    from avatar_backend.proto_gen import worker_pb2
    from avatar_backend.store import CharacterRecord
    from avatar_backend.worker.character_spec import spec_from_record
    from avatar_backend.worker.link import GatewayLink
    from avatar_backend.worker.process import WorkerProcess, WorkerProcessConfig

    png = (Path(__file__).parent / "assets" / "default_character.png").read_bytes()
    spec = spec_from_record(CharacterRecord("bench", "talking"))
    rate = 16000
    chunk = rate // 50
    utterance = speech_like_voice(rate, 3.2)
    pause = np.zeros(int(0.8 * rate), np.float32)

    async def run(count: int, data_dir: str) -> tuple[dict, dict]:
        link = GatewayLink()
        await link.start()
        worker = WorkerProcess(link, WorkerProcessConfig(data_dir=data_dir, model_config=config))
        await worker.start()
        info, _ = await link.request(worker_pb2.ToWorker(worker_info_query=worker_pb2.WorkerInfoQuery()))
        arrivals: dict[str, list[tuple[float, worker_pb2.FrameBlock]]] = {}

        async def npc(index: int) -> None:
            session = f"s{index}"
            queue = link.subscribe(session)
            reply, _ = await link.request(worker_pb2.ToWorker(open_npc=worker_pb2.OpenNpc(
                session_id=session, npc_id=f"npc{index}", character_id="bench", character=spec)), [png], timeout=60)
            if reply.WhichOneof("body") != "npc_opened":
                raise RuntimeError(f"NPC {index} was not opened: {reply}")
            if prompt:
                link.send(worker_pb2.ToWorker(control=worker_pb2.Control(session_id=session, emotion_prompt=prompt,
                                                                        intensity=1.0)))
            arrivals[session] = []
            loop = asyncio.get_running_loop()
            started = loop.time()

            async def speak() -> None:
                voice = np.concatenate([utterance, pause] * int(seconds / 4 + 1))[: int(seconds * rate)]
                for k in range(0, voice.size, chunk):
                    await asyncio.sleep(max(0.0, started + k / rate - loop.time()))
                    piece = voice[k:k + chunk]
                    link.send(worker_pb2.ToWorker(push_audio=worker_pb2.PushAudio(
                        session_id=session, num_samples=piece.size)), [piece])
                    if (k + chunk) % (utterance.size + pause.size) == utterance.size:
                        link.send(worker_pb2.ToWorker(control=worker_pb2.Control(session_id=session,
                                                                                end_of_utterance=True)))

            speaker = asyncio.ensure_future(speak())
            while not speaker.done() or loop.time() < started + seconds:
                try:
                    message, _ = await asyncio.wait_for(queue.get(), 0.5)
                except asyncio.TimeoutError:
                    continue
                if message.WhichOneof("body") == "frame_block":
                    arrivals[session].append((loop.time(), message.frame_block))
            await speaker
            await link.request(worker_pb2.ToWorker(close_npc=worker_pb2.CloseNpc(session_id=session)), timeout=60)
            link.unsubscribe(session)

        try:
            await asyncio.gather(*(npc(i) for i in range(count)))
        finally:
            await worker.stop(timeout=60)
            await link.close()
        late, lateness, gaps, batch_sizes, blocks = 0, [], 0, [], 0
        for received in arrivals.values():
            if not received:  # not one frame while it talked: as late as it gets
                late += 1
                lateness.append(seconds)
                continue
            first = received[0][0]
            for arrived, block in received:
                due = first + block.audio_start / rate
                lateness.append(arrived - due)
                late += arrived > due
                gaps += block.gap_samples > 0
                batch_sizes.append(block.batch_size)
                blocks += 1
        row = {"npcs": count, "seconds": seconds, "blocks": blocks, "late_blocks": late,
               "worst_lateness_s": round(max(lateness), 3), "chopped_blocks": gaps,
               "mean_batch_size": round(float(np.mean(batch_sizes)), 2)}
        return row, {"width": info.worker_info.default_width, "height": info.worker_info.default_height}

    rows, size = [], {}
    for count in npc_counts:
        with tempfile.TemporaryDirectory() as data_dir:
            row, size = asyncio.run(run(count, data_dir))
            rows.append(row)
    in_time = [r["npcs"] for r in rows if not r["late_blocks"] and not r["chopped_blocks"]]
    return {"config": config, **size, "prompt": prompt, "runs": rows, "realtime_npcs": max(in_time, default=0)}


def bench_gateway(width: int, height: int, fps: int, frames: int) -> dict:
    from avatar_backend.media.bench import gateway_cpu_per_frame, synthetic_face_frame
    from avatar_backend.media.encoders import JpegEncoder

    media = gateway_cpu_per_frame(width, height, fps)
    jpeg = JpegEncoder().encode(synthetic_face_frame(width, height)).data
    send_ms = _grpc_send_cpu_ms(jpeg, width, height, frames)
    return {**media, "grpc_send_ms": round(send_ms, 4), "total_with_send_ms": round(media["total_ms"] + send_ms, 4)}


def _grpc_send_cpu_ms(jpeg: bytes, width: int, height: int, frames: int) -> float:
    """CPU ms of this process per VideoFrame message sent on a server stream to a client in another process."""
    import grpc

    from avatar_backend.proto_gen import converse_pb2

    cpu = {}

    def stream(request, context):
        start = time.process_time()
        for index in range(frames):
            yield converse_pb2.ServerMessage(frame=converse_pb2.VideoFrame(
                index=index, pts=index * 800, codec=converse_pb2.VIDEO_CODEC_JPEG, width=width, height=height,
                keyframe=True, data=jpeg))
        cpu["s"] = time.process_time() - start

    handler = grpc.method_handlers_generic_handler("bench.Frames", {
        "Stream": grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=lambda b: b,
            response_serializer=converse_pb2.ServerMessage.SerializeToString)})
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = (
            "import grpc,sys\n"
            "ch = grpc.insecure_channel(sys.argv[1])\n"
            "call = ch.unary_stream('/bench.Frames/Stream', request_serializer=lambda b: b)\n"
            "print(sum(1 for _ in call(b'')))\n")
        out = subprocess.run([sys.executable, "-c", client, f"127.0.0.1:{port}"], capture_output=True,
                             text=True, timeout=300, check=True)
        if int(out.stdout.strip()) != frames:
            raise RuntimeError(f"the bench client received {out.stdout.strip()} of {frames} frames")
    finally:
        server.stop(None)
    return cpu["s"] * 1000 / frames


def npc_memory_sizes() -> dict:
    import torch

    from avatar_backend.generator.config import LIVEACT_18B, TINY
    from avatar_backend.generator.convkv import cache_bytes
    from avatar_backend.generator.pipeline import LiveActPipeline
    from avatar_backend.generator.vae import decoder_state_bytes

    tiny = LiveActPipeline.from_config(TINY)
    big_cache = cache_bytes(LIVEACT_18B, 512, 512, torch.bfloat16)
    big_decoder = decoder_state_bytes(LIVEACT_18B.vae, 512, 512, torch.float32)   # the VAE runs in fp32
    return {
        "tiny": {"width": TINY.width, "height": TINY.height,
                 "bytes": tiny.memory_bytes(TINY.width, TINY.height)},
        "liveact-18b_512x512": {
            "convkv_cache_bytes_bf16": big_cache, "vae_decoder_state_bytes_fp32": big_decoder,
            "bytes": big_cache + big_decoder,
            "note": "ConvKV caches (3 steps x 40 layers x 14 slots x 1024 tokens x K,V) plus the streaming VAE "
                    "decoder's causal cache; the spec's figure for the caches alone is 35.2 GB",
        },
    }


def variant_name(name: str, compiled: bool) -> str:
    """A timed variant's label in the printed tables: its name, and "compiled" where it is."""
    return f"{name} compiled" if compiled else name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avatar-backend bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--config", default="tiny", help="model config of the generator benchmark")
    parser.add_argument("--blocks", type=int, default=6, help="blocks to generate (the first two are warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--frames", type=int, default=2000, help="frames sent in the gRPC send benchmark")
    parser.add_argument("--skip-generator", action="store_true")
    parser.add_argument("--batches", default="1,2,4,8",
                        help="NPCs per generator call to measure, comma-separated (empty: skip)")
    parser.add_argument("--batch-blocks", type=int, default=4, help="timed calls per batch size")
    parser.add_argument("--decode-precisions", default="float32,bfloat16",
                        help="decoder precisions to time side by side on one NPC, comma-separated (empty: skip)")
    parser.add_argument("--decoders", default=f"wan,light,{MIRROR_DECODER}",
                        help="VAE decoders to time side by side on one block, comma-separated (empty: skip; "
                             f"{MIRROR_DECODER}: the light decoder at the encoder's mirror widths; "
                             f"{LIGHT_WIDTHS_PREFIX}64-32-24-8: at those widths, from latent to full resolution)")
    parser.add_argument("--compiled", action="store_true",
                        help="time the decoder precisions and the VAE decoders compiled as well (serve --compile)")
    parser.add_argument("--realtime-npcs", default="1,3,4,5,6,7",
                        help="NPC counts talking at real-time pace through the worker, comma-separated (empty: skip)")
    parser.add_argument("--realtime-seconds", type=float, default=30.0, help="how long each of them talks")
    parser.add_argument("--realtime-prompt", default="",
                        help="an emotion's prompt they talk under, e.g. angry (empty: their base prompt)")
    args = parser.parse_args(argv)
    for name, value in (("--batches", args.batches), ("--realtime-npcs", args.realtime_npcs)):
        if not all(n.strip().isdigit() and int(n) > 0 for n in value.split(",") if n.strip()):
            parser.error(f"{name} takes NPC counts of 1 or more, comma-separated (empty: skip), not {value!r}")
    unknown = [p for p in args.decode_precisions.split(",") if p.strip() and p.strip() not in DECODE_PRECISIONS]
    if unknown:
        parser.error(f"--decode-precisions: unknown {unknown}; known: {', '.join(DECODE_PRECISIONS)}")
    kinds = tuple(d.strip() for d in args.decoders.split(",") if d.strip())
    unknown = [d for d in kinds if d not in BENCH_DECODERS and not widths_named_by(d)]
    if unknown:
        parser.error(f"--decoders: unknown {unknown}; known: {', '.join(BENCH_DECODERS)}, or "
                     f"{LIGHT_WIDTHS_PREFIX}W-W-... (the light decoder's widths)")
    for name in (d for d in kinds if widths_named_by(d)):
        try:
            bench_decoder_config(get_config(args.config).vae, name)
        except ValueError as error:
            parser.error(f"--decoders: {name}: {error}")

    from avatar_backend.machine import describe_machine  # imports torch, which this module imports lazily

    results: dict = {
        "machine": describe_machine(),
        "command": "avatar-backend bench " + " ".join(argv or []),
    }
    if not args.skip_generator:
        results["generator"] = gen = bench_generator(args.config, args.blocks, args.threads)
        print(f"generator {gen['config']} {gen['width']}x{gen['height']} on {gen['torch_threads']} threads: "
              f"{gen['block_s_median']:.3f} s per block of {gen['block_frames']} frames -> "
              f"{gen['generated_fps']:.1f} fps ({gen['realtime_factor']:.2f}x real time at {gen['fps']} fps); "
              f"first block {gen['first_block_s']:.3f} s")
        sizes = tuple(int(n) for n in args.batches.split(",") if n.strip())
        if sizes:
            results["batches"] = batches = bench_batches(args.config, sizes, args.batch_blocks, args.threads)
            print(f"NPCs per call ({batches['config']} {batches['width']}x{batches['height']}, "
                  f"{batches['torch_threads']} threads):")
            print("  npcs  s/call  DiT s  decode s  blocks/s  per-NPC real time")
            for row in batches["batches"]:
                print(f"  {row['npcs']:4d}  {row['call_s_median']:6.3f}  {row['dit_s_median']:5.3f}  "
                      f"{row['decode_s_median']:8.3f}  {row['blocks_per_s']:8.2f}  {row['per_npc_realtime_factor']:6.2f}x")
            print(f"  compute alone keeps up with {batches['compute_keeps_up_npcs']} NPCs per call (of the sizes "
                  "measured)")
        precisions = tuple(p.strip() for p in args.decode_precisions.split(",") if p.strip())
        if precisions:
            results["decode_precisions"] = side = bench_decode_precisions(args.config, precisions, args.blocks,
                                                                          args.threads, compiled=args.compiled)
            print(f"decoder precision, one NPC, {side['rounds']} alternating rounds of {side['blocks_per_round']} "
                  "blocks:")
            for row in side["precisions"]:
                name = variant_name(row['decode_precision'], row['compiled'])
                print(f"  {name:18s} ({row['decode_dtype']}): {row['block_s_median']:.3f} s per block "
                      f"({row['realtime_factor']:.2f}x real time), DiT {row['dit_s_median']:.3f} s, decode "
                      f"{row['decode_s_median']:.3f} s; {row['block_speedup']:.2f}x / {row['decode_speedup']:.2f}x "
                      "the first")
        if kinds:
            results["decoders"] = decoders = bench_decoders(args.config, kinds, args.threads, compiled=args.compiled)
            print(f"VAE decoders, one block of {decoders['block_frames']} frames at {decoders['width']}x"
                  f"{decoders['height']} ({decoders['latents_per_pass']} latents per pass, float32, "
                  f"{decoders['rounds'] - 1} rounds after a warm-up):")
            names = [variant_name(row['decoder'], row['compiled']) for row in decoders["decoders"]]
            for name, row in zip(names, decoders["decoders"]):
                print(f"  {name:{max(map(len, names))}s} ({row['parameters']:,} parameters): "
                      f"{row['block_s_median']:.3f} s; {row['speedup']:.2f}x the first")
        counts = tuple(int(n) for n in args.realtime_npcs.split(",") if n.strip())
        if counts:
            results["worker_realtime"] = live = bench_worker_realtime(args.config, counts, args.realtime_seconds,
                                                                      args.realtime_prompt)
            under = f"under the prompt {live['prompt']!r}" if live["prompt"] else "under their base prompt"
            print(f"NPCs talking at real-time pace through the worker ({live['width']}x{live['height']}, {under}):")
            for row in live["runs"]:
                print(f"  {row['npcs']} NPCs, {row['seconds']:.0f} s: {row['blocks']} blocks, {row['late_blocks']} "
                      f"late (worst {row['worst_lateness_s']:+.3f} s), {row['chopped_blocks']} with silence "
                      f"inside an utterance, {row['mean_batch_size']:.2f} NPCs per call on average")
            print(f"  one worker keeps {live['realtime_npcs']} NPCs in real time (of the counts run: none late or "
                  "chopped)")
    results["gateway"] = gw = bench_gateway(512, 512, 20, args.frames)
    print(f"gateway CPU per 512x512 frame: {gw['total_with_send_ms']:.3f} ms (Opus decode {gw['opus_decode_ms']:.3f}"
          f" + JPEG encode {gw['jpeg_encode_ms']:.3f} + gRPC send {gw['grpc_send_ms']:.3f}); "
          f"JPEG {gw['jpeg_bytes']} bytes")
    results["npc_memory"] = mem = npc_memory_sizes()
    print(f"NPC memory: tiny {mem['tiny']['width']}x{mem['tiny']['height']} {mem['tiny']['bytes'] / 2**20:.1f} MiB; "
          f"liveact-18b 512x512 {mem['liveact-18b_512x512']['bytes'] / 1e9:.1f} GB "
          f"(ConvKV {mem['liveact-18b_512x512']['convkv_cache_bytes_bf16'] / 1e9:.1f} GB bf16)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
