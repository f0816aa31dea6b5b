"""A resumable training loop: per-step randomness derived from (seed, stage, step), a checkpoint every few
minutes and at the end, a progress bar with loss and ETA, and a log file; files written whole or not at all.

Because every step's randomness comes from its own index, and Ctrl-C stops a stage only between two steps, a run
stopped and continued takes exactly the same steps as a run that never stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from avatar_backend.store import atomic_write_with

log = logging.getLogger("model.train")

STAGE_IDS = {"vae": 1, "dit": 2, "decoder": 3, "control": 4, "decoder_scratch": 5}


class RecipeMismatch(ValueError):
    """The work folder holds a run of another recipe or model config: continuing it would mix two in one set of
    weights."""


def step_rngs(seed: int, stage: str, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The numpy and torch generators of one step of one stage."""
    sequence = np.random.SeedSequence([seed, STAGE_IDS[stage], step])
    generator = torch.Generator().manual_seed(int(sequence.generate_state(1, np.uint64)[0] >> 1))
    return np.random.default_rng(sequence), generator


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then a cosine from ``peak`` down to a tenth of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def setup_logging(path: Path) -> None:
    """Log the ``model.train`` logger into ``path``, and only there: an earlier run's log file in this process
    is closed."""
    for previous in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(previous)
        previous.close()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


@contextlib.contextmanager
def stop_between_steps() -> Iterator[threading.Event]:
    """Within: Ctrl-C (SIGINT) sets the event, which the loop reads between steps, so that a checkpoint never
    holds a step half taken (an optimiser half way through its update, the step count not yet advanced); a
    second Ctrl-C stops at once, as it always would. Outside the main thread, where no handler can be set, the
    event is never set."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def on_interrupt(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


class ResumableStage:
    """Runs ``step_fn(step, np_rng, torch_gen) -> {metric: value}`` from the last checkpoint to ``total`` steps."""

    def __init__(self, name: str, work: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                 *, total: int, seed: int, peak_lr: float, warmup: int, checkpoint_every_s: float,
                 grad_clip: float = 0.0):
        self.name, self.work, self.modules, self.optimizer = name, work, modules, optimizer
        self.total, self.seed, self.peak_lr, self.warmup = total, seed, peak_lr, warmup
        self.checkpoint_every_s, self.grad_clip = checkpoint_every_s, grad_clip
        self.path = work / f"{name}.ckpt"
        self.step = 0
        self.seconds = 0.0            # wall time spent on this stage, over every run
        self.history: list[dict] = []  # a metrics line every 50 steps
        self.running: dict[str, float] = {}  # the metrics' moving averages the progress bar and history show

    @property
    def done(self) -> bool:
        return self.step >= self.total

    def resume(self) -> bool:
        if not self.path.exists():
            return False
        state = torch.load(self.path, weights_only=False)
        for name, module in self.modules.items():
            try:
                module.load_state_dict(state["modules"][name])
            except RuntimeError:
                raise RecipeMismatch(f"{self.path} holds a {name} of other shapes than the config's: the model "
                                     "config changed since this run; give this one a new --work folder") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.seconds, self.history = state["step"], state["seconds"], state["history"]
        self.running = state.get("running", {})
        log.info("%s: resumed at step %d", self.name, self.step)
        return True

    def report(self) -> dict:
        """What the manifest keeps of the stage: its steps, its wall time over every run, its last metrics line."""
        return {"steps": self.step, "seconds": round(self.seconds, 1), "history": self.history[-1:]}

    def save(self) -> None:
        state = {"modules": {n: m.state_dict() for n, m in self.modules.items()},
                 "optimizer": self.optimizer.state_dict(), "step": self.step, "seconds": self.seconds,
                 "history": self.history, "running": self.running}
        atomic_write_with(self.path, lambda tmp: torch.save(state, tmp))

    def run(self, step_fn: Callable[[int, np.random.Generator, torch.Generator], dict[str, float]]) -> None:
        parameters = [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]
        last_save = time.perf_counter()
        running = self.running
        bar = tqdm(total=self.total, initial=self.step, desc=self.name, unit="step", dynamic_ncols=True)
        try:
            with stop_between_steps() as stop_requested:
                while self.step < self.total:
                    if stop_requested.is_set():
                        self.save()  # Ctrl-C: the next run continues from this step
                        log.info("%s: stopped at step %d", self.name, self.step)
                        raise KeyboardInterrupt
                    started = time.perf_counter()
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr_at(self.step, self.total, self.peak_lr, self.warmup)
                    rng, generator = step_rngs(self.seed, self.name, self.step)
                    self.optimizer.zero_grad(set_to_none=True)
                    metrics = step_fn(self.step, rng, generator)
                    if self.grad_clip:
                        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(parameters, self.grad_clip))
                    self.optimizer.step()
                    self.step += 1
                    self.seconds += time.perf_counter() - started
                    for key, value in metrics.items():
                        running[key] = value if key not in running else 0.98 * running[key] + 0.02 * value
                    bar.set_postfix({k: f"{v:.4g}" for k, v in running.items() if k != "grad_norm"}, refresh=False)
                    bar.update(1)
                    if self.step % 50 == 0 or self.step == self.total:
                        line = {"step": self.step, "seconds": round(self.seconds, 1),
                                **{k: round(v, 5) for k, v in running.items()}}
                        self.history.append(line)
                        log.info("%s %s", self.name, json.dumps(line))
                    if self.checkpoint_every_s and time.perf_counter() - last_save > self.checkpoint_every_s:
                        self.save()
                        last_save = time.perf_counter()
        finally:
            bar.close()
        self.save()
