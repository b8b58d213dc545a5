"""Train a cohort on Flower's Deployment Engine: the production path of the loop.

The hub starts a SuperLink (:class:`cloud_hub.fl.superlink.SuperLinkProcess`), sends every
cohort device a ``TrainCommand`` on its ``cmd`` topic (the device starts a SuperNode on its
own sample store: :mod:`edge_agent.fl.train_command`), submits fedfleet's Flower App with
the run's settings, waits for the ServerApp's ``summary.json`` and sends the devices a
``stop``. The global model lands in the hub's model store under the run id, exactly where
``run_federated`` puts it. Select it with ``LoopConfig.training_engine = "deployment"``.

Costs (measured, see :mod:`cloud_hub.loop.cohort`): the Deployment Engine polls, so a run
takes tens of seconds to minutes on loopback; the ServerApp (``cloud_hub.fl.deployment``)
starts from fresh weights, not the champion's.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cloud_hub.config import MqttEndpoint
from cloud_hub.errors import TrainingError
from shared.messages import TrainCommand
from shared.topics import TopicScheme

__all__ = ["DeploymentTraining"]

log = logging.getLogger(__name__)


def _toml(config: Any) -> str:
    """``[training]`` for ``FederatedRunConfig.from_mapping`` (flat keys + secagg table)."""
    lines = ["[training]"]
    for key in (
        "model_name",
        "num_clients",
        "num_rounds",
        "min_fit_clients",
        "local_epochs",
        "batch_size",
        "learning_rate",
        "seed",
    ):
        lines.append(f"{key} = {json.dumps(getattr(config, key))}")
    lines.append("[training.secagg]")
    lines.append(f"enabled = {json.dumps(config.secagg.enabled)}")
    return "\n".join(lines) + "\n"


class DeploymentTraining:
    """Where the hub's broker and SuperLink are; one instance serves many runs, one at a
    time. :meth:`abort` (from another thread) ends a run in progress: the SuperLink stops
    and :meth:`train` raises ``TrainingError``."""

    def __init__(
        self,
        *,
        mqtt: MqttEndpoint,
        topics: TopicScheme,
        workdir: Path,
        superlink_host: str = "127.0.0.1",
        insecure: bool = True,  # loopback demo; production gives the SuperLink TLS files
        timeout_s: float = 600.0,
    ) -> None:
        if not 1 <= timeout_s <= 86_400:
            raise TrainingError("timeout_s must be in [1, 86400]")
        self.mqtt = mqtt
        self.topics = topics
        self.workdir = Path(workdir)
        self.superlink_host = superlink_host
        self.insecure = insecure
        self.timeout_s = timeout_s
        self._abort = threading.Event()

    def abort(self) -> None:
        self._abort.set()

    def _wait(self, results: Path) -> dict[str, Any]:
        from cloud_hub.fl.superlink import wait_for_summary

        deadline = time.monotonic() + self.timeout_s
        while not (results / "summary.json").exists():
            if self._abort.wait(0.5):
                raise TrainingError("deployment run aborted")
            if time.monotonic() > deadline:
                raise TrainingError(f"no result in {results} after {self.timeout_s:.0f} s")
        return wait_for_summary(results, timeout_s=5.0)  # parses it; raises if it failed

    def _publish(self, device_ids: Sequence[str], command_for: Any) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"hub-train-{uuid.uuid4().hex[:10]}",
            protocol=mqtt.MQTTv5,
        )
        if self.mqtt.username:
            client.username_pw_set(self.mqtt.username, self.mqtt.password)
        if self.mqtt.tls:
            client.tls_set()
        try:
            client.connect(self.mqtt.host, self.mqtt.port)
            client.loop_start()
            for device_id in device_ids:
                info = client.publish(
                    self.topics.device(device_id, "cmd"), command_for(device_id).encode(), qos=1
                )
                info.wait_for_publish(10)
        except (OSError, RuntimeError, ValueError) as exc:
            raise TrainingError(f"cannot send train commands: {exc}") from exc
        finally:
            client.loop_stop()
            client.disconnect()

    def train(
        self,
        run_id: str,
        device_ids: Sequence[str],
        fl_config: Any,
        validation: tuple[NDArray[np.float32], NDArray[np.int64]],
        model_store_root: Path,
    ) -> dict[str, Any]:
        """Run ``fl_config`` with the devices as SuperNodes; returns the run's summary."""
        from cloud_hub.delivery.local_broker import free_port
        from cloud_hub.fl.superlink import SuperLinkConfig, SuperLinkProcess

        if self._abort.is_set():
            raise TrainingError("deployment training was aborted")

        work = Path(self.workdir) / run_id
        work.mkdir(parents=True, exist_ok=True)
        (work / "train.toml").write_text(_toml(fl_config))
        np.savez(work / "validation.npz", x=validation[0], y=validation[1])
        port = free_port()
        address = f"{self.superlink_host}:{port}"
        link = SuperLinkProcess(
            SuperLinkConfig(
                database=work / "superlink.db",
                host=self.superlink_host,
                port=port,
                insecure=self.insecure,
            ),
            workdir=work / "superlink",
        )
        link.start()
        try:
            self._publish(
                device_ids,
                lambda d: TrainCommand(
                    command_id=uuid.uuid4().hex,
                    run_id=run_id,
                    superlink=address,
                    model_name=fl_config.model_name,
                    config={"insecure": self.insecure, "duration_s": self.timeout_s},
                ),
            )
            link.submit_run(
                {
                    "config-path": str(work / "train.toml"),
                    "validation-path": str(work / "validation.npz"),
                    "results-dir": str(work / "results"),
                    "model-store": str(model_store_root),
                    "run-name": run_id,
                    "model-name": fl_config.model_name,
                    "secure-aggregation": fl_config.secagg.enabled,
                }
            )
            summary = self._wait(work / "results")
            log.info("deployment run %s: %s", run_id, summary.get("final_accuracy"))
            return summary
        finally:
            try:
                self._publish(
                    device_ids,
                    lambda d: TrainCommand(
                        command_id=uuid.uuid4().hex,
                        run_id=run_id,
                        superlink=address,
                        model_name=fl_config.model_name,
                        config={"stop": True},
                    ),
                )
            except TrainingError as exc:
                log.warning("stop commands not sent (SuperNodes stop at their deadline): %s", exc)
            link.stop()
