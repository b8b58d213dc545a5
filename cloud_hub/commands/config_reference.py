"""``cloud-hub config-reference``: the hub's TOML keys, flags and environment variables.

Names, types and defaults come from :class:`cloud_hub.config.HubConfig` and
:class:`cloud_hub.ingest.config.IngestConfig` and
:class:`cloud_hub.config.RetrainingConfig`; flags and variables from
:data:`cloud_hub.commands.options.HUB_OPTIONS`; the sentences from the tables below, which
must cover every key (``shared.config_reference`` refuses a gap). The committed
``docs/configuration-hub.md`` is this command's output; a test keeps them equal.
"""

from __future__ import annotations

from pathlib import Path

from cloud_hub.commands.options import HUB_OPTIONS
from cloud_hub.config import HubConfig, RetrainingConfig
from cloud_hub.errors import HubConfigError
from cloud_hub.ingest.config import IngestConfig
from shared.cli import document_command
from shared.config_reference import ReferenceRow, ReferenceSection, render_reference, rows_of
from shared.errors import ConfigError

__all__ = ["DEFAULT_OUTPUT", "hub_reference", "register"]

DEFAULT_OUTPUT = Path("docs/configuration-hub.md")

_TOP_DOCS = {
    "data_dir": "The hub's folder: registry `hub.db`, `ca/`, `tls/`, `keys/`, `bundles/`, "
    "`instance-id`. Relative paths are relative to the working directory.",
    "db_url": "Registry database; empty: `sqlite:///DATA_DIR/hub.db`. PostgreSQL: "
    "`postgresql+psycopg://user@host/db`.",
    "mqtt_url": "The hub's broker: `mqtt://host:1883` (plain) or `mqtts://host:8884` (TLS; "
    "with `broker-config`, the hub listener).",
    "mqtt_ca_file": "CA bundle that verifies an `mqtts://` broker (`broker/ca.crt`); unset: "
    "the system CAs.",
    "mqtt_cert_file": "The hub's MQTT client certificate for mutual TLS (`broker/hub.crt`).",
    "mqtt_key_file": "Its private key (`broker/hub.key`).",
    "mqtt_protocol": 'MQTT protocol version: "5" or "3.1.1".',
    "topic_prefix": "First level of every MQTT topic; hub, devices and broker ACL must agree.",
    "api_host": "Address the REST API, dashboard and enrollment bind to.",
    "api_port": "Their port.",
    "keys_dir": "Signing key store (root key, signing keys, keyring); unset: `DATA_DIR/keys`.",
    "instance_id": "This hub process in its MQTT client ids; empty: `DATA_DIR/instance-id`, "
    "made once. Replicas sharing a data directory need different ones.",
    "enable_ingest": "Subscribe to device reports (`serve --no-ingest` turns it off).",
    "offline_after_s": "A device silent this long is marked offline; 0: never.",
    "device_mqtt_url": "The broker URL enrolling devices are given (the device listener); "
    "empty: the hub's own `mqtt_url`.",
    "api_tls": "Serve the API over HTTPS with a certificate from the hub CA (`edge-agent "
    "install` requires HTTPS).",
    "api_tls_hostnames": "Names and addresses in that certificate (`enroll-init --hostname` "
    "issues it first).",
}
_MQTT_ROWS = (
    ReferenceRow("mqtt_url", "str", '"mqtt://127.0.0.1:1883"', _TOP_DOCS["mqtt_url"]),
    ReferenceRow("mqtt_ca_file", "str | None", "(unset)", _TOP_DOCS["mqtt_ca_file"]),
    ReferenceRow("mqtt_cert_file", "str | None", "(unset)", _TOP_DOCS["mqtt_cert_file"]),
    ReferenceRow("mqtt_key_file", "str | None", "(unset)", _TOP_DOCS["mqtt_key_file"]),
    ReferenceRow("mqtt_protocol", "str", '"5"', _TOP_DOCS["mqtt_protocol"]),
)
_INGEST_DOCS = {
    "per_device_queue": "Messages buffered per device before its own oldest telemetry is "
    "dropped: one device never fills memory for the others.",
    "telemetry_rate_per_s": "Token-bucket rate per device for telemetry (other reports are "
    "bounded, never rate-limited).",
    "telemetry_burst": "Token-bucket burst per device.",
    "max_devices": "Distinct devices that may have messages queued at once.",
    "batch_max": "Messages per database transaction.",
    "flush_interval_s": "Longest wait before a partial batch is written.",
    "max_metrics": "Numeric gauges kept per telemetry message.",
    "retry_backoff_s": "Wait before retrying a batch the database refused.",
    "workers": "Processes ingesting telemetry via MQTT shared subscriptions (PostgreSQL; "
    "-1: two on 2+ CPUs, 0: none).",
}
_RETRAINING_DOCS = {
    "enabled": "Run the retraining controller (only in the hub that runs the rollout engine; "
    "`serve --no-retraining` turns it off).",
    "device_classes": "Device classes whose health is watched; empty: no controller.",
    "model_name": "The model retrained and shipped.",
    "validation_file": "The hub's labelled validation set (`.npz` with `x`, `y`): the "
    "candidate faces the champion on it; unset: no controller.",
    "calibration_file": "Calibration set for int8 compression; unset: the validation file.",
    "superlink_host": "Address of this hub the devices' SuperNodes reach (the SuperLink, TLS "
    "from the hub CA); it is signed into every training order.",
    "serverapp": "Where the SuperLink runs each run's ServerApp: `inprocess` (a thread of the "
    "SuperLink process, no runtime HTTP requests: the faster) or `forked` (its own process, "
    "forked from a warm one: a ServerApp crash cannot take the SuperLink down); unset: the "
    "environment's `FEDFLEET_SUPERLINK_SERVERAPP`, else `inprocess`.",
    "train_timeout_s": "Longest a run on the devices may take before it fails.",
    "num_rounds": "Federated rounds per retraining run (SecAgg+ in each).",
    "tick_interval_s": "How often the controller reads the classes' health.",
    "rollout_gate_window_s": "Gate window of the staged rollout a run creates.",
    "require_approval": "Hold a candidate until `cloud-hub retrain --approve RUN`.",
    "cooldown_s": "Least time between two runs of one class.",
    "max_runs_per_day": "Runs per class per day at most.",
    "drift_threshold": "Drift score above which a device counts as drifted.",
    "drift_fraction": "Share of a class's devices that must drift to trigger a run.",
    "drift_duration_s": "How long that drift must last.",
    "schedule_interval_s": "Retrain on a schedule as well; unset: only on drift.",
    "min_devices": "Devices a run needs (SecAgg+ needs at least three).",
}
_PREAMBLE = """
The hub reads one TOML file (`cloud-hub serve --config hub.toml`); every key is optional.
A flag beats its environment variable, which beats the file, which beats the default.
Commands other than `serve` take the flags that concern them (`--data-dir`, `--db`,
`--keys-dir`; `publish` the `--mqtt-*` ones). Generated by `cloud-hub config-reference`
from the configuration types: do not edit by hand.
"""


def hub_reference() -> str:
    """The Markdown reference of the hub's configuration."""
    flags = {o.key: (o.flag, o.env) for o in HUB_OPTIONS}
    top_docs = {k: v for k, v in _TOP_DOCS.items() if not k.startswith("mqtt_")}
    try:
        top = rows_of(
            HubConfig,
            {**top_docs, **{r.key: r.doc for r in _MQTT_ROWS}},
            skip=("mqtt", "ingest", "retraining"),
            extra=_MQTT_ROWS,
            flags={**flags, "enable_ingest": ("--no-ingest", "")},
        )
        ingest = rows_of(IngestConfig, _INGEST_DOCS)
        retraining = rows_of(RetrainingConfig, _RETRAINING_DOCS)
    except ConfigError as exc:
        raise HubConfigError(str(exc)) from exc
    return render_reference(
        "Hub configuration (`cloud-hub serve`)",
        _PREAMBLE,
        [
            ReferenceSection("", "", top),
            ReferenceSection("ingest", "Limits of the MQTT ingest (no flags).", ingest),
            ReferenceSection(
                "retraining",
                "The closed loop in `cloud-hub serve`: the retraining controller, over "
                "Flower's Deployment Engine (no flags but `--no-retraining`).",
                retraining,
            ),
        ],
    )


register = document_command(
    "config-reference",
    help="write the reference of the hub's config keys, flags, variables",
    default_output=DEFAULT_OUTPUT,
    render=hub_reference,
)
