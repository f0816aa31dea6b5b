"""``python -m model.evaluate``: the tiny model on held-out characters and voices; JSON, a table and pictures."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

from avatar_backend.generator.config import DECODE_PRECISIONS, TINY, ExecutionConfig
from avatar_backend.generator.convkv import cache_bytes
from avatar_backend.generator.pipeline import LiveActPipeline, shipped_weights
from avatar_backend.generator.schedule import StreamSchedule
from avatar_backend.generator.vae import frames_to_uint8
from avatar_backend.machine import describe_machine
from avatar_backend.media.resample import MODEL_SAMPLE_RATE
from model.data.dataset import clip_seed, make_clip
from model.data.identity import identity_from_seed
from model.data.prompts import ACTION_PROMPTS, EMOTION_PROMPTS, BlockPrompt
from model.data.render import render_clip, render_still
from model.data.speech import random_utterance
from model.train.clips import (TrainingClip, box_mask, expression_boxes, hand_in_picture, mouth_mask,
                               prompts_for_blocks, timed_prompts_for_blocks, video_to_tensor)
from model.train.dit_stage import latent_slice
from model.train.recipe import HELD_OUT_LANGUAGE, HELD_OUT_SPEAKER, TRAIN_LANGUAGES, TRAIN_SPEAKERS

from .controls import confusion, recall, response, train_classifier
from .metrics import (colour_similarity, latent_changes, latent_seam_ratio, lip_sync, mean_interval, pearson, psnr,
                      seam_ratio, ssim)
from .pictures import curves, frame_strip
from .record import record, recordable_manifest
from .stream import generate, run_stream
from .teacher_forced import teacher_forced_arm

EVAL_DATA_SEED = 9001          # identities and voices no training run draws (training uses data seed 1)
KINDS = ("emotion", "action")
# Blocks the real-time factor is timed over: 24 blocks of 1.6 s of video, half a minute of both streams on 2 cores,
# where 6 blocks could fall inside one slow or fast minute of a machine whose speed drifts.
SPEED_BLOCKS = 24
# The versions of the held-out clips the control classifier reads (see ``reading``).
VERSIONS = ("generated", "autoencoder", "ground_truth")


def held_out_clips(count: int, seconds: float, size: int, fps: int) -> list[TrainingClip]:
    """New identities; the first half voiced only by the held-out language and speaker, the rest by the languages
    and speakers the recipe trains on (neither half's identities were trained on)."""
    clips = []
    for index in range(count):
        held_out = index < (count + 1) // 2
        clip, entry = make_clip(clip_seed(EVAL_DATA_SEED, index), size=size, seconds=seconds, fps=fps,
                                languages=(HELD_OUT_LANGUAGE,) if held_out else TRAIN_LANGUAGES,
                                speakers=(HELD_OUT_SPEAKER,) if held_out else TRAIN_SPEAKERS)
        entry["held_out_voice"] = held_out
        clips.append(TrainingClip(clip.frames, clip.audio, clip.truth, entry))
    return clips


# How the clips' emotions and actions reach the worker: sent live as they happen, or ahead, timed to the voice.
EVENT_FLOWS = {"live": prompts_for_blocks, "timed": timed_prompts_for_blocks}


def block_prompts(pipeline: LiveActPipeline, clip: TrainingClip, events: str = "live"):
    schedule = StreamSchedule.from_model_config(pipeline.config, pipeline.config.width, pipeline.config.height)
    return EVENT_FLOWS[events](clip, [schedule.block(b) for b in range(schedule.whole_blocks(len(clip.frames)))],
                               pipeline.config.fps)


@torch.no_grad()
def autoencoded(pipeline: LiveActPipeline, frames: np.ndarray) -> np.ndarray:
    """The clip's ground truth through the VAE alone (encoded, then decoded as serving streams it, in the
    pipeline's decode precision): what the best possible DiT could show, the autoencoder's ceiling."""
    stride = pipeline.config.vae.temporal_stride
    video = frames[: 1 + stride * ((len(frames) - 1) // stride)]
    state = pipeline.vae.init_decoder_state(video.shape[2], video.shape[1])
    decoded = pipeline.decode_stream(pipeline.vae.encode(video_to_tensor(video)), state)
    return frames_to_uint8(decoded[0]).numpy()


def reading(responses: list[dict]) -> dict | None:
    """How the classifier reads one version of the clips (:func:`controls.response` per clip): frame accuracy
    (with the 90 % range another draw of as many clips would give, :func:`metrics.mean_interval`) and, of the
    frames whose truth shows an emotion (an action), the share read as it; the events it sees
    within one block; what each true label's frames were read as; and the frames read as an action where the
    truth shows none, the clip's own action drawn early or late apart from one it did not ask for there. None
    without a classifier."""
    if not responses:
        return None
    return {**{f"{kind}_accuracy": float(np.mean([r[f"{kind}_accuracy"] for r in responses])) for kind in KINDS},
            **{f"{kind}_accuracy_interval": mean_interval([r[f"{kind}_accuracy"] for r in responses])
               for kind in KINDS},
            **{f"{kind}_recall": recall(responses, kind) for kind in KINDS},
            "visible_within_one_block": sum(e["visible"] for r in responses for e in r["events"]),
            **{f"{kind}_confusion": confusion(responses, kind) for kind in KINDS},
            **{key: sum(r[key] for r in responses) for key in ("action_read_out_of_time", "action_read_unasked")}}


def swap_partners(clips: list[TrainingClip]) -> list[int]:
    """For each clip, the other clip whose voice drives its swapped-audio control: the one whose true mouth
    openness correlates least with this clip's. Speech and pauses of two clips are not independent (both start
    talking, both pause between phrases), and a partner that happens to talk when this clip talks would score a
    model that follows the voice it is given as if it leaked this clip's own mouth; with this partner such a model
    scores about zero, and what is left measures the leak."""
    mouths = [clip.truth["mouth_open"] for clip in clips]

    def overlap(i: int, j: int) -> float:
        n = min(len(mouths[i]), len(mouths[j]))
        return abs(pearson(mouths[i][:n], mouths[j][:n]))

    return [min((j for j in range(len(clips)) if j != i), key=lambda j: overlap(i, j)) for i in range(len(clips))]


def evaluate_clips(pipeline: LiveActPipeline, clips: list[TrainingClip], out: Path, classifier=None,
                   events: str = "live") -> dict:
    rows, controls, truth_controls, ceiling_controls = [], [], [], []
    fps = pipeline.config.fps
    schedule = StreamSchedule.from_model_config(pipeline.config, pipeline.config.width, pipeline.config.height)
    block_frames = schedule.block_video_frames
    strip = None
    partners = swap_partners(clips)
    for index, clip in enumerate(clips):
        still = clip.reference
        prompts = block_prompts(pipeline, clip, events)
        frames, starts = generate(pipeline, still, clip.audio, prompts)
        other = clips[partners[index]]
        # The clip's listening prompts sit in its own silences, which would tell the swapped run where the
        # clip's speech is: the swapped run keeps its emotions and actions but not its listening.
        swapped_prompts = [BlockPrompt(None) if p.prompt == ACTION_PROMPTS["listening"] else p for p in prompts]
        swapped, _ = generate(pipeline, still, other.audio[: len(clip.audio)], swapped_prompts)
        own = lip_sync(frames, clip.truth, clip.frames)
        truth_check = lip_sync(clip.frames[: len(frames)], clip.truth)
        ceiling = autoencoded(pipeline, clip.frames[: len(frames)])
        prompt_change = {start for b, start in enumerate(starts) if b > 0 and prompts[b] != prompts[b - 1]}
        same_prompt = set(starts[1:]) - prompt_change
        # What the control scores for a model that follows the other voice perfectly: the other clip's true mouth
        # against this clip's (near zero for the partner chosen, but not zero).
        n = min(len(frames), len(other.truth["mouth_open"]))
        swapped_truth_r = pearson(clip.truth["mouth_open"][:n], other.truth["mouth_open"][:n])
        rows.append({
            "seed": clip.entry["seed"], "held_out_voice": clip.entry["held_out_voice"],
            "language": clip.entry["speech"]["language"], "voice": clip.entry["speech"]["voice"],
            "lip_sync_r": own["r"], "amplitude_ratio": own["amplitude_ratio"],
            "swapped_audio_r": lip_sync(swapped, clip.truth)["r"], "swapped_truth_r": swapped_truth_r,
            "measure_on_truth_r": truth_check["r"],
            "autoencoder_lip_sync_r": lip_sync(ceiling, clip.truth)["r"],
            "autoencoder_psnr_db": psnr(ceiling, clip.frames[: len(ceiling)]),
            "seam_ratio": seam_ratio(frames, starts), "psnr_db": psnr(frames, clip.frames[: len(frames)]),
            # Split by whether the block's prompt is its predecessor's: where a control starts, the prompt changes
            # at the block's first frame and the picture with it (by design); elsewhere a seam is only a seam.
            "seams": len(prompt_change) + len(same_prompt), "seams_with_a_prompt_change": len(prompt_change),
            "seam_ratio_same_prompt": seam_ratio(frames, starts, same_prompt),
            "seam_ratio_prompt_change": seam_ratio(frames, starts, prompt_change),
            "autoencoder_seam_ratio_same_prompt": seam_ratio(ceiling, starts, same_prompt),
            "autoencoder_seam_ratio_prompt_change": seam_ratio(ceiling, starts, prompt_change),
            # The same boundaries in the truth (where nothing is generated: motion alone) and through the VAE
            # alone (what its decoder adds): the references the generated seams compare with.
            "truth_seam_ratio": seam_ratio(clip.frames[: len(frames)], starts),
            "autoencoder_seam_ratio": seam_ratio(ceiling, starts),
            "latent_seam_ratio": latent_seam_ratio(frames, starts, pipeline.config.vae.temporal_stride),
            # Identity: how much of the reference's colours the frames keep (the truth: what moving keeps).
            "colour_similarity": colour_similarity(frames[::10], still),
            "autoencoder_colour_similarity": colour_similarity(ceiling[::10], still),
            "truth_colour_similarity": colour_similarity(clip.frames[: len(frames)][::10], still),
        })
        if classifier is not None:
            controls.append(response(classifier, frames, still, clip.truth, clip.entry["events"], fps, block_frames))
            truth_controls.append(response(classifier, clip.frames[: len(frames)], still, clip.truth,
                                           clip.entry["events"], fps, block_frames))
            ceiling_controls.append(response(classifier, ceiling, still, clip.truth, clip.entry["events"], fps,
                                             block_frames))
        if strip is None:
            n = min(len(frames), len(swapped))
            picks = list(np.linspace(schedule.first_video_frames, n - 1, 8).astype(int))   # from block 1 on
            frame_strip({"truth": clip.frames, "generated": frames, "swapped audio": swapped}, picks,
                        out / "strip.png")
            strip = str(out / "strip.png")

    def mean(key, subset=None):
        values = [r[key] for r in rows if (subset is None or r["held_out_voice"] == subset) and r[key] is not None]
        return float(np.mean(values)) if values else float("nan")

    events = [e for c in controls for e in c["events"]]
    delays = [e["seconds_to_visible"] for e in events if e["visible"]]
    control_summary = {
        "events": len(events), "median_seconds_to_visible": float(np.median(delays)) if delays else None,
        # The classifier's reading of the generated frames, of the clips' ground truth (what it can see at all)
        # and of the ground truth through the VAE alone (what is left once the autoencoder has compressed the
        # frames: the ceiling of any DiT).
        "generated": reading(controls), "ground_truth": reading(truth_controls),
        "autoencoder": reading(ceiling_controls),
        "per_clip": controls,
    }
    return {"clips": rows, "strip": strip, "controls": control_summary, "summary": {
        "lip_sync_r": mean("lip_sync_r"), "lip_sync_r_held_out_voice": mean("lip_sync_r", True),
        "lip_sync_r_seen_languages": mean("lip_sync_r", False), "swapped_audio_r": mean("swapped_audio_r"),
        "swapped_truth_r": mean("swapped_truth_r"), "amplitude_ratio": mean("amplitude_ratio"), "measure_on_truth_r": mean("measure_on_truth_r"),
        "seam_ratio": mean("seam_ratio"), "truth_seam_ratio": mean("truth_seam_ratio"),
        "autoencoder_seam_ratio": mean("autoencoder_seam_ratio"), "latent_seam_ratio": mean("latent_seam_ratio"),
        **{key: mean(key) for key in ("seam_ratio_same_prompt", "seam_ratio_prompt_change",
                                      "autoencoder_seam_ratio_same_prompt", "autoencoder_seam_ratio_prompt_change")},
        "seams": sum(r["seams"] for r in rows),
        "seams_with_a_prompt_change": sum(r["seams_with_a_prompt_change"] for r in rows),
        "psnr_db": mean("psnr_db"),
        "autoencoder_lip_sync_r": mean("autoencoder_lip_sync_r"), "autoencoder_psnr_db": mean("autoencoder_psnr_db"),
        "colour_similarity": mean("colour_similarity"),
        "autoencoder_colour_similarity": mean("autoencoder_colour_similarity"),
        "truth_colour_similarity": mean("truth_colour_similarity"),
    }}


def long_stream(pipeline: LiveActPipeline, identity_seed: int, minutes: int, out: Path) -> dict:
    """A ``minutes``-long stream of one held-out identity and voice: per-minute lip sync, PSNR/SSIM against the
    truth of that minute, colour similarity to the reference, and the NPC memory's bytes."""
    size = pipeline.config.width
    identity = identity_from_seed(identity_seed)
    still = render_still(identity, size)
    rng = np.random.default_rng([identity_seed, 60])
    minute_audio = [random_utterance(rng, 60.0, languages=(HELD_OUT_LANGUAGE,), speakers=(HELD_OUT_SPEAKER,)).audio
                    for _ in range(minutes)]
    audio = np.concatenate(minute_audio + [np.zeros(MODEL_SAMPLE_RATE * 4, np.float32)])
    per_minute, pending, memory_bytes = [], [], {}
    frames_per_minute = 60 * pipeline.config.fps
    blocks = 0
    for block in run_stream(pipeline, still, audio, seed=identity_seed):
        blocks = block.index + 1
        if block.index == 2:
            memory_bytes["block_2"] = block.memory_bytes
        memory_bytes["last_block"] = block.memory_bytes
        pending.append(block.frames)
        have = sum(len(f) for f in pending)
        if have >= frames_per_minute and len(per_minute) < minutes:
            frames = np.concatenate(pending)
            minute, rest = frames[:frames_per_minute], frames[frames_per_minute:]
            pending = [rest]
            m = len(per_minute)
            truth_clip = render_clip(identity_seed, minute_audio[m], [], size=size, fps=pipeline.config.fps,
                                     identity=identity)
            sync = lip_sync(minute, truth_clip.truth, truth_clip.frames)
            per_minute.append({"minute": m + 1, "lip_sync_r": sync["r"], "psnr_db": psnr(minute, truth_clip.frames),
                               "ssim": ssim(minute[::20], truth_clip.frames[::20]),
                               "colour_similarity": colour_similarity(minute[::20], still)})
    first, last = per_minute[0], per_minute[-1]
    return {"identity_seed": identity_seed, "minutes": len(per_minute), "blocks": blocks, "per_minute": per_minute,
            "memory_bytes": memory_bytes,
            "delta_last_minus_first": {k: last[k] - first[k] for k in ("lip_sync_r", "psnr_db", "ssim", "colour_similarity")}}


def ablation(pipeline: LiveActPipeline, identity_seed: int, minutes: int, out: Path) -> dict:
    """The same stream with the ConvKV memory and with the sink + sliding-window memory of the same size (the
    same trained model; only the memory's slot plan differs), and the size a full-history memory would reach."""
    modules = {"dit": pipeline.dit, "vae": pipeline.vae, "audio_encoder": pipeline.audio_encoder,
               "image_encoder": pipeline.image_encoder, "text_encoder": pipeline.text_encoder}
    results = {}
    for name, grouping in (("convkv", pipeline.config.sampler.memory_grouping), ("sink_sliding_window", "sliding-window")):
        sampler = dataclasses.replace(pipeline.config.sampler, memory_grouping=grouping)
        variant = LiveActPipeline(dataclasses.replace(pipeline.config, sampler=sampler), modules,
                                  device=pipeline.device, random_weights=False, weights_sha256=pipeline.weights_sha256)
        stream = long_stream(variant, identity_seed, minutes, out)
        per_minute = stream["per_minute"]
        results[name] = {
            "memory_bytes": stream["memory_bytes"]["last_block"], "blocks": stream["blocks"],
            "lip_sync_r_mean": float(np.mean([m["lip_sync_r"] for m in per_minute])),
            "lip_sync_r_last_minute": per_minute[-1]["lip_sync_r"],
            "psnr_db_mean": float(np.mean([m["psnr_db"] for m in per_minute])),
            "colour_similarity_last_minute": per_minute[-1]["colour_similarity"],
        }
    # Full history is what the fixed memory replaces: every latent frame's keys and values kept exactly. Its size
    # follows from the stream's length; its quality is not measured, because the DiT attends to a fixed number of
    # slots whose indices are its RoPE positions, and the model never saw positions past them.
    slots, slot_cache = pipeline.config.sampler.memory_slots, cache_bytes(pipeline.config, pipeline.config.width,
                                                                          pipeline.config.height)
    schedule = StreamSchedule.from_model_config(pipeline.config, pipeline.config.width, pipeline.config.height)
    latents = latent_slice(schedule.block(results["convkv"]["blocks"] - 1), pipeline.config).stop
    results["full_history"] = {
        "memory_bytes": results["convkv"]["memory_bytes"] - slot_cache + slot_cache * latents // slots,
        "latent_frames": latents,
        "quality": "not run: the DiT attends to a fixed set of slots whose indices are its RoPE positions",
    }
    return results


def hand_frames(truth: dict[str, np.ndarray], size: int, count: int = 8) -> list[int]:
    """``count`` frames spread over those that show a hand inside the picture (none when no frame does)."""
    shown = np.flatnonzero(hand_in_picture(truth, size, size))
    return [int(shown[i]) for i in np.linspace(0, len(shown) - 1, count).round().astype(int)] if len(shown) else []


def evaluate_autoencoders(pipeline: LiveActPipeline, clips: list[TrainingClip], classifier,
                          vaes: dict[str, dict[str, torch.Tensor]], strip: Path | None = None) -> dict:
    """The clips' truth through each VAE alone (state dicts by name; the pipeline's VAE takes each in turn and
    keeps the last): what any DiT trained on its latents could show at best. PSNR over the frame, the eyes and
    brows, the mouth and a visible hand; lip-sync r; the block-seam ratio and the frame change inside latents and
    into each latent's first frame; the classifier's reading; and its reading and frame changes of the truth itself.
    ``strip``: where to draw the first clip that shows a hand, the truth and each VAE's frames of it."""
    fps, size = pipeline.config.fps, pipeline.config.width
    schedule = StreamSchedule.from_model_config(pipeline.config, size, size)
    block_frames = schedule.block_video_frames
    # As long as the generated clip would be: whole blocks.
    lengths = [schedule.block(schedule.whole_blocks(len(c.frames)) - 1).video_end for c in clips]
    stride = pipeline.config.vae.temporal_stride
    truth_changes = np.mean([latent_changes(c.frames[:n], stride) for c, n in zip(clips, lengths)], axis=0)
    report: dict = {"ground_truth": {**reading([response(classifier, c.frames[:n], c.reference, c.truth,
                                                         c.entry["events"], fps, block_frames)
                                                for c, n in zip(clips, lengths)]),
                                     "change_inside_latents": float(truth_changes[0]),
                                     "change_at_latent_boundaries": float(truth_changes[1])}}
    shown = next(((index, picks) for index, clip in enumerate(clips) if (picks := hand_frames(clip.truth, size))),
                 None)
    strip_rows = {"truth": clips[shown[0]].frames} if shown else {}
    for column, (name, state) in enumerate(vaes.items()):
        pipeline.vae.load_state_dict(state)
        rows, controls = [], []
        for index, (clip, n) in enumerate(zip(clips, lengths)):
            frames = autoencoded(pipeline, clip.frames[:n])
            if shown and index == shown[0]:
                strip_rows[f"[{column}]"] = frames
            truth = clip.frames[: len(frames)]
            eyes_and_brows = box_mask(expression_boxes(clip.truth)[: len(frames), :3], size, size)
            mouth = mouth_mask(clip.truth, slice(0, len(frames)), size, size)
            hand = box_mask(expression_boxes(clip.truth)[: len(frames), 3:], size, size)
            rows.append({"psnr_db": psnr(frames, truth), "psnr_db_eyes_and_brows": psnr(frames, truth, eyes_and_brows),
                         "psnr_db_mouth": psnr(frames, truth, mouth),
                         "psnr_db_hand": psnr(frames, truth, hand) if hand.any() else None,
                         "lip_sync_r": lip_sync(frames, clip.truth)["r"],
                         "seam_ratio": seam_ratio(frames, list(range(schedule.first_video_frames, len(frames),
                                                                     block_frames))),
                         **dict(zip(("change_inside_latents", "change_at_latent_boundaries"),
                                    latent_changes(frames, stride)))})
            controls.append(response(classifier, frames, clip.reference, clip.truth, clip.entry["events"], fps,
                                     block_frames))
        # Over the clips that have the region (a hand shows in some clips only; None when in none).
        measured = {key: [r[key] for r in rows if r[key] is not None] for key in rows[0]}
        report[name] = {**{key: float(np.mean(values)) if values else None for key, values in measured.items()},
                        **reading(controls)}
    if strip is not None and shown:
        frame_strip(strip_rows, shown[1], strip)
    return report


def speed(pipeline: LiveActPipeline, blocks: int = SPEED_BLOCKS) -> dict:
    """Real-time factor at the default size over ``blocks`` blocks after the first: the whole block (under the
    base prompt, and under another prompt, which runs prompt guidance's extra pass), and the streaming decode's
    share of the same blocks. The two streams take turns block by block, so a machine whose speed drifts slows
    both alike; the median is reported with the factors of the blocks' quartiles, which say how much it drifted."""
    size = pipeline.config.width
    still = render_still(identity_from_seed(1), size)
    schedule = StreamSchedule.from_model_config(pipeline.config, size, size)
    block_seconds = schedule.block_video_frames / pipeline.config.fps
    samples = int(MODEL_SAMPLE_RATE * block_seconds * (blocks + 2))  # block 0 and the last block's look-ahead
    audio = (0.1 * np.sin(np.arange(samples) * 0.05)).astype(np.float32)
    happy = [BlockPrompt(EMOTION_PROMPTS["happy"])] * (blocks + 1)
    pairs = list(zip(run_stream(pipeline, still, audio), run_stream(pipeline, still, audio, happy)))[1: blocks + 1]
    timed = [plain for plain, _ in pairs]
    prompted = [guided.seconds for _, guided in pairs]
    block = float(np.median([b.seconds for b in timed]))
    slow, fast = np.percentile([b.seconds for b in timed], [75, 25])
    decode_s = float(np.median([b.decode_seconds for b in timed]))
    rest_s = float(np.median([b.seconds - b.decode_seconds for b in timed]))
    return {"size": f"{size}x{size}", "threads": torch.get_num_threads(), "block_ms": round(1000 * block, 1),
            "decode_ms": round(1000 * decode_s, 1), "dit_and_rest_ms": round(1000 * rest_s, 1),
            "blocks": len(timed), "real_time_factor": round(block_seconds / block, 2),
            "real_time_factor_quartiles": [round(block_seconds / slow, 2), round(block_seconds / fast, 2)],
            "real_time_factor_under_a_prompt": round(block_seconds / float(np.median(prompted)), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__.split(": ", 1)[-1])
    parser.add_argument("--weights", type=Path, default=None,
                        help="weights file (default: the shipped tiny weights), served as `serve --weights` serves "
                             "it: with the settings its training recorded")
    parser.add_argument("--out", type=Path, default=Path("out/eval"), help="folder for eval.json and the pictures")
    parser.add_argument("--size", type=int, default=None, metavar="PIXELS",
                        help="square frame size, one the model accepts (default: its default size, 128 for tiny)")
    parser.add_argument("--clips", type=int, default=24,
                        help="held-out clips for lip sync and the controls (default 24)")
    parser.add_argument("--clip-seconds", type=float, default=12.0)
    parser.add_argument("--long-minutes", type=int, default=60, help="length of each long stream (default 60)")
    parser.add_argument("--long-identities", type=int, default=2, help="long streams, one per identity (default 2)")
    parser.add_argument("--ablation-minutes", type=int, default=5, help="stream length of the memory ablation")
    parser.add_argument("--speed-blocks", type=int, default=SPEED_BLOCKS,
                        help=f"blocks the real-time factor is timed over, after the first (default {SPEED_BLOCKS})")
    parser.add_argument("--classifier-clips", type=int, default=80, help="ground-truth clips for the control classifier")
    parser.add_argument("--classifier-steps", type=int, default=1200)
    parser.add_argument("--decode-precision", default=ExecutionConfig.decode_precision, choices=DECODE_PRECISIONS,
                        help="what the VAE decoder computes in, as `serve --decode-precision` (default auto)")
    parser.add_argument("--prompt-guidance", type=float, default=TINY.sampler.prompt_guidance,
                        help="the sampler's prompt guidance (1: off; default the tiny config's, which serve uses)")
    parser.add_argument("--prompt-onset", type=int, default=TINY.sampler.prompt_onset_latents, metavar="LATENTS",
                        help="latent frames over which a block's new prompt sets in (0: at its first frame; default "
                             "the tiny config's, which serve uses)")
    parser.add_argument("--events", choices=tuple(EVENT_FLOWS), default="live",
                        help="how the clips' emotions and actions reach the worker: live, as they happen (each from "
                             "the block it falls in), or timed to the voice and sent ahead (from the block nearest "
                             "its point); default live")
    parser.add_argument("--vae-checkpoint", type=Path, action="append", default=[], metavar="CKPT",
                        help="evaluate only autoencoders: the VAE of a training run's checkpoint (runs/X/vae.ckpt or "
                             "decoder.ckpt; repeatable) beside the weights' own, on the same clips and classifier: "
                             "the ceiling a DiT trained on its latents would have, before one is trained")
    parser.add_argument("--teacher-forced", action="store_true",
                        help="only how much of a raised arm the DiT draws from the clips' own noised latents, each "
                             "sampler step as training runs it (seconds: no sampling, no classifier); a full "
                             "evaluation reports it too")
    parser.add_argument("--speed-only", action="store_true",
                        help="only the real-time factor, as the full evaluation measures it (a minute or two: no "
                             "clips, no classifier)")
    parser.add_argument("--record", action="store_true",
                        help="write the evaluation's headline numbers into the weights' manifest (tiny.json beside "
                             "tiny.safetensors) under metrics")
    parser.add_argument("--record-report", type=Path, default=None, metavar="EVAL_JSON",
                        help="evaluate nothing: write the headline numbers of a full evaluation's eval.json of these "
                             "weights into their manifest")
    args = parser.parse_args(argv)
    if args.record and (args.speed_only or args.teacher_forced or args.vae_checkpoint):
        parser.error("--record records a full evaluation: not with --speed-only, --teacher-forced or --vae-checkpoint")
    if args.record and args.record_report:
        parser.error("--record records the evaluation it runs, --record-report one run earlier: one at a time")
    if args.teacher_forced and args.vae_checkpoint:
        parser.error("--teacher-forced judges the DiT and --vae-checkpoint the autoencoders: one at a time")
    if args.speed_only and (args.teacher_forced or args.vae_checkpoint):
        parser.error("--speed-only times the generator alone: not with --teacher-forced or --vae-checkpoint")
    if args.speed_blocks < 1:
        parser.error("--speed-blocks must be at least 1")
    if args.clips < 2:
        parser.error("--clips must be at least 2: the swapped-audio control drives each clip by another's voice")
    torch.set_flush_denormal(True)
    weights = args.weights or shipped_weights("tiny")
    if weights is None:
        print("error: no weights (train with python -m model.train, or pass --weights)", file=sys.stderr)
        return 1
    if args.record_report is not None:
        try:
            report = json.loads(args.record_report.read_text())
            print(f"wrote the metrics of {args.record_report} into {record(Path(weights), report)}")
        except (OSError, ValueError) as error:  # unreadable, not JSON, or a RecordError
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    execution = ExecutionConfig(decode_precision=args.decode_precision, prompt_guidance=args.prompt_guidance,
                                prompt_onset_latents=args.prompt_onset)
    config = TINY
    if args.size is not None:
        if not config.supports_size(args.size, args.size):
            print(f"error: --size {args.size}: the model takes {config.sizes_text()}", file=sys.stderr)
            return 2
        config = dataclasses.replace(config, width=args.size, height=args.size)
    try:  # served as `serve --weights` serves them: with what their training recorded (config_for_weights)
        pipeline = LiveActPipeline.from_config(config, weights=weights, execution=execution)
    except (OSError, ValueError) as error:  # unreadable, or trained for another model or size
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.record:  # before any slow work: a report that could not be recorded would cost its minutes
        try:
            recordable_manifest(Path(weights), pipeline.weights_sha256)
        except (OSError, ValueError) as error:  # unreadable, not JSON, or a RecordError
            print(f"error: {error}", file=sys.stderr)
            return 2
    vaes = None
    if args.vae_checkpoint:  # read before any slow work, so a wrong path fails at once
        vaes = checkpoint_vaes(pipeline, args.vae_checkpoint)
        if vaes is None:
            return 1
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict = {"weights": Path(weights).name, "weights_sha256": pipeline.weights_sha256,
                    "decode_precision": pipeline.decode_dtype_name, "machine": describe_machine()}
    if args.speed_only:
        report.update(prompt_guidance=pipeline.config.sampler.prompt_guidance, speed=speed(pipeline, args.speed_blocks))
        report["seconds"] = round(time.perf_counter() - started, 1)
        print(speed_lines(report))
        print(f"wrote {write_report(report, args.out)}")
        return 0
    clips = held_out_clips(args.clips, args.clip_seconds, pipeline.config.width, pipeline.config.fps)
    if args.teacher_forced:
        report["teacher_forced_arm"] = teacher_forced_arm(pipeline, clips)
        report["seconds"] = round(time.perf_counter() - started, 1)
        print(teacher_forced_row(report["teacher_forced_arm"]))
        print(f"wrote {write_report(report, args.out)}")
        return 0
    if vaes is None:  # the generator runs: what it ran under
        report.update(prompt_guidance=pipeline.config.sampler.prompt_guidance,
                      prompt_onset_latents=pipeline.config.sampler.prompt_onset_latents, events=args.events)
        report["speed"] = speed(pipeline, args.speed_blocks)
    classifier, truth_accuracy = train_classifier(pipeline.config.width, pipeline.config.fps, args.classifier_clips,
                                                  args.classifier_steps)
    if vaes is not None:
        return evaluate_vae_checkpoints(pipeline, vaes, clips, classifier, truth_accuracy, args.out, report)
    report["lip_sync"] = evaluate_clips(pipeline, clips, args.out, classifier, args.events)
    report["teacher_forced_arm"] = teacher_forced_arm(pipeline, clips)
    report["control_response"] = {"classifier_accuracy_on_ground_truth": truth_accuracy,
                                  **{k: v for k, v in report["lip_sync"].pop("controls").items()}}
    report["long_streams"] = [long_stream(pipeline, clip_seed(EVAL_DATA_SEED, 1000 + i), args.long_minutes, args.out)
                              for i in range(args.long_identities)] if args.long_minutes > 0 else []
    if report["long_streams"]:
        first = report["long_streams"][0]["per_minute"]
        curves({k: [m[k] for m in first] for k in ("lip_sync_r", "psnr_db", "ssim", "colour_similarity")},
               args.out / "long_stream.png", f"{args.long_minutes}-minute stream, held-out identity and voice")
        report["long_stream_plot"] = str(args.out / "long_stream.png")
    if args.ablation_minutes > 0:
        report["ablation"] = ablation(pipeline, clip_seed(EVAL_DATA_SEED, 2000), args.ablation_minutes, args.out)
    report["seconds"] = round(time.perf_counter() - started, 1)
    path = write_report(report, args.out)
    print_table(report)
    print(f"wrote {path}")
    if args.record:
        try:
            print(f"wrote its metrics into {record(Path(weights), report)}")
        except (OSError, ValueError) as error:  # the report is kept: --record-report can write it once mended
            print(f"error: {error}", file=sys.stderr)
            return 2
    return 0


def write_report(report: dict, out: Path) -> Path:
    path = out / "eval.json"
    path.write_text(json.dumps(report, indent=1, default=float))
    return path


def checkpoint_vaes(pipeline: LiveActPipeline, paths: list[Path]) -> dict[str, dict] | None:
    """``--vae-checkpoint``: the VAE state dicts to judge, the weights' own first, then each checkpoint's by its
    path; None (after saying why) when a checkpoint holds no VAE of this config."""
    own = {key: value.clone() for key, value in pipeline.vae.state_dict().items()}
    vaes = {"weights": own}
    for path in paths:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)["modules"]["vae"]
        except (OSError, EOFError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as error:
            print(f"error: {path} is not a training checkpoint with a VAE ({error})", file=sys.stderr)
            return None
        if {k: v.shape for k, v in own.items()} != {k: v.shape for k, v in state.items()}:
            # The VAE stage's checkpoint of a recipe whose serving decoder is narrower is one of these.
            print(f"error: {path} holds a VAE of another config", file=sys.stderr)
            return None
        vaes[str(path)] = state
    return vaes


def evaluate_vae_checkpoints(pipeline: LiveActPipeline, vaes: dict[str, dict], clips, classifier,
                             truth_accuracy: dict, out: Path, report: dict) -> int:
    """The autoencoders side by side (:func:`evaluate_autoencoders`) on the clips, one column each."""
    report["classifier_accuracy_on_ground_truth"] = truth_accuracy
    report["autoencoders"] = evaluate_autoencoders(pipeline, clips, classifier, vaes, out / "autoencoders_hand.png")
    write_report(report, out)
    rows = report["autoencoders"]
    truth = rows["ground_truth"]
    for index, name in enumerate(vaes):
        print(f"[{index}] {name}")
    print(f"{'the truth through the VAE alone':<52}" + "".join(f"{f'[{i}]':>8}" for i in range(len(vaes))))
    for label, key in (("PSNR dB", "psnr_db"), ("  eyes and brows", "psnr_db_eyes_and_brows"), ("  mouth", "psnr_db_mouth"),
                       ("  a visible hand (clips that show one)", "psnr_db_hand"),
                       ("lip-sync r", "lip_sync_r"), ("block-seam ratio", "seam_ratio"),
                       (f"frame change inside latents (truth: {truth['change_inside_latents']:.2f})",
                        "change_inside_latents"),
                       (f"  into a latent's first frame (truth: {truth['change_at_latent_boundaries']:.2f})",
                        "change_at_latent_boundaries"),
                       ("emotion accuracy / ground truth's", "emotion"),
                       ("action accuracy / ground truth's", "action"), ("emotion frames read as theirs", "emotion_recall"),
                       ("action frames read as theirs", "action_recall"),
                       (f"events visible within one block (truth: {rows['ground_truth']['visible_within_one_block']})",
                        "visible_within_one_block")):
        values = [rows[name][f"{key}_accuracy"] / truth_accuracy[key] if key in KINDS else rows[name][key]
                  for name in vaes]
        cells = ("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in values)
        print(f"{label:<52}" + "".join(f"{cell:>8}" for cell in cells))
    print(f"wrote {out / 'eval.json'}")
    if (out / "autoencoders_hand.png").exists():
        print(f"wrote {out / 'autoencoders_hand.png'} (the first clip that shows a hand: the truth, then each VAE)")
    return 0


def _ratio(report: dict, kind: str, version: str = "generated", *, same_clips: bool = False) -> float:
    """Accuracy on a version of the frames (generated, or the truth through the VAE alone) over the classifier's
    accuracy on its held-out ground truth, or (``same_clips``) on the ground truth of the clips evaluated."""
    c = report["control_response"]
    truth = c["ground_truth"][f"{kind}_accuracy"] if same_clips else c["classifier_accuracy_on_ground_truth"][kind]
    return float(c[version][f"{kind}_accuracy"] / truth) if truth else float("nan")


def _ratio_over_clips(report: dict, kind: str) -> str:
    """The generated accuracy's ratio (:func:`_ratio`) with the 90 % range of the clips' resampled mean."""
    c = report["control_response"]
    truth = c["classifier_accuracy_on_ground_truth"][kind]
    if not truth:
        return f"{_ratio(report, kind):.3f} (the classifier reads none of its held-out truth)"
    low, high = (value / truth for value in c["generated"][f"{kind}_accuracy_interval"])
    return f"{_ratio(report, kind):.3f} ({low:.2f}-{high:.2f} over clips)"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def teacher_forced_row(arm: dict) -> str:
    head = f"raised arm drawn from its own noised latents ({arm['raised_arm_latents']} latents)"
    if arm["truth_arm_change"] is None:
        return f"{head}: no clip raises an arm"
    if arm["arm_score"][0] is None:
        return (f"{head}: not scored, the VAE keeps too little of the arm (its latents change by "
                f"{arm['truth_arm_change']:.3f} there)")
    steps = " / ".join(f"{t:g}" for t in arm["timesteps"])
    scores = " / ".join(f"{score:.2f}" for score in arm["arm_score"])
    return f"{head} at t = {steps} (0 none, 1 the truth's): {scores}"


def speed_rows(report: dict) -> list[tuple[str, float, str]]:
    """The summary table's speed rows: (what, real-time factor, target)."""
    speed = report["speed"]
    return [(f"real-time factor at {speed['size']} (median of {speed['blocks']} blocks; quartiles "
             + " - ".join(f"{q:g}" for q in speed["real_time_factor_quartiles"]) + ")", speed["real_time_factor"],
             ">= 6"),
            (f"  under an emotion prompt (prompt guidance {report['prompt_guidance']:g})",
             speed["real_time_factor_under_a_prompt"], ">= 6")]


def speed_lines(report: dict) -> str:
    """``--speed-only``'s lines: the real-time factors, with the DiT's and the decoder's shares of a block."""
    speed = report["speed"]
    return "\n".join([*(f"{name}: {value:g} (target {target})" for name, value, target in speed_rows(report)),
                      f"  a block: {speed['block_ms']:g} ms, of which the decoder {speed['decode_ms']:g} ms and the "
                      f"DiT and the rest {speed['dit_and_rest_ms']:g} ms"])


def print_table(report: dict) -> None:
    s = report["lip_sync"]["summary"]
    c = report["control_response"]
    rows = [
        ("lip-sync r, held-out identities (all)", s["lip_sync_r"], ">= 0.80"),
        ("  held-out language + speaker", s["lip_sync_r_held_out_voice"], ">= 0.80"),
        ("  languages seen in training", s["lip_sync_r_seen_languages"], ""),
        ("swapped-audio control r", s["swapped_audio_r"], "<= 0.10"),
        ("  the same for the true mouths (a perfect model)", s["swapped_truth_r"], ""),
        ("mouth measure on ground truth r", s["measure_on_truth_r"], ">= 0.95"),
        ("amplitude ratio (generated / truth)", s["amplitude_ratio"], ""),
        ("lip-sync r of the truth through the VAE alone", s["autoencoder_lip_sync_r"], "ceiling"),
        ("PSNR dB: generated / truth through the VAE alone", f"{s['psnr_db']:.2f} / {s['autoencoder_psnr_db']:.2f}", ""),
        ("block-seam ratio", s["seam_ratio"], "<= 1.2"),
        ("  the same boundaries: truth through the VAE alone / truth",
         f"{s['autoencoder_seam_ratio']:.2f} / {s['truth_seam_ratio']:.2f}", ""),
        ("  generated, against the latent boundaries inside blocks", s["latent_seam_ratio"], ""),
        (f"  where the prompt stays / changes (changes: {s['seams_with_a_prompt_change']} of {s['seams']}), generated",
         f"{s['seam_ratio_same_prompt']:.2f} / {s['seam_ratio_prompt_change']:.2f}", ""),
        ("    the truth through the VAE alone",
         f"{s['autoencoder_seam_ratio_same_prompt']:.2f} / {s['autoencoder_seam_ratio_prompt_change']:.2f}", ""),
        ("colour similarity to the reference: generated / VAE alone / truth",
         f"{s['colour_similarity']:.2f} / {s['autoencoder_colour_similarity']:.2f} / {s['truth_colour_similarity']:.2f}",
         ""),
        ("emotion accuracy: generated / classifier's on its held-out truth", _ratio_over_clips(report, "emotion"),
         ">= 0.90"),
        ("action accuracy: generated / classifier's on its held-out truth", _ratio_over_clips(report, "action"),
         ">= 0.90"),
        ("  emotion / action, generated / the same clips' truth",
         " / ".join(f"{_ratio(report, kind, same_clips=True):.3f}" for kind in KINDS), ""),
        ("  emotion, truth through the VAE alone / ground truth", _ratio(report, "emotion", "autoencoder"), "ceiling"),
        ("  action, truth through the VAE alone / ground truth", _ratio(report, "action", "autoencoder"), "ceiling"),
        *[(f"  frames showing an {kind}, read as it: generated / VAE alone / truth",
           " / ".join(_share(c[version][f"{kind}_recall"]) for version in VERSIONS), "")
          for kind in KINDS],
        *[(f"  frames without an action read as {what}: generated / VAE alone / truth",
           " / ".join(str(c[version][key]) for version in VERSIONS), "")
          for what, key in (("the clip's own, early or late", "action_read_out_of_time"),
                            ("one it did not ask for there", "action_read_unasked"))],
        (f"events visible within one block (sent {report['events']})",
         f"{c['generated']['visible_within_one_block']} of {c['events']}", "all"),
        ("  the same events on ground truth", f"{c['ground_truth']['visible_within_one_block']} of {c['events']}", ""),
        ("  on the truth through the VAE alone", f"{c['autoencoder']['visible_within_one_block']} of {c['events']}",
         "ceiling"),
        *speed_rows(report),
    ]
    for stream in report["long_streams"]:
        d = stream["delta_last_minus_first"]
        rows += [(f"long stream {stream['minutes']} min: r delta (last - first)", d["lip_sync_r"], "|d| <= 0.02"),
                 ("  PSNR delta dB", d["psnr_db"], "|d| <= 0.5"),
                 ("  memory bytes block 2 / last", f"{stream['memory_bytes']['block_2']} / {stream['memory_bytes']['last_block']}", "equal")]
    for name, row in (report.get("ablation") or {}).items():
        if name == "full_history":
            rows.append((f"ablation {name}: memory after {row['latent_frames']} latent frames", "not run",
                         f"{row['memory_bytes']} bytes"))
        elif isinstance(row, dict):
            rows.append((f"ablation {name}: lip-sync r mean / last minute", f"{row['lip_sync_r_mean']:.3f} / "
                         f"{row['lip_sync_r_last_minute']:.3f}", f"{row['memory_bytes']} bytes"))
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{name:<{width}}  {shown:>24}  {target}")
    print(teacher_forced_row(report["teacher_forced_arm"]))


if __name__ == "__main__":
    sys.exit(main())
