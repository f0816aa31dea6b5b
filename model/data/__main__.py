"""``python -m model.data``: render a dataset of procedural talking characters with per-frame truth."""

from __future__ import annotations

import argparse
import sys
import time

from .dataset import write_dataset
from .render import SIZES


def _progress_printer(total: int):
    """A tqdm bar when tqdm is installed, otherwise a line every few clips."""
    try:
        from tqdm import tqdm
    except ImportError:
        started = time.perf_counter()
        step = max(1, total // 20)

        def report(done: int, _total: int) -> None:
            if done % step == 0 or done == total:
                rate = done / max(time.perf_counter() - started, 1e-9)
                print(f"{done}/{total} clips ({rate:.2f} clips/s)", file=sys.stderr, flush=True)

        return report, lambda: None
    bar = tqdm(total=total, unit="clip")
    return (lambda done, _total: bar.update(done - bar.n)), bar.close


def _names(text: str) -> tuple[str, ...] | None:
    return tuple(n.strip() for n in text.split(",") if n.strip()) or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.data", description=__doc__.split(": ", 1)[-1])
    parser.add_argument("--out", required=True, help="dataset folder (created)")
    parser.add_argument("--clips", type=int, default=100, help="number of clips (default 100)")
    parser.add_argument("--size", type=int, default=128, choices=SIZES, help="frame side in pixels (default 128)")
    parser.add_argument("--seconds", type=float, default=6.0, help="clip length (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering in parallel (default 1)")
    parser.add_argument("--languages", default="", help="comma-separated languages to voice (default: all)")
    parser.add_argument("--speakers", default="", help="comma-separated espeak-ng variants (default: all)")
    args = parser.parse_args(argv)
    report, close = _progress_printer(args.clips)
    try:
        manifest = write_dataset(args.out, args.clips, size=args.size, seconds=args.seconds, seed=args.seed,
                                 workers=args.workers, languages=_names(args.languages),
                                 speakers=_names(args.speakers), progress=report)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        close()
    elapsed = manifest["render_seconds"]
    frames = sum(c["frames"] for c in manifest["clips"])
    print(f"wrote {args.clips} clips ({frames} frames) to {args.out} in {elapsed:.1f} s: "
          f"{args.clips / elapsed:.2f} clips/s, {frames / elapsed:.0f} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
