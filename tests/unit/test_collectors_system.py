"""System metrics: psutil readings, the sampling thread, failures, and the NVML code (fake and real)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from types import SimpleNamespace

import psutil
import pytest

from runstream.collectors.system import SystemSampler, gpu_names

MB = 1024 * 1024
BASE_KEYS = {
    "cpu.percent",
    "cpu.process_percent",
    "memory.percent",
    "memory.used_mb",
    "memory.process_rss_mb",
    "disk.percent",
}
RATE_KEYS = {"disk.read_mb_s", "disk.write_mb_s", "network.sent_mb_s", "network.recv_mb_s"}


def _ignore(ts: float, values: dict[str, float]) -> None:
    pass


def _two_readings(sampler: SystemSampler) -> tuple[dict[str, float], dict[str, float]]:
    first = sampler.sample()
    time.sleep(0.1)
    return first, sampler.sample()


class FakeNvml:
    """The part of ``pynvml`` the sampler uses: device 0 does everything, device 1 reports no power."""

    NVML_TEMPERATURE_GPU = 0
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_GPU_IS_LOST = 15

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(value)
            self.value = value

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.inits = self.shutdowns = 0
        self.calls: dict[tuple[str, int], int] = {}
        self.lost_temperature_once = False

    def _call(self, what: str, handle: int) -> None:
        self.calls[what, handle] = self.calls.get((what, handle), 0) + 1

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes | str:
        return b"Fake H100" if handle == 0 else "Fake A10"

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=87 if handle == 0 else 3, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=80 * 1024 * MB, used=20 * 1024 * MB, free=60 * 1024 * MB)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        if self.lost_temperature_once and handle == 0:
            self.lost_temperature_once = False
            raise self.NVMLError(self.NVML_ERROR_GPU_IS_LOST)
        return 61

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self._call("power", handle)
        if handle == 1:
            raise self.NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return 312_500  # milliwatts

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        if handle == 1:
            return [SimpleNamespace(pid=self.pid + 1, usedGpuMemory=MB)]
        return [
            SimpleNamespace(pid=self.pid, usedGpuMemory=512 * MB),
            SimpleNamespace(pid=self.pid + 1, usedGpuMemory=None),
        ]


class NoDriver(FakeNvml):
    def nvmlInit(self) -> None:
        raise self.NVMLError(9)  # NVML_ERROR_DRIVER_NOT_LOADED


# -- psutil ------------------------------------------------------------------------------------


def test_sample_reports_cpu_memory_disk_and_network_in_sane_ranges():
    sampler = SystemSampler(on_sample=_ignore, nvml=NoDriver(os.getpid()))
    first, values = _two_readings(sampler)
    assert {"memory.percent", "memory.used_mb", "memory.process_rss_mb", "disk.percent"} <= first.keys()
    assert not first.keys() & RATE_KEYS, "rates need two readings"
    assert values.keys() >= BASE_KEYS | RATE_KEYS
    assert all(isinstance(v, float) for v in values.values())
    assert 0 <= values["cpu.percent"] <= 100
    assert values["cpu.process_percent"] >= 0
    assert 0 < values["memory.percent"] <= 100
    assert 0 < values["memory.used_mb"] <= psutil.virtual_memory().total / MB
    assert 1 < values["memory.process_rss_mb"] < values["memory.used_mb"] + 1
    assert 0 < values["disk.percent"] <= 100
    assert all(0 <= values[k] < 100_000 for k in RATE_KEYS)


def test_process_cpu_counts_busy_children():
    child = psutil.Popen([sys.executable, "-c", "while True: pass"])
    try:
        sampler = SystemSampler(on_sample=_ignore, nvml=NoDriver(os.getpid()))
        sampler.sample()
        time.sleep(0.5)
        sampler.sample()  # the child's first reading primes it
        time.sleep(0.5)
        assert sampler.sample()["cpu.process_percent"] > 20  # a busy loop: about one core
    finally:
        child.kill()
        child.wait()


def test_the_thread_delivers_samples_and_stops_promptly():
    got: list[tuple[float, dict[str, float]]] = []
    sampler = SystemSampler(0.05, on_sample=lambda ts, values: got.append((ts, values)), nvml=NoDriver(os.getpid()))
    started = time.time()
    sampler.start()
    sampler.start()  # a second start does nothing
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    sampler.stop()
    assert time.monotonic() - t0 < 0.5
    sampler.stop()  # idempotent
    assert len(got) >= 3
    times = [ts for ts, _ in got]
    assert started <= times[0] and times == sorted(times)
    assert got[0][1].keys() >= BASE_KEYS | RATE_KEYS, "the first delivered sample has rates already"
    count = len(got)
    time.sleep(0.15)
    assert len(got) == count, "nothing is delivered after stop()"
    assert not [t for t in threading.enumerate() if t.name == "runstream-system"]


def test_stop_with_a_long_interval_does_not_wait_for_it():
    sampler = SystemSampler(3600, on_sample=_ignore, nvml=NoDriver(os.getpid()))
    sampler.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    sampler.stop()
    assert time.monotonic() - t0 < 0.5


def test_a_stopped_sampler_does_not_start_again():
    sampler = SystemSampler(0.01, on_sample=_ignore, nvml=NoDriver(os.getpid()))
    sampler.stop()
    sampler.start()
    assert sampler._thread is None


def test_a_failing_psutil_call_is_logged_once_and_disables_only_its_group(monkeypatch, caplog):
    def broken() -> None:
        raise OSError("no /proc/meminfo")

    monkeypatch.setattr(psutil, "virtual_memory", broken)
    sampler = SystemSampler(on_sample=_ignore, nvml=NoDriver(os.getpid()))
    with caplog.at_level(logging.WARNING, logger="runstream"):
        readings = [sampler.sample() for _ in range(3)]
    assert [r.message for r in caplog.records] == [
        "runstream: memory metrics disabled after an error: OSError('no /proc/meminfo')"
    ]
    assert "memory.percent" not in readings[-1] and "memory.used_mb" not in readings[-1]
    assert {"cpu.percent", "memory.process_rss_mb", "disk.percent", "network.recv_mb_s"} <= readings[-1].keys()


def _sample_until(sampler: SystemSampler, received: list, count: int, timeout: float = 5.0) -> None:
    """Run the sampler's thread until ``received`` holds ``count`` items (or the timeout), then stop it."""
    sampler.start()
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    sampler.stop()


def test_a_failing_psutil_call_in_the_thread_does_not_stop_sampling(monkeypatch, caplog):
    monkeypatch.setattr(psutil, "disk_usage", lambda path: 1 / 0)
    got: list[dict[str, float]] = []
    sampler = SystemSampler(0.02, on_sample=lambda ts, values: got.append(values), nvml=NoDriver(os.getpid()))
    with caplog.at_level(logging.WARNING, logger="runstream"):
        _sample_until(sampler, got, 3)
    assert len(got) >= 3 and "disk.percent" not in got[-1] and "memory.percent" in got[-1]
    assert len([r for r in caplog.records if "disk metrics disabled" in r.message]) == 1


def test_an_on_sample_that_raises_is_logged_once_and_sampling_goes_on(caplog):
    calls: list[float] = []

    def on_sample(ts: float, values: dict[str, float]) -> None:
        calls.append(ts)
        raise RuntimeError("receiver broke")

    sampler = SystemSampler(0.02, on_sample=on_sample, nvml=NoDriver(os.getpid()))
    with caplog.at_level(logging.WARNING, logger="runstream"):
        _sample_until(sampler, calls, 3)
    assert len(calls) >= 3
    assert len([r for r in caplog.records if "receiver broke" in r.message]) == 1


# -- NVML --------------------------------------------------------------------------------------


def test_no_driver_and_no_pynvml_mean_no_gpu_keys_and_no_warning(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="runstream"):
        values = SystemSampler(on_sample=_ignore, nvml=NoDriver(os.getpid())).sample()
        monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
        without_module = SystemSampler(on_sample=_ignore).sample()
        assert gpu_names() == []
    assert not [k for k in {**values, **without_module} if k.startswith("gpu.")]
    assert "memory.percent" in without_module
    assert not caplog.records


def test_gpu_metrics_from_a_fake_nvml():
    nvml = FakeNvml(os.getpid())
    sampler = SystemSampler(on_sample=_ignore, nvml=nvml)
    sampler.sample()
    values = sampler.sample()
    gpu = {k: v for k, v in values.items() if k.startswith("gpu.")}
    assert gpu == {
        "gpu.0.util_percent": 87.0,
        "gpu.0.memory_percent": 25.0,
        "gpu.0.memory_used_mb": 20 * 1024.0,
        "gpu.0.temp_c": 61.0,
        "gpu.0.power_w": 312.5,
        "gpu.0.process_memory_mb": 512.0,
        "gpu.1.util_percent": 3.0,
        "gpu.1.memory_percent": 25.0,
        "gpu.1.memory_used_mb": 20 * 1024.0,
        "gpu.1.temp_c": 61.0,
    }, "device 1 reports no power, and this process uses no memory on it"
    assert nvml.calls["power", 1] == 1, "an unsupported metric is not asked again"
    assert nvml.calls["power", 0] == 2
    assert nvml.inits == 1 and nvml.shutdowns == 0
    sampler.stop()
    sampler.stop()
    assert nvml.shutdowns == 1
    assert not [k for k in sampler.sample() if k.startswith("gpu.")], "NVML is not opened again after stop()"
    assert nvml.inits == 1


def test_a_transient_nvml_error_skips_just_that_reading():
    nvml = FakeNvml(os.getpid())
    nvml.lost_temperature_once = True
    sampler = SystemSampler(on_sample=_ignore, nvml=nvml)
    first = sampler.sample()
    assert "gpu.0.temp_c" not in first and "gpu.0.util_percent" in first and "gpu.1.temp_c" in first
    assert sampler.sample()["gpu.0.temp_c"] == 61.0
    sampler.stop()


def test_the_thread_opens_and_shuts_down_nvml_once():
    nvml = FakeNvml(os.getpid())
    got: list[dict[str, float]] = []
    sampler = SystemSampler(0.02, on_sample=lambda ts, values: got.append(values), nvml=nvml)
    _sample_until(sampler, got, 3)
    assert len(got) >= 3 and all("gpu.0.power_w" in v for v in got)
    assert (nvml.inits, nvml.shutdowns) == (1, 1)


def test_an_unexpected_error_in_the_gpu_code_disables_only_gpu_metrics(caplog):
    nvml = FakeNvml(os.getpid())
    nvml.nvmlDeviceGetUtilizationRates = lambda handle: None  # `.gpu` of None: AttributeError, not an NVMLError
    sampler = SystemSampler(on_sample=_ignore, nvml=nvml)
    with caplog.at_level(logging.WARNING, logger="runstream"):
        values = [sampler.sample() for _ in range(2)][-1]
    assert not [k for k in values if k.startswith("gpu.")] and "memory.percent" in values
    assert len([r for r in caplog.records if "gpu metrics disabled" in r.message]) == 1
    sampler.stop()
    assert nvml.shutdowns == 1


def test_gpu_names_from_a_fake_nvml():
    nvml = FakeNvml(os.getpid())
    assert gpu_names(nvml) == ["Fake H100", "Fake A10"]
    assert (nvml.inits, nvml.shutdowns) == (1, 1)


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.skipif(not _nvml_works(), reason="needs an NVIDIA GPU and driver (pynvml.nvmlInit() fails here)")
def test_gpu_metrics_on_a_real_gpu():
    sampler = SystemSampler(on_sample=_ignore)
    values = [sampler.sample() for _ in range(2)][-1]
    sampler.stop()
    names = gpu_names()
    assert names and all(names)
    for i in range(len(names)):
        assert 0 <= values[f"gpu.{i}.util_percent"] <= 100
        assert 0 <= values[f"gpu.{i}.memory_percent"] <= 100
        assert values[f"gpu.{i}.memory_used_mb"] >= 0
        assert 0 < values[f"gpu.{i}.temp_c"] < 130
        assert values.get(f"gpu.{i}.power_w", 1.0) > 0
