"""GPU telemetry through NVML (nvidia-ml-py): memory, utilisation and temperature per device.

Without a GPU, without the NVIDIA driver or without nvidia-ml-py the list is empty: that is a normal CPU
setup, so it is logged once at info level and never raised. Readings are cached for ``cache_s`` because
they go into every FrameBlock and an NVML query costs a few hundred microseconds per device.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from avatar_backend.proto_gen import worker_pb2

__all__ = ["DeviceSample", "DeviceTelemetry"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSample:
    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: int
    temperature_celsius: int

    def to_proto(self) -> worker_pb2.DeviceTelemetry:
        return worker_pb2.DeviceTelemetry(
            index=self.index, name=self.name, memory_used_bytes=self.memory_used_bytes,
            memory_total_bytes=self.memory_total_bytes, utilization_percent=self.utilization_percent,
            temperature_celsius=self.temperature_celsius,
        )


def _import_nvml() -> Any:
    import pynvml  # nvidia-ml-py

    return pynvml


class DeviceTelemetry:
    """Cached NVML readings of the GPUs this process may use (CUDA_VISIBLE_DEVICES is honoured)."""

    def __init__(self, cache_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 nvml_loader: Callable[[], Any] = _import_nvml):
        self.cache_s = cache_s
        self._clock = clock
        self._nvml_loader = nvml_loader
        self._nvml: Any = None
        self._handles: list[tuple[int, Any]] = []
        self._started = False
        self._available = False
        self._cached: list[DeviceSample] = []
        self._cached_at = -float("inf")

    @property
    def available(self) -> bool:
        """True when NVML answered and at least one GPU is visible."""
        self._ensure_started()
        return self._available

    def samples(self) -> list[DeviceSample]:
        """The devices' current state ([] without GPU or NVML), at most ``cache_s`` old."""
        self._ensure_started()
        if not self._available:
            return []
        now = self._clock()
        if now - self._cached_at >= self.cache_s:
            self._cached = [self._read(index, handle) for index, handle in self._handles]
            self._cached_at = now
        return self._cached

    def to_proto(self) -> list[worker_pb2.DeviceTelemetry]:
        return [s.to_proto() for s in self.samples()]

    def close(self) -> None:
        if self._available:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
        self._available = False

    # -- internals --------------------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            nvml = self._nvml_loader()
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            handles = [(i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
            handles = _visible(nvml, handles)
        except Exception as err:  # no library, no driver, no permission: all mean "no telemetry"
            log.info("GPU telemetry off (no NVML: %s)", _short(err))
            return
        if not handles:
            log.info("GPU telemetry off (no GPU visible to NVML)")
            try:
                nvml.nvmlShutdown()
            except Exception:
                pass
            return
        self._nvml = nvml
        self._handles = handles
        self._available = True
        log.info("GPU telemetry on for %d device(s)", len(handles))

    def _read(self, index: int, handle: Any) -> DeviceSample:
        nvml = self._nvml
        name = _safe(lambda: nvml.nvmlDeviceGetName(handle), "")
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        memory = _safe(lambda: nvml.nvmlDeviceGetMemoryInfo(handle), None)
        util = _safe(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu, 0)
        temp = _safe(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU), 0)
        return DeviceSample(
            index=index, name=str(name),
            memory_used_bytes=int(memory.used) if memory is not None else 0,
            memory_total_bytes=int(memory.total) if memory is not None else 0,
            utilization_percent=int(util), temperature_celsius=int(temp),
        )


def _visible(nvml: Any, handles: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Restrict NVML's devices (it ignores CUDA_VISIBLE_DEVICES) to those CUDA lets this process use."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return handles
    wanted = [v.strip() for v in visible.split(",") if v.strip()]
    chosen = []
    for cuda_index, token in enumerate(wanted):
        for nvml_index, handle in handles:
            uuid = _safe(lambda: nvml.nvmlDeviceGetUUID(handle), "")
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            if token == str(nvml_index) or (token.startswith(("GPU-", "MIG-")) and uuid.startswith(token)):
                chosen.append((cuda_index, handle))
                break
        else:
            break  # CUDA stops at the first invalid entry too
    return chosen


def _safe(read: Callable[[], Any], default: Any) -> Any:
    # Some fields are unsupported on some devices (utilisation under MIG, temperature on some SKUs).
    try:
        return read()
    except Exception:
        return default


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text.splitlines()[0][:200]
