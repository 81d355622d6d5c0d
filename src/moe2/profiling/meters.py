"""Meters: energy counters (NVML, jtop, none on CPU), process memory, device sync and bandwidth.

Energy comes only from a counter that can be read (DESIGN.md §1); where none is readable the
figure is ``None`` and the reason is recorded, never invented:

- NVIDIA GPUs: NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ since the
  driver loaded), read before and after the measured region (:class:`NVMLEnergyMeter`);
- Jetson: jtop's total board power, sampled in a thread and integrated (:class:`JtopEnergyMeter`);
- CPU: no counter (:class:`NoEnergyMeter`); latency by wall clock, memory by process RSS.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np
import torch

from moe2.utils.deps import available, require


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work (wall clock is meaningless without it)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


class NoEnergyMeter:
    """No readable energy counter: :meth:`stop` returns ``None``."""

    name = "none"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def start(self) -> None:
        """Nothing to read."""

    def stop(self) -> float | None:
        """No energy figure."""
        return None


class NVMLEnergyMeter:
    """Joules from NVML's total-energy counter of one GPU (Volta and later)."""

    name = "nvml"

    def __init__(self, index: int = 0) -> None:
        self.nvml = require("pynvml", "GPU energy measurement")
        self.nvml.nvmlInit()
        self.handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
        self.gpu_name = self.nvml.nvmlDeviceGetName(self.handle)
        # raises NVMLError_NotSupported on GPUs without the counter
        self._mj0 = int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        self.reason = f"NVML total-energy counter of GPU {index} ({self.gpu_name})"

    def start(self) -> None:
        """Read the counter (synchronise first so earlier work is not counted)."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._mj0 = int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def stop(self) -> float | None:
        """Joules since :meth:`start`. The counter updates every ~10-100 ms: measure long regions."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        mj = int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        return (mj - self._mj0) / 1000.0

    def memory_used(self) -> int:
        """Device memory in use (all processes), bytes."""
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)


class JtopEnergyMeter:
    """Joules on a Jetson: jtop's total board power sampled every ``period_s`` and integrated."""

    name = "jtop"

    def __init__(self, period_s: float = 0.05) -> None:
        jtop_mod = require("jtop", "Jetson energy measurement")
        self.jetson = jtop_mod.jtop()
        self.jetson.start()
        self.period_s = period_s
        self.reason = "jtop total board power (power['tot']['power'], mW), integrated over time"
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _power_w(self) -> float:
        return float(self.jetson.power["tot"]["power"]) / 1000.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._samples.append((time.perf_counter(), self._power_w()))
            time.sleep(self.period_s)

    def start(self) -> None:
        """Start sampling."""
        self._samples = [(time.perf_counter(), self._power_w())]
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> float | None:
        """Trapezoid integral of the sampled power, joules."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._samples.append((time.perf_counter(), self._power_w()))
        t = np.array([s[0] for s in self._samples])
        p = np.array([s[1] for s in self._samples])
        return float(np.sum((p[1:] + p[:-1]) / 2 * np.diff(t)))


def energy_meter(device: str) -> Any:
    """The energy meter for ``device`` (``cpu`` / ``cuda[:N]``), or :class:`NoEnergyMeter` saying why."""
    if device.startswith("cuda"):
        if not available("pynvml"):
            return NoEnergyMeter(
                "nvidia-ml-py is not installed (pip install 'moe2[gpu]'): no GPU energy counter"
            )
        idx = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        try:
            return NVMLEnergyMeter(idx)
        except Exception as exc:  # NVMLError_* (no driver, counter not supported)
            return NoEnergyMeter(f"NVML total-energy counter not readable: {exc}")
    if os.path.exists("/etc/nv_tegra_release") and available("jtop"):
        try:
            return JtopEnergyMeter()
        except Exception as exc:  # jtop service not running
            return NoEnergyMeter(f"jtop not readable: {exc}")
    return NoEnergyMeter(
        "CPU: no energy counter is readable here (energy left to the analytic model)"
    )


def rss_bytes() -> int:
    """Resident set size of this process, bytes (psutil when installed, else /proc or getrusage)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        # peak, not current, RSS (kilobytes on Linux): the closest figure without /proc
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def copy_bandwidth_gbs(device: str = "cuda", nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Measured device-memory bandwidth, GB/s: a ``nbytes`` device-to-device copy counts
    ``2 * nbytes`` (read + write), best of ``repeats``."""
    n = nbytes // 2
    a = torch.empty(n, dtype=torch.float16, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        b.copy_(a)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    del a, b
    return 2 * nbytes / best / 1e9


def model_memory_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers."""
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    return int(n + sum(b.numel() * b.element_size() for b in model.buffers()))
