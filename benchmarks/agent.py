"""Benchmark of the device-side inference stack against a bare onnxruntime session.

Same run, same model (a MobileNet-v1-sized CNN at 96x96, exported to ONNX here), same thread
count, interleaved rounds:

* bare     - ``onnxruntime.InferenceSession.run`` on one batch-1 input
* inproc   - ``ModelServer.predict`` with validation, softmax, ids, latency stats and the
             observers (drift + sample store) running - what an in-process caller gets
* http     - ``POST /predict`` to a real agent process (``python -m edge_agent.serving``:
             serving + telemetry + drift + sample store) over keep-alive loopback HTTP, the
             tensor raw (``X-Shape``), sent by the product's client (``LocalApiClient``);
             ``http.client``, JSON+base64 and nested JSON lists are measured too, for contrast

Ratios are of MEDIAN latencies, every method timed request by request in rotating order.
Idle RSS is that of the shipped device process, ``edge-agent run --serve`` with MQTT, OTA
(the model arrives as a signed bundle) and reporting up; drift false-alarm rate over >= 500
stationary windows,
windows until an injected shift is flagged, drift cost per sample, and - where onnxruntime
has CUDA - the GPU backend's speedup over CPU. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._agent_device import DeviceProcess  # noqa: E402
from edge_agent.drift import DriftConfig, DriftDetector  # noqa: E402
from edge_agent.runtime import ModelArtifacts, RuntimeConfig, RuntimeProfile  # noqa: E402
from edge_agent.samples import SampleStoreConfig  # noqa: E402
from edge_agent.serving import ObserverConfig  # noqa: E402
from edge_agent.serving.client import LocalApiClient, LocalApiClientConfig  # noqa: E402
from edge_agent.serving.stack import InferenceStack, InferenceStackConfig  # noqa: E402
from shared.data import SensorDriftSpec, generate_sensor_data  # noqa: E402
from shared.device_facts import detect_device_facts  # noqa: E402
from shared.drift_reference import ReferenceStats  # noqa: E402

INPUT_SHAPE = (3, 96, 96)


def build_mobilenet96(width: float = 0.75, num_classes: int = 10) -> Any:
    """MobileNet v1 at width 0.75 for 96x96 inputs (1.8 M parameters, ~0.2 GFLOP).

    Small inputs keep more resolution: the stem has stride 1 (as in CIFAR-style MobileNets),
    the 13 depthwise-separable blocks are the original ones.
    """
    from torch import nn

    def c(n: int) -> int:
        return int(n * width)

    def block(cin: int, cout: int, stride: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU6(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )

    class MobileNet96(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
            cfg += [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
            layers: list[nn.Module] = [
                nn.Conv2d(3, c(32), 3, 1, 1, bias=False),
                nn.BatchNorm2d(c(32)),
                nn.ReLU6(inplace=True),
            ]
            cin = c(32)
            for cout, stride in cfg:
                layers.append(block(cin, c(cout), stride))
                cin = c(cout)
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(cin, num_classes)

        def forward(self, x: Any) -> Any:
            return self.head(self.features(x).mean((2, 3)))

    return MobileNet96().eval()


def export_onnx(path: Path) -> None:
    import torch

    torch.manual_seed(0)
    model = build_mobilenet96()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, *INPUT_SHAPE),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def timed(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000.0)
    return out


def rss_mb(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss / 2**20)


def start_agent(
    model: Path, ref: Path, state: Path, threads: int
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_agent.serving",
            "--model",
            str(model),
            "--reference",
            str(ref),
            "--state-dir",
            str(state),
            "--port",
            "0",
            "--threads",
            str(threads),
            "--providers",
            "cpu",
            "--telemetry-interval",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("agent process did not start")
    return proc, json.loads(line)["url"]


def export_tiny_onnx(path: Path) -> None:
    """A model that only averages its input: isolates the API's own cost per request."""
    import torch

    class ChannelMean(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return x.mean((2, 3))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ChannelMean(),
            (torch.zeros(1, *INPUT_SHAPE),),
            str(path),
            dynamo=False,
            input_names=["input"],
            dynamic_axes={"input": {0: "batch"}},
        )


def bench_transport(tmp: Path, ref: Path, x: np.ndarray, threads: int, n: int) -> float:
    """Added ms per request of the HTTP API alone (trivial model, same payload)."""
    import onnxruntime as ort

    tiny = tmp / "channel-mean.onnx"
    export_tiny_onnx(tiny)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    bare = ort.InferenceSession(str(tiny), opts, providers=["CPUExecutionProvider"])
    proc, url = start_agent(tiny, ref, tmp / "agent-tiny", threads)
    client = LocalApiClient(LocalApiClientConfig(url=url))

    def call() -> None:
        client.predict(x)

    timed(call, 10)
    http_ms, bare_ms = [], []
    for _ in range(n):
        http_ms += timed(call, 1)
        bare_ms += timed(lambda: bare.run(None, {"input": x}), 1)
    client.close()
    proc.terminate()
    proc.wait(10)
    return float(statistics.median(http_ms) - statistics.median(bare_ms))


def bench_gpu(model_path: Path, x: np.ndarray, tmp: Path, cpu_ms: float) -> dict[str, Any]:
    """The agent's GPU backend (TensorRT, else CUDA) through the same selection as serving."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"gpu": "skipped: onnxruntime has no CUDA provider on this machine"}
    from edge_agent.errors import RuntimeBackendError
    from edge_agent.runtime import select_backend

    try:
        loaded = select_backend(
            ModelArtifacts(version=1, onnx=model_path),
            RuntimeProfile(preferred=("onnxruntime:tensorrt", "onnxruntime:cuda")),
            config=RuntimeConfig(engine_cache_dir=tmp / "trt-cache"),
        )
    except RuntimeBackendError as exc:
        return {"gpu": f"skipped: no GPU backend loaded ({exc})"}
    backend = loaded.backend
    timed(lambda: backend.run(x), 20)
    gpu_ms = statistics.median(timed(lambda: backend.run(x), 200))
    return {
        "gpu": f"{loaded.report.backend} {loaded.report.provider} on {loaded.report.device}",
        "gpu_ms": gpu_ms,
        "gpu_speedup": cpu_ms / gpu_ms,
        "gpu_engine_build_s": loaded.report.engine_build_seconds,
        "gpu_warnings": list(loaded.report.warnings),
    }


def bench_drift(quick: bool) -> dict[str, Any]:
    """Stationary false alarms over >= 500 windows; windows until a shift is flagged."""
    window = 500
    n_windows = 520 if quick else 1000
    x_ref, _ = generate_sensor_data(5000, seed=0, sample_seed=1)
    rng = np.random.default_rng(0)
    ref = ReferenceStats.from_samples(x_ref, confidences=rng.beta(8, 2, size=5000))
    det = DriftDetector(ref, DriftConfig(window_size=window))
    x, _ = generate_sensor_data(n_windows * window, seed=0, sample_seed=2)
    conf = np.asarray(rng.beta(8, 2, size=x.shape[0]), dtype=np.float64)
    t = time.perf_counter()
    reports = []
    for s in range(0, x.shape[0], 64):  # request-sized batches
        reports += det.observe(x[s : s + 64], conf[s : s + 64])
    cost_us = (time.perf_counter() - t) / x.shape[0] * 1e6
    false_alarm = sum(r.drifted for r in reports) / len(reports)
    shifted, _ = generate_sensor_data(
        5 * window, seed=0, sample_seed=3, drift=SensorDriftSpec(shift=0.5)
    )
    shifted_conf = rng.beta(8, 2, size=shifted.shape[0])
    # shift starting at a window boundary: which window (1 = the first shifted one) fires
    det = DriftDetector(ref, DriftConfig(window_size=window))
    det.observe(x[: 2 * window], conf[: 2 * window])
    detected = next(
        (i + 1 for i, r in enumerate(det.observe(shifted, shifted_conf)) if r.drifted), None
    )
    # shift starting mid-window: samples from the change until the report that flags it
    det = DriftDetector(ref, DriftConfig(window_size=window))
    offset = 2 * window + window // 2
    det.observe(x[:offset], conf[:offset])
    delay = None
    for i, r in enumerate(det.observe(shifted, shifted_conf)):
        if r.drifted:
            delay = (i + 1) * window - window // 2
            break
    img = np.random.default_rng(1).random((2000, *INPUT_SHAPE), dtype=np.float32)
    img_det = DriftDetector(ReferenceStats.from_samples(img[:1000]), DriftConfig(window_size=500))
    t = time.perf_counter()
    for s in range(1000, 2000):
        img_det.observe(img[s : s + 1], None)
    img_cost_us = (time.perf_counter() - t) / 1000 * 1e6
    return {
        "drift_false_alarm_rate": false_alarm,
        "drift_windows_measured": len(reports),
        "drift_detected_within_windows": detected,
        "drift_unaligned_detection_delay_samples": delay,
        "drift_cost_us_per_sample": cost_us,
        "drift_cost_us_per_image_sample": img_cost_us,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="< 60 s")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--broker-port", type=int, default=1883, help="Mosquitto on 127.0.0.1")
    args = ap.parse_args()
    rounds, per_round = (4, 25) if args.quick else (8, 60)

    import onnxruntime as ort

    tmp = Path(tempfile.mkdtemp(prefix="fedfleet-bench-agent-"))
    model_path = tmp / "mobilenet96.onnx"
    export_onnx(model_path)
    rng = np.random.default_rng(0)
    calib = rng.random((200, *INPUT_SHAPE), dtype=np.float32)
    ref_path = tmp / "reference.json"
    ref_path.write_bytes(ReferenceStats.from_samples(calib).to_json())
    x = calib[:1]

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    bare = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])

    def run_bare() -> None:
        bare.run(None, {"input": x})

    stack = InferenceStack(
        InferenceStackConfig(
            runtime=RuntimeConfig(intra_op_threads=args.threads),
            observers=ObserverConfig(audit_path=tmp / "inproc" / "audit.jsonl"),
            api=None,
            samples=SampleStoreConfig(path=tmp / "inproc" / "samples.db"),
        )
    )
    stack.install(
        ModelArtifacts(version=1, onnx=model_path),
        profile=RuntimeProfile(preferred=("onnxruntime:cpu",)),
        reference=ReferenceStats.from_json(ref_path.read_bytes()),
    )
    stack.start()

    def run_inproc() -> None:
        stack.server.predict(x)

    proc, url = start_agent(model_path, ref_path, tmp / "agent", args.threads)
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    client = LocalApiClient(LocalApiClientConfig(url=url))
    list_body = json.dumps({"inputs": x.tolist()}).encode()

    def post(body: bytes, headers: dict[str, str]) -> None:
        conn.request("POST", "/predict", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise SystemExit(f"agent answered {resp.status}: {data[:200]!r}")

    binary_headers = {
        "Content-Type": "application/octet-stream",
        "X-Shape": ",".join(str(d) for d in x.shape),
        "X-Dtype": "float32",
    }
    json_headers = {"Content-Type": "application/json"}

    def run_http_b64() -> None:  # JSON with base64, encoded per request as a client would
        body = json.dumps(
            {"inputs_b64": base64.b64encode(x.tobytes()).decode(), "shape": list(x.shape)}
        ).encode()
        post(body, json_headers)

    methods = {
        "bare": run_bare,
        "inproc": run_inproc,
        "http": lambda: client.predict(x),  # the raw-tensor path, the product's client
        "http_stdlib_client": lambda: post(x.tobytes(), binary_headers),
        "http_b64": run_http_b64,
        "http_lists": lambda: post(list_body, json_headers),
    }
    for fn in methods.values():  # warm-up (arena growth, caches, connection)
        timed(fn, 5)
    samples: dict[str, list[float]] = {k: [] for k in methods}
    # interleaved request by request, in a fresh random order each round, so that load from
    # other processes, cache effects and the in-process stack's observer thread (which runs
    # after its requests) hit all methods alike: a fixed rotation would always put the same
    # method after ``inproc``
    order = ["bare", "inproc", "http", "http_stdlib_client"]
    shuffler = np.random.default_rng(7)
    for i in range(rounds * per_round):
        shuffler.shuffle(order)
        for name in order:
            samples[name] += timed(methods[name], 1)
        if i % 4 == 0:
            for name in ("http_b64", "http_lists"):
                samples[name] += timed(methods[name], 1)
    median = {k: statistics.median(v) for k, v in samples.items()}
    p25 = {k: float(np.percentile(v, 25)) for k, v in samples.items()}
    # paired: request i of each method ran back to back, under the same momentary load
    paired = {
        k: float(np.median(np.asarray(samples[k]) / np.asarray(samples["bare"])))
        for k in ("inproc", "http")
    }
    time.sleep(2.5)  # idle again (a telemetry tick has passed)
    serving_only_rss = rss_mb(proc.pid)
    client.close()
    conn.close()
    proc.terminate()
    proc.wait(10)
    stack.stop()

    with DeviceProcess(
        tmp / "device", model_path, ref_path, broker_port=args.broker_port
    ) as device:
        assert device.proc is not None
        with LocalApiClient(LocalApiClientConfig(url=device.api_url)) as device_client:
            for _ in range(50):  # it has served: arenas grown, observers fed
                device_client.predict(x)
        time.sleep(3.0)  # idle: reporters ticked, MQTT and OTA up
        idle_rss = rss_mb(device.proc.pid)

    gpu = bench_gpu(model_path, x, tmp, median["bare"])

    transport_ms = bench_transport(tmp, ref_path, x, args.threads, 100 if args.quick else 300)
    drift = bench_drift(args.quick)
    facts = detect_device_facts()
    result = {
        "http_overhead_ratio": median["http"] / median["bare"],
        "inproc_overhead_ratio": median["inproc"] / median["bare"],
        "idle_rss_mb": idle_rss,
        "idle_rss_process": "edge-agent run --serve (MQTT, OTA, reporting up; model via OTA)",
        "drift_false_alarm_rate": drift["drift_false_alarm_rate"],
        "drift_detected_within_windows": drift["drift_detected_within_windows"],
        "latency_statistic": "median",
        "bare_ms": median["bare"],
        "inproc_ms": median["inproc"],
        "http_ms": median["http"],
        "http_added_ms_per_request": median["http"] - median["bare"],
        "inproc_added_ms_per_request": median["inproc"] - median["bare"],
        "http_transport_added_ms": transport_ms,
        "http_stdlib_client_overhead_ratio": median["http_stdlib_client"] / median["bare"],
        "http_json_b64_overhead_ratio": median["http_b64"] / median["bare"],
        "http_json_lists_overhead_ratio": median["http_lists"] / median["bare"],
        "http_overhead_ratio_paired": paired["http"],
        "inproc_overhead_ratio_paired": paired["inproc"],
        "http_overhead_ratio_p25": p25["http"] / p25["bare"],
        "serving_only_idle_rss_mb": serving_only_rss,
        "load_average_1m": os.getloadavg()[0],
        "cpu": {"model": facts.cpu_model, "flags": facts.isa_flags, "cores": os.cpu_count()},
        "drift_cost_us_per_sample": drift["drift_cost_us_per_sample"],
        "drift_cost_us_per_image_sample": drift["drift_cost_us_per_image_sample"],
        "drift_windows_measured": drift["drift_windows_measured"],
        "drift_unaligned_detection_delay_samples": drift["drift_unaligned_detection_delay_samples"],
        "threads": args.threads,
        "requests_per_method": len(samples["bare"]),
        **gpu,
    }
    print(
        f"median: bare {median['bare']:.2f} ms | in-process {median['inproc']:.2f} ms "
        f"(x{result['inproc_overhead_ratio']:.3f}) | HTTP {median['http']:.2f} ms "
        f"(x{result['http_overhead_ratio']:.3f}) | HTTP via http.client "
        f"{median['http_stdlib_client']:.2f} ms | HTTP JSON+base64 {median['http_b64']:.2f} ms"
        f" | HTTP JSON lists {median['http_lists']:.2f} ms"
    )
    print(
        f"idle RSS: edge-agent run --serve {idle_rss:.1f} MB, serving alone {serving_only_rss:.1f}"
    )
    print(
        f"drift: {drift['drift_windows_measured']} windows, false alarms "
        f"{drift['drift_false_alarm_rate']:.4f}, shift flagged in window "
        f"{drift['drift_detected_within_windows']}, {drift['drift_cost_us_per_sample']:.2f} us/sample"
    )
    print(gpu["gpu"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
