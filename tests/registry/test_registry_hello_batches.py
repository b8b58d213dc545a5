"""Hellos of many devices at once, on SQLite and PostgreSQL (see conftest): a batch stores
exactly what the same hellos store one at a time (newest wins, enrollment keeps class and
labels, mismatches flagged, labels merged), and on PostgreSQL the batch is a fixed number of
statements however many devices, none run once per device. The removed-device check is
one query on PostgreSQL too."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from cloud_hub.registry import Registry, devices, open_registry
from cloud_hub.registry.tables import Device, DeviceLabel, EventRow
from shared.device_facts import DeviceFacts
from shared.messages import Hello, InstalledModel
from tests.registry.test_registry_uplink_batches import _statements

T0 = 1_800_000_000.0
N = 240  # devices per group: many rows per statement
FACTS = DeviceFacts(arch="x86_64", cpu_model="AMD EPYC 7763", isa_flags=["avx2"])


def _hello(device_id: str, i: int, ts: float) -> Hello:
    return Hello(
        device_id=device_id,
        device_class="sensor" if i % 4 != 3 else "camera",  # 3: claims another class
        agent_version=f"0.{i % 7}",
        runtimes=["onnx-cpu"],
        free_disk_bytes=8 * 1024**3 + i,  # > 2**31: BIGINT
        free_mem_bytes=1024**3,
        installed=InstalledModel("m", 1 + i % 3, f"b{i % 3}") if i % 5 else None,
        labels={"site": f"s{i % 3}", "rack": str(i % 5)},
        facts=FACTS if i % 2 else None,
        ts=ts,
    )


def _prepare(registry: Registry, prefix: str) -> list[Hello]:
    """A fleet of ``prefix``-ed devices in every state a hello can meet; its hellos."""
    with registry.session() as s:
        for i in range(N):
            d = f"{prefix}{i:04d}"
            if i % 4 in (0, 3):  # enrolled: class and labels are the enrollment's
                devices.register_device(s, d, device_class="sensor", labels={"site": "s1"}, now=T0)
            elif i % 4 == 1:  # a newer hello already stored: the batch's one is stale
                devices.record_hellos(s, [_hello(d, i, T0 + 10)], now=T0)
            # i % 4 == 2: never seen
    hellos = [_hello(f"{prefix}{i:04d}", i, T0 + 5) for i in range(N)]
    return hellos + [_hello(f"{prefix}{i:04d}", i, T0 + 1) for i in range(0, N, 6)]  # older twins


def _stored(registry: Registry, prefix: str) -> dict[str, object]:
    """Everything the registry holds about the ``prefix``-ed devices, prefix removed."""
    cut = len(prefix)
    skip = {"device_id", "first_seen", "last_seen"}
    columns = [c for c in Device.__table__.columns if c.name not in skip]  # type: ignore[attr-defined]
    with registry.session() as s:
        rows = s.execute(
            sa.select(Device.device_id, *columns).where(Device.device_id.startswith(prefix))
        )
        found: dict[str, object] = {r[0][cut:]: tuple(r[1:]) for r in rows}
        labels = s.execute(
            sa.select(DeviceLabel.device_id, DeviceLabel.key, DeviceLabel.value).where(
                DeviceLabel.device_id.startswith(prefix)
            )
        )
        found["labels"] = sorted((d[cut:], k, v) for d, k, v in labels)
        events = s.execute(
            sa.select(EventRow.device_id, EventRow.kind).where(
                EventRow.device_id.startswith(prefix)
            )
        )
        found["events"] = sorted((d[cut:], k) for d, k in events)
    return found


def _one_at_a_time(registry: Registry, hellos: list[Hello]) -> int:
    won = 0
    for hello in hellos:
        with registry.session() as s:
            won += devices.record_hellos(s, [hello], now=T0 + 20)
    return won


def test_a_batch_of_hellos_stores_what_one_at_a_time_stores(
    registry: Registry, tmp_path: Path
) -> None:
    batch, single = _prepare(registry, "a-"), _prepare(registry, "b-")
    with registry.session() as s:
        won = devices.record_hellos(s, batch, now=T0 + 20)
    assert won == 3 * N // 4  # the stale quarter loses
    assert _one_at_a_time(registry, single) == won  # the older twins come last: they lose
    stored = _stored(registry, "a-")
    assert stored == _stored(registry, "b-")
    sqlite = open_registry(f"sqlite:///{tmp_path / 'per-row.db'}")  # executemany, row by row
    try:
        _one_at_a_time(sqlite, _prepare(sqlite, "c-"))
        assert stored == _stored(sqlite, "c-")
    finally:
        sqlite.close()
    assert ("0003", "identity_mismatch") in stored["events"]  # type: ignore[operator]
    assert ("0002", "rack", "2") in stored["labels"]  # type: ignore[operator]
    assert ("0000", "site", "s1") in stored["labels"]  # type: ignore[operator]
    assert ("0000", "rack", "0") not in stored["labels"]  # type: ignore[operator]


def test_hellos_and_the_removed_check_are_a_few_statements_on_postgresql(
    registry: Registry,
) -> None:
    hellos = [_hello(f"dev-{i:05d}", i, T0) for i in range(2000)]
    with registry.session() as s:
        for enrolled in ("dev-00003", "dev-00007"):
            devices.register_device(s, enrolled, device_class="sensor", now=T0)
        devices.delete_device(s, "dev-00007", now=T0)
    with _statements(registry) as seen, registry.session() as s:
        removed = devices.removed_among(s, [h.device_id for h in hellos])
        won = devices.record_hellos(s, hellos, now=T0)
    assert removed == {"dev-00007"}
    assert won == 2000
    with registry.session() as s:
        assert (
            s.scalar(sa.select(sa.func.count()).select_from(DeviceLabel)) == 2 * 1999
        )  # not 00003
    if registry.dialect != "postgresql":
        return  # SQLite runs executemany in process: no round trip per row to save
    assert not [verb for verb, many in seen if many], f"a statement per row: {seen}"
    selects = [verb for verb, _ in seen if verb == "SELECT"]
    assert len(selects) == 2, seen  # removed, stored identities: one each, whatever the ids
    # stubs, classes, mismatch events, hellos, labels, installed
    assert len(seen) <= 2 + 6, seen
