"""The shipped device process for ``benchmarks/agent.py``: ``edge-agent run --serve``.

Starts the CLI entry point with a real config (Mosquitto, a signed trust root, state dir),
deploys a signed bundle (the benchmark's model + drift reference) through the hub's own
``FleetPublisher`` (OTA), waits until the device committed it and serves it, and leaves
MQTT, OTA and the telemetry/drift reporters running - the process whose idle RSS counts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[1]


class DeviceProcess:
    """``edge-agent run --serve`` with model ``model`` committed over OTA."""

    def __init__(self, tmp: Path, model: Path, reference: Path, *, broker_port: int) -> None:
        self.tmp, self.model, self.reference, self.broker_port = tmp, model, reference, broker_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.api_url = ""
        self.log = tmp / "device.log"

    def __enter__(self) -> DeviceProcess:
        from cloud_hub.bundles import BundleSpec, build_signed_bundle, default_store
        from cloud_hub.delivery import FleetPublisher, PublisherConfig
        from cloud_hub.keys import KeyStore
        from shared.broker_endpoint import BrokerEndpoint
        from shared.bundle import artifact_info
        from shared.messages import new_id
        from simulations.harness.agents import agent_config_toml

        keys = KeyStore.init(self.tmp / "keys")
        trust = self.tmp / "trust_root.json"
        trust.write_text(json.dumps(keys.trust_root().to_dict()))
        prefix, device = f"bench-agent-{new_id()[:10]}", "bench-dev"
        config = self.tmp / "agent.toml"
        config.write_text(
            agent_config_toml(
                device_id=device,
                device_class="x86-cpu",
                state_dir=self.tmp / "state",
                trust_root=trust,
                mqtt_url=f"mqtt://127.0.0.1:{self.broker_port}",
                prefix=prefix,
            )
        )
        argv = [sys.executable, "-m", "edge_agent.cli", "run", "--serve", "--config", str(config)]
        argv += ["--api-port", "0", "--report-interval", "1", "--exit-with-parent"]
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.api_url = self._until(self._announced, 60, "did not announce its API")
        model, ref = self.model.read_bytes(), self.reference.read_bytes()
        artifacts = [
            (artifact_info("model.onnx", model, "model", "application/onnx"), model),
            (artifact_info("reference.json", ref, "reference_stats", "application/json"), ref),
        ]
        spec = BundleSpec(model_name="mobilenet96", device_class="x86-cpu", version=1)
        bundle = build_signed_bundle(keys, default_store(keys), spec, artifacts).data
        pub_config = PublisherConfig(
            broker=BrokerEndpoint(port=self.broker_port), prefix=prefix, chunk_size=256 * 1024
        )
        with FleetPublisher(pub_config) as pub:
            if pub.wait_for_devices([device], timeout=60):
                raise SystemExit(f"device never said hello\n{self.logs()}")
            if not pub.deploy(bundle, [device]).wait(timeout=120).all_committed:
                raise SystemExit(f"device did not commit the bundle\n{self.logs()}")
        self._until(self._serving, 60, "does not serve the committed model")
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def _announced(self) -> str:
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{") and "api_url" in line:
                return str(json.loads(line)["api_url"])
        return ""

    def _serving(self) -> bool:
        from edge_agent.errors import AgentError
        from edge_agent.serving.client import LocalApiClient, LocalApiClientConfig

        try:
            with LocalApiClient(LocalApiClientConfig(url=self.api_url, timeout_s=5)) as c:
                return c.health().get("status") == "ok"
        except AgentError:
            return False

    def _until(self, check: object, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None and callable(check)
            if self.proc.poll() is not None:
                raise SystemExit(f"device process exited\n{self.logs()}")
            value = check()
            if value:
                return str(value)
            if time.monotonic() > deadline:
                raise SystemExit(f"device process {what} within {timeout} s\n{self.logs()}")
            time.sleep(0.2)
