"""One step publishes every order, deploy or rollback: send outside any transaction, then move
the targets the order went to by the publish step (only those still in its source states)
and run the follow-up write in the same transaction. A failed send changes nothing: the
committed intent stays for the next tick."""

from __future__ import annotations

import logging

import pytest

from cloud_hub.errors import HubError
from cloud_hub.registry import Registry, Session, rollouts
from cloud_hub.registry.records import StageSpec
from cloud_hub.rollout import _store as store
from cloud_hub.rollout.targets import TargetState, TargetStep
from shared.errors import FedfleetError

NOW = 1_800_000_000.0
RID = "r-send"


def _rollout(registry: Registry, states: dict[str, TargetState]) -> None:
    with registry.session() as s:
        rollouts.create_rollout(
            s,
            rollout_id=RID,
            bundle_id="b-v2",
            device_class="x86-cpu",
            stages=[StageSpec("all", percent=100)],
            now=NOW,
        )
        rollouts.add_targets(s, RID, dict.fromkeys(states, 0), now=NOW)
        for device_id, state in states.items():
            rollouts.update_target(s, RID, device_id, now=NOW, state=state.value)


def _states(registry: Registry) -> dict[str, str]:
    with registry.session() as s:
        return {t.device_id: t.state for t in rollouts.list_targets(s, RID)}


@pytest.mark.parametrize(
    ("step", "intent", "published"),
    [
        (TargetStep.PUBLISHED, TargetState.DEPLOYING, TargetState.SENT),
        (TargetStep.ROLLBACK_PUBLISHED, TargetState.ROLLBACK_PENDING, TargetState.ROLLBACK_SENT),
    ],
)
def test_a_sent_order_marks_its_targets_and_runs_the_follow_up(
    registry: Registry, step: TargetStep, intent: TargetState, published: TargetState
) -> None:
    _rollout(registry, {"d1": intent, "d2": intent, "d3": intent, "d4": TargetState.SUCCEEDED})
    followed: list[tuple[str, list[str]]] = []

    def then(s: Session, sent: str) -> None:
        moved = rollouts.list_targets(s, RID, states=[published.value])
        followed.append((sent, [t.device_id for t in moved]))

    ok = store.send_then_mark(
        registry,
        RID,
        ["d1", "d2", "d4"],
        step,
        send=lambda: "shipment",
        clock=lambda: NOW + 5,
        what="deploy",
        then=then,
    )
    assert ok is True
    # d3 got no order; d4 had moved on (not a source state of the publish step): untouched
    assert _states(registry) == {
        "d1": published.value,
        "d2": published.value,
        "d3": intent.value,
        "d4": TargetState.SUCCEEDED.value,
    }
    assert followed == [("shipment", ["d1", "d2"])]  # after the move, in its transaction
    with registry.session() as s:
        assert rollouts.get_target(s, RID, "d1").updated_at == NOW + 5


@pytest.mark.parametrize("error", [HubError("broker away"), FedfleetError("cannot sign")])
def test_a_failed_send_keeps_the_intent(
    registry: Registry, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    _rollout(registry, {"d1": TargetState.DEPLOYING, "d2": TargetState.DEPLOYING})
    followed: list[object] = []

    def send() -> None:
        raise error

    with caplog.at_level(logging.WARNING, logger="cloud_hub.rollout.engine"):
        ok = store.send_then_mark(
            registry,
            RID,
            ["d1", "d2"],
            TargetStep.PUBLISHED,
            send=send,
            clock=lambda: NOW + 5,
            what="rollback",
            then=lambda s, sent: followed.append(sent),
        )
    assert ok is False
    assert _states(registry) == {"d1": "deploying", "d2": "deploying"}
    assert followed == []
    assert f"rollout {RID}: rollback to 2 device(s) failed: {error}" in caplog.text
