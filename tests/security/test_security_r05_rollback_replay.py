"""R5: rollback orders and old offers cannot be replayed; the anti-rollback floor is per
device class and a rollback never lowers it.

Each attack is what someone who controls the broker can do: re-send a command or a bundle
offer they saw earlier (signed, unexpired), possibly under a new deployment id. The target
is the real agent updater (real slot files, real bundles, real onnxruntime health check);
each refusal must be reported as a ``rejected`` event naming its cause, and leave the
installed model intact. The last test replays an old offer to a real agent process over the
real Mosquitto.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edge_agent.ota.slots import SlotStore
from shared.messages import Event, EventKind, Hello, Status
from shared.topics import TopicScheme
from tests.agent_ota.agent_ota_helpers import (
    BundleSender,
    broker_available,
    make_authority,
    make_bundle,
    make_offer,
    rollback_command,
    start_agent,
    unique_prefix,
    wait_for,
    with_command,
    write_agent_config,
)
from tests.security._support_rollback import (
    MODEL,
    floor_record,
    intact,
    order_back,
    refusal,
    updater_on_v2,
)


def test_old_offer_replayed_after_a_rollback_is_refused(tmp_path: Path) -> None:
    h, v1, v2 = updater_on_v2(tmp_path)
    back = order_back(h, v1, v2)
    h.updater.handle_rollback(back)
    assert h.events(back.deployment_id) == [EventKind.ROLLED_BACK]
    assert floor_record(h)["version"] == 2  # the rollback did not lower the high-water mark
    # the attack: v2's own signed, unexpired offer again, under a fresh deployment id
    replay = with_command(v2, deployment_id="attacker-1")
    h.deliver(replay)
    ev = refusal(h, "attacker-1")
    assert "RollbackError" in ev.detail and "not newer than installed 2" in ev.detail
    intact(h, v1.bundle_id)
    # ... also after a restart, and after losing the deployment record
    (h.state_dir / "ota_state.json").write_text("{torn")
    h.restart()
    h.deliver(with_command(v2, deployment_id="attacker-2"))
    assert "RollbackError" in refusal(h, "attacker-2").detail
    intact(h, v1.bundle_id)


def test_floor_survives_losing_its_own_record(tmp_path: Path) -> None:
    """A lost/corrupt floor record is rebuilt from both slots: the rolled-back v2 is still in
    the other slot, so the mark stays 2."""
    h, v1, v2 = updater_on_v2(tmp_path)
    h.updater.handle_rollback(order_back(h, v1, v2))
    (h.state_dir / "anti_rollback.json").write_text("[garbage")
    h.restart()
    assert (h.state_dir / "anti_rollback.json.corrupt").exists()
    h.deliver(with_command(v2, deployment_id="attacker"))
    assert "RollbackError" in refusal(h, "attacker").detail
    intact(h, v1.bundle_id)


def test_order_for_another_device_is_refused(tmp_path: Path) -> None:
    h, v1, v2 = updater_on_v2(tmp_path)
    stolen = order_back(h, v1, v2, device_ids=("dev-2", "dev-3"))
    h.updater.handle_rollback(stolen)
    ev = refusal(h, stolen.deployment_id)
    assert "WrongTargetError" in ev.detail and "not addressed to device 'dev-1'" in ev.detail
    intact(h, v2.bundle_id)


def test_order_replayed_after_the_device_moved_on_is_refused(tmp_path: Path) -> None:
    """Bound to the bundle the device ran when it was issued: once the device runs v3, the
    old order (from v2) does not take it back to v1."""
    h, v1, v2 = updater_on_v2(tmp_path)
    old = order_back(h, v1, v2)
    v3 = h.offer(3)
    h.deliver(v3)
    h.updater.handle_rollback(old)
    ev = refusal(h, old.deployment_id)
    assert "WrongTargetError" in ev.detail and "for devices running" in ev.detail
    intact(h, v3.bundle_id)


def test_used_order_is_refused_until_it_expires_even_after_a_restart(tmp_path: Path) -> None:
    h, _v1, v2 = updater_on_v2(tmp_path)
    # an order the device uses (here it fails: no slot holds v7), so it stays on v2
    first = order_back(h, v2, v2, to_version=7, valid_s=600)
    h.updater.handle_rollback(first)
    assert h.events(first.deployment_id) == [EventKind.FAILED]
    h.restart()  # the used id is durable
    replay = replace(first, deployment_id="attacker", command_id="x")
    h.updater.handle_rollback(replay)
    ev = refusal(h, "attacker")
    assert "ReplayError" in ev.detail and "already used" in ev.detail
    intact(h, v2.bundle_id)
    # past its expiry the order is refused as expired, and its id is forgotten
    h.clock.advance(601)
    late = replace(first, deployment_id="late", command_id="y")
    h.updater.handle_rollback(late)
    assert "ExpiredError" in refusal(h, "late").detail
    later = order_back(h, v2, v2, to_version=7)
    h.updater.handle_rollback(later)
    assert first.order["signed"]["order_id"] not in floor_record(h)["used_orders"]


def test_bundle_of_another_model_needs_a_signed_order(tmp_path: Path) -> None:
    """The floor is per device class: an old, unexpired, correctly signed bundle of another
    model for the same class does not replace the current model on its own."""
    h, _v1, v2 = updater_on_v2(tmp_path)
    other = make_offer(make_bundle(h.auth, version=9, model_name="other-model"), h.topics)
    h.deliver(other)
    ev = refusal(h, other.command.deployment_id)
    assert "RollbackError" in ev.detail and "a signed order is needed" in ev.detail
    intact(h, v2.bundle_id)
    # with an order bound to this device and to v2, the switch is allowed, once
    order = order_back(h, other, v2, model_name="other-model", to_version=9).order
    switch = with_command(other, deployment_id="switch", rollback_order=order)
    h.deliver(switch)
    assert h.events("switch")[-1] == EventKind.COMMITTED
    assert floor_record(h)["model_name"] == "other-model"
    replay = with_command(switch, deployment_id="replayed-switch")
    h.updater.handle_rollback(order_back(h, v2, other, to_version=2))  # back to v2 by order
    assert h.updater.slots.active().meta.bundle_id == v2.bundle_id  # type: ignore[union-attr]
    h.deliver(replay)
    assert "ReplayError" in refusal(h, "replayed-switch").detail
    intact(h, v2.bundle_id)
    assert floor_record(h)["model_name"] == MODEL


@pytest.mark.integration
@pytest.mark.skipif(not broker_available(), reason="needs Mosquitto on 127.0.0.1:1883")
def test_agent_process_refuses_the_old_offer_replayed_over_the_broker(tmp_path: Path) -> None:
    """End to end: a real ``edge-agent run`` on the real Mosquitto. After a signed rollback
    from v2 to v1, the broker replays v2's offer under a new deployment id and the rollback
    order itself: both are refused and reported; the agent stays on v1."""
    prefix = unique_prefix()
    topics = TopicScheme(prefix)
    auth = make_authority()
    trust = auth.write_trust(tmp_path / "trust.json")
    dev = f"dev-{prefix}"
    hub = BundleSender(topics)
    agent = start_agent(
        write_agent_config(tmp_path, device_id=dev, prefix=prefix, trust_path=trust),
        tmp_path / "agent.log",
    )

    def log() -> str:
        return (tmp_path / "agent.log").read_text(errors="replace")[-4000:]

    try:
        assert wait_for(lambda: hub.of(dev, Hello), 30), log()
        v1, v2 = (make_offer(make_bundle(auth, version=v), topics) for v in (1, 2))
        for offer in (v1, v2):
            hub.deploy(offer, [dev])
            assert hub.wait_kind(dev, offer.command.deployment_id, EventKind.COMMITTED), log()
        back = rollback_command(
            auth,
            model_name=MODEL,
            to_version=1,
            to_bundle_id=v1.bundle_id,
            from_bundle_id=v2.bundle_id,
            device_ids=(dev,),
        )
        hub.send(dev, back)
        assert hub.wait_kind(dev, back.deployment_id, EventKind.ROLLED_BACK), log()
        # the attacks, each under a deployment id the agent has not seen
        hub.send(dev, replace(v2.command, deployment_id="replayed-offer"))
        hub.send(dev, replace(back, deployment_id="replayed-order"))
        # the order names v2 as what the device runs: it runs v1 now (and the id is used)
        for dep, cause in (
            ("replayed-offer", "RollbackError"),
            ("replayed-order", "WrongTargetError"),
        ):
            assert hub.wait_kind(dev, dep, EventKind.REJECTED), log()
            [event] = [e for e in hub.of(dev, Event) if e.deployment_id == dep]
            assert cause in event.detail, event.detail
        assert wait_for(lambda: hub.of(dev, Status)[-1].installed.version == 1, 10)  # type: ignore[union-attr]
        slots = SlotStore(tmp_path / dev)
        active = slots.active()
        assert active is not None and active.meta.bundle_id == v1.bundle_id
        assert slots.check(active.name)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
        hub.close()
