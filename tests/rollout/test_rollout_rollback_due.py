"""When a rollback order may be sent to a device (pure): an order is bound to the bundle the
device runs, so a device that committed the rollout's bundle waits for the status that
names it — an order built from the status before the commit would be refused."""

from __future__ import annotations

from cloud_hub.registry.records import DeviceState, TargetRecord
from cloud_hub.rollout._rollback import _rollback_due
from cloud_hub.rollout.targets import InstallView, TargetState


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
