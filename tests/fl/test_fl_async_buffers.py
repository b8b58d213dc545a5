"""Asynchronous buffered training with SecAgg+ per buffer, on the in-process Grid.

Real parts: Flower's SecAgg+ stages (hub workflow and device mod, fedfleet's mask
generator), real torch training, held updates in real files.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from cloud_hub.fl.async_run import AsyncBufferedRun
from cloud_hub.fl.config import SecAggConfig
from cloud_hub.fl.fedbuff import FedBuffConfig
from cloud_hub.fl.inprocess_grid import InProcessGrid
from shared.data import generate_sensor_data
from shared.fl import ArrayDataSource, InMemoryPartitions
from shared.fl.async_client import AsyncClientSpec, build_async_client_app
from shared.fl.held_update import HeldUpdateStore
from shared.fl.mods import DropoutSchedule
from shared.fl.training import LocalTrainingLimits, get_weights
from shared.models import build_model

MODEL = "sensor-mlp"
TOLERANCE = 1e-4  # SecAgg+ quantizes each update to 2 * 8 / 2**22 (~4e-6) per member


class RecordingGrid(InProcessGrid):
    """The in-process grid, keeping a copy of every reply that reaches the hub."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.replies: list[Message] = []

    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
        replies = list(super().pull_messages(message_ids))
        self.replies.extend(replies)
        return replies


def _spec(root: Path, n: int, dropout: DropoutSchedule | None = None) -> AsyncClientSpec:
    sources = tuple(
        ArrayDataSource(*generate_sensor_data(40, seed=3, sample_seed=200 + i)) for i in range(n)
    )
    return AsyncClientSpec(
        model_name=MODEL,
        data=InMemoryPartitions(sources),
        held_root=root,
        limits=LocalTrainingLimits(batch_size=16, max_local_epochs=1),
        dropout=dropout,
    )


def _grid(spec: AsyncClientSpec, n: int) -> RecordingGrid:
    grid = RecordingGrid(build_async_client_app(spec), n, seed=7)
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = grid.run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    return grid


@pytest.fixture
def initial() -> list[np.ndarray]:
    return get_weights(build_model(MODEL, seed=0))


@pytest.fixture
def grids() -> Iterator[list[RecordingGrid]]:
    opened: list[RecordingGrid] = []
    yield opened
    for grid in opened:
        grid.close()


def _held_deltas(root: Path, grid: InProcessGrid) -> dict[int, list[np.ndarray]]:
    out = {}
    for nid in grid.get_node_ids():
        held = HeldUpdateStore(root / f"partition-{grid.partition_of(nid)}").load()
        if held is not None:
            out[nid] = [np.asarray(d, dtype=np.float64) for d in held.delta]
    return out


def _expected(weights, deltas, members, staleness, lr=1.0):  # type: ignore[no-untyped-def]
    w = 1 / math.sqrt(1 + staleness)
    total = [sum(w * deltas[m][i] for m in members) for i in range(len(weights))]
    return [g + lr * t / len(members) for g, t in zip(weights, total, strict=True)]


def _close(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(np.asarray(x, dtype=np.float64), y, atol=TOLERANCE)


def test_buffer_sums_are_exact_and_the_hub_sees_no_single_update(
    tmp_path: Path, initial: list[np.ndarray], grids: list[RecordingGrid]
) -> None:
    grid = _grid(_spec(tmp_path, 6), 6)
    grids.append(grid)
    run = AsyncBufferedRun(
        grid, initial, fedbuff=FedBuffConfig(buffer_size=3, server_lr=0.8), secagg=SecAggConfig()
    )
    ready = run.order(grid.get_node_ids())
    assert len(ready) == 6 and all(r.base_version == 0 for r in ready)
    deltas = _held_deltas(tmp_path, grid)
    assert len(deltas) == 6

    first = run.run_buffer()
    assert first is not None and first.new_version == 1 and len(first.folded) == 3
    members1 = [m.device for m in first.folded]
    after1 = _expected(initial, deltas, members1, staleness=0, lr=0.8)
    _close(run.weights, after1)

    second = run.run_buffer()  # the other three were ordered at v0: staleness 1
    assert second is not None and second.new_version == 2
    members2 = [m.device for m in second.folded]
    assert set(members1).isdisjoint(members2)
    assert second.to_dict()["folded"][0]["staleness"] == 1
    _close(run.weights, _expected(after1, deltas, members2, staleness=1, lr=0.8))
    assert _held_deltas(tmp_path, grid) == {}  # folded updates were released on the devices

    for reply in grid.replies:  # no reply carried weights, and no masked vector is a delta
        if reply.has_error():
            continue
        assert all(len(rec) == 0 for rec in reply.content.array_records.values())
    flat = {nid: np.concatenate([d.ravel() for d in ds]) for nid, ds in deltas.items()}
    masked = [r for r in grid.replies if not r.has_error() and _masked_vector(r) is not None]
    assert len(masked) == 6
    for reply in masked:
        vector = _masked_vector(reply)
        assert vector is not None
        for delta in flat.values():
            assert not np.allclose(vector[: delta.size], delta, atol=1e-2)


def _masked_vector(reply: Message) -> np.ndarray | None:
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is None or Key.MASKED_PARAMETERS not in configs:
        return None
    arrays = [bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]]  # type: ignore[union-attr, arg-type]
    return np.concatenate([a.ravel() for a in arrays[1:]]).astype(np.float64)


def test_stale_updates_are_refused_by_hub_and_device(
    tmp_path: Path, initial: list[np.ndarray], grids: list[RecordingGrid]
) -> None:
    grid = _grid(_spec(tmp_path, 6), 6)
    grids.append(grid)
    run = AsyncBufferedRun(
        grid, initial, fedbuff=FedBuffConfig(buffer_size=3, max_staleness=0), secagg=SecAggConfig()
    )
    nodes = list(grid.get_node_ids())
    old = run.order(nodes[:3])
    run.order(nodes[3:])
    assert run.run_buffer(online=nodes[3:]) is not None  # v1 from the last three
    # The device refuses too: a hub that forces the stale members into an exchange gets
    # no masked vector from any of them, so nothing is aggregated.
    forced = run.fold_members(old)
    assert forced.error is not None and not forced.completed and run.version == 1
    assert len(_held_deltas(tmp_path, grid)) == 3
    # The hub's own choice refuses them and tells the devices to drop them.
    assert run.run_buffer() is None
    assert run.holders == {} and _held_deltas(tmp_path, grid) == {}


@pytest.mark.parametrize(("dropped", "completes"), [((0,), True), ((0, 1, 2), False)])
def test_a_device_dropping_mid_exchange(
    tmp_path: Path,
    initial: list[np.ndarray],
    grids: list[RecordingGrid],
    dropped: tuple[int, ...],
    completes: bool,
) -> None:
    # buffer 1 loses `dropped` after the key exchange; threshold round(0.6 * 5) = 3
    dropout = DropoutSchedule(partitions=dropped, rounds=(1,), stage="collect_masked_vectors")
    grid = _grid(_spec(tmp_path, 5, dropout), 5)
    grids.append(grid)
    run = AsyncBufferedRun(
        grid, initial, fedbuff=FedBuffConfig(buffer_size=5), secagg=SecAggConfig()
    )
    run.order(grid.get_node_ids())
    deltas = _held_deltas(tmp_path, grid)
    lost = {nid for nid in grid.get_node_ids() if grid.partition_of(nid) in dropped}

    record = run.fold_members(list(run.holders.values()))
    if completes:
        assert record.completed and {m.device for m in record.folded} == set(deltas) - lost
        _close(run.weights, _expected(initial, deltas, set(deltas) - lost, staleness=0))
        assert set(_held_deltas(tmp_path, grid)) == lost  # still held for the next buffer
        assert set(run.holders) == lost
    else:
        assert not record.completed and "threshold" in (record.error or "")
        assert run.version == 0
        _close(run.weights, initial)
        # the two that sent their masked vectors are spent (one masked vector per update):
        # the hub dropped and released them; the three that dropped before sending keep theirs
        assert set(run.holders) == lost
        kept = _held_deltas(tmp_path, grid)
        assert set(kept) == lost
        for node in lost:
            _close(kept[node], deltas[node])
        fresh = run.order([n for n in grid.get_node_ids() if n not in lost])
        assert len(fresh) == 2
        retrained = _held_deltas(tmp_path, grid)
        retry = run.run_buffer()  # buffer 2: nobody drops; all five fold
        assert retry is not None and retry.completed and len(retry.folded) == 5
        _close(run.weights, _expected(initial, retrained, list(retrained), staleness=0))


def test_a_held_update_survives_an_agent_restart(
    tmp_path: Path, initial: list[np.ndarray], grids: list[RecordingGrid]
) -> None:
    grid = _grid(_spec(tmp_path, 4), 4)
    grids.append(grid)
    run = AsyncBufferedRun(
        grid, initial, fedbuff=FedBuffConfig(buffer_size=3), secagg=SecAggConfig()
    )
    run.order(grid.get_node_ids())
    deltas = _held_deltas(tmp_path, grid)
    grid.close()
    # The agents restart: a new ClientApp and fresh node contexts; only the files remain.
    restarted = _grid(_spec(tmp_path, 4), 4)
    grids.append(restarted)
    run.attach(restarted)
    live = run.sync_held(restarted.get_node_ids())
    assert {r.device for r in live} == set(deltas)
    record = run.run_buffer()
    assert record is not None and record.completed
    members = [m.device for m in record.folded]
    _close(run.weights, _expected(initial, deltas, members, staleness=0))


def test_a_device_never_hands_out_its_update_outside_secagg(
    tmp_path: Path, initial: list[np.ndarray], grids: list[RecordingGrid]
) -> None:
    from flwr.app import ConfigRecord, RecordDict
    from flwr.common import FitIns, Parameters, Scalar
    from flwr.common.secure_aggregation.secaggplus_constants import (
        RECORD_KEY_CONFIGS,
        Key,
        Stage,
    )
    from flwr.compat.common import recorddict_compat as compat

    from shared.fl.config_keys import AsyncTrainingKey

    grid = _grid(_spec(tmp_path, 3), 3)
    grids.append(grid)
    run = AsyncBufferedRun(
        grid, initial, fedbuff=FedBuffConfig(buffer_size=3), secagg=SecAggConfig()
    )
    run.order(grid.get_node_ids())
    config: dict[str, Scalar] = {
        AsyncTrainingKey.CURRENT_VERSION: 0,
        AsyncTrainingKey.MAX_STALENESS: 5,
    }
    plain = compat.fitins_to_recorddict(FitIns(Parameters([], "numpy.ndarray"), config), True)
    skipping = compat.fitins_to_recorddict(FitIns(Parameters([], "numpy.ndarray"), config), True)
    # a hub that jumps straight to the collect stage, without the key agreement
    skipping.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(
        {Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: [], Key.SOURCE_LIST: []}
    )
    node = next(iter(grid.get_node_ids()))
    for content in (plain, skipping, RecordDict()):
        for message_type in ("train", "evaluate", "query"):
            message = grid.create_message(content, message_type, node, "attack")
            (reply,) = grid.send_and_receive([message])
            assert reply.has_error() or all(
                len(rec) == 0 for rec in reply.content.array_records.values()
            ), message_type
    assert len(_held_deltas(tmp_path, grid)) == 3  # still held, never unmasked


def test_a_held_update_goes_into_one_masked_vector_only(
    tmp_path: Path,
    initial: list[np.ndarray],
    grids: list[RecordingGrid],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grid = _grid(_spec(tmp_path, 3), 3)
    grids.append(grid)
    run = AsyncBufferedRun(
        grid, initial, fedbuff=FedBuffConfig(buffer_size=3), secagg=SecAggConfig()
    )
    # a hub that never releases and forgets what it folded, then asks for the same updates
    monkeypatch.setattr(run, "_release", lambda pairs: None)
    members = run.order(grid.get_node_ids())
    assert run.fold_members(members).completed
    before = len(grid.replies)
    second = run.fold_members(members)
    assert not second.completed and second.error is not None and run.version == 1
    refusals = [r.error.reason or "" for r in grid.replies[before:] if r.has_error()]
    assert len(refusals) == 3 and all("spent" in reason for reason in refusals), refusals
    for nid in grid.get_node_ids():
        held = HeldUpdateStore(tmp_path / f"partition-{grid.partition_of(nid)}").load()
        assert held is not None and held.spent and held.delta == ()  # no values kept


def test_an_update_whose_exchange_broke_before_masking_re_enters(
    tmp_path: Path, initial: list[np.ndarray], grids: list[RecordingGrid]
) -> None:
    # buffer 1 breaks in the key-sharing stage: nobody sent a masked vector
    dropout = DropoutSchedule(partitions=(0, 1, 2), rounds=(1,), stage="share_keys")
    grid = _grid(_spec(tmp_path, 3, dropout), 3)
    grids.append(grid)
    run = AsyncBufferedRun(
        grid, initial, fedbuff=FedBuffConfig(buffer_size=3), secagg=SecAggConfig()
    )
    members = run.order(grid.get_node_ids())
    deltas = _held_deltas(tmp_path, grid)
    broken = run.fold_members(members)
    assert not broken.completed and set(run.holders) == set(deltas)
    kept = _held_deltas(tmp_path, grid)
    assert kept.keys() == deltas.keys()  # unspent, values kept
    retry = run.run_buffer()
    assert retry is not None and retry.completed and len(retry.folded) == 3
    _close(run.weights, _expected(initial, deltas, list(deltas), staleness=0))


def test_the_store_spends_before_handing_out_and_reads_older_files_as_spent(
    tmp_path: Path,
) -> None:
    from shared.fl.held_update import HeldUpdate, HeldUpdateSpentError

    store = HeldUpdateStore(tmp_path)
    delta = (np.ones((2, 2)), np.zeros(3))
    store.save(HeldUpdate("r", "o-1", 4, 10, delta))
    handed = store.spend()
    assert handed.order_id == "o-1" and not handed.spent
    np.testing.assert_array_equal(handed.delta[0], delta[0])
    on_disk = store.load()
    assert on_disk is not None and on_disk.spent and on_disk.delta == ()
    assert on_disk.base_version == 4  # the hub can still be told which order it was
    with pytest.raises(HeldUpdateSpentError, match="o-1 already went out in a masked vector"):
        store.spend()
    # a file of an older agent that counted one exchange is spent too
    old = HeldUpdate("r", "o-2", 0, 1, delta).to_npz_bytes()
    legacy = _rewrite_meta(old, {"exchanges": 1}, drop=("spent",))
    loaded = HeldUpdate.from_npz_bytes(legacy)
    assert loaded.spent
    assert store.release("o-1") and store.load() is None


def _rewrite_meta(data: bytes, extra: dict[str, object], drop: tuple[str, ...]) -> bytes:
    import io
    import json

    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        arrays = {k: np.array(npz[k]) for k in npz.files if k != "meta"}
    meta = {k: v for k, v in meta.items() if k not in drop} | extra
    out = io.BytesIO()
    np.savez(out, meta=np.array(json.dumps(meta)), **arrays)  # type: ignore[arg-type]
    return out.getvalue()
