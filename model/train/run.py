"""Running the stages in order, each resumed where it stopped, and exporting the weights with their manifest."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from tqdm import tqdm

from avatar_backend.generator.audio_encoder import build_audio_encoder
from avatar_backend.generator.config import DiTConfig, ModelConfig, VAEConfig, flow_timesteps, get_config
from avatar_backend.generator.dit import WanModel
from avatar_backend.generator.image_encoder import build_image_encoder
from avatar_backend.generator.pipeline import decode_autocast_dtype
from avatar_backend.generator.schedule import StreamSchedule
from avatar_backend.generator.text_encoder import build_text_encoder
from avatar_backend.generator.vae import WanVAE
from avatar_backend.machine import describe_machine
from avatar_backend.store import atomic_write_with
from model.data.dataset import write_dataset

from .clips import dataset_fps, load_clips, prompts_for_blocks
from .dit_stage import DiTExample, dit_step, encode_example, example_weight, stream_plans, video_frames_for_blocks
from .loop import RecipeMismatch, ResumableStage, setup_logging
from .recipe import HELD_OUT_LANGUAGE, HELD_OUT_SPEAKER, TRAIN_LANGUAGES, TRAIN_SPEAKERS, TrainRecipe
from .vae_stage import encoder_state, latent_statistics, trainable_parameters, vae_step

log = logging.getLogger("model.train")

STAGES = ("data", "vae", "decoder", "latents", "dit", "control", "export")


def ensure_data(work: Path, recipe: TrainRecipe) -> tuple[Path, Path]:
    """The two datasets: the VAE and DiT stages' clips, events anywhere; the control stage's, events at block
    starts."""
    config = get_config(recipe.config)
    folders = (work / "data", work / "control_data")
    for folder, clips, seed, starts in ((folders[0], recipe.clips, recipe.data_seed, None),
                                        (folders[1], recipe.control_clips, recipe.control_data_seed,
                                         block_start_seconds(config, recipe.clip_seconds))):
        if not (folder / "manifest.json").exists():
            log.info("data: rendering %d clips into %s", clips, folder.name)
            write_dataset(folder, clips, size=config.width, seconds=recipe.clip_seconds, seed=seed, fps=config.fps,
                          languages=TRAIN_LANGUAGES, speakers=TRAIN_SPEAKERS, block_starts=starts,
                          workers=os.cpu_count() or 1)
    return folders


def block_start_seconds(config: ModelConfig, seconds: float) -> tuple[float, ...]:
    """Where a stream's blocks start, in seconds at the model's frame rate, up to ``seconds``."""
    schedule = StreamSchedule.from_model_config(config, config.width, config.height)
    starts, index = [], 0
    while (start := schedule.block(index).video_start / config.fps) < seconds:
        starts.append(round(start, 2))
        index += 1
    return tuple(starts)


def vae_stage_settings(name: str, recipe: TrainRecipe) -> tuple[int, float, dict]:
    """A VAE-side stage's steps, peak learning rate and :func:`vae_step` keywords: the VAE stage's short windows,
    the narrow decoder's first stage on the same windows, the decoder stage's long ones with its motion term."""
    if name == "vae":
        return recipe.vae_steps, recipe.vae_lr, {"batch": recipe.vae_batch, "frames": recipe.vae_frames,
                                                 "expression_weight": recipe.vae_expression_weight}
    if name == "decoder_scratch":
        return recipe.decoder_scratch_steps, recipe.vae_lr, {"batch": recipe.vae_batch, "frames": recipe.vae_frames,
                                                             "expression_weight": recipe.decoder_expression_weight}
    if name == "decoder":
        return recipe.decoder_steps, recipe.decoder_lr, {
            "batch": recipe.decoder_batch, "frames": recipe.decoder_frames,
            "expression_weight": recipe.decoder_expression_weight, "motion_weight": recipe.decoder_motion_weight,
            "boundary_weight": recipe.decoder_boundary_weight}
    raise ValueError(f"{name!r} is not a VAE-side stage (vae, decoder_scratch, decoder)")


def stage_vae(name: str, config: VAEConfig) -> WanVAE:
    """A freshly initialised VAE of the kind a VAE-side stage trains: the VAE stage's, whose encoder learns beside
    a decoder of its mirror's widths, or the decoder stages' with the config's serving decoder."""
    if name != "vae":
        return WanVAE(config)
    vae = WanVAE(dataclasses.replace(config, light_decoder_dims=()))
    with torch.no_grad():
        # The posterior's log-variance starts at -8 (std 0.02): started at 0, the decoder first sees mostly
        # noise and learns slowly; the KL term then sets the variance it needs.
        vae.conv1.bias[config.z_dim:] = -8.0
    return vae


def run_vae_stage(name: str, work: Path, recipe: TrainRecipe, clips, vae: WanVAE) -> ResumableStage:
    """Train the VAE's :func:`trainable_parameters` for stage ``name`` (:func:`vae_stage_settings`), resumed where
    the stage stopped, in the recipe's ``vae_precision``."""
    steps, lr, settings = vae_stage_settings(name, recipe)
    optimizer = torch.optim.Adam(trainable_parameters(name, vae), lr=lr)
    stage = ResumableStage(name, work, {"vae": vae}, optimizer, total=steps, seed=recipe.seed, peak_lr=lr, warmup=50,
                           checkpoint_every_s=recipe.checkpoint_every_s, grad_clip=recipe.grad_clip)
    stage.resume()
    autocast = decode_autocast_dtype(recipe.vae_precision, "cpu")
    if not stage.done:
        vae.train()
        log.info("%s: computing in %s", name, str(autocast or torch.float32).removeprefix("torch."))
        stage.run(lambda step, rng, gen: vae_step(vae, clips, recipe, rng, gen, autocast=autocast, **settings))
    vae.eval().requires_grad_(False)
    return stage


def train_vae(work: Path, recipe: TrainRecipe, clips) -> tuple[WanVAE, dict]:
    torch.manual_seed(recipe.seed)
    vae = stage_vae("vae", get_config(recipe.config).vae)
    stage = run_vae_stage("vae", work, recipe, clips, vae)
    stats_path = work / "vae_latent_stats.json"
    if not stats_path.exists():
        mean, std = latent_statistics(vae, clips)
        text = json.dumps({"latent_mean": mean, "latent_std": std})
        atomic_write_with(stats_path, lambda tmp: tmp.write_text(text))
    stats = json.loads(stats_path.read_text())
    return vae, {**stage.report(), **stats}


def train_decoder(work: Path, recipe: TrainRecipe, clips, vae: WanVAE) -> tuple[WanVAE, dict[str, dict]]:
    """The serving decoder on long windows, so that a stream's later frames decode as well as its first ones.

    Where the config's light decoder is narrower than the VAE stage's (``VAEConfig.light_decoder_dims``), it starts
    from scratch on the VAE stage's frozen encoder (the latents the DiT learns stay the same), first on the VAE
    stage's short windows. Returns the VAE that serves and each stage's report, by stage name."""
    config = get_config(recipe.config).vae
    reports = {}
    if config.decoder == "light" and config.light_decoder_widths != config.light_dims:
        torch.manual_seed(recipe.seed)
        narrow = stage_vae("decoder_scratch", config)
        narrow.load_state_dict(encoder_state(vae), strict=False)
        vae = narrow
        stage = run_vae_stage("decoder_scratch", work, recipe, clips, vae)
        reports[stage.name] = stage.report()
    stage = run_vae_stage("decoder", work, recipe, clips, vae)
    reports[stage.name] = stage.report()
    return vae, reports


def claim_work_folder(work: Path, recipe: TrainRecipe) -> None:
    """Record ``recipe`` in ``work`` (recipe.json), or check that the run there used it; RecipeMismatch names the
    fields that differ. A field added since the run was recorded counts as its default, which keeps the recipe as
    it was before the field existed."""
    recorded = work / "recipe.json"
    ours = recipe.to_dict()
    if recorded.exists():
        theirs = {**TrainRecipe().to_dict(), **json.loads(recorded.read_text())}
        changed = [key for key in sorted(set(ours) | set(theirs)) if ours.get(key) != theirs.get(key)]
        if changed:
            differences = ", ".join(f"{key} {theirs.get(key)!r} there, {ours.get(key)!r} here" for key in changed)
            raise RecipeMismatch(f"{work} holds a run of another recipe ({differences}): continue it with its "
                                 f"recipe, or give this one a new --work folder")
        return
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_with(recorded, lambda tmp: tmp.write_text(json.dumps(ours, indent=1) + "\n"))


def main_run(work: Path, out: Path, recipe: TrainRecipe, stop_after: str | None = None) -> dict:
    check_recipe_fits_config(recipe)
    claim_work_folder(work, recipe)
    setup_logging(work / "train.log")
    torch.set_flush_denormal(True)
    log.info("recipe %s", json.dumps(recipe.to_dict()))
    started = time.perf_counter()
    data, control_data = ensure_data(work, recipe)
    if stop_after == "data":
        return {}
    clips = load_clips(data)
    vae, vae_report = train_vae(work, recipe, clips)
    if stop_after == "vae":
        return vae_report
    vae, decoder_reports = train_decoder(work, recipe, clips, vae)
    if stop_after == "decoder":
        return decoder_reports["decoder"]
    config = trained_config(recipe, vae_report)
    fps = dataset_fps(data)
    # Encoded (or read back) only by a stage with steps left.
    examples = functools.partial(encode_examples, work / "latents.pt", vae, clips[: recipe.dit_clips], config,
                                 recipe, fps)
    if stop_after == "latents":
        examples()
        return vae_report
    modules, dit_report = train_dit(work, recipe, config, examples, fps)
    del clips, examples
    if stop_after == "dit":
        return dit_report

    def control_examples() -> list[DiTExample]:
        return encode_examples(work / "control_latents.pt", vae, load_clips(control_data), config, recipe, fps,
                               recipe.expression_weight)

    control_report = train_control(work, recipe, config, modules, control_examples, fps)
    if stop_after == "control":
        return control_report
    modules["vae"] = vae
    return export(out, config, recipe, modules, {"vae": vae_report, **decoder_reports, "dit": dit_report,
                                                 "control": control_report}, time.perf_counter() - started)


def trained_config(recipe: TrainRecipe, vae_report: dict) -> ModelConfig:
    """The config with the trained VAE's latent statistics and the recipe's timesteps (what the shipped config must
    say)."""
    config = get_config(recipe.config)
    vae = dataclasses.replace(config.vae, latent_mean=tuple(vae_report["latent_mean"]),
                              latent_std=tuple(vae_report["latent_std"]))
    sampler = dataclasses.replace(config.sampler, timesteps=flow_timesteps(recipe.sampler_shift))
    return dataclasses.replace(config, vae=vae, sampler=sampler, dit=recipe_dit(recipe, config.dit))


def check_recipe_fits_config(recipe: TrainRecipe) -> None:
    """ValueError before any work when the recipe asks its config for a DiT it cannot build, or for windows or
    blocks longer than its clips (found otherwise only at the stage that needs them, after the ones before)."""
    config = get_config(recipe.config)
    recipe_dit(recipe, config.dit)
    frames = int(round(recipe.clip_seconds * config.fps))
    needs = {"vae_frames": recipe.vae_frames, "decoder_frames": recipe.decoder_frames,
             f"dit_blocks={recipe.dit_blocks}": video_frames_for_blocks(config, recipe.dit_blocks)}
    longer = [f"{name} ({count} frames)" for name, count in needs.items() if count > frames]
    if longer:
        raise ValueError(f"clips of clip_seconds={recipe.clip_seconds} have {frames} frames at {config.fps} fps: "
                         f"too few for {', '.join(longer)}")


def recipe_dit(recipe: TrainRecipe, dit: DiTConfig) -> DiTConfig:
    """``dit`` at the recipe's width and depth: heads of the config's width, the feed-forward widened alike."""
    dim, layers = recipe.dit_dim or dit.dim, recipe.dit_layers or dit.num_layers
    head_dim = dit.dim // dit.num_heads
    if dim % head_dim or (dit.ffn_dim * dim) % dit.dim:
        raise ValueError(f"dit_dim {dim} must be a multiple of the {recipe.config} config's head width {head_dim} "
                         f"that widens its feed-forward ({dit.ffn_dim} at {dit.dim}) to a whole width")
    return dataclasses.replace(dit, dim=dim, num_heads=dim // head_dim, ffn_dim=dit.ffn_dim * dim // dit.dim,
                               num_layers=layers)


def encode_examples(path: Path, vae: WanVAE, clips, config: ModelConfig, recipe: TrainRecipe, fps: int,
                    expression_weight: float = 0.0) -> list[DiTExample]:
    """Every clip encoded once (latents, reference conditioning, prompts, weights), kept at ``path``."""
    examples: list[DiTExample] = torch.load(path, weights_only=False) if path.exists() else []
    vae.latent_mean.copy_(torch.tensor(config.vae.latent_mean).view_as(vae.latent_mean))
    vae.latent_inv_std.copy_((1.0 / torch.tensor(config.vae.latent_std)).view_as(vae.latent_inv_std))
    encoding = len(examples) < len(clips)
    if encoding:
        log.info("latents: encoding %d clips into %s", len(clips) - len(examples), path.name)
        for clip in tqdm(clips[len(examples):], desc="latents", unit="clip", dynamic_ncols=True):
            examples.append(encode_example(vae, clip, config, recipe.dit_blocks, fps))
            if len(examples) % 40 == 0:
                # To resume from (loss weights are set below, on every example).
                atomic_write_with(path, lambda tmp: torch.save(examples, tmp))
    # Prompts and loss weights follow the current rule and recipe, not the ones the cache was written under (they
    # cost nothing to rebuild).
    plans = stream_plans(config, recipe.dit_blocks)
    for example, clip in zip(examples, clips):
        example.prompts = prompts_for_blocks(clip, plans, fps)
        example.weight = example_weight(clip, config, recipe, expression_weight)
    if encoding:
        atomic_write_with(path, lambda tmp: torch.save(examples, tmp))
    return examples


def run_dit_stage(name: str, work: Path, recipe: TrainRecipe, config: ModelConfig, modules: dict[str, torch.nn.Module],
                  examples: Callable[[], list[DiTExample]], fps: int, *, steps: int, lr: float,
                  warmup: int) -> ResumableStage:
    """Train the DiT and the learned encoders on ``examples()`` (encoded only if the stage has steps left)."""
    parameters = [p for m in modules.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    stage = ResumableStage(name, work, modules, optimizer, total=steps, seed=recipe.seed, peak_lr=lr, warmup=warmup,
                           checkpoint_every_s=recipe.checkpoint_every_s, grad_clip=recipe.grad_clip)
    stage.resume()
    if not stage.done:
        clips = examples()
        for module in modules.values():
            module.train().requires_grad_(True)

        def step(index, rng, generator):
            example = clips[int(rng.integers(len(clips)))]
            return dit_step(modules, example, config, recipe, fps, rng, generator)

        stage.run(step)
    for module in modules.values():
        module.eval().requires_grad_(False)
    return stage


def dit_modules(config: ModelConfig) -> dict[str, torch.nn.Module]:
    """What the DiT and control stages train: the DiT and the three learned encoders, freshly initialised."""
    return {
        "dit": WanModel(config.dit),
        "audio_encoder": build_audio_encoder(config.audio_encoder),
        "image_encoder": build_image_encoder(config.image_encoder),
        "text_encoder": build_text_encoder(config.text_encoder),
    }


def train_dit(work: Path, recipe: TrainRecipe, config: ModelConfig, examples: Callable[[], list[DiTExample]],
              fps: int):
    torch.manual_seed(recipe.seed + 1)
    modules = dit_modules(config)
    if recipe.compile_dit:
        modules["dit"].compile_blocks(for_training=True)  # compiled at the first step; the control stage reuses it
    stage = run_dit_stage("dit", work, recipe, config, modules, examples, fps, steps=recipe.dit_steps,
                          lr=recipe.dit_lr, warmup=recipe.dit_warmup)
    return modules, stage.report()


def train_control(work: Path, recipe: TrainRecipe, config: ModelConfig, modules: dict[str, torch.nn.Module],
                  examples: Callable[[], list[DiTExample]], fps: int) -> dict:
    """The DiT continued on clips whose events start at block starts, expressions and hands weighted up."""
    stage = run_dit_stage("control", work, recipe, config, modules, examples, fps, steps=recipe.control_steps,
                          lr=recipe.control_lr, warmup=recipe.control_warmup)
    return stage.report()


def export(out: Path, config: ModelConfig, recipe: TrainRecipe, modules: dict[str, torch.nn.Module],
           reports: dict[str, dict], wall_s: float) -> dict:
    """``{config}.safetensors`` (keys prefixed by module) and ``{config}.json`` (the manifest) into ``out``;
    ``reports``: each training stage's (vae, decoder_scratch where it ran, decoder, dit, control)."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.{key}": value.detach().contiguous()
               for name, module in modules.items() for key, value in module.state_dict().items()}
    weights = out / f"{recipe.config}.safetensors"
    atomic_write_with(weights, lambda tmp: save_file(tensors, str(tmp), metadata={"config": config.to_json()}))
    manifest = {
        "file": weights.name,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "parameters": sum(v.numel() for v in tensors.values()),
        "config": config.to_dict(),
        "recipe": recipe.to_dict(),
        "data": {"clips": recipe.clips, "seconds": recipe.clip_seconds, "seed": recipe.data_seed,
                 "control_clips": recipe.control_clips, "control_seed": recipe.control_data_seed,
                 "control_block_starts": list(block_start_seconds(config, recipe.clip_seconds)),
                 "languages": list(TRAIN_LANGUAGES), "speakers": list(TRAIN_SPEAKERS),
                 "held_out": {"language": HELD_OUT_LANGUAGE, "speaker": HELD_OUT_SPEAKER}},
        "training": {
            **{name: {key: report[key] for key in ("steps", "seconds", "history")}
               for name, report in reports.items()},
            "wall_seconds_this_run": round(wall_s, 1),
        },
        "machine": describe_machine(),
    }
    atomic_write_with(out / f"{recipe.config}.json", lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
    log.info("export: %s (%s)", weights, manifest["sha256"])
    return manifest
