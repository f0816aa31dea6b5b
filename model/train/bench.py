"""``python -m model.train.bench``: one training stage's step two ways, side by side on one work folder's clips:
the DiT stage eager and with the DiT's blocks compiled (``--stage dit``), or a VAE-side stage (``vae``,
``decoder_scratch``, ``decoder``) in float32 and under bfloat16 autocast (``TrainRecipe.vae_precision``).

The same steps (clip, window, timestep and noise of ``step_rngs``) run through two copies of the stage's modules,
from the folder's checkpoint of that stage when it has one: forward and backward, no optimiser update. Printed and
written as JSON: the seconds of the first steps (the compiled copy compiles there), the median seconds per step
after them, their ratio, the largest relative difference of any parameter's gradient between the two copies, and
the cosine between their whole gradients.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from avatar_backend.generator.config import get_config

from .clips import dataset_fps, load_clips
from .dit_stage import DiTExample, dit_step
from .loop import step_rngs
from .recipe import TINY_RECIPE, TrainRecipe
from .run import dit_modules, stage_vae, trained_config, vae_stage_settings
from .vae_stage import trainable_parameters, vae_step

STAGES = ("dit", "vae", "decoder_scratch", "decoder")

# A step of one copy: (step index, its numpy and torch generators) -> None, backward included.
Step = Callable[[int, np.random.Generator, torch.Generator], None]


def gradients(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": p.grad.clone() for name, module in modules.items()
            for key, p in module.named_parameters() if p.grad is not None}


def time_steps(modules: dict[str, torch.nn.Module], step: Step, stage: str, seed: int,
               steps: int) -> tuple[list[float], list[dict[str, torch.Tensor]]]:
    """Seconds per step, and the gradients of the first three steps."""
    seconds, grads = [], []
    for index in range(steps):
        rng, generator = step_rngs(seed, stage, index)
        for module in modules.values():
            module.zero_grad(set_to_none=True)
        started = time.perf_counter()
        step(index, rng, generator)
        seconds.append(time.perf_counter() - started)
        if index < 3:
            grads.append(gradients(modules))
    return seconds, grads


def largest_gradient_difference(actual: list[dict], expected: list[dict]) -> float:
    return max(float((a[key] - grad).norm() / grad.norm())
               for a, e in zip(actual, expected) for key, grad in e.items() if grad.norm() > 0)


def gradient_cosine(actual: list[dict], expected: list[dict]) -> float:
    """The smallest, over the compared steps, cosine between the two copies' whole gradients."""
    cosines = []
    for a, e in zip(actual, expected):
        flat_a = torch.cat([a[key].flatten() for key in e])
        flat_e = torch.cat([grad.flatten() for grad in e.values()])
        cosines.append(float(torch.nn.functional.cosine_similarity(flat_a, flat_e, dim=0)))
    return min(cosines)


def dit_variants(work: Path, recipe: TrainRecipe) -> tuple[Path, list[tuple[str, dict, Step]]]:
    """The DiT stage's step, eager and with the DiT's blocks compiled."""
    stats, latents, data = (work / name for name in ("vae_latent_stats.json", "latents.pt", "data"))
    if not (stats.exists() and latents.exists() and data.exists()):
        raise FileNotFoundError(f"{work} holds no encoded latents (run model.train there with --stop-after latents)")
    fps = dataset_fps(data)
    config = trained_config(recipe, json.loads(stats.read_text()))
    examples: list[DiTExample] = torch.load(latents, weights_only=False)
    eager = dit_modules(config)
    checkpoint = work / "dit.ckpt"
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)["modules"]
        for name, module in eager.items():
            module.load_state_dict(state[name])
    compiled = copy.deepcopy(eager)
    compiled["dit"].compile_blocks(for_training=True)

    def step_of(modules):
        for module in modules.values():
            module.train().requires_grad_(True)

        def step(index, rng, generator):
            example = examples[int(rng.integers(len(examples)))]
            dit_step(modules, example, config, recipe, fps, rng, generator)
        return step

    return checkpoint, [("eager", eager, step_of(eager)), ("compiled", compiled, step_of(compiled))]


def vae_variants(work: Path, recipe: TrainRecipe, stage: str) -> tuple[Path, list[tuple[str, dict, Step]]]:
    """A VAE-side stage's step in float32 and under bfloat16 autocast."""
    data = work / "data"
    if not data.exists():
        raise FileNotFoundError(f"{work} holds no rendered clips (run model.train there with --stop-after data)")
    clips = load_clips(data)
    _, _, settings = vae_stage_settings(stage, recipe)
    base = stage_vae(stage, get_config(recipe.config).vae)
    checkpoint = work / f"{stage}.ckpt"
    if checkpoint.exists():
        base.load_state_dict(torch.load(checkpoint, weights_only=False)["modules"]["vae"])

    def variant(name, autocast):
        vae = copy.deepcopy(base).train()
        trainable_parameters(stage, vae)

        def step(index, rng, generator):
            vae_step(vae, clips, recipe, rng, generator, autocast=autocast, **settings)
        return name, {"vae": vae}, step

    return checkpoint, [variant("float32", None), variant("bfloat16", torch.bfloat16)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.train.bench", description=__doc__.split(": ", 1)[-1])
    parser.add_argument("--work", type=Path, required=True,
                        help="a training run's folder: its rendered clips, and for the DiT its encoded latents")
    parser.add_argument("--stage", choices=STAGES, default="dit", help="the stage whose step is timed")
    parser.add_argument("--steps", type=int, default=80, help="steps of each copy")
    parser.add_argument("--first", type=int, default=20, help="steps left out of the median (compiling)")
    parser.add_argument("--out", type=Path, help="JSON file for the numbers")
    args = parser.parse_args(argv)
    if args.steps <= args.first:
        parser.error("--steps must exceed --first")
    torch.set_flush_denormal(True)
    # The folder's own recipe (its clip length in blocks, windows and loss weights), the tiny one where it records
    # none.
    recorded = args.work / "recipe.json"
    recipe = TrainRecipe(**json.loads(recorded.read_text())) if recorded.exists() else TINY_RECIPE
    try:
        checkpoint, variants = (dit_variants(args.work, recipe) if args.stage == "dit"
                                else vae_variants(args.work, recipe, args.stage))
    except FileNotFoundError as error:
        parser.error(str(error))

    timings, grads = {}, {}
    for name, modules, step in variants:
        timings[name], grads[name] = time_steps(modules, step, args.stage, recipe.seed, args.steps)
    (first, _, _), (second, _, _) = variants
    medians = {name: statistics.median(seconds[args.first:]) for name, seconds in timings.items()}
    report = {
        "stage": args.stage, "steps": args.steps, "first": args.first, "from_checkpoint": checkpoint.exists(),
        **{f"{name}_first_s": round(sum(timings[name][:args.first]), 2) for name in timings},
        **{f"{name}_median_s": round(medians[name], 4) for name in timings},
        "speedup": round(medians[first] / medians[second], 3),
        "largest_gradient_difference": largest_gradient_difference(grads[second], grads[first]),
        "gradient_cosine": round(gradient_cosine(grads[second], grads[first]), 6),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    print(f"{args.stage} training step, {args.steps} steps each, median of the last {args.steps - args.first}:")
    for name in timings:
        print(f"  {name:9} {medians[name] * 1000:7.1f} ms  (first {args.first}: {report[f'{name}_first_s']} s)")
    print(f"  speed-up  {report['speedup']:.2f}x; largest gradient difference "
          f"{report['largest_gradient_difference']:.1e} of the parameter's gradient norm, cosine "
          f"{report['gradient_cosine']:.4f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
