"""The OTA updater in-process: real files, real bundles, real onnxruntime; no broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.ota.events import EVENT_CHUNKS_REPAIR
from edge_agent.ota.machine import Phase
from edge_agent.ota.slots import SlotStore
from shared.chunks import Chunk, encode_chunk
from shared.messages import EventKind, Status
from tests.agent_ota.agent_ota_helpers import (
    Harness,
    make_bundle,
    make_offer,
    onnx_model_bytes,
    rollback_command,
    with_command,
)

STEPS = [
    EventKind.DOWNLOAD_STARTED,
    EventKind.DOWNLOAD_COMPLETE,
    EventKind.VERIFIED,
    EventKind.INSTALLED,
    EventKind.HEALTH_OK,
    EventKind.COMMITTED,
]


def _assert_consistent(h: Harness) -> None:
    """Active slot complete and intact; persisted state terminal or idle."""
    slots = SlotStore(h.state_dir)
    active = slots.active_name()
    if active is not None:
        assert slots.check(active)
    state = json.loads((h.state_dir / "ota_state.json").read_text())
    dep = state["deployment"]
    assert dep is None or dep["phase"] in ("committed", "rolled_back", "failed")


def test_deploy_commits_into_inactive_slot_and_reports_every_step(harness: Harness) -> None:
    v1 = harness.offer(1)
    harness.deliver(v1)
    assert harness.events(v1.command.deployment_id) == STEPS
    slot = harness.updater.slots.active()
    assert slot is not None and slot.name == "a" and slot.meta.version == 1
    assert harness.updater.slots.check("a")
    v2 = harness.offer(2)
    harness.deliver(v2)
    assert harness.events(v2.command.deployment_id) == STEPS
    assert harness.updater.slots.active_name() == "b"
    assert harness.updater.state.installed_versions == {"sensor-mlp": 2}
    status = harness.updater.status()
    assert status.ota_state == "committed" and status.installed is not None
    assert status.installed.version == 2 and status.deployment_id == v2.command.deployment_id
    assert not harness.subscribed  # fan-out topic released
    assert not (harness.state_dir / "downloads" / v2.bundle_id).exists()
    _assert_consistent(harness)


def test_subscribes_to_fanout_while_downloading(harness: Harness) -> None:
    v1 = harness.offer(1)
    harness.updater.handle_deploy(v1.command)
    assert harness.subscribed == {harness.topics.bundle_chunks(v1.bundle_id)}
    assert harness.updater.subscriptions() == [harness.topics.bundle_chunks(v1.bundle_id)]


def _install_v1(h: Harness) -> str:
    v1 = h.offer(1)
    h.deliver(v1)
    assert h.active_bundle == v1.bundle_id
    return v1.bundle_id


def _refused(h: Harness, offer_cmd_id: str, kind: str, error: str, v1_bundle: str) -> None:
    ev = h.event(offer_cmd_id, kind)
    assert error in ev.detail, ev.detail
    assert h.active_bundle == v1_bundle  # the old model is kept
    assert h.updater.slots.check(h.updater.slots.active_name() or "a")
    _assert_consistent(h)


def test_refuses_bad_signature(harness: Harness) -> None:
    v1 = _install_v1(harness)
    offer = harness.offer(2)
    env = json.loads(json.dumps(offer.command.manifest))
    sig = env["signatures"][0]["sig"]
    env["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    bad = with_command(offer, manifest=env)
    harness.deliver(bad)
    _refused(harness, bad.command.deployment_id, EventKind.REJECTED, "BadSignatureError", v1)


def test_refuses_tampered_manifest(harness: Harness) -> None:
    v1 = _install_v1(harness)
    offer = harness.offer(2)
    env = json.loads(json.dumps(offer.command.manifest))
    env["signed"]["version"] = 99  # signature no longer matches
    harness.updater.handle_deploy(with_command(offer, manifest=env).command)
    _refused(harness, offer.command.deployment_id, EventKind.REJECTED, "BadSignatureError", v1)


def test_refuses_unknown_key(harness: Harness) -> None:
    from shared.signing import SigningKey

    v1 = _install_v1(harness)
    offer = harness.offer(2, signer=SigningKey.generate())
    harness.deliver(offer)
    _refused(harness, offer.command.deployment_id, EventKind.REJECTED, "UnknownKeyError", v1)


def test_refuses_keyring_not_signed_by_pinned_root(harness: Harness) -> None:
    from tests.agent_ota.agent_ota_helpers import make_authority

    v1 = _install_v1(harness)
    rogue = make_authority()
    offer = make_offer(make_bundle(rogue, version=2), harness.topics)
    harness.deliver(offer)
    _refused(harness, offer.command.deployment_id, EventKind.REJECTED, "UnknownKeyError", v1)


def test_refuses_revoked_key(harness: Harness) -> None:
    v1 = _install_v1(harness)
    harness.auth.revoked = [harness.auth.signer.keyid]
    harness.auth.keyring_version = 2
    offer = harness.offer(2)
    harness.deliver(offer)
    _refused(harness, offer.command.deployment_id, EventKind.REJECTED, "RevokedKeyError", v1)


def test_refuses_expired_manifest(harness: Harness) -> None:
    from tests.agent_ota.agent_ota_helpers import utc

    v1 = _install_v1(harness)
    offer = harness.offer(2, expires=utc(60))
    harness.clock.advance(120)  # jump the clock past the manifest's expiry
    harness.deliver(offer)
    _refused(harness, offer.command.deployment_id, EventKind.REJECTED, "ExpiredError", v1)


def test_refuses_expired_keyring(harness: Harness) -> None:
    from tests.agent_ota.agent_ota_helpers import utc

    v1 = _install_v1(harness)
    harness.auth.keyring_expires = utc(-10)
    offer = harness.offer(2)
    harness.deliver(offer)
    _refused(harness, offer.command.deployment_id, EventKind.REJECTED, "ExpiredError", v1)


def test_refuses_replayed_older_keyring(harness: Harness) -> None:
    harness.auth.keyring_version = 5
    v1 = _install_v1(harness)
    harness.auth.keyring_version = 4
    offer = harness.offer(2)
    harness.deliver(offer)
    _refused(harness, offer.command.deployment_id, EventKind.REJECTED, "RollbackError", v1)


def test_refuses_version_not_newer(harness: Harness) -> None:
    _install_v1(harness)
    v2 = harness.offer(2)
    harness.deliver(v2)
    offer = harness.offer(1, model=onnx_model_bytes(seed=3))
    harness.deliver(offer)
    _refused(
        harness, offer.command.deployment_id, EventKind.REJECTED, "RollbackError", v2.bundle_id
    )
    # the same version again under a different bundle (freeze/replay) is refused too
    same = harness.offer(2, model=onnx_model_bytes(seed=77))
    harness.deliver(same)
    _refused(harness, same.command.deployment_id, EventKind.REJECTED, "RollbackError", v2.bundle_id)


def test_version_floor_survives_restart(harness: Harness) -> None:
    _install_v1(harness)
    v2 = harness.offer(2)
    harness.deliver(v2)
    harness.restart()
    offer = harness.offer(1, model=onnx_model_bytes(seed=5))
    harness.deliver(offer)
    _refused(
        harness, offer.command.deployment_id, EventKind.REJECTED, "RollbackError", v2.bundle_id
    )


def test_refuses_wrong_device_class(harness: Harness) -> None:
    v1 = _install_v1(harness)
    offer = harness.offer(2, device_class="jetson-orin")
    harness.deliver(offer)
    _refused(harness, offer.command.deployment_id, EventKind.REJECTED, "WrongTargetError", v1)


def test_refuses_hash_mismatch_after_download(harness: Harness) -> None:
    v1 = _install_v1(harness)
    good = make_bundle(harness.auth, version=2)
    corrupted = good[:-10] + bytes(b ^ 0xFF for b in good[-10:])  # artifact bytes altered
    offer = make_offer(corrupted, harness.topics)
    harness.deliver(offer)
    dep = offer.command.deployment_id
    # the artifact's chunks are fetched again (max_repairs times), then the deployment fails
    for _ in range(harness.limits.max_repairs):
        assert harness.events(dep)[-1] == "chunks_repair"
        harness.answer(offer.frames)
    assert EventKind.VERIFY_FAILED in harness.events(dep)
    _refused(harness, dep, EventKind.FAILED, "HashMismatchError", v1)
    assert harness.updater.deployment is not None
    assert harness.updater.deployment.phase == Phase.FAILED


def test_refuses_mix_and_match_bundle(harness: Harness) -> None:
    """Artifacts of bundle X delivered under the signed manifest of bundle Y."""
    v1 = _install_v1(harness)
    y = harness.offer(2)
    x_bytes = make_bundle(harness.auth, version=2, model=onnx_model_bytes(seed=42))
    x = make_offer(x_bytes, harness.topics)
    # chunks of X re-labelled with Y's bundle id: frames decode fine, content is X's
    frames = [
        encode_chunk(Chunk(y.bundle_id, i, len(x.frames), x_bytes[i * 4096 : (i + 1) * 4096]))
        for i in range(len(x.frames))
    ]
    offer = with_command(y, total_size=len(x_bytes), chunk_size=4096, chunk_count=len(frames))
    harness.updater.handle_deploy(offer.command)
    for f in frames:
        harness.updater.handle_chunk(f)
    dep = offer.command.deployment_id
    while harness.events(dep)[-1] == "chunks_repair":
        harness.answer(frames)  # whoever sends X keeps sending X
    _refused(harness, dep, EventKind.FAILED, "MixAndMatchError", v1)


def test_poisoned_chunk_is_located_and_fetched_again(harness: Harness) -> None:
    """A well-framed chunk with the wrong data (valid frame hash) poisons the download:
    verification against the signed offer finds the artifact, and only its chunks are
    fetched again."""
    v1 = _install_v1(harness)
    offer = harness.offer(2, chunk_size=128)
    n = len(offer.frames)
    victim = n - 2
    forged = encode_chunk(Chunk(offer.bundle_id, victim, n, b"\x00" * 128))
    harness.updater.handle_deploy(offer.command)
    harness.updater.handle_chunk(forged)
    harness.chunks(offer)  # the genuine chunk arrives second: a duplicate, ignored
    dep = offer.command.deployment_id
    assert harness.events(dep)[-1] == "chunks_repair"
    requested = harness.requests()[-1].indices
    assert victim in requested and 0 not in requested  # the header was fine
    harness.answer(offer.frames)
    assert harness.events(dep)[-1] == EventKind.COMMITTED
    assert harness.active_bundle == offer.bundle_id != v1


def test_chunk_of_another_bundle_is_ignored(harness: Harness) -> None:
    v1 = harness.offer(1)
    other = harness.offer(2)
    harness.updater.handle_deploy(v1.command)
    harness.chunks(other)  # foreign chunks: dropped, nothing stored
    assert (
        harness.updater.transfer.download is not None
        and harness.updater.transfer.download.received_count == 0
    )
    harness.chunks(v1)
    assert harness.event(v1.command.deployment_id, EventKind.COMMITTED)


def test_refuses_inconsistent_geometry_and_foreign_topic(harness: Harness) -> None:
    v1 = harness.offer(1)
    for bad in (
        with_command(v1, chunk_count=v1.command.chunk_count + 1, deployment_id="g1"),
        with_command(v1, total_size=10**12, deployment_id="g2"),
        with_command(v1, chunk_topic="elsewhere/#", deployment_id="g3"),
        with_command(
            v1,
            bundle_id="0" * 64,
            deployment_id="g4",
            chunk_topic=harness.topics.bundle_chunks("0" * 64),
        ),
    ):
        harness.updater.handle_deploy(bad.command)
        assert harness.events(bad.command.deployment_id) == [EventKind.REJECTED]
    assert harness.active_bundle is None and not harness.subscribed


def test_health_failure_rolls_back_to_previous_model(harness: Harness) -> None:
    v1 = _install_v1(harness)
    offer = harness.offer(2, model=b"this is not an onnx model")
    harness.deliver(offer)
    dep = offer.command.deployment_id
    assert harness.events(dep)[-3:] == [
        EventKind.INSTALLED,
        EventKind.HEALTH_FAILED,
        EventKind.ROLLED_BACK,
    ]
    assert harness.active_bundle == v1
    assert harness.updater.state.installed_versions == {"sensor-mlp": 1}
    _assert_consistent(harness)
    # the same version (fixed) can be deployed afterwards
    fixed = harness.offer(2)
    harness.deliver(fixed)
    assert harness.events(fixed.command.deployment_id)[-1] == EventKind.COMMITTED


def test_first_install_failing_health_leaves_no_active_model(harness: Harness) -> None:
    offer = harness.offer(1, model=b"garbage")
    harness.deliver(offer)
    assert harness.events(offer.command.deployment_id)[-1] == EventKind.ROLLED_BACK
    assert harness.updater.slots.active_name() is None


def test_preprocess_declares_input_shape(harness: Harness) -> None:
    pre = json.dumps({"input_shape": [4]}).encode()
    offer = harness.offer(1, extra_artifacts={"preprocess.json": (pre, "preprocess")})
    harness.deliver(offer)
    assert harness.events(offer.command.deployment_id)[-1] == EventKind.COMMITTED
    wrong = json.dumps({"input_shape": [7]}).encode()
    bad = harness.offer(2, extra_artifacts={"preprocess.json": (wrong, "preprocess")})
    harness.deliver(bad)
    assert harness.events(bad.command.deployment_id)[-1] == EventKind.ROLLED_BACK


def test_non_onnx_model_file_is_installed_without_smoke_inference(harness: Harness) -> None:
    offer = harness.offer(1, model=b"\x00tflite-ish", model_file="model.tflite")
    harness.deliver(offer)
    assert harness.events(offer.command.deployment_id)[-1] == EventKind.COMMITTED


def test_missing_chunks_are_requested_exactly_and_resumed(harness: Harness) -> None:
    offer = harness.offer(1, chunk_size=64)
    n = len(offer.frames)
    assert n > 10
    lost = [0, 3, n - 1]
    harness.deliver(offer, [i for i in range(n) if i not in lost])
    harness.updater.tick()
    assert not harness.requests()  # too early: chunks were still flowing
    harness.clock.advance(1.5)
    harness.updater.tick()
    assert [r.indices for r in harness.requests()] == [lost]
    assert harness.requests()[0].bundle_id == offer.bundle_id
    harness.updater.tick()  # no repeat within the retry interval
    assert len(harness.requests()) == 1
    harness.chunks(offer, [0])
    harness.clock.advance(1.5)
    harness.updater.tick()
    assert harness.requests()[-1].indices == [3, n - 1]
    harness.chunks(offer, [3, n - 1, 3])  # a duplicate is harmless
    assert harness.events(offer.command.deployment_id)[-1] == EventKind.COMMITTED


def test_corrupt_chunk_is_found_by_its_hash_and_fetched_again(harness: Harness) -> None:
    """A chunk whose data does not match its frame's hash fails the bundle's verification;
    the recorded hashes name exactly that chunk, which is fetched again (one repair)."""
    offer = harness.offer(1)
    frames = list(offer.frames)
    frames[1] = frames[1][:-1] + bytes([frames[1][-1] ^ 1])
    harness.updater.handle_deploy(offer.command)
    for f in frames:
        harness.updater.handle_chunk(f)
    dep = offer.command.deployment_id
    assert harness.events(dep)[-1] == EVENT_CHUNKS_REPAIR
    assert harness.requests()[-1].indices == [1]
    harness.chunks(offer, [1])
    assert harness.events(dep)[-1] == EventKind.COMMITTED
    assert harness.updater.deployment is not None and harness.updater.deployment.repairs == 1


def test_restart_resumes_download_from_disk(harness: Harness) -> None:
    offer = harness.offer(1, chunk_size=64)
    n = len(offer.frames)
    harness.deliver(offer, list(range(0, n, 2)))
    harness.restart()
    assert harness.subscribed == {harness.topics.bundle_chunks(offer.bundle_id)}
    harness.clock.advance(2)
    harness.updater.tick()
    assert harness.requests()[-1].indices == list(range(1, n, 2))
    harness.chunks(offer, list(range(1, n, 2)))
    assert harness.events(offer.command.deployment_id)[-1] == EventKind.COMMITTED
    dep = harness.updater.deployment
    assert dep is not None and dep.resumes == 1


def test_download_timeout_fails_and_next_deployment_proceeds(harness: Harness) -> None:
    offer = harness.offer(1)
    harness.deliver(offer, [0])
    harness.clock.advance(61)
    harness.updater.tick()
    assert harness.events(offer.command.deployment_id)[-1] == EventKind.FAILED
    assert "timed out" in harness.event(offer.command.deployment_id, EventKind.FAILED).detail
    nxt = harness.offer(1, model=onnx_model_bytes(seed=9))
    harness.deliver(nxt)
    assert harness.events(nxt.command.deployment_id)[-1] == EventKind.COMMITTED


def test_new_deployment_supersedes_a_stuck_one(harness: Harness) -> None:
    old = harness.offer(1)
    harness.deliver(old, [0])
    new = harness.offer(2)
    harness.deliver(new)
    assert harness.events(old.command.deployment_id)[-1] == EventKind.FAILED
    assert "superseded" in harness.event(old.command.deployment_id, EventKind.FAILED).detail
    assert harness.events(new.command.deployment_id) == STEPS
    assert not (harness.state_dir / "downloads" / old.bundle_id).exists()


def test_rejected_offer_does_not_cancel_running_download(harness: Harness) -> None:
    good = harness.offer(1)
    harness.deliver(good, [0])
    bad = harness.offer(2, device_class="other")
    harness.deliver(bad)
    assert harness.events(bad.command.deployment_id) == [EventKind.REJECTED]
    harness.chunks(good)
    assert harness.events(good.command.deployment_id)[-1] == EventKind.COMMITTED


def test_duplicate_command_is_harmless(harness: Harness) -> None:
    offer = harness.offer(1)
    harness.deliver(offer)
    n = len(harness.sent)
    harness.deliver(offer)
    harness.restart()
    harness.deliver(offer)
    assert len(harness.sent) == n
    # another deployment of the bundle that is already active: reported committed at once
    again = with_command(offer, deployment_id="again")
    harness.updater.handle_deploy(again.command)
    assert harness.events("again") == [EventKind.COMMITTED]


def test_signed_rollback_order_switches_to_previous_slot(harness: Harness) -> None:
    v1 = _install_v1(harness)
    v2 = harness.offer(2)
    harness.deliver(v2)
    changes: list[object] = []
    harness.updater.active_changed.append(lambda slot: changes.append(slot and slot.meta.version))
    cmd = rollback_command(
        harness.auth,
        model_name="sensor-mlp",
        to_version=1,
        to_bundle_id=v1,
        from_bundle_id=v2.bundle_id,
    )
    harness.updater.handle_rollback(cmd)
    assert harness.events(cmd.deployment_id) == [EventKind.ROLLED_BACK]
    assert harness.active_bundle == v1 and changes == [1]
    assert harness.updater.state.installed_versions == {"sensor-mlp": 1}
    # R5: the rollback does not lower the high-water mark: a (fixed) model ships as v3
    v2b = harness.offer(2, model=onnx_model_bytes(seed=21))
    harness.deliver(v2b)
    assert harness.events(v2b.command.deployment_id) == [EventKind.REJECTED]
    v3 = harness.offer(3)
    harness.deliver(v3)
    assert harness.events(v3.command.deployment_id)[-1] == EventKind.COMMITTED


def test_rollback_order_for_absent_version_fails(harness: Harness) -> None:
    v1 = _install_v1(harness)
    cmd = rollback_command(
        harness.auth,
        model_name="sensor-mlp",
        to_version=0 + 7,
        to_bundle_id="f" * 64,
        from_bundle_id=v1,
    )
    harness.updater.handle_rollback(cmd)
    assert harness.events(cmd.deployment_id) == [EventKind.FAILED]
    assert harness.active_bundle == v1


def test_unsigned_rollback_order_is_rejected(harness: Harness) -> None:
    from tests.agent_ota.agent_ota_helpers import make_authority

    v1 = _install_v1(harness)
    v2 = harness.offer(2)
    harness.deliver(v2)
    cmd = rollback_command(
        make_authority(),
        model_name="sensor-mlp",
        to_version=1,
        to_bundle_id=v1,
        from_bundle_id=v2.bundle_id,
    )
    harness.updater.handle_rollback(cmd)
    assert harness.events(cmd.deployment_id) == [EventKind.REJECTED]
    assert harness.active_bundle == v2.bundle_id


def test_older_bundle_accepted_with_signed_rollback_order(harness: Harness) -> None:
    _install_v1(harness)
    v2 = harness.offer(2)
    harness.deliver(v2)
    v1b_bytes = make_bundle(harness.auth, version=1, model=onnx_model_bytes(seed=33))
    v1b = make_offer(v1b_bytes, harness.topics)
    order = rollback_command(
        harness.auth,
        model_name="sensor-mlp",
        to_version=1,
        to_bundle_id=v1b.bundle_id,
        from_bundle_id=v2.bundle_id,
    ).order
    offer = with_command(v1b, rollback_order=order)
    harness.deliver(offer)
    assert harness.events(offer.command.deployment_id)[-1] == EventKind.COMMITTED
    assert harness.active_bundle == v1b.bundle_id


class Crash(BaseException):
    """Stands in for SIGKILL at a precise point (nothing after it runs)."""


def _crash_then_recover(harness: Harness, monkeypatch: pytest.MonkeyPatch, target: str) -> str:
    v1 = _install_v1(harness)
    offer = harness.offer(2)
    obj_name, attr = target.split(".")
    obj = harness.updater.slots if obj_name == "slots" else harness.updater
    original = getattr(obj, attr)
    calls = {"n": 0}

    def crashing(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if attr == "switch":  # crash just after the pointer reached the disk
            original(*args, **kwargs)
        raise Crash

    monkeypatch.setattr(obj, attr, crashing)
    with pytest.raises(Crash):
        harness.deliver(offer)
    assert harness.active_bundle in (v1, offer.bundle_id)
    harness.restart()
    assert harness.events(offer.command.deployment_id)[-1] == EventKind.COMMITTED
    assert harness.active_bundle == offer.bundle_id
    _assert_consistent(harness)
    return v1


@pytest.mark.parametrize("target", ["slots.write", "updater._check_health", "slots.switch"])
def test_crash_during_install_recovers_and_commits(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    _crash_then_recover(harness, monkeypatch, target)


def test_model_that_keeps_crashing_the_agent_is_rolled_back(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = _install_v1(harness)
    offer = harness.offer(2)

    def crash(*_: object) -> None:
        raise Crash

    monkeypatch.setattr(harness.updater, "_check_health", crash)
    with pytest.raises(Crash):
        harness.deliver(offer)
    for _ in range(harness.limits.max_resumes):
        harness.updater.close()
        harness.updater = harness._build()
        monkeypatch.setattr(harness.updater, "_check_health", crash)
        with pytest.raises(Crash):
            harness.updater.recover()
    harness.restart()
    assert harness.events(offer.command.deployment_id)[-1] == EventKind.ROLLED_BACK
    assert harness.active_bundle == v1
    _assert_consistent(harness)


def test_status_message_shape(harness: Harness) -> None:
    v1 = harness.offer(1)
    harness.deliver(v1)
    st = harness.updater.status()
    msg = Status(
        device_id="dev-1",
        online=True,
        installed=st.installed,
        ota_state=st.ota_state,
        deployment_id=st.deployment_id,
    )
    assert (
        Status is type(msg)
        and msg.installed is not None
        and msg.installed.bundle_id == v1.bundle_id
    )


def test_corrupt_state_file_does_not_brick_the_agent(harness: Harness, tmp_path: Path) -> None:
    v1 = _install_v1(harness)
    (harness.state_dir / "ota_state.json").write_text("{not json")
    harness.restart()
    assert harness.active_bundle == v1
    assert harness.updater.state.installed_versions == {"sensor-mlp": 1}  # re-derived from slot
    assert (harness.state_dir / "ota_state.json.corrupt").exists()


def test_crash_during_ordered_rollback_completes_after_restart(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = _install_v1(harness)
    v2 = harness.offer(2)
    harness.deliver(v2)
    original = harness.updater.slots.switch

    def switch_then_crash(name: str | None) -> None:
        original(name)
        raise Crash

    monkeypatch.setattr(harness.updater.slots, "switch", switch_then_crash)
    cmd = rollback_command(
        harness.auth,
        model_name="sensor-mlp",
        to_version=1,
        to_bundle_id=v1,
        from_bundle_id=v2.bundle_id,
    )
    with pytest.raises(Crash):
        harness.updater.handle_rollback(cmd)
    harness.restart()
    assert harness.events(cmd.deployment_id) == [EventKind.ROLLED_BACK]
    assert harness.active_bundle == v1
    assert harness.updater.state.installed_versions == {"sensor-mlp": 1}
    _assert_consistent(harness)


def test_restarted_download_keeps_only_chunks_whose_bytes_match_their_hash(
    tmp_path: Path,
) -> None:
    """Data, hash and map entry of a chunk are written without waiting for the disk (the
    hash and map entry in batches); after a kill or power cut the reopened download re-hashes
    what its map lists and asks again for every chunk whose bytes were lost or torn, and for
    every chunk stored after the last batch was written."""
    from edge_agent.ota.download import BundleDownload
    from shared.chunks import split_chunks

    data = bytes(range(256)) * 40
    chunks = split_chunks("b" * 64, data, 1000)
    d = tmp_path / "d"
    dl = BundleDownload(d, bundle_id="b" * 64, total_size=len(data), chunk_size=1000)
    for c in chunks[:6]:
        assert dl.store(c)
    assert not dl.store(chunks[0])  # duplicate
    dl.record()  # as the updater's tick does
    assert dl.store(chunks[8])  # its data is on disk, its map entry not yet
    assert (d / "received.map").read_bytes()[8] == 0
    dl._fds = []  # a kill: no sync, no close
    part = bytearray((d / "bundle.part").read_bytes())
    part[2 * 1000 + 17] ^= 0xFF  # chunk 2 torn
    (d / "bundle.part").write_bytes(bytes(part))
    digests = bytearray((d / "chunks.sha256").read_bytes())
    digests[4 * 32 : 5 * 32] = bytes(32)  # chunk 4's hash lost
    (d / "chunks.sha256").write_bytes(bytes(digests))
    listed = bytearray((d / "received.map").read_bytes())
    listed[7] = 1  # the map reached the disk, chunk 7's data did not
    (d / "received.map").write_bytes(bytes(listed))
    again = BundleDownload(d, bundle_id="b" * 64, total_size=len(data), chunk_size=1000)
    assert again.missing() == [2, 4, *range(6, len(chunks))]
    assert (d / "received.map").read_bytes()[:8] == bytes([1, 1, 0, 1, 0, 1, 0, 0])
    for c in chunks:
        again.store(c)
    assert again.complete and again.read_all() == data
    again.close()
    # another size for the same directory starts over (other bytes)
    other = BundleDownload(d, bundle_id="b" * 64, total_size=len(data) - 1, chunk_size=1000)
    assert other.received_count == 0


def test_download_names_chunks_whose_bytes_do_not_match_their_frame(tmp_path: Path) -> None:
    from edge_agent.ota.download import BundleDownload
    from shared.chunks import encode_chunk, parse_chunk_frame, split_chunks

    data = bytes(range(256)) * 20
    frames = [encode_chunk(c) for c in split_chunks("b" * 64, data, 1000)]
    frames[3] = frames[3][:-1] + bytes([frames[3][-1] ^ 1])
    dl = BundleDownload(tmp_path / "d", bundle_id="b" * 64, total_size=len(data), chunk_size=1000)
    for f in frames:
        dl.store(parse_chunk_frame(f))
    assert dl.complete and dl.mismatched() == [3]
    dl.forget([3])
    assert dl.missing() == [3] and dl.mismatched() == []


def test_restart_in_verifying_with_lost_map_entries_fetches_them_again(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut can leave Verifying persisted while the map lost its last entries: the
    restarted agent goes back to downloading exactly those chunks."""
    offer = harness.offer(1, chunk_size=128)

    def crash() -> None:
        raise Crash

    monkeypatch.setattr(harness.updater, "_reverify", crash)
    with pytest.raises(Crash):
        harness.deliver(offer)
    state = json.loads((harness.state_dir / "ota_state.json").read_text())
    assert state["deployment"]["phase"] == "verifying"
    map_path = harness.state_dir / "downloads" / offer.bundle_id / "received.map"
    raw = bytearray(map_path.read_bytes())
    assert all(raw)
    raw[2] = raw[5] = 0
    map_path.write_bytes(bytes(raw))
    harness.restart()
    dep = offer.command.deployment_id
    assert harness.events(dep)[-1] == "chunks_repair"
    assert harness.requests()[-1].indices == [2, 5]
    harness.answer(offer.frames)
    assert harness.events(dep)[-1] == EventKind.COMMITTED
