"""The agent's asynchronous ClientApp (what a SuperNode runs): the signed-order guard (R4)
before every message, the node config's data, limits and held-update folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from edge_agent.fl.async_client_app import build_agent_async_client_app
from edge_agent.fl.client_app import RoundRefusedError
from shared.data import generate_sensor_data
from shared.fl.config_keys import AsyncTrainingKey as K
from shared.fl.config_keys import NodeConfigKey, RunConfigKey
from shared.fl.held_update import HeldUpdateStore
from shared.fl.training import get_weights
from shared.models import build_model


def _context(tmp_path: Path, run_name: str) -> Context:
    x, y = generate_sensor_data(40, seed=3, sample_seed=5)
    np.savez(tmp_path / "samples.npz", x=x, y=y)
    node_config: dict[str, bool | float | int | str] = {
        NodeConfigKey.DATA_PATH: str(tmp_path / "samples.npz"),
        NodeConfigKey.ORDER_RUN_ID: "ordered-run",
        NodeConfigKey.REQUIRE_SECURE_AGGREGATION: True,
        NodeConfigKey.MAX_LOCAL_EPOCHS: 1,
        K.HELD_UPDATE_DIR: str(tmp_path / "held"),
    }
    run_config: dict[str, bool | float | int | str] = {
        RunConfigKey.RUN_NAME: run_name,
        RunConfigKey.MODEL_NAME: "sensor-mlp",
    }
    return Context(
        run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config
    )


def _order(order_id: str) -> Message:
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    weights = get_weights(build_model("sensor-mlp", seed=0))
    content = RecordDict(
        {
            K.GLOBAL_RECORD: ArrayRecord(weights),
            K.ORDER_RECORD: ConfigRecord({K.ORDER_ID: order_id, K.BASE_VERSION: 0}),
        }
    )
    message = Message(content, 7, "train.order", group_id="v0")
    message.metadata.__dict__["_message_id"] = "m1"
    return message


@pytest.mark.parametrize(("run_name", "held"), [("ordered-run", True), ("other-run", False)])
def test_the_agent_trains_and_holds_only_for_its_ordered_run(
    tmp_path: Path, run_name: str, held: bool
) -> None:
    app = build_agent_async_client_app()
    store = HeldUpdateStore(tmp_path / "held")
    if not held:  # the SuperNode returns the refusal to the hub as this node's error reply
        with pytest.raises(RoundRefusedError, match="R4"):
            app(_order("o-1"), _context(tmp_path, run_name))
        assert store.load() is None
        return
    reply = app(_order("o-1"), _context(tmp_path, run_name))
    assert not reply.has_error(), reply.error
    assert reply.content.config_records[K.ORDER_RECORD][K.ORDER_ID] == "o-1"
    update = store.load()
    assert update is not None and update.order_id == "o-1" and update.num_examples == 40


def test_an_ordered_supernode_keeps_held_updates_in_the_agents_state(tmp_path: Path) -> None:
    """A signed order starts a SuperNode whose node config names a held-update folder in
    the agent's state dir, so the asynchronous FAB's ClientApp can hold (and keep) updates."""
    from edge_agent.fl.train_command import OrderTrust, TrainCommandHandler, TrainingLimits
    from tests.security._support_training import OrderIssuer, write_ca

    hub = OrderIssuer(tmp_path / "keys")
    _, ca = write_ca(tmp_path / "ca")
    agent = TrainCommandHandler(
        state_dir=tmp_path / "state",
        load_samples=lambda n: (np.zeros((20, 12), np.float32), np.zeros(20, np.int64)),
        trust=OrderTrust(device_id="dev-1", trust=hub.keys.trust_root()),
        limits=TrainingLimits(root_certificates=ca),
    )
    agent(hub.command(hub.order("dev-1", run_id="async-run")))
    try:
        assert agent.supervisor is not None, agent.refusals
        node_config = agent.supervisor.config.extra_node_config
        assert node_config[K.HELD_UPDATE_DIR] == str(tmp_path / "state" / "fl" / "held")
    finally:
        agent.stop()
