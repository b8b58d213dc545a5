"""The uplink table is the one device → hub contract: agent, ingest, publisher and ACL agree."""

from __future__ import annotations

import pytest

from cloud_hub.enrollment.acl import DEVICE_WRITE_CHANNELS
from cloud_hub.ingest import INGEST_CHANNELS
from shared.errors import ConfigError
from shared.messages import ChunkRequest, DeployCommand, Status
from shared.topics import UPLINK_CHANNELS
from shared.uplink import UPLINK, HubReader, channels_read_by, uplink_of


def test_every_uplink_channel_has_exactly_one_hub_reader() -> None:
    ingest = channels_read_by(HubReader.INGEST)
    delivery = channels_read_by(HubReader.DELIVERY)
    assert set(ingest).isdisjoint(delivery)
    assert set(ingest) | set(delivery) == set(UPLINK_CHANNELS) == set(UPLINK)
    assert dict(INGEST_CHANNELS) == dict(ingest)
    assert delivery == {"chunk-req": ChunkRequest}


def test_devices_may_write_the_uplink_channels_only() -> None:
    assert set(DEVICE_WRITE_CHANNELS) == set(UPLINK)


def test_status_is_retained_and_everything_is_acknowledged() -> None:
    assert uplink_of(Status).retain and uplink_of(Status).channel == "status"
    assert [c.channel for c in UPLINK.values() if c.retain] == ["status"]
    assert {c.qos for c in UPLINK.values()} == {1}


def test_a_hub_command_has_no_uplink_contract() -> None:
    with pytest.raises(ConfigError, match="not a device-to-hub message"):
        uplink_of(DeployCommand)
