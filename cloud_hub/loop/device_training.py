"""Train a cohort on Flower's Deployment Engine: the production path of the loop.

The hub starts a SuperLink (:class:`cloud_hub.fl.superlink.SuperLinkProcess`), sends every
cohort device a ``TrainCommand`` on its ``cmd`` topic (the device starts a SuperNode on its
own sample store: :mod:`edge_agent.fl.train_command`), submits fedfleet's Flower App with
the run's settings, waits for the ServerApp's ``summary.json`` and sends the devices a
``stop``. The global model lands in the hub's model store under the run id, exactly where
``run_federated`` puts it. This is the loop's default (``LoopConfig.training_engine =
"deployment"``): the hub never reads a sample store, each device checks its own data.

R4: every command carries a training order signed by the hub's online signing key (with the
root-signed keyring): SuperLink address, run id, the sha256 of the FAB submitted, SecAgg+
on or off, the device, an expiry. By default the SuperLink speaks TLS with a server
certificate issued by the hub CA (``ca_dir``), the CA devices pinned at enrollment;
``insecure=True`` (plain text, which devices refuse unless allowed locally) must be asked for.

Costs: a device starts its SuperNode when the order arrives (process start-up, a few
seconds) while the hub starts the SuperLink (its ServerApp executor warms up meanwhile);
the run is submitted through the SuperLink's Control API from this process, its ServerApp
forked from the warm executor; then every SecAgg+ stage is a SuperNode poll and a forked
ClientApp task (``benchmarks/deploy.py`` measures a round against the in-process grid). The ServerApp
(``cloud_hub.fl.superlink_app``) starts from ``initial_state`` when one is given (the
pipeline passes the champion's weights: one round after a drift can be enough), else from
fresh weights.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cloud_hub.broker_client import (
    ConnectionHooks,
    HubRole,
    connect_client,
    create_client,
    one_shot_client_id,
)
from cloud_hub.config import MqttEndpoint
from cloud_hub.errors import DeliveryError, HubConfigError, TrainingError
from cloud_hub.keys import KeyStore
from shared import toml_text
from shared.files import atomic_write
from shared.fl.order import MAX_ORDER_VALIDITY, TrainingOrder, sign_training_order
from shared.messages import TrainCommand, new_id
from shared.signing import format_time
from shared.topics import TopicScheme

__all__ = ["DeploymentTraining"]

log = logging.getLogger(__name__)
_ORDER_MARGIN = timedelta(minutes=5)  # the order outlives the run's timeout by this much
_SUPERLINK_START_S = 180.0  # at most this long for the SuperLink to listen
#: the asynchronous Flower App (FedBuff buffers, SecAgg+ each) a ``buffered`` run submits
FAB_ASYNC_DIR = Path(__file__).resolve().parents[1] / "fl" / "fab_async"


def _toml(config: Any, buffered: Mapping[str, Any] | None = None) -> str:
    """``[training]`` for ``FederatedRunConfig.from_mapping`` (flat keys + secagg table), and
    for an asynchronous run the ``[async]`` table the asynchronous ServerApp reads."""
    keys = (
        "model_name",
        "num_clients",
        "num_rounds",
        "min_fit_clients",
        "local_epochs",
        "batch_size",
        "learning_rate",
        "seed",
    )
    training = {key: getattr(config, key) for key in keys}
    tables: dict[str, Any] = {
        "training": {**training, "secagg": {"enabled": config.secagg.enabled}}
    }
    if buffered is not None:
        tables["async"] = dict(buffered)
    return toml_text.dumps(tables)


class DeploymentTraining:
    """Where the hub's broker, keys, CA and SuperLink are; one instance serves many runs, one
    at a time. :meth:`abort` (from another thread) ends a run in progress: the SuperLink
    stops and :meth:`train` raises ``TrainingError``."""

    def __init__(
        self,
        *,
        mqtt: MqttEndpoint,
        topics: TopicScheme,
        workdir: Path,
        keys: KeyStore,
        ca_dir: Path | None = None,
        superlink_host: str = "127.0.0.1",
        insecure: bool = False,
        timeout_s: float = 600.0,
        client_id: str | None = None,
        serverapp: str | None = None,
    ) -> None:
        if not 1 <= timeout_s <= 86_400:
            raise TrainingError("timeout_s must be in [1, 86400]")
        if insecure == (ca_dir is not None):
            raise HubConfigError(
                "the SuperLink needs TLS from the hub CA (ca_dir) or an explicit insecure=True, "
                "not both"
            )
        self.mqtt = mqtt
        self.topics = topics
        self.workdir = Path(workdir)
        self.keys = keys
        self.ca_dir = ca_dir
        self.superlink_host = superlink_host
        self.insecure = insecure
        self.timeout_s = timeout_s
        self.client_id = client_id or one_shot_client_id(HubRole.TRAINING)
        self.serverapp = serverapp
        self._abort = threading.Event()

    def abort(self) -> None:
        self._abort.set()

    def _wait(self, results: Path) -> dict[str, Any]:
        from cloud_hub.fl.superlink import wait_for_summary

        deadline = time.monotonic() + self.timeout_s
        while not (results / "summary.json").exists():
            if self._abort.wait(0.1):
                raise TrainingError("deployment run aborted")
            if time.monotonic() > deadline:
                raise TrainingError(f"no result in {results} after {self.timeout_s:.0f} s")
        return wait_for_summary(results, timeout_s=5.0)  # parses it; raises if it failed

    def _publish(self, commands: Mapping[str, TrainCommand]) -> None:
        """Send the commands with the hub's broker settings (protocol, TLS, its certificate)."""
        connected = threading.Event()
        refused: list[str] = []

        def ignore(*_: object) -> None:
            return None

        def refuse(reason: str) -> None:
            refused.append(reason)
            connected.set()

        hooks = ConnectionHooks(
            connected=lambda _c: connected.set(),
            refused=refuse,
            dropped=ignore,
            subscribed=ignore,
            message=ignore,
        )
        try:
            client = create_client(self.mqtt, client_id=self.client_id, hooks=hooks)
            connect_client(client, self.mqtt, keepalive_s=30)
        except DeliveryError as exc:
            raise TrainingError(f"cannot send train commands: {exc}") from exc
        client.loop_start()
        try:
            if not connected.wait(15) or refused:
                raise TrainingError(f"the broker refused the hub's training connection: {refused}")
            for device_id, command in commands.items():
                info = client.publish(self.topics.device(device_id, "cmd"), command.encode(), qos=1)
                info.wait_for_publish(10)
        except (OSError, RuntimeError, ValueError) as exc:
            raise TrainingError(f"cannot send train commands: {exc}") from exc
        finally:
            client.loop_stop()
            client.disconnect()

    def sign_orders(
        self, run_id: str, device_ids: Sequence[str], address: str, fab: str, fl_config: Any
    ) -> dict[str, dict[str, Any]]:
        """One signed training order per device (R4)."""
        now = datetime.now(timezone.utc)
        expires = now + min(timedelta(seconds=self.timeout_s) + _ORDER_MARGIN, MAX_ORDER_VALIDITY)
        signers = self.keys.signing_keys(now=now)
        return {
            device_id: sign_training_order(
                TrainingOrder(
                    order_id=new_id(),
                    run_id=run_id,
                    device_id=device_id,
                    superlink=address,
                    fab_sha256=fab,
                    model_name=fl_config.model_name,
                    secure_aggregation=bool(fl_config.secagg.enabled),
                    insecure=self.insecure,
                    issued=format_time(now),
                    expires=format_time(expires),
                ),
                signers,
            )
            for device_id in device_ids
        }

    def commands(
        self, orders: Mapping[str, dict[str, Any]], config: dict[str, Any]
    ) -> dict[str, TrainCommand]:
        keyring = self.keys.keyring_envelope()
        out = {}
        for device_id, order in orders.items():
            signed = order["signed"]
            out[device_id] = TrainCommand(
                command_id=new_id(),
                run_id=signed["run_id"],
                superlink=signed["superlink"],
                model_name=signed["model_name"],
                config=dict(config),
                order=order,
                keyring=keyring,
            )
        return out

    def _superlink(self, work: Path, port: int) -> Any:
        from cloud_hub.fl.superlink import SuperLinkConfig, SuperLinkProcess, issue_superlink_tls

        tls: dict[str, Path] = {}
        if self.ca_dir is not None:
            cert, key, ca = issue_superlink_tls(self.ca_dir, self.superlink_host, work / "tls")
            tls = {"ssl_certfile": cert, "ssl_keyfile": key, "ssl_ca_certfile": ca}
        config = SuperLinkConfig(
            host=self.superlink_host,
            port=port,
            insecure=self.insecure,
            **tls,
        )
        return SuperLinkProcess(config, workdir=work / "superlink", serverapp=self.serverapp)

    def _start_while_ordering(self, link: Any, commands: Mapping[str, TrainCommand]) -> None:
        """Start the SuperLink and send the training orders at the same time."""
        failed: list[BaseException] = []

        def start() -> None:
            try:  # a loaded hub needs more than half a minute to start one (imports, schema)
                link.start(timeout_s=min(self.timeout_s, _SUPERLINK_START_S))
            except BaseException as exc:  # re-raised in the caller's thread below
                failed.append(exc)

        starting = threading.Thread(target=start, name="superlink-start", daemon=True)
        starting.start()
        try:
            self._publish(commands)
        finally:
            starting.join()
        if failed:
            raise failed[0]

    def train(
        self,
        run_id: str,
        device_ids: Sequence[str],
        fl_config: Any,
        validation: tuple[NDArray[np.float32], NDArray[np.int64]],
        model_store_root: Path,
        *,
        max_samples: int | None = None,
        initial_state: Mapping[str, Any] | None = None,
        buffered: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run ``fl_config`` with the devices as SuperNodes; returns the run's summary.

        ``initial_state`` (a ``state_dict``, the champion's) is round 1's global model;
        ``None``: fresh weights seeded by ``fl_config``.

        ``max_samples`` asks each device to train on at most that many of its newest
        labelled samples (a hint: a device's own limit wins). ``buffered`` (the ``[async]``
        table of :mod:`cloud_hub.fl.superlink_async_app`: devices, buffer_size, buffers,
        server_lr, max_staleness, seed) runs the asynchronous FAB instead: FedBuff buffers,
        SecAgg+ each, every update held in its device's state until its buffer folds it."""
        from cloud_hub.fl.superlink import FAB_DIR, fab_sha256
        from cloud_hub.fl.superlink_app import (
            DeploymentRunSettings,
            client_run_config,
            write_initial_state,
        )
        from shared.net import free_port

        if self._abort.is_set():
            raise TrainingError("deployment training was aborted")

        work = Path(self.workdir) / run_id
        work.mkdir(parents=True, exist_ok=True)
        atomic_write(work / "train.toml", _toml(fl_config, buffered).encode("utf-8"))  # R15
        np.savez(work / "validation.npz", x=validation[0], y=validation[1])
        initial = None
        if initial_state is not None:  # the hub's file; the ServerApp checks it fits
            initial = work / "initial.npz"
            write_initial_state(initial, initial_state)
        fab_dir = FAB_DIR if buffered is None else FAB_ASYNC_DIR
        fab = fab_sha256(fab_dir)
        port = free_port()
        address = f"{self.superlink_host}:{port}"
        orders = self.sign_orders(run_id, device_ids, address, fab, fl_config)
        link = self._superlink(work, port)
        hints: dict[str, Any] = {"duration_s": self.timeout_s}
        if max_samples is not None:
            hints["max_samples"] = int(max_samples)
        started = time.monotonic()
        try:
            # the devices start their SuperNodes while the SuperLink starts (both take
            # seconds; a SuperNode that comes first retries until the SuperLink listens)
            self._start_while_ordering(link, self.commands(orders, hints))
            listening = time.monotonic()
            settings = DeploymentRunSettings(
                config_path=work / "train.toml",
                validation_path=work / "validation.npz",
                results_dir=work / "results",
                model_store=model_store_root,
                run_name=run_id,
                initial_weights=initial,
            )
            link.submit_run(
                settings.to_run_config() | client_run_config(fl_config),
                fab_dir=fab_dir,
                expected_fab_sha256=fab,
            )
            submitted = time.monotonic()
            summary = self._wait(work / "results")
            log.info(
                "deployment run %s: accuracy %s; %.1f s (SuperLink up and orders sent %.1f s, "
                "submitted %.1f s, run %.1f s)",
                run_id,
                summary.get("final_accuracy"),
                time.monotonic() - started,
                listening - started,
                submitted - listening,
                time.monotonic() - submitted,
            )
            return summary
        finally:
            try:  # the same signed orders, as stops: a device stops only its current run
                self._publish(self.commands(orders, {"stop": True}))
            except TrainingError as exc:
                log.warning("stop commands not sent (SuperNodes stop at their deadline): %s", exc)
            finally:  # whatever went wrong above, the SuperLink does not outlive the run
                link.stop()
