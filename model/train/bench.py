"""``python -m model.train.bench``: the DiT stage's training step, eager and with the DiT's blocks compiled, side
by side on one work folder's clips.

The same steps (clip, timestep and noise of ``step_rngs``) run through two copies of the DiT and its encoders,
from the folder's DiT checkpoint when it has one: forward and backward, no optimiser update. Printed and written
as JSON: the seconds of the first steps (the compiled copy compiles there), the median seconds per step after
them, their ratio, and the largest relative difference of any parameter's gradient between the two copies.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from .clips import dataset_fps
from .dit_stage import DiTExample, dit_step
from .loop import step_rngs
from .recipe import TINY_RECIPE, TrainRecipe
from .run import dit_modules, trained_config


def gradients(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": p.grad.clone() for name, module in modules.items()
            for key, p in module.named_parameters() if p.grad is not None}


def time_steps(modules: dict[str, torch.nn.Module], examples: list[DiTExample], config, recipe: TrainRecipe,
               fps: int, steps: int) -> tuple[list[float], list[dict[str, torch.Tensor]]]:
    """Seconds per step, and the gradients of the first three steps."""
    for module in modules.values():
        module.train().requires_grad_(True)
    seconds, grads = [], []
    for index in range(steps):
        rng, generator = step_rngs(recipe.seed, "dit", index)
        example = examples[int(rng.integers(len(examples)))]
        for module in modules.values():
            module.zero_grad(set_to_none=True)
        started = time.perf_counter()
        dit_step(modules, example, config, recipe, fps, rng, generator)
        seconds.append(time.perf_counter() - started)
        if index < 3:
            grads.append(gradients(modules))
    return seconds, grads


def largest_gradient_difference(actual: list[dict], expected: list[dict]) -> float:
    return max(float((a[key] - grad).norm() / grad.norm())
               for a, e in zip(actual, expected) for key, grad in e.items() if grad.norm() > 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.train.bench", description=__doc__.split(": ", 1)[-1])
    parser.add_argument("--work", type=Path, required=True,
                        help="a training run's folder, its latents encoded (vae_latent_stats.json, latents.pt)")
    parser.add_argument("--steps", type=int, default=80, help="steps of each copy")
    parser.add_argument("--first", type=int, default=20, help="steps left out of the median (compiling)")
    parser.add_argument("--out", type=Path, help="JSON file for the numbers")
    args = parser.parse_args(argv)
    if args.steps <= args.first:
        parser.error("--steps must exceed --first")
    stats, latents, data = (args.work / name for name in ("vae_latent_stats.json", "latents.pt", "data"))
    if not (stats.exists() and latents.exists() and data.exists()):
        parser.error(f"{args.work} holds no encoded latents (run model.train there with --stop-after latents)")
    torch.set_flush_denormal(True)
    # The folder's own recipe (its clip length in blocks, its loss weights), the tiny one where it records none.
    recorded = args.work / "recipe.json"
    recipe = TrainRecipe(**json.loads(recorded.read_text())) if recorded.exists() else TINY_RECIPE
    fps = dataset_fps(data)
    config = trained_config(recipe, json.loads(stats.read_text()))
    examples: list[DiTExample] = torch.load(latents, weights_only=False)
    eager = dit_modules(config)
    checkpoint = args.work / "dit.ckpt"
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)["modules"]
        for name, module in eager.items():
            module.load_state_dict(state[name])
    compiled = copy.deepcopy(eager)
    compiled["dit"].compile_blocks(for_training=True)

    eager_s, eager_grads = time_steps(eager, examples, config, recipe, fps, args.steps)
    compiled_s, compiled_grads = time_steps(compiled, examples, config, recipe, fps, args.steps)
    eager_median = statistics.median(eager_s[args.first:])
    compiled_median = statistics.median(compiled_s[args.first:])
    report = {
        "steps": args.steps, "first": args.first, "from_checkpoint": checkpoint.exists(),
        "eager_first_s": round(sum(eager_s[:args.first]), 2),
        "compiled_first_s": round(sum(compiled_s[:args.first]), 2),
        "eager_median_s": round(eager_median, 4), "compiled_median_s": round(compiled_median, 4),
        "speedup": round(eager_median / compiled_median, 3),
        "largest_gradient_difference": largest_gradient_difference(compiled_grads, eager_grads),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    print(f"DiT training step, {args.steps} steps each, median of the last {args.steps - args.first}:")
    print(f"  eager     {eager_median * 1000:7.1f} ms  (first {args.first}: {report['eager_first_s']} s)")
    print(f"  compiled  {compiled_median * 1000:7.1f} ms  (first {args.first}: {report['compiled_first_s']} s, "
          "compiling included)")
    print(f"  speed-up  {report['speedup']:.2f}x; largest gradient difference "
          f"{report['largest_gradient_difference']:.1e} of the parameter's gradient norm")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
