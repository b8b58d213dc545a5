"""Telemetry: jtop -> NVML -> psutil fallback off-Jetson, reported; counters and warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.errors import AgentConfigError
from edge_agent.runtime import RuntimeProfile, select_backend
from edge_agent.runtime.capabilities import gpu_name_from_nvml
from edge_agent.serving import ModelServer
from edge_agent.telemetry import (
    JtopSource,
    NvmlSource,
    PsutilSource,
    TelemetryCollector,
    TelemetryConfig,
)
from shared.messages import Telemetry, decode_message, encode_message

ON_JETSON = Path("/etc/nv_tegra_release").exists()
HAS_NVML = gpu_name_from_nvml()[0] is not None


@pytest.mark.skipif(
    ON_JETSON or HAS_NVML, reason="hardware present: this machine has a Jetson or NVML"
)
def test_off_jetson_real_jtop_and_nvml_fail_and_psutil_reports() -> None:
    collector = TelemetryCollector()  # the real sources, in the default order
    assert collector.active_sources == ("psutil",)
    errors = collector.source_errors
    assert errors[0].startswith("jtop: JtopException")
    assert errors[1].startswith("nvml: NVMLError")
    snap = collector.collect()
    assert snap.sources == ("psutil",)
    for key in ("cpu_percent", "memory_percent", "disk_percent", "agent_rss_mb"):
        assert key in snap.metrics
    assert "gpu_util_percent" not in snap.metrics
    msg = snap.to_message(device_id="dev-1", seq=5)
    assert msg.extra["source_errors"] == list(errors)
    collector.close()


class FlakySource:
    """A source that opens but fails on read (a sensor going away at run time)."""

    name, provides_gpu = "flaky", True

    def open(self) -> None:
        pass

    def read(self) -> dict[str, float]:
        raise OSError("i2c bus timeout")

    def close(self) -> None:
        pass


def test_a_failing_read_is_reported_and_other_sources_still_count() -> None:
    collector = TelemetryCollector(sources=[FlakySource(), PsutilSource()])
    snap = collector.collect()
    assert snap.sources == ("psutil",)
    assert snap.source_errors == ("flaky: OSError: i2c bus timeout",)
    assert snap.metrics["memory_percent"] > 0


def test_gpu_sources_after_a_working_one_are_not_opened() -> None:
    class GoodGpu(FlakySource):
        name = "good-gpu"

        def read(self) -> dict[str, float]:
            return {"gpu_util_percent": 50.0, "cpu_percent": 1.0}

    collector = TelemetryCollector(sources=[GoodGpu(), NvmlSource(), PsutilSource()])
    assert collector.active_sources == ("good-gpu", "psutil")
    snap = collector.collect()
    assert snap.metrics["gpu_util_percent"] == 50.0
    assert snap.metrics["cpu_percent"] == 1.0  # the earlier, more specific source wins


def test_inference_counters_and_runtime_warning_travel_in_the_message(sensor_model) -> None:
    server = ModelServer()
    loaded = select_backend(
        sensor_model.artifacts(version=9),
        RuntimeProfile(preferred=("onnxruntime:cuda", "onnxruntime:cpu")),
    )
    server.swap(loaded)
    for _ in range(5):
        server.predict(sensor_model.batch(2))
    collector = TelemetryCollector(sources=[PsutilSource()])
    snap = collector.collect(server=server.stats(), runtime=server.report)
    assert snap.metrics["inference_count"] == 10 and snap.metrics["request_count"] == 5
    assert snap.metrics["error_count"] == 0
    assert 0 < snap.metrics["p50_ms"] <= snap.metrics["p95_ms"]
    assert snap.provider == "CPUExecutionProvider" and snap.model_version == 9
    if not loaded.report.is_gpu:  # a CPU-only device: the GPU fallback must be visible
        assert snap.warnings and "GPU fallback" in snap.warnings[0]
        assert snap.metrics["runtime_gpu"] == 0.0
    decoded = decode_message(encode_message(snap.to_message(device_id="dev-9", seq=1)))
    assert isinstance(decoded, Telemetry) and decoded.warnings == list(snap.warnings)


def test_config_refuses_unknown_sources() -> None:
    with pytest.raises(AgentConfigError):
        TelemetryConfig(sources=("jtop", "snmp"))
    assert JtopSource.name == "jtop"


class JetsonBoard:
    """jetson-stats' ``jtop`` client interface (start / stats / close) with Orin-like readings.

    jtop needs the jtop service of a real Jetson; this object answers exactly what the
    client answers there, so the source's mapping runs in the default suite.
    """

    def __init__(self) -> None:
        self.started = self.closed = False

    def start(self) -> None:
        self.started = True

    @property
    def stats(self) -> dict[str, object]:
        assert self.started, "read before start()"
        return {
            "time": "2026-12-04 12:00:00",
            "uptime": "1 day",
            "CPU1": 20,
            "CPU2": 40,
            "CPU3": "OFF",
            "CPU4": 60,
            "RAM": 0.25,
            "SWAP": 0.0,
            "GPU": 73.0,
            "Fan pwmfan0": 30.0,
            "Temp CPU": 48.5,
            "Temp GPU": 51.25,
            "Temp tj": 52.0,
            "Power TOT": 9350,
            "nvp model": "MAXN",
        }

    def close(self) -> None:
        self.closed = True


def test_jtop_source_maps_the_jtop_interface_and_wins_over_nvml() -> None:
    board = JetsonBoard()
    collector = TelemetryCollector(
        sources=[JtopSource(open_handle=lambda: board), NvmlSource(), PsutilSource()]
    )
    # a working jtop is the board's GPU source: NVML is not even opened
    assert collector.active_sources == ("jtop", "psutil")
    snap = collector.collect()
    assert snap.metrics["cpu_percent"] == pytest.approx(40.0)  # mean of online cores only
    assert snap.metrics["gpu_util_percent"] == 73.0
    assert snap.metrics["memory_percent"] == pytest.approx(25.0)  # jtop gives a fraction
    assert snap.metrics["temperature_c"] == 52.0  # the hottest sensor
    assert snap.metrics["power_w"] == pytest.approx(9.35)  # jtop reports mW
    assert snap.sources[0] == "jtop" and snap.source_errors == ()
    collector.close()
    assert board.closed


def test_jtop_service_down_is_reported_and_the_next_source_used() -> None:
    from jtop import JtopException

    class ServiceDown(JetsonBoard):
        def start(self) -> None:
            raise JtopException("The jtop.service is not active.\nPlease run: ...")

    collector = TelemetryCollector(sources=[JtopSource(open_handle=ServiceDown), PsutilSource()])
    assert collector.active_sources == ("psutil",)
    assert collector.source_errors == (
        "jtop: JtopException: The jtop.service is not active. Please run: ...",
    )
