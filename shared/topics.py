"""The MQTT topic scheme, under ``{prefix}/v1/``.

::

    {p}/v1/devices/{device_id}/hello       device → hub   QoS1
    {p}/v1/devices/{device_id}/status      device → hub   QoS1 retained, last will = offline
    {p}/v1/devices/{device_id}/telemetry   device → hub   QoS0/1
    {p}/v1/devices/{device_id}/drift       device → hub   QoS1
    {p}/v1/devices/{device_id}/events      device → hub   QoS1
    {p}/v1/devices/{device_id}/chunk-req   device → hub   QoS1 (missing chunks)
    {p}/v1/devices/{device_id}/cmd         hub → device   QoS1
    {p}/v1/devices/{device_id}/chunks      hub → device   QoS1 (repairs for one device)
    {p}/v1/bundles/{bundle_id}/chunks      hub → devices  QoS1 (fan-out: published once)
    {p}/v1/trust/keyring                   hub → devices  QoS1 retained (root-signed keyring)
    {p}/v1/trust/freshness                 hub → devices  QoS1 retained (signed freshness document)

``prefix`` defaults to ``fedfleet``; tests use a unique prefix each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.errors import ConfigError, MalformedMessageError

__all__ = [
    "DEVICE_CHANNELS",
    "TRUST_CHANNELS",
    "UPLINK_CHANNELS",
    "DeviceTopic",
    "TopicScheme",
    "validate_device_id",
]

# R11: always used with fullmatch: ``$`` alone also matches before a trailing newline
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DEVICE_CHANNELS = ("hello", "status", "telemetry", "drift", "events", "chunk-req", "cmd", "chunks")
UPLINK_CHANNELS = ("hello", "status", "telemetry", "drift", "events", "chunk-req")
TRUST_CHANNELS = ("keyring", "freshness")  # fleet-wide, retained, written by the hub only


def validate_device_id(device_id: str) -> str:
    """Device and bundle ids are topic levels: no wildcards, separators or odd characters."""
    if not isinstance(device_id, str) or not _ID_RE.fullmatch(device_id):
        raise ConfigError(f"invalid id {device_id!r}: use 1-128 of [A-Za-z0-9._-]")
    return device_id


@dataclass(frozen=True)
class DeviceTopic:
    """A parsed device topic."""

    device_id: str
    channel: str


@dataclass(frozen=True)
class TopicScheme:
    prefix: str = "fedfleet"

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "#+") or self.prefix.startswith("/"):
            raise ConfigError(f"invalid topic prefix {self.prefix!r}")

    @property
    def root(self) -> str:
        return f"{self.prefix}/v1"

    def device(self, device_id: str, channel: str) -> str:
        if channel not in DEVICE_CHANNELS:
            raise ConfigError(f"unknown device channel {channel!r}")
        return f"{self.root}/devices/{validate_device_id(device_id)}/{channel}"

    def bundle_chunks(self, bundle_id: str) -> str:
        return f"{self.root}/bundles/{validate_device_id(bundle_id)}/chunks"

    def trust(self, channel: str) -> str:
        """A fleet-wide trust topic (retained; every device reads it, only the hub writes)."""
        if channel not in TRUST_CHANNELS:
            raise ConfigError(f"unknown trust channel {channel!r}")
        return f"{self.root}/trust/{channel}"

    def all_devices(self, channel: str) -> str:
        """Subscription filter for one uplink channel of every device (hub side)."""
        return f"{self.root}/devices/+/{channel}"

    def parse_device_topic(self, topic: str) -> DeviceTopic:
        """Split a device topic; raises ``MalformedMessageError`` for anything else."""
        head = f"{self.root}/devices/"
        if not topic.startswith(head):
            raise MalformedMessageError(f"not a device topic: {topic!r}")
        parts = topic[len(head) :].split("/")
        if len(parts) != 2 or parts[1] not in DEVICE_CHANNELS or not _ID_RE.fullmatch(parts[0]):
            raise MalformedMessageError(f"not a device topic: {topic!r}")
        return DeviceTopic(device_id=parts[0], channel=parts[1])
