"""R10: a broker that withholds updates is detected (signed freshness document).

Against a real Mosquitto with the generated mTLS configuration, the hub's
:class:`TrustPublisher` (real key store) over the hub certificate, and real ``EdgeAgent``s:

- the broker stops passing on the hub's re-signed documents and the clock moves past the
  last one's expiry: the device reports ``freshness_stale`` (event on the hub, status), and
  recovers (``freshness_ok``) when a fresh document gets through;
- the broker replays an older document, or one with the pre-rotation keyring: refused with
  the reason, the newer one kept;
- a device that never receives a document reports stale after the grace period;
- the document names a release for the device's class newer than it runs (offers are being
  withheld: a freeze): ``freshness_behind``, until it is installed.

Plus the pure refusals of :func:`shared.freshness.verify_freshness`, the trusted record's
two copies, and :func:`cloud_hub.trust_publisher.newest_released`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.cli import main as hub_main
from cloud_hub.keys import KeyStore, KeyStoreConfig
from cloud_hub.registry import Registry, catalog, rollouts
from cloud_hub.registry.records import BundleRecord, RolloutRecord, StageSpec
from cloud_hub.trust_publisher import newest_released, released_from_registry
from edge_agent.ota.freshness import TrustUpdates
from edge_agent.ota.trusted import TrustedStore
from shared.errors import (
    ExpiredError,
    MalformedBundleError,
    MixAndMatchError,
    RevokedKeyError,
    RollbackError,
)
from shared.freshness import (
    MAX_FRESHNESS_LIFETIME,
    FreshnessDocument,
    ReleasedBundle,
    sign_freshness,
    verify_freshness,
)
from shared.messages import Event, EventKind, FreshnessAnnouncement, KeyringAnnouncement, Message
from shared.signing import format_time
from tests.agent_ota.agent_ota_helpers import wait_for
from tests.security._support_freshness import DEVICE_CLASS, Clock, World, running_world

UTC = timezone.utc
HOURS = 3600.0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with running_world(tmp_path) as w:
        yield w


def _freshness_payload(world: World) -> tuple[bytes, int]:
    """What the hub would publish now (the key store signs a new document), and its version."""
    now = datetime.fromtimestamp(world.clock(), tz=UTC)
    envelope = world.keys.sign_freshness(world.released, now=now)
    announcement = FreshnessAnnouncement(freshness=envelope, keyring=world.keys.keyring_envelope())
    return announcement.encode(), int(envelope["signed"]["version"])


@pytest.mark.integration
def test_withheld_documents_make_the_device_report_stale(world: World) -> None:
    dev = world.device("fresh-1")
    agent = dev.start_online(world.hub)
    trust = agent.trust_updates
    assert wait_for(lambda: trust.verdict.state.value == "fresh", 20)
    assert wait_for(lambda: world.hub.trust_status("fresh-1").get("freshness") == "fresh", 20)

    # The hub keeps re-signing, the broker passes nothing on; 7 h later the 6 h document is
    # past its expiry.
    world.clock.jump(7 * HOURS)
    stale = world.hub.wait_event("fresh-1", EventKind.FRESHNESS_STALE)
    assert "expired" in stale.detail and "withholding" in stale.detail
    assert stale.data["freshness"] == "stale"
    assert wait_for(lambda: world.hub.trust_status("fresh-1").get("freshness") == "stale", 20)
    assert trust.store.keyring_floor == 1  # nothing else changed

    # A fresh document gets through: the device says so.
    assert world.publisher.step()
    ok = world.hub.wait_event("fresh-1", EventKind.FRESHNESS_OK)
    assert ok.data["freshness"] == "fresh"


@pytest.mark.integration
def test_replayed_old_documents_are_refused(world: World) -> None:
    dev = world.device("fresh-2")
    agent = dev.start_online(world.hub)
    trust = agent.trust_updates
    topic = world.broker.scheme.trust("freshness")
    older, _ = _freshness_payload(world)
    newer, version = _freshness_payload(world)
    world.hub.publish_retained(topic, newer)
    assert wait_for(lambda: trust.store.record.freshness_version == version, 20)
    kept = trust.store.record.freshness

    world.hub.publish_retained(topic, older)  # the broker replays what it kept
    refusal = world.hub.wait_event("fresh-2", EventKind.TRUST_REJECTED)
    assert refusal.data["error"] == "RollbackError", refusal.detail
    assert trust.store.record.freshness == kept

    # After a rotation, a document carrying the old keyring (v1) is refused as well: the
    # keyring floor comes first.
    world.rotate("fresh-2")
    before = len(world.hub.events_of("fresh-2", EventKind.TRUST_REJECTED))
    world.hub.publish_retained(topic, older)
    assert wait_for(
        lambda: len(world.hub.events_of("fresh-2", EventKind.TRUST_REJECTED)) > before, 20
    )
    last = world.hub.events_of("fresh-2", EventKind.TRUST_REJECTED)[-1]
    assert last.data["error"] == "RollbackError" and "keyring" in last.detail


@pytest.mark.integration
def test_a_device_that_never_gets_a_document_reports_stale(world: World) -> None:
    for channel in ("keyring", "freshness"):  # the broker hands out nothing
        world.hub.publish_retained(world.broker.scheme.trust(channel), b"")
    dev = world.device("fresh-3")
    agent = dev.start_online(world.hub)
    assert agent.trust_updates.verdict.state.value == "unknown"
    world.clock.jump(agent.trust_updates.policy.missing_grace_s + 60)
    stale = world.hub.wait_event("fresh-3", EventKind.FRESHNESS_STALE)
    assert "no valid freshness document" in stale.detail


@pytest.mark.integration
def test_a_release_the_device_was_not_offered_reveals_a_freeze(world: World) -> None:
    dev = world.device("fresh-4")
    agent = dev.start_online(world.hub)
    world.install("fresh-4", version=1)
    v3 = world.install_offer(version=3)  # built and released, but never offered to fresh-4
    world.released[DEVICE_CLASS] = ReleasedBundle("sensor-mlp", 3, v3.bundle_id)
    assert world.publisher.step()  # the released set changed: re-signed at once
    behind = world.hub.wait_event("fresh-4", EventKind.FRESHNESS_BEHIND)
    assert "v3" in behind.detail and "runs v1" in behind.detail
    active = agent.active_model
    assert active is not None and active.meta.version == 1

    world.deploy_offer(v3, "fresh-4")  # the offer gets through: the freeze is over
    assert wait_for(lambda: agent.trust_updates.verdict.state.value == "fresh", 20)
    world.hub.wait_event("fresh-4", EventKind.FRESHNESS_OK)


# -- pure checks ------------------------------------------------------------------------------


def _doc(now: datetime, **changes: Any) -> FreshnessDocument:
    doc = FreshnessDocument(
        version=5,
        issued=format_time(now),
        expires=format_time(now + timedelta(hours=6)),
        keyring_version=1,
    )
    return replace(doc, **changes)


def test_verify_freshness_refusals(tmp_path: Path) -> None:
    keys = KeyStore.init(tmp_path / "keys")
    now = datetime.now(UTC)
    keyring = keys.keyring(now=now)
    signers = keys.signing_keys(now=now)
    good = sign_freshness(_doc(now), signers)
    assert verify_freshness(good, keyring, now=now, min_version=5).version == 5
    with pytest.raises(RollbackError):
        verify_freshness(good, keyring, now=now, min_version=6)
    with pytest.raises(ExpiredError):
        verify_freshness(good, keyring, now=now + timedelta(hours=6, seconds=1))
    with pytest.raises(MixAndMatchError):
        verify_freshness(sign_freshness(_doc(now, keyring_version=2), signers), keyring, now=now)
    long_lived = _doc(now, expires=format_time(now + MAX_FRESHNESS_LIFETIME + timedelta(1)))
    with pytest.raises(MalformedBundleError, match="valid for"):
        verify_freshness(sign_freshness(long_lived, signers), keyring, now=now)
    keys.rotate(now=now)  # the old signing key is revoked in keyring v2
    rotated = keys.keyring(now=now)
    stale_signer = sign_freshness(_doc(now, keyring_version=2), signers)
    with pytest.raises(RevokedKeyError):
        verify_freshness(stale_signer, rotated, now=now)


def test_key_store_freshness_versions_only_grow(tmp_path: Path) -> None:
    keys = KeyStore.init(tmp_path / "keys")
    now = datetime.now(UTC)
    first = keys.sign_freshness({}, now=now)["signed"]["version"]
    second = keys.sign_freshness({}, now=now - timedelta(hours=1))["signed"]["version"]
    assert second == first + 1  # a hub clock that steps back does not reuse versions
    cfg = KeyStoreConfig(freshness_hours=2)
    doc = keys.sign_freshness({}, config=cfg, now=now)["signed"]
    assert doc["expires"] == format_time(now + timedelta(hours=2))


def test_trusted_record_survives_one_corrupt_copy_and_reports_losing_both(tmp_path: Path) -> None:
    keys = KeyStore.init(tmp_path / "keys")
    store = TrustedStore(tmp_path / "state")
    assert store.accept_keyring(keys.keyring(), keys.keyring_envelope())
    keys.rotate()
    assert store.accept_keyring(keys.keyring(), keys.keyring_envelope())
    copies = sorted((tmp_path / "state" / "trust").glob("record-*.json"))
    assert len(copies) == 2

    copies[1].write_bytes(b"\xff")
    again = TrustedStore(tmp_path / "state")
    assert again.keyring_floor == 2 and not again.lost
    assert b'"keyring_version": 2' in copies[1].read_bytes()  # repaired

    for c in copies:
        c.write_text("[]")
    lost = TrustedStore(tmp_path / "state")
    assert lost.lost and lost.keyring_floor == 0


def test_newest_released_counts_only_finished_whole_class_rollouts() -> None:
    def bundle(bid: str, version: int) -> BundleRecord:
        return BundleRecord(
            bundle_id=bid,
            model_name="m",
            version=version,
            device_class="c",
            kind="full",
            base_bundle_id=None,
            size=1,
            path="",
            manifest={},
            created_at=0.0,
        )

    def rollout(bid: str, state: str, labels: dict[str, str] | None = None) -> RolloutRecord:
        return RolloutRecord(
            rollout_id=f"r-{bid}",
            name="",
            bundle_id=bid,
            previous_bundle_id=None,
            device_class="c",
            target_labels=labels or {},
            state=state,
            config={},
            current_stage=0,
            reason="",
            created_by="",
            revision=0,
            created_at=0.0,
            updated_at=0.0,
            started_at=None,
            finished_at=None,
        )

    bundles = {b.bundle_id: b for b in (bundle("b2", 2), bundle("b3", 3), bundle("b4", 4))}
    done = [
        rollout("b2", "done"),
        rollout("b3", "done"),
        rollout("b4", "done", {"site": "lab"}),  # only some devices: not a release to all
        rollout("b4", "wave"),
    ]
    assert newest_released(done, bundles) == {"c": ReleasedBundle("m", 3, "b3")}


def test_a_broker_flooding_the_trust_topics_cannot_flood_the_reports(tmp_path: Path) -> None:
    keys = KeyStore.init(tmp_path / "keys")
    sent: list[Message] = []
    clock = Clock()
    updates = TrustUpdates(
        device_id="flood-1",
        device_class=DEVICE_CLASS,
        trust=keys.trust_root(),
        store=TrustedStore(tmp_path / "state"),
        installed=lambda: None,
        emit=sent.append,
        clock=clock,
    )
    old = KeyringAnnouncement(keyring=keys.keyring_envelope()).encode()
    keys.rotate()
    updates.handle_keyring(KeyringAnnouncement(keyring=keys.keyring_envelope()).encode())
    assert [m.kind for m in sent if isinstance(m, Event)] == [EventKind.KEYRING_APPLIED]
    for _ in range(50):
        updates.handle_keyring(old)  # the same replay, over and over
    for i in range(200):
        # each refused for another reason (the text names the version)
        updates.handle_keyring(b'{"type": "trust.keyring", "v": "%d.0"}' % (i + 2))
    refusals = [m for m in sent if isinstance(m, Event) and m.kind == EventKind.TRUST_REJECTED]
    assert len(refusals) == updates.policy.max_refusal_events
    assert sum("RollbackError" in e.detail for e in refusals) == 1
    assert updates.store.keyring_floor == 2
    clock.jump(updates.policy.refusal_window_s)  # a new window reports again
    updates.handle_keyring(old)
    assert "RollbackError" in sent[-1].detail  # type: ignore[attr-defined]


def test_released_bundles_come_from_finished_rollouts_in_the_registry(registry: Registry) -> None:
    with registry.session() as s:
        for version in (1, 2, 3):
            catalog.register_bundle(
                s,
                bundle_id=f"b{version}",
                model_name="sensor-mlp",
                version=version,
                device_class=DEVICE_CLASS,
                size=1,
                now=float(version),
            )
        stage = [StageSpec(name="all", percent=100.0)]
        for bid, state, labels in (
            ("b1", "done", None),
            ("b2", "done", None),
            ("b3", "done", {"site": "lab"}),  # released to some devices only
            ("b3", "wave", None),  # still rolling out
        ):
            rollouts.create_rollout(
                s,
                rollout_id=f"{bid}-{state}-{bool(labels)}",
                bundle_id=bid,
                device_class=DEVICE_CLASS,
                stages=stage,
                target_labels=labels,
                state=state,
                now=1.0,
            )
    released = released_from_registry(registry)()
    assert released == {DEVICE_CLASS: ReleasedBundle("sensor-mlp", 2, "b2")}


def test_keys_status_shows_what_devices_are_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "keys"
    keys = KeyStore.init(d)
    assert hub_main(["keys", "status", "--dir", str(d)]) == 0
    assert "none signed yet" in capsys.readouterr().out
    keys.sign_freshness({DEVICE_CLASS: ReleasedBundle("sensor-mlp", 3, "b" * 64)})
    assert hub_main(["keys", "status", "--dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert "keyring      version 1" in out and "freshness    version" in out
    assert f"released   {DEVICE_CLASS}: sensor-mlp v3" in out
