"""The device side of asynchronous buffered training: a Flower ``ClientApp`` (imports torch).

Three kinds of message, routed by Flower's ``<category>.<action>`` message types:

- ``train.order``: train from the global model of version ``base-version`` and *hold* the
  update ``delta = local - global`` in a :class:`~shared.fl.held_update.HeldUpdateStore`
  (a file: it survives an agent restart). The reply carries only the order id and the
  number of examples — never weights.
- ``train`` (default action): one SecAgg+ buffer exchange (fedfleet's hardened
  ``secaggplus_mod``). Its fit result is the held update scaled by the staleness weight
  the device computes itself (:func:`shared.fl.staleness.staleness_weight`): an exchange
  announcing a version that makes the update too stale, or from the future, is refused.
  Only this path ever reads the held update, and it is always masked.
- ``query.held`` / ``query.release``: say which order the held update answers and whether
  it is spent; delete it once the hub has folded it into a buffer (or learnt it is spent).

One-time masking: the update is spent on disk before its masked vector leaves, and a spent
update is refused by every later exchange (the argument is in :mod:`shared.fl.held_update`).
An exchange that broke before the collect stage never touched the update: it re-enters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat

from shared.errors import ConfigError
from shared.fl.config_keys import AsyncTrainingKey as K
from shared.fl.config_keys import NodeConfigKey, RunConfigKey
from shared.fl.data_source import DataResolver
from shared.fl.held_update import HeldUpdate, HeldUpdateStore, NothingHeldError
from shared.fl.mods import DropoutSchedule, hardened_secaggplus_mod
from shared.fl.staleness import staleness_weight
from shared.fl.training import LocalTrainingLimits

__all__ = [
    "AsyncClientSpec",
    "NothingHeldError",
    "build_async_client_app",
]

GLOBAL_RECORD = K.GLOBAL_RECORD
ORDER_RECORD = K.ORDER_RECORD


@dataclass(frozen=True)
class AsyncClientSpec:
    """Everything the asynchronous ClientApp needs (picklable, like ``ClientAppSpec``)."""

    model_name: str | None  # None: the run config's model-name (a SuperNode's ClientApp)
    data: DataResolver
    held_root: Path | None = None  # per-partition folders when the node config names none
    limits: LocalTrainingLimits = field(default_factory=LocalTrainingLimits)
    dropout: DropoutSchedule | None = None
    seed: int = 0

    def store(self, context: Context) -> HeldUpdateStore:
        configured = context.node_config.get(K.HELD_UPDATE_DIR)
        if isinstance(configured, str) and configured:
            return HeldUpdateStore(Path(configured))
        partition = context.node_config.get(NodeConfigKey.PARTITION_ID)
        if self.held_root is None or not isinstance(partition, int):
            raise ConfigError(f"node config names no {K.HELD_UPDATE_DIR!r}")
        return HeldUpdateStore(self.held_root / f"partition-{partition}")

    def train_and_hold(self, message: Message, context: Context) -> Message:
        from shared.fl.client import LocalTrainingClient

        order = message.content.config_records[ORDER_RECORD]
        global_weights = message.content.array_records[GLOBAL_RECORD].to_numpy_ndarrays()
        partition = context.node_config.get(NodeConfigKey.PARTITION_ID, 0)
        seed = self.seed * 100_003 + (partition if isinstance(partition, int) else 0)
        model_name = self.model_name or str(context.run_config[RunConfigKey.MODEL_NAME])
        client = LocalTrainingClient(model_name, self.data(context), self.limits, seed=seed)
        local, num_examples, _ = client.fit(global_weights, {})
        delta = tuple(
            np.asarray(a) - np.asarray(g) for a, g in zip(local, global_weights, strict=True)
        )
        held = HeldUpdate(
            run_name=str(context.run_config.get(RunConfigKey.RUN_NAME, "")),
            order_id=str(order[K.ORDER_ID]),
            base_version=int(order[K.BASE_VERSION]),  # type: ignore[arg-type]
            num_examples=int(num_examples),
            delta=delta,
        )
        self.store(context).save(held)  # persisted before the hub hears it is ready
        reply = ConfigRecord({K.ORDER_ID: held.order_id, K.NUM_EXAMPLES: held.num_examples})
        return Message(RecordDict({ORDER_RECORD: reply}), reply_to=message)

    def masked_fit(self, message: Message, context: Context) -> Message:
        """Inner of SecAgg+'s collect stage: the held update times its staleness weight."""
        fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
        store = self.store(context)
        held = store.load()
        if held is None:
            raise NothingHeldError("this device holds no update for a buffer")
        held.refuse_if_spent()
        weight = staleness_weight(  # a refused exchange leaves the update unspent
            int(fitins.config[K.CURRENT_VERSION]),
            held.base_version,
            int(fitins.config[K.MAX_STALENESS]),
        )
        held = store.spend()  # spent on disk before the masked vector leaves; once only
        weighted = [np.asarray(d, dtype=np.float64) * weight for d in held.delta]
        fitres = FitRes(
            Status(Code.OK, "held update"),
            ndarrays_to_parameters(weighted),
            1,  # every member counts once: SecAgg+ returns the mean of w_i * delta_i
            {K.ORDER_ID: held.order_id},
        )
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=message)

    def held(self, message: Message, context: Context) -> Message:
        held = self.store(context).load()
        record = ConfigRecord()
        if held is not None:
            record = ConfigRecord(
                {
                    K.ORDER_ID: held.order_id,
                    K.BASE_VERSION: held.base_version,
                    K.SPENT: held.spent,
                }
            )
        return Message(RecordDict({ORDER_RECORD: record}), reply_to=message)

    def release(self, message: Message, context: Context) -> Message:
        order_id = str(message.content.config_records[ORDER_RECORD][K.ORDER_ID])
        released = self.store(context).release(order_id)
        return Message(
            RecordDict({ORDER_RECORD: ConfigRecord({"released": released})}), reply_to=message
        )


def build_async_client_app(spec: AsyncClientSpec, *, guard: Mod | None = None) -> ClientApp:
    """The asynchronous ClientApp; the buffer exchange always runs under SecAgg+.

    ``guard`` (the agent's signed-order check) runs before every message."""
    app = ClientApp(mods=[] if guard is None else [guard])
    secure: list[Mod] = [] if spec.dropout is None else [spec.dropout.mod]
    secure.append(hardened_secaggplus_mod)
    app.train("order")(spec.train_and_hold)
    app.train(mods=secure)(spec.masked_fit)
    app.query("held")(spec.held)
    app.query("release")(spec.release)
    return app
