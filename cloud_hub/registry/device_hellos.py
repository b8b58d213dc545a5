"""The ingest's hello writer: what devices say about themselves when they (re)connect.

A hello is applied last-writer-wins by its ``ts`` and never changes an enrolled device's
class or labels (see :mod:`.hello_identity`). A reconnect storm brings thousands of hellos
in one batch, so every step is set-based: on PostgreSQL one statement per table whatever
the number of devices (arrays bound once per column, see :mod:`._row_arrays`); SQLite runs
``executemany`` in process, where a row costs no round trip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, String, bindparam, delete, insert, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from cloud_hub.registry import reports
from cloud_hub.registry._row_arrays import RowArrays, is_postgresql
from cloud_hub.registry._rows import matching_slices, table_of
from cloud_hub.registry.device_uplink import (
    INSTALLED_STMT,
    ensure_classes,
    ensure_devices,
    installed_values,
)
from cloud_hub.registry.hello_identity import (
    AcceptedIdentity,
    StoredIdentity,
    accept_hello_identity,
)
from cloud_hub.registry.tables import Device, DeviceLabel
from shared.device_facts import target_of
from shared.messages import Hello

__all__ = ["record_hellos"]

_T = table_of(Device)
_L = table_of(DeviceLabel)

# -- the statements: (PostgreSQL, one per table) and (executemany, elsewhere) ----------------
_HELLO_COLUMNS = (
    ("device_id", String()),
    ("hello_ts", Float()),
    ("device_class", String()),
    ("agent_version", String()),
    ("runtimes", JSON()),
    ("free_disk_bytes", BigInteger()),
    ("free_mem_bytes", BigInteger()),
    ("labels", JSON()),
    ("facts", JSON()),
    ("target", String()),
)
_HELLOS = RowArrays("hellos", _HELLO_COLUMNS)
_HELLO_ARRAYS_STMT = (
    _T.update()
    .where(
        _T.c.device_id == _HELLOS.value("device_id"),
        or_(_T.c.hello_ts.is_(None), _T.c.hello_ts < _HELLOS.value("hello_ts")),
    )
    .values({name: _HELLOS.value(name) for name, _ in _HELLO_COLUMNS[1:]})
)
_HELLO_MANY_STMT = (
    _T.update()
    .where(
        _T.c.device_id == bindparam("b_device_id"),
        or_(_T.c.hello_ts.is_(None), _T.c.hello_ts < bindparam("b_hello_ts")),
    )
    .values({name: bindparam(f"b_{name}") for name, _ in _HELLO_COLUMNS[1:]})
)

_LABELS = RowArrays("labels", (("device_id", String()), ("key", String()), ("value", String())))


def _labels_statement() -> Any:
    """PostgreSQL: set label rows, replacing the same keys, in one statement."""
    names = ["device_id", "key", "value"]
    stmt = postgresql.insert(_L).from_select(names, select(*(_LABELS.value(n) for n in names)))
    return stmt.on_conflict_do_update(
        index_elements=["device_id", "key"], set_={"value": stmt.excluded.value}
    )


_LABELS_STMT = _labels_statement()

_INSTALLED = RowArrays(
    "installed",
    (
        ("device_id", String()),
        ("status_ts", Float()),
        ("installed_model", String()),
        ("installed_version", BigInteger()),
        ("installed_bundle_id", String()),
    ),
)
_INSTALLED_ARRAYS_STMT = (
    _T.update()
    .where(
        _T.c.device_id == _INSTALLED.value("device_id"),
        or_(_T.c.status_ts.is_(None), _T.c.status_ts <= _INSTALLED.value("status_ts")),
    )
    .values({name: _INSTALLED.value(name) for name, _ in _INSTALLED.columns[1:]})
)


# -- the steps --------------------------------------------------------------------------------
def _newest_per_device(hellos: Sequence[Hello]) -> dict[str, Hello]:
    newest: dict[str, Hello] = {}
    for h in hellos:
        if h.device_id not in newest or h.ts > newest[h.device_id].ts:
            newest[h.device_id] = h
    return newest


def _accept_identities(
    session: Session, newest: Mapping[str, Hello], *, now: float
) -> tuple[dict[str, float | None], dict[str, AcceptedIdentity]]:
    """Each device's stored hello ``ts`` and the class and labels its hello may set."""
    hello_ts: dict[str, float | None] = {}
    identity: dict[str, AcceptedIdentity] = {}
    columns = (_T.c.device_id, _T.c.hello_ts, _T.c.labels, _T.c.device_class)
    for among in matching_slices(session, _T.c.device_id, newest):
        for d, ts, labels, device_class in session.execute(select(*columns).where(among)):
            hello_ts[d] = ts
            identity[d] = accept_hello_identity(
                StoredIdentity(device_class, dict(labels or {})), newest[d], now=now
            )
    return hello_ts, identity


def _hello_row(hello: Hello, identity: AcceptedIdentity) -> tuple[object, ...]:
    """The values of ``hello`` in the order of the hello columns."""
    facts = hello.facts
    return (
        hello.device_id,
        float(hello.ts),
        identity.device_class,
        hello.agent_version,
        list(hello.runtimes),
        hello.free_disk_bytes,
        hello.free_mem_bytes,
        identity.labels,
        None if facts is None else facts.to_dict(),
        None if facts is None else target_of(facts),
    )


def _write_hellos(session: Session, rows: Sequence[tuple[object, ...]]) -> None:
    if is_postgresql(session):
        session.execute(_HELLO_ARRAYS_STMT, _HELLOS.bind(rows))
        return
    names = [f"b_{name}" for name, _ in _HELLO_COLUMNS]
    session.execute(_HELLO_MANY_STMT, [dict(zip(names, row, strict=True)) for row in rows])


def write_labels(session: Session, rows: Sequence[tuple[str, str, str]]) -> None:
    """Set ``(device_id, key, value)`` label rows, replacing the same keys (one row per
    device and key)."""
    if not rows:
        return
    if is_postgresql(session):
        session.execute(_LABELS_STMT, _LABELS.bind(rows))
        return
    session.execute(
        delete(_L).where(_L.c.device_id == bindparam("b_id"), _L.c.key == bindparam("b_key")),
        [{"b_id": d, "b_key": k} for d, k, _ in rows],
    )
    session.execute(insert(_L), [{"device_id": d, "key": k, "value": v} for d, k, v in rows])


def _write_installed(session: Session, hellos: Sequence[Hello]) -> None:
    """What each hello says is installed, where no newer status said otherwise."""
    values = [(h.device_id, float(h.ts), installed_values(h.installed)) for h in hellos]
    if is_postgresql(session):
        rows = ((d, ts, *v.values()) for d, ts, v in values)
        session.execute(_INSTALLED_ARRAYS_STMT, _INSTALLED.bind(rows))
        return
    session.execute(INSTALLED_STMT, [{"b_id": d, "b_ts": ts, **v} for d, ts, v in values])


def record_hellos(session: Session, hellos: Sequence[Hello], *, now: float) -> int:
    """Apply hellos (at most one per device), each only if newer than the stored one;
    returns how many won. Set-based: a reconnect storm of thousands is a few statements."""
    newest = _newest_per_device(hellos)
    if not newest:
        return 0
    ensure_devices(session, {d: now for d in newest})
    hello_ts, identity = _accept_identities(session, newest, now=now)
    # R6: class and labels are the enrollment's; a hello claiming others is flagged, not applied
    ensure_classes(session, {a.device_class for a in identity.values()}, now)
    reports.record_events(
        session, [a.mismatch for a in identity.values() if a.mismatch is not None], now=now
    )
    winners = [h for h in newest.values() if (hello_ts[h.device_id] or float("-inf")) < h.ts]
    if winners:
        _write_hellos(session, [_hello_row(h, identity[h.device_id]) for h in winners])
        write_labels(
            session,
            [
                (h.device_id, k, str(v))
                for h in winners
                for k, v in identity[h.device_id].new_labels.items()
            ],
        )
    _write_installed(session, list(newest.values()))
    return len(winners)
