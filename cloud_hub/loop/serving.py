"""The closed loop inside ``cloud-hub serve``: the retraining controller a hub runs.

:func:`retrain_controller` builds the controller from the hub's ``[retraining]`` settings
(:class:`cloud_hub.config.RetrainingConfig`) over the parts the hub already opened: its
registry, key store and rollout engine. The devices train over Flower's Deployment Engine
(:class:`~cloud_hub.loop.device_training.DeploymentTraining`: a SuperLink with TLS from the
hub CA in ``DATA_DIR/ca``, signed orders over the hub's broker); the hub reads only its own
validation and calibration sets. :func:`build_hub` (``cloud_hub.hub``) calls it where the
rollout engine runs, so exactly one hub process trains: the controller's rollouts are the
engine's, and ``serve --no-engine`` replicas run neither.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloud_hub.broker_client import HubRole, hub_client_id_for
from cloud_hub.config import HubConfig
from cloud_hub.errors import HubConfigError
from cloud_hub.keys import KeyStore
from cloud_hub.registry import Registry

if TYPE_CHECKING:
    from cloud_hub.loop.controller import RetrainController
    from cloud_hub.loop.pipeline import Arrays, RolloutStarter

__all__ = ["labelled_set", "retrain_controller"]

log = logging.getLogger(__name__)


def labelled_set(path: Path) -> Arrays:
    """A hub-held labelled set: an ``.npz`` file with arrays ``x`` (features) and ``y``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y = np.asarray(data["x"], dtype=np.float32), np.asarray(data["y"], dtype=np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise HubConfigError(f"{path}: need an .npz with arrays x and y ({exc})") from exc
    if len(x) == 0 or len(x) != len(y):
        raise HubConfigError(f"{path}: x and y must hold the same number (> 0) of samples")
    return x, y


def retrain_controller(
    config: HubConfig, *, registry: Registry, keys: KeyStore, rollouts: RolloutStarter
) -> RetrainController | None:
    """The controller the ``[retraining]`` settings describe, ``None`` (and why, in the log)
    when they turn it off or leave it without classes or a validation set."""
    settings = config.retraining
    if not settings.enabled:
        log.info("retraining controller off ([retraining] enabled = false)")
        return None
    if not settings.configured:  # e.g. the demo and the fleet simulation run their own
        log.info(
            "retraining controller off: [retraining] names no device_classes or validation_file"
        )
        return None
    from cloud_hub.loop.config import LoopConfig
    from cloud_hub.loop.controller import RetrainController
    from cloud_hub.loop.pipeline import RetrainPipeline

    assert settings.validation_file is not None  # configured
    validation = labelled_set(settings.validation_file)
    calibration = (
        labelled_set(settings.calibration_file) if settings.calibration_file else validation
    )
    loop = LoopConfig(
        model_name=settings.model_name,
        work_dir=config.data_dir / "loop",
        policy=settings.policy(),
        num_rounds=settings.num_rounds,
        rollout_gate_window_s=settings.rollout_gate_window_s,
    )
    pipeline = RetrainPipeline(
        registry=registry,
        keys=keys,
        rollouts=rollouts,
        validation=validation,
        calibration=calibration,
        config=loop,
        deployment=deployment_training(
            config,
            keys,
            superlink_host=settings.superlink_host,
            serverapp=settings.serverapp,
            timeout_s=settings.train_timeout_s,
            client_id=hub_client_id_for(config, HubRole.TRAINING),
        ),
    )
    controller = RetrainController(
        pipeline, settings.device_classes, interval_s=settings.tick_interval_s
    )
    log.info(
        "retraining controller watches %s (%s; SuperLink on %s)",
        ", ".join(settings.device_classes),
        "rollouts wait for approval" if settings.require_approval else "rollouts start",
        settings.superlink_host,
    )
    return controller


def deployment_training(
    config: HubConfig,
    keys: KeyStore,
    *,
    superlink_host: str,
    timeout_s: float,
    client_id: str | None = None,
    serverapp: str | None = None,
) -> Any:
    """Training on the devices: a SuperLink here (TLS from the hub CA the devices pinned),
    signed orders over the hub's broker under the hub's topic prefix. ``client_id``: the
    training connection's (``None``: a one-shot id, for a command run beside a serving hub);
    ``serverapp``: where the SuperLink runs the ServerApp (``None``: the environment's, else
    in process — :func:`cloud_hub.fl.superlink.serverapp_mode`)."""
    from cloud_hub.loop.device_training import DeploymentTraining
    from shared.topics import TopicScheme

    ca_dir = config.data_dir / "ca"
    if not (ca_dir / "ca.crt").exists():
        raise HubConfigError(
            f"training on the devices needs the hub CA in {ca_dir} (cloud-hub enroll-init)"
        )
    return DeploymentTraining(
        mqtt=config.mqtt,
        topics=TopicScheme(config.topic_prefix),
        workdir=config.data_dir / "flower",
        keys=keys,
        ca_dir=ca_dir,
        superlink_host=superlink_host,
        timeout_s=timeout_s,
        client_id=client_id,
        serverapp=serverapp,
    )
