"""``cloud-hub retrain``: trigger a retraining run by hand, or approve one waiting for it.

Works directly on the registry and the hub's data directory (not over the REST API):
training needs the hub-side model store, key store and CA, which live there, not behind
the API. The rollout it creates is written to the registry; the running ``cloud-hub
serve`` (its rollout engine reads the registry every tick) delivers it.

    cloud-hub retrain --class x86-cpu --validation val.npz --superlink-host HUB_ADDRESS \
        [--mqtt-url ... --prefix ...] [--require-approval]
    cloud-hub retrain --approve RUN_ID
    cloud-hub retrain --list

The devices train, on their own samples: the command starts a SuperLink on
``--superlink-host`` (TLS from the hub CA in ``DATA_DIR/ca``, which devices pinned at
enrollment) and sends every cohort device a signed training order over the hub's broker
(``--mqtt-*``, ``--prefix``: the settings ``cloud-hub serve`` uses); each device's agent
starts a SuperNode on its sample store (``cloud_hub.loop.device_training``). The hub reads
no device data. The manual trigger goes through the retraining policy: cooldown and the
daily budget still apply (``--cooldown`` sets the cooldown). ``--validation`` and
``--calibration`` are hub-held ``.npz`` files with arrays ``x`` and ``y``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cloud_hub.commands.options import BROKER_KEYS, add_hub_options
from cloud_hub.commands.serve import add_config_arguments, load_config
from cloud_hub.errors import HubConfigError, HubError
from cloud_hub.rollout.delivery import RecordedDelivery

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "retrain", help="trigger federated retraining of a device class, or approve a run"
    )
    add_config_arguments(parser)
    add_hub_options(parser, BROKER_KEYS)
    parser.add_argument("--keys-dir", help="key store directory (default DATA_DIR/keys)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--class", dest="device_class", help="device class to retrain")
    what.add_argument("--approve", metavar="RUN_ID", help="start the rollout of a waiting run")
    what.add_argument("--list", action="store_true", help="list training runs (JSON)")
    parser.add_argument("--model", default="sensor-mlp", help="model name (default sensor-mlp)")
    parser.add_argument("--validation", type=Path, help="hub validation set (.npz: x, y)")
    parser.add_argument("--calibration", type=Path, help="calibration set (default: validation)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--superlink-host",
        default="127.0.0.1",
        help="address the devices reach the hub's SuperLink at (default 127.0.0.1)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds the devices have to train"
    )
    parser.add_argument(
        "--mode",
        choices=("sync", "async"),
        default="sync",
        help="sync: SecAgg+ FedAvg rounds; async: FedBuff buffers, SecAgg+ per buffer, "
        "orders only to the devices the eligibility rules find fit",
    )
    parser.add_argument("--buffer-size", type=int, default=3, help="async: updates per buffer")
    parser.add_argument("--buffers", type=int, default=3, help="async: buffers (new versions)")
    parser.add_argument("--cooldown", type=float, default=600.0, help="policy cooldown seconds")
    parser.add_argument(
        "--require-approval", action="store_true", help="create the rollout but do not start it"
    )
    parser.set_defaults(func=_retrain)


def _device_training(args: argparse.Namespace, config: Any, keys: Any) -> Any:
    """Training on the devices, as ``serve`` trains, under a one-shot connection id."""
    from cloud_hub.loop.serving import deployment_training

    return deployment_training(
        config, keys, superlink_host=args.superlink_host, timeout_s=args.timeout
    )


def _retrain(args: argparse.Namespace) -> int:
    from cloud_hub.keys import KeyStore
    from cloud_hub.loop.config import LoopConfig
    from cloud_hub.loop.controller import RetrainController
    from cloud_hub.loop.pipeline import RetrainPipeline
    from cloud_hub.loop.policy import RetrainPolicy
    from cloud_hub.loop.serving import labelled_set
    from cloud_hub.registry import admin, open_registry
    from cloud_hub.rollout.engine import RolloutService

    config = load_config(args)
    registry = open_registry(config.database_url)
    try:
        if args.list:
            with registry.session() as s:
                runs = admin.list_training_runs(s, limit=100).items
            print(json.dumps([r.__dict__ for r in runs], indent=2, default=str))
            return 0
        keys = KeyStore(config.keys_path)
        if not keys.exists():
            raise HubConfigError(f"no key store at {config.keys_path} (cloud-hub keys init)")
        # creating and starting a rollout publishes nothing; the serving hub's engine delivers
        registry_only = RecordedDelivery(
            refusal=HubError("cloud-hub retrain does not deliver; cloud-hub serve does")
        )
        service = RolloutService(registry, registry_only, keys)
        if args.approve is None and args.validation is None:
            raise HubConfigError("--class needs --validation (the hub's validation set)")
        validation = labelled_set(args.validation) if args.validation else None
        calibration = labelled_set(args.calibration) if args.calibration else validation
        loop = LoopConfig(
            model_name=args.model,
            work_dir=config.data_dir / "loop",
            num_rounds=args.rounds,
            class_modes={args.device_class: args.mode} if args.device_class else {},
            async_buffer_size=args.buffer_size,
            async_buffers=args.buffers,
            policy=RetrainPolicy(
                cooldown_s=args.cooldown, require_approval=args.require_approval, min_devices=3
            ),
        )
        pipeline = RetrainPipeline(
            registry=registry,
            keys=keys,
            rollouts=service,
            validation=validation or ((), ()),  # type: ignore[arg-type]
            calibration=calibration or ((), ()),  # type: ignore[arg-type]
            config=loop,
            deployment=None if args.approve else _device_training(args, config, keys),
        )
        controller = RetrainController(pipeline, [args.device_class or "-"])
        if args.approve:
            rollout_id = controller.approve(args.approve)
            print(json.dumps({"run_id": args.approve, "rollout_id": rollout_id}))
            return 0
        decision = controller.assess(args.device_class, manual=True)
        if not decision.retrain:
            print(json.dumps({"retrain": False, "reason": decision.reason}))
            return 1
        outcome = pipeline.run(
            args.device_class, decision.cohort, trigger=decision.trigger, reason=decision.reason
        )
        print(json.dumps(outcome.__dict__, default=str, indent=2))
        return 0 if outcome.state in ("rolling_out", "awaiting_approval") else 1
    finally:
        registry.close()
