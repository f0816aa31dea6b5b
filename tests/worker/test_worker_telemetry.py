"""NVML telemetry: empty and quiet without NVML, cached readings with it."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from worker_helpers import FakeClock

from avatar_backend.worker.telemetry import DeviceTelemetry


class FakeNvml:
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, count: int = 2):
        self.count = count
        self.reads = 0

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUUID(self, handle):
        return f"GPU-{handle}aaaa"

    def nvmlDeviceGetName(self, handle):
        return b"Fake GPU"

    def nvmlDeviceGetMemoryInfo(self, handle):
        self.reads += 1
        return SimpleNamespace(used=(handle + 1) << 30, total=80 << 30)

    def nvmlDeviceGetUtilizationRates(self, handle):
        raise RuntimeError("not supported under MIG")

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 40 + handle


def test_without_nvml_the_list_is_empty_and_logged_once(caplog):
    def missing():
        raise ImportError("No module named 'pynvml'")

    telemetry = DeviceTelemetry(nvml_loader=missing)
    with caplog.at_level(logging.INFO, logger="avatar_backend.worker.telemetry"):
        assert telemetry.samples() == []
        assert telemetry.to_proto() == []
        assert telemetry.samples() == []
    records = [r for r in caplog.records if r.name == "avatar_backend.worker.telemetry"]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert not telemetry.available


def test_driver_missing_is_not_an_error():
    class NoDriver(FakeNvml):
        def nvmlInit(self):
            raise OSError("NVML Shared Library Not Found")

    assert DeviceTelemetry(nvml_loader=NoDriver).samples() == []


def test_this_machine_never_raises():
    # Real pynvml: a CPU machine gives [], a GPU machine gives readings; neither raises.
    samples = DeviceTelemetry().samples()
    assert isinstance(samples, list)
    for s in samples:
        assert s.memory_total_bytes > 0


def test_readings_are_cached(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNvml()
    clock = FakeClock(100.0)
    telemetry = DeviceTelemetry(cache_s=1.0, clock=clock, nvml_loader=lambda: nvml)
    first = telemetry.samples()
    assert [(s.index, s.name, s.memory_used_bytes >> 30, s.temperature_celsius, s.utilization_percent)
            for s in first] == [(0, "Fake GPU", 1, 40, 0), (1, "Fake GPU", 2, 41, 0)]
    reads = nvml.reads
    clock.advance(0.5)
    assert telemetry.samples() is first and nvml.reads == reads
    clock.advance(0.6)
    telemetry.samples()
    assert nvml.reads == 2 * reads
    proto = telemetry.to_proto()
    assert proto[1].memory_total_bytes == 80 << 30


def test_cuda_visible_devices_selects_and_renumbers(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    samples = DeviceTelemetry(nvml_loader=lambda: FakeNvml()).samples()
    assert [(s.index, s.temperature_celsius) for s in samples] == [(0, 41)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-0")
    assert [s.temperature_celsius for s in DeviceTelemetry(nvml_loader=lambda: FakeNvml()).samples()] == [40]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert DeviceTelemetry(nvml_loader=lambda: FakeNvml()).samples() == []
