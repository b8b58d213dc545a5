"""The hub side of a fleet simulation, in-process: a private Mosquitto, the hub's key store
and signed bundles, and the hub from :func:`cloud_hub.hub.build_hub` — registry, MQTT ingest,
rollout engine, publisher and trust topics, assembled as ``cloud-hub serve`` assembles them.

The simulation only tunes the assembly (:class:`~cloud_hub.hub.RolloutWiring`): a
smaller chunk size (transfers that span many chunks, so that faults hit them mid-way), full
bundles only, and a delivery wrapper that counts what was shipped.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cloud_hub.bundles import BundleSpec, build_signed_bundle, default_store
from cloud_hub.bundles.sample import preprocess_json
from cloud_hub.config import HubConfig
from cloud_hub.delivery.config import PublisherTuning
from cloud_hub.hub import Hub, RolloutWiring, build_hub
from cloud_hub.keys import KeyStore
from cloud_hub.registry import Registry
from cloud_hub.registry.bundle_index import register_bundle_bytes
from cloud_hub.rollout import (
    GateThresholds,
    PublisherDelivery,
    RolloutConfig,
    StageSpec,
    TargetSelector,
)
from cloud_hub.rollout.delivery import RecordedDelivery
from cloud_hub.rollout.engine import EngineConfig, RolloutService
from cloud_hub.rollout.status import RolloutStatus
from shared.broker_endpoint import BrokerEndpoint
from shared.bundle import artifact_info
from shared.data.sensors import NUM_CLASSES, NUM_FEATURES, generate_sensor_data
from shared.drift_reference import ReferenceStats
from simulations.fleet.training import TrainedModel
from simulations.harness.mosquitto import LocalMosquitto

__all__ = ["CountingDelivery", "SimHub", "build_model_artifacts"]

log = logging.getLogger(__name__)

MODEL = "sensor-mlp"
_TERMINAL = ("done", "rolled_back", "aborted", "rollback_failed", "resolved")


def sensor_mlp_onnx(seed: int, weights: Sequence[Any] | None = None) -> bytes:
    """The ``sensor-mlp`` architecture (12 -> 64 -> 64 -> 3, ReLU) as an ONNX graph, built with
    ``onnx.helper``: seeded weights, or ``weights`` in the torch ``state_dict`` order (weight
    ``(out, in)``, bias, per layer) as a federated run returns them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    sizes = [NUM_FEATURES, 64, 64, NUM_CLASSES]
    nodes, inits, last = [], [], "input"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        if weights is not None:
            w = np.asarray(weights[2 * i], np.float32).T
            b = np.asarray(weights[2 * i + 1], np.float32)
            if w.shape != (n_in, n_out) or b.shape != (n_out,):
                raise ValueError(f"layer {i}: weights {w.shape}/{b.shape} are not sensor-mlp's")
        else:
            w = rng.normal(0, (2 / n_in) ** 0.5, size=(n_in, n_out)).astype(np.float32)
            b = np.zeros(n_out, np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        nodes += [
            helper.make_node("MatMul", [last, f"W{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"B{i}"], [f"a{i}"]),
        ]
        last = f"a{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [last], [f"r{i}"]))
            last = f"r{i}"
    nodes.append(helper.make_node("Identity", [last], ["logits"]))
    graph = helper.make_graph(
        nodes,
        MODEL,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def build_model_artifacts(
    *,
    healthy: bool,
    version: int,
    padding_kb: int,
    trained: TrainedModel | None = None,
    problem_seed: int = 0,
) -> list[tuple[Any, bytes]]:
    """The artifacts of one bundle: the ONNX sensor model (federated-trained when ``trained``
    is given; when not ``healthy``, bytes that fail the device health check), its input spec,
    the drift reference statistics of its training data, and opaque padding so the transfer
    spans many chunks."""
    rng = np.random.default_rng(version)
    if not healthy:
        model = rng.bytes(4096)
    else:
        model = sensor_mlp_onnx(version, trained.weights if trained else None)
    if trained is not None:
        x_ref = trained.reference_x
    else:
        x_ref, _ = generate_sensor_data(4000, seed=problem_seed, sample_seed=10_000 + version)
    reference = ReferenceStats.from_samples(x_ref).to_json()
    pre = preprocess_json(MODEL)
    arts = [
        (artifact_info("model.onnx", model, "model", "application/onnx"), model),
        (artifact_info("preprocess.json", pre, "preprocess"), pre),
        (artifact_info("reference_stats.json", reference, "reference_stats"), reference),
    ]
    if padding_kb:
        padding = rng.bytes(padding_kb * 1024)
        arts.append((artifact_info("padding.bin", padding, "other"), padding))
    return arts


class CountingDelivery(RecordedDelivery):
    """The rollout engine's delivery (MQTT fleet publisher), recording what it sent."""

    def __init__(self, inner: PublisherDelivery) -> None:
        super().__init__(forward_to=inner)
        self.inner = inner
        self.bundle_bytes: dict[str, int] = {}

    def shipped(self) -> dict[str, int]:
        """Bytes the hub published: each chunk once on the fan-out topic, plus repairs."""
        fanout = repairs = chunks = repair_chunks = 0
        with self._lock:
            deps = [(call.deployment_id, call.bundle_id) for call in self.deploys]
        publisher = self.inner.publisher
        for dep_id, bundle_id in deps:
            try:
                result = publisher.deployment(dep_id).result()
            except Exception:  # pruned or never registered (deploy failed)
                continue
            size = self.bundle_bytes.get(bundle_id, 0)
            per_chunk = size / max(1, _chunk_count(size, publisher.config.chunk_size))
            chunks += result.chunks_published
            repair_chunks += result.repairs_sent
            fanout += int(result.chunks_published * per_chunk)
            repairs += int(result.repairs_sent * per_chunk)
        return {
            "fanout_bytes": fanout,
            "repair_bytes": repairs,
            "chunks_published": chunks,
            "repair_chunks": repair_chunks,
        }


def _chunk_count(size: int, chunk: int) -> int:
    return max(1, -(-size // chunk))


class SimHub:
    """Broker + hub (registry, ingest, rollout engine) for one simulation run."""

    def __init__(
        self,
        root: Path,
        *,
        prefix: str = "fleetsim",
        chunk_kb: int = 16,
        broker_persistence: bool = True,
    ) -> None:
        self.root = root
        self.prefix = prefix
        self.chunk_size = chunk_kb * 1024
        root.mkdir(parents=True, exist_ok=True)
        # persistence (LocalMosquitto's default): sessions and queued reports survive restarts
        self.broker = LocalMosquitto(
            extra_conf="max_inflight_messages 100\n", persistence=broker_persistence
        )
        self.keys = KeyStore.init(root / "keys")
        self.bundles: dict[tuple[str, int], str] = {}  # (class, version) -> bundle id
        self.server: Hub | None = None
        self.delivery: CountingDelivery | None = None
        self.engine: RolloutService | None = None
        self.broker_restarts: list[float] = []

    @property
    def registry(self) -> Registry:
        assert self.server is not None
        return self.server.registry

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.broker.start()
        config = HubConfig(
            data_dir=self.root / "hub",
            mqtt=BrokerEndpoint(port=self.broker.port),
            topic_prefix=self.prefix,
            api_port=0,
            keys_dir=self.keys.directory,
            instance_id=self.prefix,
            offline_after_s=0,
        )
        # the hub process as `cloud-hub serve` assembles it (ingest, engine, publisher, trust
        # topics), tuned for the simulation: small chunks, short waits, full bundles only
        wiring = RolloutWiring(
            engine=EngineConfig(tick_interval_s=0.5),
            publisher=PublisherTuning(
                chunk_size=self.chunk_size, start_grace_s=2.0, publish_timeout_s=30.0
            ),
            deltas=False,
            wrap_delivery=CountingDelivery,
        )
        self.server = build_hub(config, wiring=wiring).start()
        if self.server.engine is None:
            raise RuntimeError("the simulated hub has no rollout engine (see its log)")
        self.engine = self.server.engine
        assert isinstance(self.engine.delivery, CountingDelivery)
        self.delivery = self.engine.delivery

    def stop(self) -> None:
        if self.server is not None:  # engine, trust publisher, publisher, ingest, registry
            self.server.stop()
        self.broker.__exit__(None, None, None)  # stops it and removes its folder

    def restart_broker(self, down_s: float) -> None:
        """Stop Mosquitto and start it again on the same port (persistent sessions survive)."""
        log.warning("restarting the broker (down %.1f s)", down_s)
        self.broker_restarts.append(time.time())
        self.broker.restart(down_s=down_s)

    # -- bundles and rollouts ----------------------------------------------------------------
    def build_bundle(
        self,
        device_class: str,
        version: int,
        *,
        healthy: bool,
        padding_kb: int,
        trained: TrainedModel | None = None,
    ) -> str:
        """Sign a bundle for ``device_class`` and register it with the hub."""
        built = build_signed_bundle(
            self.keys,
            default_store(self.keys),
            BundleSpec(
                model_name=MODEL,
                device_class=device_class,
                version=version,
                lineage={"source": "fleet-simulation", **(trained.lineage if trained else {})},
                metrics={"healthy": healthy, **(trained.metrics if trained else {})},
            ),
            build_model_artifacts(
                healthy=healthy, version=version, padding_kb=padding_kb, trained=trained
            ),
        )
        store = default_store(self.keys)
        with self.registry.session() as s:
            register_bundle_bytes(
                s,
                built.data,
                trust=store.trust(),
                path=str(store.path_of(built.bundle_id)),
                now=time.time(),
            )
        self.bundles[(device_class, version)] = built.bundle_id
        if self.delivery is not None:
            self.delivery.bundle_bytes[built.bundle_id] = len(built.data)
        return built.bundle_id

    def start_rollout(
        self,
        device_class: str,
        version: int,
        *,
        stages: Sequence[Mapping[str, Any]],
        gate_window_s: float,
        seed: int,
    ) -> str:
        assert self.engine is not None
        config = RolloutConfig(
            bundle_id=self.bundles[(device_class, version)],
            target=TargetSelector(device_class=device_class),
            stages=tuple(StageSpec(count=s.get("count"), percent=s.get("percent")) for s in stages),
            # drift in one site is the data's doing, not the new model's; latency on two
            # shared cores is too noisy to compare: the gates judge installs and errors
            gates=GateThresholds(max_drift_score=None, max_p95_ratio=None),
            gate_window_s=gate_window_s,
            offline_timeout_s=60.0,
            seed=seed,
            name=f"sim {device_class} v{version}",
        )
        status = self.engine.create(config, created_by="fleet-sim")
        self.engine.start(status.rollout_id)
        return status.rollout_id

    def rollout_status(self, rollout_id: str) -> RolloutStatus:
        assert self.engine is not None
        return self.engine.status(rollout_id)

    def wait_rollouts(self, rollout_ids: Sequence[str], timeout: float) -> dict[str, RolloutStatus]:
        """Block until every rollout is terminal (or ``timeout``); their last statuses."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = {rid: self.rollout_status(rid) for rid in rollout_ids}
            if all(s.state in _TERMINAL for s in statuses.values()):
                return statuses
            if time.monotonic() > deadline:
                return statuses
            time.sleep(0.5)
