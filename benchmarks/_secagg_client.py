"""One device's SecAgg+ cost per round, for ``benchmarks/fl.py``: fedfleet's client against
Flower's stock ``secaggplus_mod``, on the same messages, in the same process (CPU, not wall).

A client with ``k`` neighbours is driven through the four stages with real messages: fresh
P-384 key pairs for every neighbour each round, the neighbours' shares sealed to it with their
shared keys, the digits model as its fit result (training itself is left out: it is the same
for both). Each stage's thread CPU is measured; the two clients alternate, round by round,
and the medians are reported with their ratio. The stock mod is a private copy of Flower's
module, bound to Flower's own functions (its Shamir, key parsing, masking and mask generator),
as on a device that runs stock Flower.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["secagg_client_costs"]

Mod = Callable[[Any, Any, Callable[[Any, Any], Any]], Any]
_NODE = 1000


def _stock_flower_mod() -> Mod:
    flower = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    spec = importlib.util.spec_from_file_location("stock_secaggplus_mod_bench", flower.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.secaggplus_mod  # type: ignore[no-any-return]


class _Round:
    """The messages of one round for one client (neighbours' keys and shares made fresh)."""

    def __init__(self, k: int) -> None:
        from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes

        self.k = k
        self.neighbours = list(range(1, k + 1))
        self.keys = {j: (generate_key_pairs(), generate_key_pairs()) for j in self.neighbours}
        self.public = {
            j: [public_key_to_bytes(pair1[1]), public_key_to_bytes(pair2[1])]
            for j, (pair1, pair2) in self.keys.items()
        }

    def run(
        self, mod: Mod, fit_reply: Callable[[Any, Any], Any], cpu: dict[str, list[float]]
    ) -> None:
        from flwr.app import Context, RecordDict
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
            encrypt,
            generate_shared_key,
        )
        from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
        from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat
        from flwr.supercore.primitives.asymmetric import bytes_to_public_key

        context = Context(
            run_id=1, node_id=_NODE, node_config={}, state=RecordDict(), run_config={}
        )
        setup = {
            Key.SAMPLE_NUMBER: self.k + 1, Key.SHARE_NUMBER: self.k + 1,
            Key.THRESHOLD: (self.k + 1) * 6 // 10, Key.CLIPPING_RANGE: 8.0,
            Key.TARGET_RANGE: 1 << 22, Key.MOD_RANGE: 1 << 32, Key.MAX_WEIGHT: 10_000.0,
        }  # fmt: skip
        reply = _stage(mod, context, Stage.SETUP, setup, cpu)
        own = [reply[Key.PUBLIC_KEY_1], reply[Key.PUBLIC_KEY_2]]
        half = self.k // 2  # the client's own keys in the middle of the list, as the hub sends
        keys = {str(j): self.public[j] for j in self.neighbours[:half]} | {str(_NODE): own}
        keys |= {str(j): self.public[j] for j in self.neighbours[half:]}
        _stage(mod, context, Stage.SHARE_KEYS, keys, cpu)
        own_pk2 = bytes_to_public_key(own[1])
        ciphertexts = [
            encrypt(
                generate_shared_key(self.keys[j][1][0], own_pk2),
                share_keys_plaintext_concat(j, _NODE, os.urandom(52), os.urandom(324)),
            )
            for j in self.neighbours
        ]
        collect = {Key.CIPHERTEXT_LIST: ciphertexts, Key.SOURCE_LIST: self.neighbours}
        _stage(mod, context, Stage.COLLECT_MASKED_VECTORS, collect, cpu, fit_reply)
        unmask = {Key.ACTIVE_NODE_ID_LIST: [_NODE, *self.neighbours], Key.DEAD_NODE_ID_LIST: []}
        _stage(mod, context, Stage.UNMASK, unmask, cpu)


def _stage(
    mod: Mod,
    context: Any,
    stage: str,
    configs: dict[str, Any],
    cpu: dict[str, list[float]],
    call_next: Callable[[Any, Any], Any] = lambda message, context: message,
) -> Any:
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: stage, **configs})})
    message = Message(content=content, dst_node_id=_NODE, message_type="train", group_id="1")
    message.metadata.__dict__["_message_id"] = os.urandom(8).hex()
    started = time.thread_time()
    reply = mod(message, context, call_next)
    cpu[stage].append(time.thread_time() - started)
    if reply.has_error():
        raise RuntimeError(f"{stage}: {reply.error}")
    return reply.content.config_records[RECORD_KEY_CONFIGS]


def secagg_client_costs(neighbours: int, repeats: int) -> dict[str, Any]:
    """Median CPU ms per stage of one round, fedfleet's client and Flower's, and the ratio."""
    from flwr.app import Message
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.compat.common import recorddict_compat as compat
    from flwr.supercore.task_identity import TaskIdentity

    from cloud_hub.fl.run import initial_weights
    from shared.fl.mods import hardened_secaggplus_mod

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    parameters = ndarrays_to_parameters(initial_weights("digits-cnn", 0, None))

    def fit_reply(message: Any, context: Any) -> Any:
        fit = FitRes(Status(Code.OK, ""), parameters, 40, {})
        return Message(compat.fitres_to_recorddict(fit, False), reply_to=message)

    clients: dict[str, Mod] = {"fedfleet": hardened_secaggplus_mod, "flower": _stock_flower_mod()}
    stages = ("setup", "share_keys", "collect_masked_vectors", "unmask")
    cpu: dict[str, dict[str, list[float]]] = {n: {s: [] for s in stages} for n in clients}
    for rep in range(repeats + 1):  # the first round of each warms up
        order = list(clients) if rep % 2 == 0 else list(clients)[::-1]
        for name in order:
            sink = cpu[name] if rep else {stage: [] for stage in stages}
            _Round(neighbours).run(clients[name], fit_reply, sink)
    ms = {
        name: {stage: round(1e3 * statistics.median(v), 3) for stage, v in per.items()}
        for name, per in cpu.items()
    }
    totals = {name: round(sum(per.values()), 3) for name, per in ms.items()}
    return {
        "neighbours": neighbours,
        "cpu_ms_per_stage": ms,
        "cpu_ms_per_round": totals,
        "ratio_fedfleet_over_flower": round(totals["fedfleet"] / totals["flower"], 3),
        "repeats": repeats,
    }
