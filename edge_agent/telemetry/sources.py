"""Metric sources: jetson-stats (``jtop``), NVML (``nvidia-ml-py``) and psutil.

Each source opens in ``open()`` (raising whatever its library raises off its hardware) and
returns flat ``{name: float}`` gauges from ``read()``. The collector decides the order and
reports failures; sources know nothing of each other.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

__all__ = ["JtopSource", "MetricSource", "NvmlSource", "PsutilSource"]


class MetricSource(Protocol):
    name: str
    #: True if this source measures the GPU/board (so later GPU sources are not needed)
    provides_gpu: bool

    def open(self) -> None: ...

    def read(self) -> dict[str, float]: ...

    def close(self) -> None: ...


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _jtop_client() -> Any:
    from jtop import jtop  # jetson-stats: imports anywhere, raises off-Jetson

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # jtop's use of distro
        return jtop()


class JtopSource:
    """Jetson boards via the jtop service (CPU, GPU, RAM, temperatures, power rails)."""

    name = "jtop"
    provides_gpu = True

    def __init__(self, open_handle: Callable[[], Any] | None = None) -> None:
        # ``open_handle`` returns an object with jtop's interface (start/stats/close);
        # the default is jetson-stats' own ``jtop`` client.
        self._open_handle = open_handle or _jtop_client
        self._jtop: Any = None

    def open(self) -> None:
        handle = self._open_handle()
        handle.start()  # raises JtopException when the jtop service is not running
        self._jtop = handle

    def read(self) -> dict[str, float]:
        stats: dict[str, Any] = dict(self._jtop.stats)
        out: dict[str, float] = {}
        cpus = [v for k, v in stats.items() if k.startswith("CPU") and _num(v) is not None]
        if cpus:
            out["cpu_percent"] = sum(cpus) / len(cpus)
        gpu = _num(stats.get("GPU"))
        if gpu is not None:
            out["gpu_util_percent"] = gpu
        ram = _num(stats.get("RAM"))
        if ram is not None:
            out["memory_percent"] = ram * 100.0 if ram <= 1.0 else ram
        temps = [v for k, v in stats.items() if k.startswith("Temp") and _num(v) is not None]
        if temps:
            out["temperature_c"] = max(temps)
        power = _num(stats.get("Power TOT"))
        if power is not None:
            out["power_w"] = power / 1000.0  # jtop reports mW
        return out

    def close(self) -> None:
        if self._jtop is not None:
            self._jtop.close()
            self._jtop = None


class NvmlSource:
    """Discrete NVIDIA GPUs via NVML: utilisation, memory, temperature, power."""

    name = "nvml"
    provides_gpu = True

    def __init__(self, index: int = 0) -> None:
        self._index = index
        self._nvml: Any = None
        self._handle: Any = None

    def open(self) -> None:
        import pynvml

        pynvml.nvmlInit()  # NVMLError_LibraryNotFound / DriverNotLoaded without a driver
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(self._index)

    def read(self) -> dict[str, float]:
        nv, h = self._nvml, self._handle
        util = nv.nvmlDeviceGetUtilizationRates(h)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        out = {
            "gpu_util_percent": float(util.gpu),
            "gpu_memory_used_mb": mem.used / 2**20,
            "gpu_memory_total_mb": mem.total / 2**20,
            "gpu_temperature_c": float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
        }
        with contextlib.suppress(nv.NVMLError):  # not supported on every board
            out["power_w"] = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
        return out

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml = None


class PsutilSource:
    """Host CPU, memory, disk, temperature and this process's memory."""

    name = "psutil"
    provides_gpu = False

    def __init__(self, disk_path: Path = Path("/")) -> None:
        self._disk_path = disk_path
        self._psutil: Any = None
        self._proc: Any = None

    def open(self) -> None:
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process()
        psutil.cpu_percent(interval=None)  # primes the non-blocking counter

    def read(self) -> dict[str, float]:
        ps = self._psutil
        vm = ps.virtual_memory()
        out = {
            "cpu_percent": float(ps.cpu_percent(interval=None)),
            "memory_percent": float(vm.percent),
            "memory_available_mb": vm.available / 2**20,
            "disk_percent": float(ps.disk_usage(str(self._disk_path)).percent),
            "agent_rss_mb": self._proc.memory_info().rss / 2**20,
            "uptime_s": time.time() - ps.boot_time(),
        }
        temps = getattr(ps, "sensors_temperatures", None)
        readings = temps() if temps is not None else {}
        values = [t.current for entries in readings.values() for t in entries if t.current]
        if values:
            out["temperature_c"] = float(max(values))
        return out

    def close(self) -> None:
        self._psutil = None
