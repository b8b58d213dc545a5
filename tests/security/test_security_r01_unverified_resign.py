"""R1: the hub signs nothing derived from a bundle that does not verify against its own trust.

The attack (issue #13, finding 1): an operator token uploads a bundle signed by the
attacker's own root — once with a 10-year expiry, once with version 2**31-1 to freeze devices
— or drops it into the bundle folder; the hub used to register it and, for a device on v1,
re-sign it as a *hub-signed* delta. Now: 422 with the reason, never registered, never stored,
never delta-signed, and a real device on v1 never receives it (and still takes the next real
update as a delta).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cloud_hub.bundles import default_store
from cloud_hub.config import HubConfig
from cloud_hub.delivery import FleetPublisher, PublisherConfig
from cloud_hub.delta import DeltaCache, make_delta_bundle, plan
from cloud_hub.errors import DeliveryError
from cloud_hub.hub import build_hub
from cloud_hub.keys import KeyStore
from cloud_hub.registry import catalog
from cloud_hub.rollout.delivery import PublisherDelivery
from shared.broker_endpoint import BrokerEndpoint
from shared.bundle import BundleManifest, artifact_info, build_bundle, parse_bundle, parse_manifest
from shared.errors import BundleError
from shared.messages import new_id
from shared.signing import format_time
from simulations.harness.agents import LocalAgentFleet
from tests.security._support_api import auth, recording_logs, request, running_api
from tests.security._support_bundles import CLASS, MAX_VERSION, MODEL, Attacker, hub_bundle


def _upload(port: int, token: str, data: bytes) -> tuple[int, str]:
    headers = {**auth(token), "Content-Type": "application/octet-stream"}
    answer = request(port, "POST", "/api/v1/bundles/upload", body=data, headers=headers)
    return answer.status, str(answer.json().get("message", ""))


def test_foreign_bundles_uploaded_by_an_operator_are_refused(tmp_path: Path) -> None:
    with running_api(tmp_path) as api:
        store = api.context.bundles
        assert store is not None
        keys = store.keys
        assert isinstance(keys, KeyStore)
        v1_id, v1 = hub_bundle(keys, store, 1)
        operator = api.tokens["operator"]
        assert _upload(api.port, operator, v1)[0] == 201  # the hub's own bundle: accepted

        attacker = Attacker()
        attacks = {
            "own root, 10-year expiry": attacker.bundle(2, expires_days=3650),
            "own root, version 2**31-1": attacker.bundle(MAX_VERSION, expires_days=3650),
            # the hub's public keyring copied in, manifest signed by the attacker's key
            "hub keyring, foreign key": attacker.bundle(2, keyring=keys.keyring_envelope()),
        }
        with recording_logs("cloud_hub.api") as logs:
            for what, (_, data) in attacks.items():
                status, message = _upload(api.port, operator, data)
                assert status == 422, (what, status, message)
                assert "refused" in message and ("keyring" in message or "key" in message), (
                    what,
                    message,
                )
        refusals = [m for m in logs.messages() if "refused (R1)" in m]
        assert len(refusals) == len(attacks), logs.messages()

        # nothing registered, nothing stored, no model version 2 or 2**31-1 recorded
        with api.registry.session() as s:
            listed = catalog.list_bundles(s, model_name=MODEL).items
            versions = [v.version for v in catalog.list_model_versions(s, MODEL)]
        assert [b.bundle_id for b in listed] == [v1_id]
        assert versions == [1]
        assert store.ids() == [v1_id]

        # dropped into the folder by hand: still not trusted, not registrable by id
        foreign_id, foreign = attacks["own root, version 2**31-1"]
        store.path_of(foreign_id).write_bytes(foreign)
        body = {
            "bundle_id": foreign_id,
            "model_name": MODEL,
            "version": MAX_VERSION,
            "device_class": CLASS,
            "size": len(foreign),
        }
        answer = request(
            api.port,
            "POST",
            "/api/v1/bundles",
            body=json.dumps(body).encode(),
            headers=auth(operator),
        )
        assert answer.status == 422 and "refused" in answer.json()["message"], answer.body
        assert [e.bundle_id for e in store.entries()] == [v1_id]
        assert store.latest_version(MODEL, CLASS) == 1  # the floor is not pushed to 2**31-1

        # and never re-signed: no delta from or to it, through either entry point
        cache = DeltaCache(store)
        assert cache.delta(foreign_id, v1_id) is None
        assert cache.delta(v1_id, foreign_id) is None
        assert not (store.directory / "deltas").exists()
        for target, base in ((foreign, v1), (v1, foreign)):
            with pytest.raises(BundleError):
                make_delta_bundle(target, base, keys)


def _eventually(check: Callable[[], bool], timeout: float, diag: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, diag()
        time.sleep(0.2)


@pytest.mark.integration
def test_a_device_on_v1_never_receives_a_foreign_bundle(tmp_path: Path) -> None:
    keys = KeyStore.init(tmp_path / "hub" / "keys")
    store = default_store(keys)
    v1_id, _ = hub_bundle(keys, store, 1)
    registered = {v1_id}
    prefix = f"r01-{new_id()[:10]}"
    with LocalAgentFleet(
        root=tmp_path / "fleet",
        trust_root=keys.trust_root().to_dict(),
        mqtt_url="mqtt://127.0.0.1:1883",
        prefix=prefix,
        n=1,
        tables={"timeouts": {"chunk_retry_s": 0.5}, "limits": {"fsync_chunks": False}},
    ) as fleet:
        dev = fleet.device_ids[0]
        cfg = PublisherConfig(broker=BrokerEndpoint(port=1883), prefix=prefix, chunk_size=32 * 1024)
        with FleetPublisher(cfg) as pub:

            def diag() -> str:
                return f"{pub.devices().get(dev)}\n{fleet.logs(dev, 3000)}"

            def installed() -> int | None:
                info = pub.devices().get(dev)
                return None if info is None else info.installed_version

            assert not pub.wait_for_devices([dev], timeout=60), diag()
            delivery = PublisherDelivery(
                pub,
                keys,
                store,
                installed_lookup=lambda ids: {d: v1_id for d in ids},
                indexed_lookup=registered.__contains__,
            )
            delivery.deploy(v1_id, [dev], deployment_id=f"{prefix}-v1")
            _eventually(lambda: installed() == 1, 60, diag)

            # the attacker's bundle sits in the bundle folder (dropped, or raced past an
            # upload): a rollout naming it fails before anything is published
            attacker = Attacker()
            for foreign_id, foreign in (
                attacker.bundle(2, expires_days=3650),
                attacker.bundle(MAX_VERSION),
            ):
                store.path_of(foreign_id).write_bytes(foreign)
                for indexed in (registered.__contains__, None):  # even if the registry lied
                    delivery.indexed_lookup = indexed
                    with pytest.raises(DeliveryError, match="not usable"):
                        delivery.deploy(foreign_id, [dev], deployment_id=f"{prefix}-{new_id()}")
                assert not (store.directory / "deltas").exists()
            assert set(delivery.shipped) == {f"{prefix}-v1"}  # not one byte shipped since

            # nothing lost: the device still runs v1 and takes the real v2 as a hub delta
            delivery.indexed_lookup = registered.__contains__
            v2_id, v2 = hub_bundle(keys, store, 2)
            registered.add(v2_id)
            assert installed() == 1
            delivery.deploy(v2_id, [dev], deployment_id=f"{prefix}-v2")
            _eventually(lambda: installed() == 2, 60, diag)
            totals = delivery.shipped[f"{prefix}-v2"]
            assert totals.bytes_shipped < len(v2) // 2, totals
    assert "2147483647" not in fleet.logs(dev, 1_000_000)


def test_a_delta_never_outlives_or_renames_its_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = KeyStore.init(tmp_path / "keys")
    store = default_store(keys)
    v1_id, _ = hub_bundle(keys, store, 1)
    v2_id, v2 = hub_bundle(keys, store, 2)
    delta = DeltaCache(store).delta(v2_id, v1_id)
    assert delta is not None
    target = parse_manifest(parse_bundle(v2).manifest_envelope)
    signed = parse_manifest(parse_bundle(delta).manifest_envelope)
    assert signed.is_delta
    assert (signed.model_name, signed.version, signed.expires) == (
        target.model_name,
        target.version,
        target.expires,
    )

    # a delta builder that stretched the expiry (or bumped the version) is caught before
    # the hub's key signs anything
    real = plan.delta_manifest

    def stretched(*args: object, **kw: object) -> object:
        built = real(*args, **kw)  # type: ignore[arg-type]
        assert built is not None
        manifest, wire = built
        return dataclasses.replace(manifest, expires="2099-01-01T00:00:00Z"), wire

    def bumped(*args: object, **kw: object) -> object:
        built = real(*args, **kw)  # type: ignore[arg-type]
        assert built is not None
        manifest, wire = built
        return dataclasses.replace(manifest, version=MAX_VERSION), wire

    for fake in (stretched, bumped):
        fresh = KeyStore.init(tmp_path / fake.__name__ / "keys")
        fresh_store = default_store(fresh)
        a_id, _ = hub_bundle(fresh, fresh_store, 1)
        b_id, _ = hub_bundle(fresh, fresh_store, 2)
        monkeypatch.setattr(plan, "delta_manifest", fake)
        with recording_logs("cloud_hub.delta") as logs:
            assert DeltaCache(fresh_store).delta(b_id, a_id) is None
        assert any("differs from its target" in m for m in logs.messages()), logs.messages()
        assert not (fresh_store.directory / "deltas").exists()
        monkeypatch.undo()


def test_a_hub_signed_bundle_that_outlives_the_hub_limit_is_refused(tmp_path: Path) -> None:
    with running_api(tmp_path) as api:
        store = api.context.bundles
        assert store is not None and isinstance(store.keys, KeyStore)
        keys = store.keys
        now = datetime.now(timezone.utc)
        onnx = b"model" * 100
        manifest = BundleManifest(
            model_name=MODEL,
            version=5,
            device_class=CLASS,
            created=format_time(now),
            expires=format_time(now + timedelta(days=3651)),
            artifacts=[artifact_info("model.onnx", onnx)],
        )
        data = build_bundle(
            manifest,
            {"model.onnx": onnx},
            signing_keys=keys.signing_keys(),
            keyring_envelope=keys.keyring_envelope(),
        )
        status, message = _upload(api.port, api.tokens["operator"], data)
        assert status == 422 and "lifetime" in message, message
        assert store.ids() == []


def test_bundles_dropped_into_the_folder_are_not_indexed_at_start(tmp_path: Path) -> None:
    keys = KeyStore.init(tmp_path / "hub" / "keys")
    store = default_store(keys)
    v1_id, _ = hub_bundle(keys, store, 1)
    foreign_id, foreign = Attacker().bundle(MAX_VERSION, expires_days=3650)
    store.path_of(foreign_id).write_bytes(foreign)
    config = HubConfig(data_dir=tmp_path / "hub", enable_ingest=False, offline_after_s=0)
    with recording_logs("cloud_hub") as logs:  # the indexer logs under cloud_hub.registry
        server = build_hub(config, rollout_engine=False).start()
    try:
        assert server.registry is not None
        with server.registry.session() as s:
            assert [b.bundle_id for b in catalog.list_bundles(s).items] == [v1_id]
            assert [v.version for v in catalog.list_model_versions(s, MODEL)] == [1]
    finally:
        server.stop()
    refused = [m for m in logs.messages() if foreign_id in m and "not trusted" in m]
    assert refused and "keyring" in refused[0], logs.messages()
    assert store.path_of(foreign_id).read_bytes() == foreign  # left for the operator to see
