"""What a measurement ran on, recorded beside its numbers (the benchmark's JSON, the evaluation's report, the
training manifest): on 2 cores of a CPU without bf16 matrix units the tiny model's decoder ran 4.2x and the
rest of its block 3.3x slower than on 2 cores of one with them, so a speed means little without the CPU's model
and vector units.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from avatar_backend.generator.pipeline import cpu_has_bf16_units


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()


def describe_machine() -> dict:
    """Platform, CPU model, the vector units torch's CPU kernels use (``cpu_capability``: AVX2, AVX512, ...),
    whether the CPU has bf16 matrix units (AMX or AVX512-BF16), cores, torch and its thread count."""
    return {"platform": platform.platform(), "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_matrix_units": cpu_has_bf16_units(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
