"""``cloud-hub serve``: API + MQTT ingest (+ rollout engine, enrollment, dashboard)."""

from __future__ import annotations

import argparse
import logging

from cloud_hub.config import HubConfig

__all__ = ["add_config_arguments", "load_config", "register"]

log = logging.getLogger(__name__)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every command that opens the registry shares."""
    parser.add_argument("--config", help="hub config file (TOML)")
    parser.add_argument("--db", help="registry URL (sqlite:///PATH or postgresql+psycopg://...)")
    parser.add_argument("--data-dir", help="hub data directory (default ./hub-data)")


def load_config(args: argparse.Namespace) -> HubConfig:
    config = HubConfig.from_file(args.config) if args.config else HubConfig()
    return config.with_overrides(
        db_url=args.db,
        data_dir=args.data_dir,
        mqtt_url=getattr(args, "mqtt_url", None),
        mqtt_ca_file=getattr(args, "mqtt_ca_file", None),
        mqtt_cert_file=getattr(args, "mqtt_cert_file", None),
        mqtt_key_file=getattr(args, "mqtt_key_file", None),
        device_mqtt_url=getattr(args, "device_mqtt_url", None),
        instance_id=getattr(args, "instance_id", None),
        topic_prefix=getattr(args, "prefix", None),
        api_host=getattr(args, "host", None),
        api_port=getattr(args, "port", None),
        keys_dir=getattr(args, "keys_dir", None),
    )


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("serve", help="run the hub: REST API + MQTT ingest + rollouts")
    add_config_arguments(parser)
    parser.add_argument("--mqtt-url", help="broker, e.g. mqtt://127.0.0.1:1883")
    parser.add_argument("--mqtt-ca-file", help="CA that verifies the broker (mqtts://)")
    parser.add_argument(
        "--mqtt-cert-file", help="the hub's MQTT client certificate (broker-config: hub.crt)"
    )
    parser.add_argument("--mqtt-key-file", help="its key (broker-config: hub.key)")
    parser.add_argument(
        "--device-mqtt-url", help="the broker URL enrolling devices are given (device listener)"
    )
    parser.add_argument(
        "--instance-id",
        help="this hub process in MQTT client ids (default: DATA_DIR/instance-id); give "
        "replicas that share a data directory different ones",
    )
    parser.add_argument("--prefix", help="MQTT topic prefix (default fedfleet)")
    parser.add_argument("--host", help="API bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="API port (default 8080)")
    parser.add_argument("--keys-dir", help="key store directory (default DATA_DIR/keys)")
    parser.add_argument("--no-ingest", action="store_true", help="do not subscribe to MQTT")
    parser.add_argument("--no-engine", action="store_true", help="do not run the rollout engine")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="serve the API over HTTPS with a certificate from the hub CA (for edge-agent install)",
    )
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from cloud_hub.api.server import HubServer

    config = load_config(args)
    if args.no_ingest:
        config = config.with_overrides(enable_ingest=False)
    if args.tls:
        config = config.with_overrides(api_tls=True)
    server = HubServer(config, rollout_engine=not args.no_engine)
    try:
        server.start()
        log.info(
            "hub API on %s://%s:%d (registry %s)",
            "https" if config.api_tls else "http",
            config.api_host,
            config.api_port,
            config.database_url.split("@")[-1],
        )
        server.serve_forever()
    finally:
        server.stop()
    return 0
