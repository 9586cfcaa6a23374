"""System metrics: CPU, memory, disk and network (psutil) and NVIDIA GPUs (NVML), sampled on a daemon thread.

Keys are flat and dot-separated, values floats; "mb" means MiB (2**20 bytes), as
in nvidia-smi. CPU percentages follow psutil: ``cpu.percent`` is the whole
system (0-100), ``cpu.process_percent`` this process and its live children
(100 = one core busy, so it can exceed 100). Percentages of CPU and the disk and
network rates cover the time since the previous reading, so the first reading
leaves them out.

Each group of metrics (cpu, process, memory, disk, network, gpu) is read on its
own: one that raises is logged once and left out from then on, the others go
on. No NVIDIA driver is no error, just no ``gpu.*`` keys.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

log = logging.getLogger("runstream")

MB = 1024 * 1024

#: How long ``stop()`` waits for a reading in progress (a hung driver call must not hang the caller).
STOP_TIMEOUT = 5.0


class Nvml:
    """One NVML session: initialised once, read many times, shut down once.

    ``nvml`` is the ``pynvml`` module or anything with the same functions (tests
    pass a fake).
    """

    def __init__(self, nvml: Any) -> None:
        nvml.nvmlInit()
        self._nvml = nvml
        self._closed = False
        try:
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        except Exception:
            self.close()
            raise
        # Errors that will not go away for a device and metric: that pair is not asked again.
        self._permanent = {nvml.NVML_ERROR_NOT_SUPPORTED, nvml.NVML_ERROR_NO_PERMISSION}
        self._unsupported: set[tuple[int, str]] = set()

    def names(self) -> list[str]:
        names = []
        for handle in self._handles:
            name = self._nvml.nvmlDeviceGetName(handle)
            names.append(name.decode(errors="replace") if isinstance(name, bytes) else str(name))
        return names

    def read(self, pid: int) -> dict[str, float]:
        """``gpu.{i}.*`` for every device; a metric a device does not report is skipped for that device."""
        values: dict[str, float] = {}
        for index, handle in enumerate(self._handles):
            for read in (self._utilization, self._memory, self._temperature, self._power, self._process_memory):
                if (index, read.__name__) in self._unsupported:
                    continue
                try:
                    for key, value in read(handle, pid).items():
                        values[f"gpu.{index}.{key}"] = value
                except self._nvml.NVMLError as exc:
                    # Other NVML errors (a lost GPU, a timeout) skip just this reading.
                    if getattr(exc, "value", None) in self._permanent:
                        self._unsupported.add((index, read.__name__))
        return values

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._nvml.nvmlShutdown()
        except Exception as exc:  # noqa: BLE001 - nothing to do about a failed shutdown
            log.debug("runstream: nvmlShutdown failed: %s", exc)

    def _utilization(self, handle: Any, pid: int) -> dict[str, float]:
        return {"util_percent": float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)}

    def _memory(self, handle: Any, pid: int) -> dict[str, float]:
        info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
        values = {"memory_used_mb": info.used / MB}
        if info.total:
            values["memory_percent"] = 100.0 * info.used / info.total
        return values

    def _temperature(self, handle: Any, pid: int) -> dict[str, float]:
        return {"temp_c": float(self._nvml.nvmlDeviceGetTemperature(handle, self._nvml.NVML_TEMPERATURE_GPU))}

    def _power(self, handle: Any, pid: int) -> dict[str, float]:
        return {"power_w": self._nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0}  # NVML reports milliwatts

    def _process_memory(self, handle: Any, pid: int) -> dict[str, float]:
        # usedGpuMemory is None where the driver cannot tell (Windows WDDM); inside a
        # container NVML reports host pids, so this process is simply not found.
        used = [
            p.usedGpuMemory
            for p in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            if p.pid == pid and p.usedGpuMemory is not None
        ]
        return {"process_memory_mb": sum(used) / MB} if used else {}


def open_nvml(nvml: Any = None) -> Nvml | None:
    """An NVML session, or None where there is no NVIDIA driver or no ``pynvml`` (not an error)."""
    try:
        if nvml is None:
            import pynvml

            nvml = pynvml
        return Nvml(nvml)
    except Exception as exc:  # noqa: BLE001 - ImportError, NVMLError (no driver, no library) alike
        log.debug("runstream: no GPU metrics: %s", exc)
        return None


def gpu_names(nvml: Any = None) -> list[str]:
    """The names of the NVIDIA GPUs NVML sees; [] where there are none or NVML fails."""
    session = open_nvml(nvml)
    if session is None:
        return []
    try:
        return session.names()
    except Exception as exc:  # noqa: BLE001
        log.debug("runstream: GPU names unavailable: %s", exc)
        return []
    finally:
        session.close()


class SystemSampler:
    """Reads system metrics every ``interval`` s on a daemon thread and hands them to ``on_sample(unix_time, values)``.

    ``pid`` is the process whose CPU, memory and GPU memory are reported (default:
    this one); ``nvml`` replaces the ``pynvml`` module (tests pass a fake).
    """

    def __init__(
        self,
        interval: float = 10.0,
        *,
        on_sample: Callable[[float, dict[str, float]], None],
        pid: int | None = None,
        nvml: Any = None,
    ) -> None:
        self.interval = interval
        self._on_sample = on_sample
        self._pid = os.getpid() if pid is None else pid
        self._nvml_module = nvml
        self._disk_path = _cwd()
        self._process: psutil.Process | None = None
        self._children: dict[psutil.Process, psutil.Process] = {}
        self._primed: set[str] = set()
        self._counters: dict[str, tuple[float, dict[str, int]]] = {}
        self._gpu: Nvml | None = None
        self._gpu_tried = False
        self._failed: set[str] = set()
        self._delivery_failed = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._readers: dict[str, Callable[[float], dict[str, float]]] = {
            "cpu": self._cpu,
            "process": self._own_process,
            "memory": self._memory,
            "disk": self._disk,
            "network": self._network,
            "gpu": self._gpus,
        }

    def start(self) -> None:
        """Start sampling (the first sample comes after one interval); a second call does nothing."""
        if self._thread is not None or self._stopping.is_set():
            return
        self._thread = threading.Thread(target=self._run, name="runstream-system", daemon=True)
        try:
            self._thread.start()
        except RuntimeError as exc:  # no more threads: the run goes on without system metrics
            log.warning("runstream: system metrics disabled: %s", exc)

    def stop(self) -> None:
        """Stop sampling and shut NVML down; returns promptly, and may be called more than once."""
        self._stopping.set()
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._close_gpu()
        elif thread is not threading.current_thread():
            # The thread shuts NVML down itself when its reading returns.
            thread.join(timeout=STOP_TIMEOUT)

    def sample(self) -> dict[str, float]:
        """One reading of every group that has not failed; never raises."""
        now = time.monotonic()
        values: dict[str, float] = {}
        for name, read in self._readers.items():
            if name in self._failed:
                continue
            try:
                values.update(read(now))
            except Exception as exc:  # noqa: BLE001 - one broken group must not cost the others
                self._failed.add(name)
                log.warning("runstream: %s metrics disabled after an error: %r", name, exc)
        return values

    def _run(self) -> None:
        try:
            self.sample()  # the baseline for percentages and rates
            while not self._stopping.wait(self.interval):
                ts = time.time()
                values = self.sample()
                if values:
                    self._deliver(ts, values)
        finally:
            self._close_gpu()

    def _deliver(self, ts: float, values: dict[str, float]) -> None:
        try:
            self._on_sample(ts, values)
        except Exception as exc:  # noqa: BLE001 - the receiver's error; keep sampling
            if not self._delivery_failed:
                self._delivery_failed = True
                log.warning("runstream: delivering system metrics failed: %r", exc)

    def _close_gpu(self) -> None:
        self._gpu_tried = True  # a reading after stop() must not open NVML again
        gpu, self._gpu = self._gpu, None
        if gpu is not None:
            gpu.close()

    # -- the groups: each returns its keys, or raises to be disabled ---------------------------
    def _first(self, group: str) -> bool:
        """True on a group's first reading (psutil's CPU percentages cover the time since the previous call)."""
        if group in self._primed:
            return False
        self._primed.add(group)
        return True

    def _rates(self, group: str, now: float, counters: dict[str, int]) -> dict[str, float]:
        """MiB/s of cumulative byte counters since the previous reading; nothing on the first."""
        last = self._counters.get(group)
        self._counters[group] = (now, counters)
        if last is None or now <= last[0]:
            return {}
        elapsed = now - last[0]
        # A counter that went backwards (an interface went away) counts as no traffic.
        return {key: max(0, value - last[1][key]) / MB / elapsed for key, value in counters.items()}

    def _cpu(self, now: float) -> dict[str, float]:
        percent = psutil.cpu_percent(interval=None)
        return {} if self._first("cpu") else {"cpu.percent": float(percent)}

    def _own_process(self, now: float) -> dict[str, float]:
        if self._process is None:
            self._process = psutil.Process(self._pid)
        process = self._process
        with process.oneshot():
            rss = process.memory_info().rss
            cpu = process.cpu_percent(interval=None)
        cpu += self._children_cpu(process)
        values = {"memory.process_rss_mb": rss / MB}
        if not self._first("process"):
            values["cpu.process_percent"] = cpu
        return values

    def _children_cpu(self, process: psutil.Process) -> float:
        """CPU of the live children (data loader workers, say); psutil keeps each one's last reading on its object."""
        total = 0.0
        alive: dict[psutil.Process, psutil.Process] = {}
        for child in process.children(recursive=True):
            child = self._children.get(child, child)  # equal when pid and start time match
            try:
                total += child.cpu_percent(interval=None)
            except psutil.Error:  # exited meanwhile
                continue
            alive[child] = child
        self._children = alive
        return total

    def _memory(self, now: float) -> dict[str, float]:
        memory = psutil.virtual_memory()
        return {"memory.percent": float(memory.percent), "memory.used_mb": memory.used / MB}

    def _disk(self, now: float) -> dict[str, float]:
        values = {"disk.percent": float(psutil.disk_usage(self._disk_path).percent)}
        io = psutil.disk_io_counters()
        if io is not None:  # None where the system shows no disks (some containers)
            values.update(
                self._rates("disk", now, {"disk.read_mb_s": io.read_bytes, "disk.write_mb_s": io.write_bytes})
            )
        return values

    def _network(self, now: float) -> dict[str, float]:
        io = psutil.net_io_counters()
        if io is None:
            return {}
        return self._rates("network", now, {"network.sent_mb_s": io.bytes_sent, "network.recv_mb_s": io.bytes_recv})

    def _gpus(self, now: float) -> dict[str, float]:
        if not self._gpu_tried:
            self._gpu_tried = True
            self._gpu = open_nvml(self._nvml_module)
        gpu = self._gpu
        return gpu.read(self._pid) if gpu is not None else {}


def _cwd() -> str:
    """The directory whose file system ``disk.percent`` reports (the root if the cwd is gone)."""
    try:
        return os.getcwd()
    except OSError:
        return os.path.abspath(os.sep)
