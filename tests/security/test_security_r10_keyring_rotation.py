"""R10: key rotation reaches devices at once, and the keyring floor cannot be lowered.

Attacks, against a real Mosquitto running the generated mTLS configuration and ACLs, the
hub's :class:`TrustPublisher` over its own certificate, and real ``EdgeAgent`` devices:

- a leaked signing key is revoked by ``keys rotate``: an *idle* device (no deployment) must
  learn the new keyring from the retained topic and refuse the old key's offers from then on;
- whoever controls the broker replays the old keyring, forges one under another root, or
  tampers with the real one: refused, reported with the reason, floor unchanged;
- a device certificate cannot write the trust topics (ACL);
- a corrupt ``ota_state.json`` (and one damaged copy of the trusted record) after a restart
  does not lower the floor: the revoked key's offer is still refused, the model still runs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.config import HubConfig
from cloud_hub.enrollment import CertificateAuthority
from cloud_hub.hub import build_hub
from cloud_hub.keys import KeyStore
from cloud_hub.registry import reports
from edge_agent.ota.trusted import TrustedStore
from edge_agent.service import InstallLayout, InstallOptions, install
from shared.broker_endpoint import BrokerEndpoint
from shared.messages import EventKind, KeyringAnnouncement
from shared.signing import KeyEntry, Keyring, SigningKey, format_time, sign_envelope
from tests.agent_ota.agent_ota_helpers import utc, wait_for
from tests.security._support_freshness import (
    DEVICE_CLASS,
    Device,
    World,
    deploy,
    device_peer,
    hub_peer,
    make_device,
    running_broker,
    running_enrollment,
    running_world,
    signed_offer,
)

pytestmark = pytest.mark.integration
NOT_AUTHORIZED = 0x87


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with running_world(tmp_path) as w:
        yield w


def test_rotation_reaches_an_idle_device_and_the_revoked_key_is_refused(world: World) -> None:
    dev = world.device("idle-1")
    agent = dev.start_online(world.hub)
    world.install("idle-1", version=1)
    assert agent.updater.trusted.keyring_floor == 1

    old_keyring, old_signers = world.rotate("idle-1")  # no deployment involved
    assert agent.updater.trusted.keyring_floor == 2
    assert agent.updater.trusted.record.keyring == world.keys.keyring_envelope()

    # The leaked key's offer, with the keyring that still trusted it (unexpired): refused.
    replay = signed_offer(
        world.keys, world.broker.scheme, version=2, keyring=old_keyring, signing_keys=old_signers
    )
    deploy(world.hub, replay, "idle-1")
    rejected = world.hub.wait_deployment(replay.command.deployment_id, EventKind.REJECTED)
    assert "RollbackError" in rejected.detail and "keyring version 1" in rejected.detail
    assert "download_started" not in world.hub.deployment_kinds(replay.command.deployment_id)
    active = agent.active_model
    assert active is not None and active.meta.version == 1  # nothing lost

    # The new key's offer installs: rotation did not lock the device out.
    world.install("idle-1", version=2)
    active = agent.active_model
    assert active is not None and active.meta.version == 2


def test_replayed_forged_and_tampered_keyrings_are_refused(world: World) -> None:
    dev = world.device("idle-2")
    agent = dev.start_online(world.hub)
    old_keyring, _ = world.rotate("idle-2")
    current = world.keys.keyring_envelope()
    topic = world.broker.scheme.trust("keyring")

    attacker = SigningKey.generate()
    forged = sign_envelope(
        Keyring(
            version=9,
            expires=format_time(utc(86400)),
            signing_keys={
                attacker.keyid: KeyEntry(
                    public=attacker.public_hex, expires=format_time(utc(86400))
                )
            },
        ).to_signed(),
        [attacker],
    )
    tampered = copy.deepcopy(current)
    tampered["signed"]["signing_keys"][attacker.keyid] = {
        "public": attacker.public_hex,
        "expires": format_time(utc(86400)),
    }
    attacks = [
        (old_keyring, "RollbackError"),
        (forged, "UnknownKeyError"),
        (tampered, "BadSignatureError"),
    ]
    for envelope, reason in attacks:
        before = len(world.hub.events_of("idle-2", EventKind.TRUST_REJECTED))
        world.hub.publish_retained(topic, KeyringAnnouncement(keyring=envelope).encode())
        assert wait_for(
            lambda n=before: len(world.hub.events_of("idle-2", EventKind.TRUST_REJECTED)) > n, 20
        ), f"no refusal reported for the {reason} keyring"
        refusal = world.hub.events_of("idle-2", EventKind.TRUST_REJECTED)[-1]
        assert refusal.data["error"] == reason, refusal.detail
        assert agent.updater.trusted.keyring_floor == 2
        assert agent.updater.trusted.record.keyring == current  # nothing replaced

    # A device certificate may read the trust topics but never write them.
    rogue = device_peer(world.broker, world.tmp, "idle-3")
    try:
        rc = rogue.publish(topic, KeyringAnnouncement(keyring=forged).encode(), retain=True)
        assert rc.value == NOT_AUTHORIZED
    finally:
        rogue.close()


def test_corrupt_ota_state_does_not_lower_the_keyring_floor(world: World) -> None:
    dev = world.device("idle-4")
    dev.start_online(world.hub)
    world.install("idle-4", version=1)
    old_keyring, old_signers = world.rotate("idle-4")
    dev.stop()

    (dev.state_dir / "ota_state.json").write_bytes(b"\x00not json")
    (dev.state_dir / "trust" / "record-a.json").write_bytes(b'{"keyring_version": ')
    # the broker no longer hands out the current keyring: the floor must come from disk
    for channel in ("keyring", "freshness"):
        world.hub.publish_retained(world.broker.scheme.trust(channel), b"")

    agent = dev.start_online(world.hub)
    assert agent.updater.trusted.keyring_floor == 2
    assert (dev.state_dir / "ota_state.json.corrupt").exists()  # evidence kept
    replay = signed_offer(
        world.keys, world.broker.scheme, version=2, keyring=old_keyring, signing_keys=old_signers
    )
    deploy(world.hub, replay, "idle-4")
    rejected = world.hub.wait_deployment(replay.command.deployment_id, EventKind.REJECTED)
    assert "RollbackError" in rejected.detail
    active = agent.active_model
    assert active is not None and active.meta.version == 1  # the installed model is intact
    # the damaged copy was repaired from the intact one
    assert wait_for(
        lambda: b'"keyring_version": 2' in (dev.state_dir / "trust" / "record-a.json").read_bytes(),
        5,
    )


def test_the_hub_process_publishes_rotation_and_stores_the_reports(tmp_path: Path) -> None:
    """The whole hub (``build_hub``: ingest, rollout publisher, trust publisher) on its own
    listener and certificate: a device learns the keyring from it, a rotation reaches the
    device, and the device's reports (keyring applied, stale) land in the hub's registry."""
    with running_broker(tmp_path) as broker:
        keys = KeyStore.init(tmp_path / "hub" / "keys")
        files = broker.files
        server = build_hub(
            HubConfig(
                data_dir=tmp_path / "hub",
                mqtt=BrokerEndpoint(
                    port=broker.hub_port,
                    tls=True,
                    ca_file=str(files.ca_cert),
                    cert_file=str(files.hub_cert),
                    key_file=str(files.hub_key),
                ),
                topic_prefix=broker.scheme.prefix,
                offline_after_s=0,
            )
        )
        server.start()
        dev = make_device(broker, tmp_path, "hub-dev-1", keys)
        try:
            assert server.trust_publisher is not None, "no trust publisher in the hub"
            agent = dev.start()
            trusted = agent.updater.trusted
            assert wait_for(lambda: trusted.keyring_floor == 1, 30)
            keys.rotate()  # what `cloud-hub keys rotate` does beside the running hub
            server.trust_publisher.wake()
            assert wait_for(lambda: trusted.keyring_floor == 2, 30)

            dev.clock.jump(7 * 3600)  # the hub's 6 h document is past its expiry
            assert server.registry is not None
            registry = server.registry

            def reported(kind: str) -> list[Any]:
                with registry.session() as s:
                    page = reports.list_events(s, device_id="hub-dev-1", kinds=[kind])
                return page.items

            assert wait_for(lambda: reported(EventKind.FRESHNESS_STALE), 30)
            applied = reported(EventKind.KEYRING_APPLIED)
            assert sorted(e.data["keyring_version"] for e in applied) == [1, 2]
        finally:
            dev.stop()
            server.stop()


def test_a_new_device_starts_at_the_fleets_keyring_floor(tmp_path: Path) -> None:
    """Enrollment hands the device the current keyring (over the pinned-CA HTTPS channel,
    verified against the trust root): a broker cannot start it on the pre-rotation keyring and
    then install the revoked key's bundle."""
    ca = CertificateAuthority.load_or_create(tmp_path / "hub" / "ca")
    keys = KeyStore.init(tmp_path / "hub" / "keys")
    old_keyring, old_signers = keys.keyring_envelope(), keys.signing_keys()
    keys.rotate()  # the old signing key leaked and was revoked before this device came along
    with (
        running_broker(tmp_path, device_ca=ca) as broker,
        running_enrollment(tmp_path / "hub", keys=keys, broker=broker) as (url, service),
    ):
        layout = InstallLayout(tmp_path / "root")
        install(
            InstallOptions(
                hub_url=url,
                token=service.issue_token(device_class=DEVICE_CLASS)[0],
                layout=layout,
                device_id="new-1",
                device_class=DEVICE_CLASS,
                ca_fingerprint=service.ca.fingerprint,
                systemd=False,
            )
        )
        assert TrustedStore(layout.state_dir).keyring_floor == 2

        hub = hub_peer(broker)  # the broker hands out only what an attacker chose
        hub.publish_retained(
            broker.scheme.trust("keyring"), KeyringAnnouncement(keyring=old_keyring).encode()
        )
        dev = Device(device_id="new-1", config=layout.config_path)
        try:
            agent = dev.start_online(hub)
            refusal = hub.wait_event("new-1", EventKind.TRUST_REJECTED)
            assert refusal.data["error"] == "RollbackError"
            replay = signed_offer(
                keys, broker.scheme, version=1, keyring=old_keyring, signing_keys=old_signers
            )
            deploy(hub, replay, "new-1")
            rejected = hub.wait_deployment(replay.command.deployment_id, EventKind.REJECTED)
            assert "RollbackError" in rejected.detail
            assert agent.active_model is None and agent.updater.trusted.keyring_floor == 2
        finally:
            dev.stop()
            hub.close()
