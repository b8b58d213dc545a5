"""The device → hub wire contract as data: each uplink channel, its message type, QoS,
whether the broker retains it, and which hub component reads it.

The agent publishes through this table, the hub's ingest and publisher subscribe and decode
through it, and the broker ACL lets a device write exactly these channels
(:data:`shared.topics.UPLINK_CHANNELS`). One hub subscriber per channel: the ingest reads
what devices report, the delivery reads what devices ask of it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from shared.errors import ConfigError
from shared.messages import ChunkRequest, DriftReport, Event, Hello, Message, Status, Telemetry
from shared.topics import UPLINK_CHANNELS

__all__ = ["UPLINK", "HubReader", "UplinkContract", "channels_read_by", "uplink_of"]


class HubReader(str, enum.Enum):
    """The one hub component that subscribes to a channel."""

    INGEST = "ingest"  # device reports: stored in the registry
    DELIVERY = "delivery"  # requests to the bundle publisher (chunk repairs)


@dataclass(frozen=True)
class UplinkContract:
    channel: str
    message_type: type[Message]
    qos: int
    retain: bool
    reader: HubReader


def _row(
    channel: str,
    message_type: type[Message],
    *,
    retain: bool = False,
    reader: HubReader = HubReader.INGEST,
) -> UplinkContract:
    return UplinkContract(channel, message_type, qos=1, retain=retain, reader=reader)


#: channel → contract. Status is retained (the broker's last will clears "online").
UPLINK: Mapping[str, UplinkContract] = {
    row.channel: row
    for row in (
        _row("hello", Hello),
        _row("status", Status, retain=True),
        _row("telemetry", Telemetry),
        _row("drift", DriftReport),
        _row("events", Event),
        _row("chunk-req", ChunkRequest, reader=HubReader.DELIVERY),
    )
}
if tuple(UPLINK) != UPLINK_CHANNELS:  # the topic scheme and this table name the same channels
    raise ConfigError(f"uplink table {tuple(UPLINK)} differs from topics {UPLINK_CHANNELS}")

_BY_TYPE: Mapping[type[Message], UplinkContract] = {c.message_type: c for c in UPLINK.values()}


def uplink_of(message_type: type[Message]) -> UplinkContract:
    """The contract of a device → hub message type; ``ConfigError`` for any other type."""
    try:
        return _BY_TYPE[message_type]
    except KeyError:
        raise ConfigError(f"{message_type.__name__} is not a device-to-hub message") from None


def channels_read_by(reader: HubReader) -> Mapping[str, type[Message]]:
    """channel → message type for the channels ``reader`` subscribes to."""
    return {c.channel: c.message_type for c in UPLINK.values() if c.reader is reader}
