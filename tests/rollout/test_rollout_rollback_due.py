"""When a rollback order may be sent to a device (pure): an order is bound to the bundle the
device runs, so a device that committed the rollout's bundle waits for the status that
names it — an order built from the status before the commit would be refused."""

from __future__ import annotations

from cloud_hub.registry.records import DeviceState, TargetRecord
from cloud_hub.rollout._rollback import RefusalAnswer, _rollback_due, refusal_answer
from cloud_hub.rollout.targets import InstallView, TargetState
from shared.bundle import stale_rollback_binding


def _row(state: TargetState = TargetState.ROLLBACK_PENDING) -> TargetRecord:
    return TargetRecord(
        rollout_id="r-1",
        device_id="dev-1",
        stage_index=0,
        state=state.value,
        attempts=0,
        deployment_id="r-1.d1",
        detail="",
        created_at=0.0,
        updated_at=0.0,
        last_attempt_at=None,
        finished_at=None,
        from_bundle_id="a" * 64,
        from_version=1,
    )


def _devs(status_ts: float | None, *, online: bool = True) -> dict[str, DeviceState]:
    return {
        "dev-1": DeviceState(
            device_id="dev-1",
            device_class="x86-cpu",
            online=online,
            installed_bundle_id="a" * 64,
            status_ts=status_ts,
        )
    }


def test_a_device_whose_status_predates_its_commit_waits_for_the_next_status() -> None:
    committed = InstallView(installed_bundle_id="a" * 64, status_ts=10.0, committed_ts=12.0)
    assert not _rollback_due(_row(), _devs(10.0), committed)
    assert not _rollback_due(_row(), _devs(None), committed)


def test_a_fresh_status_or_no_commit_makes_the_order_due() -> None:
    committed = InstallView(installed_bundle_id="b" * 64, status_ts=13.0, committed_ts=12.0)
    assert _rollback_due(_row(), _devs(13.0), committed)
    assert _rollback_due(_row(), _devs(10.0), InstallView(status_ts=10.0))
    assert _rollback_due(_row(), _devs(10.0), None)


def test_an_offline_device_is_never_due() -> None:
    assert not _rollback_due(_row(), _devs(13.0, online=False), InstallView(committed_ts=12.0))


def test_a_refusal_for_a_bundle_the_device_no_longer_runs_is_sent_again() -> None:
    # the message a device sends when an order is bound to another bundle than it runs
    reason = (
        "rejected: WrongTargetError: rollback order is for devices running 'aaaaaaaaaaaa', "
        "this device runs 'bbbbbbbbbbbb'"
    )
    assert stale_rollback_binding(reason) == ("aaaaaaaaaaaa", "bbbbbbbbbbbb")
    moved = _devs(13.0)["dev-1"]
    caught_up = DeviceState(**{**moved.__dict__, "installed_bundle_id": "b" * 64})
    elsewhere = DeviceState(**{**moved.__dict__, "installed_bundle_id": "c" * 64})

    def answer(reason: str, dev: DeviceState | None, **kw: bool) -> RefusalAnswer:
        return refusal_answer(reason, dev, **({"attempts_left": True, "waited_out": False} | kw))

    # the registry knows what it runs now: re-bind
    assert answer(reason, caught_up) is RefusalAnswer.REBIND
    # the registry still names the bundle the order was bound to: wait for the device's status
    assert answer(reason, moved) is RefusalAnswer.AWAIT_STATUS
    # ... for at most the offline timeout
    assert answer(reason, moved, waited_out=True) is RefusalAnswer.FAIL
    # no attempt left, another refusal, an unknown device, a third bundle: the target fails
    assert answer(reason, caught_up, attempts_left=False) is RefusalAnswer.FAIL
    assert answer(reason, moved, attempts_left=False) is RefusalAnswer.FAIL
    assert answer("rejected: ExpiredError: rollback order expired", caught_up) is (
        RefusalAnswer.FAIL
    )
    assert answer(reason, None) is RefusalAnswer.FAIL
    assert answer(reason, elsewhere) is RefusalAnswer.FAIL


def test_the_refusal_message_of_the_device_is_the_one_the_hub_reads() -> None:
    import pytest

    from shared.bundle import WrongTargetError

    with pytest.raises(WrongTargetError) as refused:
        raise WrongTargetError(
            f"rollback order is for devices running {'a' * 12!r}, this device runs {'b' * 12!r}"
        )
    assert stale_rollback_binding(f"rejected: WrongTargetError: {refused.value}") == (
        "a" * 12,
        "b" * 12,
    )
