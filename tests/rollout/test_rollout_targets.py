"""How device reports resolve a target's install outcome and rollback (pure)."""

from __future__ import annotations

from cloud_hub.rollout.targets import InstallView, TargetState, resolve_install, rolled_back
from shared.messages import EventKind

T = TargetState
NEW, OLD = "b-new", "b-old"


def test_commit_or_running_bundle_is_success() -> None:
    assert resolve_install(T.SENT, InstallView(committed_ts=5.0), bundle_id=NEW) == (
        T.SUCCEEDED,
        5.0,
        "installed",
    )
    ran = resolve_install(
        T.DEPLOYING, InstallView(installed_bundle_id=NEW, status_ts=7.0), bundle_id=NEW
    )
    assert ran == (T.SUCCEEDED, 7.0, "installed")
    assert resolve_install(T.SUCCEEDED, InstallView(installed_bundle_id=NEW), bundle_id=NEW) is None


def test_failure_events_fail_unless_running_the_bundle() -> None:
    view = InstallView(
        installed_bundle_id=OLD,
        failure_kind=EventKind.HEALTH_FAILED,
        failure_ts=3.0,
        failure_detail="no model",
    )
    assert resolve_install(T.SENT, view, bundle_id=NEW) == (
        T.FAILED,
        3.0,
        "health_failed: no model",
    )
    # a duplicate offer answered "rejected" while the device runs the bundle: still a success
    dup = InstallView(
        installed_bundle_id=NEW, status_ts=4.0, failure_kind=EventKind.REJECTED, failure_ts=5.0
    )
    assert resolve_install(T.SENT, dup, bundle_id=NEW) == (T.SUCCEEDED, 4.0, "installed")


def test_rollback_after_commit_fails_a_success() -> None:
    view = InstallView(
        installed_bundle_id=OLD,
        committed_ts=2.0,
        failure_kind=EventKind.ROLLED_BACK,
        failure_ts=9.0,
    )
    assert resolve_install(T.SUCCEEDED, view, bundle_id=NEW) == (T.FAILED, 9.0, "rolled_back")


def test_failed_target_recovers_when_a_later_offer_commits() -> None:
    later = InstallView(committed_ts=10.0, failure_kind=EventKind.FAILED, failure_ts=4.0)
    assert resolve_install(T.FAILED, later, bundle_id=NEW) == (T.SUCCEEDED, 10.0, "installed")
    assert (
        resolve_install(T.FAILED, InstallView(failure_kind="failed", failure_ts=4.0), bundle_id=NEW)
        is None
    )
    for state in (T.PENDING, T.SKIPPED, T.ROLLBACK_PENDING, T.ROLLED_BACK):
        assert resolve_install(state, InstallView(installed_bundle_id=NEW), bundle_id=NEW) is None


def test_rolled_back_needs_a_fresh_status_or_an_event() -> None:
    stale = InstallView(installed_bundle_id=OLD, status_ts=10.0)
    assert not rolled_back(stale, previous_bundle_id=OLD, since=10.0, rollback_event_seen=False)
    assert rolled_back(stale, previous_bundle_id=OLD, since=9.0, rollback_event_seen=False)
    assert rolled_back(InstallView(), previous_bundle_id=OLD, since=9.0, rollback_event_seen=True)
    auto = InstallView(failure_kind=EventKind.ROLLED_BACK)  # the agent rolled itself back
    assert rolled_back(auto, previous_bundle_id=OLD, since=9.0, rollback_event_seen=False)
    assert not rolled_back(
        InstallView(installed_bundle_id=NEW, status_ts=20.0),
        previous_bundle_id=OLD,
        since=9.0,
        rollback_event_seen=False,
    )
