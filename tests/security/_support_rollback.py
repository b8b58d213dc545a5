"""Support of the R5 attack tests: a real agent updater (``OtaUpdater``: real slot files, real
bundles, real onnxruntime health check) with v1 then v2 committed, and signed orders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.messages import Event, EventKind
from tests.agent_ota.agent_ota_helpers import (
    Clock,
    Harness,
    Offer,
    make_authority,
    rollback_command,
)

MODEL = "sensor-mlp"


def updater_on_v2(tmp_path: Path) -> tuple[Harness, Offer, Offer]:
    """A device that committed v1, then v2 (so v1 is in its other slot)."""
    h = Harness(state_dir=tmp_path / "state", auth=make_authority(), clock=Clock())
    v1, v2 = h.offer(1), h.offer(2)
    for offer in (v1, v2):
        h.deliver(offer)
        assert h.events(offer.command.deployment_id)[-1] == EventKind.COMMITTED
    return h, v1, v2


def order_back(h: Harness, to: Offer, running: Offer, **kw: Any) -> Any:
    """A RollbackCommand with an order the hub would sign: back to ``to`` for dev-1 running
    ``running``."""
    return rollback_command(
        h.auth,
        model_name=kw.pop("model_name", MODEL),
        to_version=kw.pop("to_version", _version(to)),
        to_bundle_id=to.bundle_id,
        from_bundle_id=kw.pop("from_bundle_id", running.bundle_id),
        **kw,
    )


def _version(offer: Offer) -> int:
    return int(offer.command.manifest["signed"]["version"])


def refusal(h: Harness, deployment_id: str) -> Event:
    """The one event a refused command produced (it must be exactly one ``rejected``)."""
    events = [m for m in h.sent if isinstance(m, Event) and m.deployment_id == deployment_id]
    assert [e.kind for e in events] == [EventKind.REJECTED], [e.kind for e in events]
    return events[0]


def floor_record(h: Harness) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((h.state_dir / "anti_rollback.json").read_text())
    return data


def intact(h: Harness, bundle_id: str) -> None:
    """Nothing lost: ``bundle_id`` is active and every one of its files matches its hash."""
    active = h.updater.slots.active()
    assert active is not None and active.meta.bundle_id == bundle_id
    assert h.updater.slots.check(active.name)
