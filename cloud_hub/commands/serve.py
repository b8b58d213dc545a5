"""``cloud-hub serve``: API + MQTT ingest (+ rollout engine, retraining controller,
enrollment, dashboard).

The retraining controller (the closed loop: drift → federated retraining on the devices →
signed bundle → staged rollout) runs beside the rollout engine when the config's
``[retraining]`` table names the classes to watch and the hub's validation set. Behind a load
balancer exactly one hub runs the engine and with it the controller; the others are
``--no-engine`` replicas, which run neither. ``--no-retraining`` turns the controller off
in the engine's hub (retraining by hand: ``cloud-hub retrain``).

Every setting is a flag, an environment variable and a config key
(:data:`cloud_hub.commands.options.HUB_OPTIONS`; ``docs/configuration.md``).
"""

from __future__ import annotations

import argparse
import logging

from cloud_hub.commands.options import REGISTRY_KEYS, add_hub_options, hub_config_from_args
from cloud_hub.config import HubConfig

__all__ = ["add_config_arguments", "load_config", "register"]

log = logging.getLogger(__name__)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every command that opens the registry shares."""
    add_hub_options(parser, REGISTRY_KEYS)


def load_config(args: argparse.Namespace) -> HubConfig:
    """``--config`` file, then ``FEDFLEET_*`` environment variables, then flags."""
    return hub_config_from_args(args)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("serve", help="run the hub: REST API + MQTT ingest + rollouts")
    add_hub_options(parser)
    parser.add_argument("--no-ingest", action="store_true", help="do not subscribe to MQTT")
    parser.add_argument(
        "--no-engine",
        action="store_true",
        help="do not run the rollout engine (nor the retraining controller): a replica",
    )
    parser.add_argument(
        "--no-retraining",
        action="store_true",
        help="do not run the retraining controller ([retraining] in the config)",
    )
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from cloud_hub.api.server import serve_api
    from cloud_hub.hub import build_hub

    config = load_config(args)
    if args.no_ingest:
        config = config.with_overrides(enable_ingest=False)
    with build_hub(
        config, rollout_engine=not args.no_engine, retraining=not args.no_retraining
    ) as hub:
        log.info(
            "hub API on %s://%s:%d (registry %s)",
            "https" if config.api_tls else "http",
            config.api_host,
            config.api_port,
            config.database_url.split("@")[-1],
        )
        serve_api(hub)
    return 0
