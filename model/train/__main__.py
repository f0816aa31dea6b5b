"""``python -m model.train``: train the tiny model from a seed and write its weights and manifest."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .recipe import RECIPES, TINY_RECIPE, with_overrides
from .run import STAGES, RecipeMismatch, check_recipe_fits_config, main_run

SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.split(": ", 1)[-1])
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for data, checkpoints and the log (a stopped run continues from it; default "
                             "runs/RECIPE)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the weights and manifest go (default: model/weights, replacing the shipped "
                             "ones, for the shipped recipe; WORK/weights for another --recipe, --set or --seed)")
    parser.add_argument("--seed", type=int, default=TINY_RECIPE.seed)
    parser.add_argument("--recipe", choices=RECIPES, default="tiny",
                        help="tiny: the shipped weights' (the default); short: every stage's steps cut to fit 90 "
                             "minutes on 2 CPU cores; bf16: the steps cut less, the VAE stages in bf16, to fit 90 "
                             "minutes on 2 cores of a CPU with bf16 units; smoke: a few steps of every stage on a few "
                             "clips")
    parser.add_argument("--stop-after", choices=STAGES, help="stop after this stage (continue later)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="settings",
                        help="change one field of the recipe (model/train/recipe.py), e.g. vae_expression_weight=4; "
                             "repeatable; the manifest records the recipe run")
    args = parser.parse_args(argv)
    try:
        recipe = with_overrides(dataclasses.replace(RECIPES[args.recipe], seed=args.seed), args.settings)
        check_recipe_fits_config(recipe)
    except ValueError as error:
        parser.error(str(error))
    work = args.work or Path("runs") / args.recipe
    # Only the recipe the shipped weights came from writes over them by default.
    out = args.out or (SHIPPED_WEIGHTS if recipe == TINY_RECIPE else work / "weights")
    try:
        main_run(work, out, recipe, stop_after=args.stop_after)
    except RecipeMismatch as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
