"""R13: SecAgg+ must not let the aggregate wrap modulo ``modulus_range``.

Each client adds a quantized value below ``quantization_range`` to the masked sum, which is
computed modulo ``modulus_range``: with ``clients x quantization_range >= modulus_range``
the unmasked aggregate silently wraps and the global model is garbage. The attack is a
cohort that is too large (2,048 clients at the defaults), chosen in the config or arriving
at run time (more SuperNodes than the config counted), or a server that sets up such a round
with a device. Each is refused with a clear error before anything is aggregated."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore.task_identity import TaskIdentity

from cloud_hub.errors import HubConfigError
from cloud_hub.fl import FederatedRunConfig, SecAggConfig
from cloud_hub.fl.inprocess_grid import InProcessGrid
from cloud_hub.fl.recorder import RunRecorder
from cloud_hub.fl.server_app import ValidationEvaluator, build_server_app
from cloud_hub.fl.workflow import SecAggRangeError
from edge_agent.fl.client_app import RoundRefusedError, app
from shared.data import generate_sensor_data
from shared.fl import ArrayDataSource, InMemoryPartitions
from shared.fl.client import ClientAppSpec, build_client_app
from shared.fl.training import get_weights
from shared.models import build_model


def test_config_refuses_a_cohort_whose_aggregate_would_wrap() -> None:
    with pytest.raises(HubConfigError, match=r"2048 clients x quantization_range .* would wrap"):
        FederatedRunConfig(model_name="sensor-mlp", num_clients=2048, min_fit_clients=2048)
    with pytest.raises(HubConfigError, match="would wrap"):  # the TOML path as well
        FederatedRunConfig.from_mapping(
            {"model_name": "sensor-mlp", "num_clients": 4, "min_fit_clients": 4,
             "secagg": {"quantization_range": 1 << 30, "modulus_range": 1 << 32}}
        )  # fmt: skip
    largest = SecAggConfig().max_clients()
    assert largest == 1023 and largest * (1 << 22) < 1 << 32 <= (largest + 1) * (1 << 22)
    ok = FederatedRunConfig(
        model_name="sensor-mlp",
        num_clients=largest,
        min_fit_clients=largest,
        secagg=SecAggConfig(num_shares=0.01, reconstruction_threshold=0.6),
    )
    assert ok.clients_per_round == largest


def test_hub_aborts_a_round_that_sampled_more_clients_than_the_range_allows() -> None:
    # the config counted 3 clients (3 x 2^30 < 2^32); 4 SuperNodes show up and are sampled
    config = FederatedRunConfig(
        model_name="sensor-mlp",
        num_clients=3,
        min_fit_clients=3,
        num_rounds=1,
        engine="inprocess",
        secagg=SecAggConfig(
            quantization_range=1 << 30, modulus_range=1 << 32, reconstruction_threshold=2
        ),
    )
    x, y = generate_sensor_data(200, seed=3, sample_seed=99)
    recorder = RunRecorder()
    initial = get_weights(build_model("sensor-mlp"))
    server_app = build_server_app(
        config,
        initial_weights=initial,
        evaluator=ValidationEvaluator("sensor-mlp", x, y, recorder),
        recorder=recorder,
    )
    clients = tuple(
        ArrayDataSource(*generate_sensor_data(40, seed=3, sample_seed=i)) for i in range(4)
    )
    client_app = build_client_app(
        ClientAppSpec(model_name="sensor-mlp", data=InMemoryPartitions(clients))
    )
    grid = InProcessGrid(client_app, 4)
    TaskIdentity.task_id, TaskIdentity.run_id = 1, grid.run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(
        run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}
    )
    try:
        with pytest.raises(SecAggRangeError, match=r"4 clients x quantization_range"):
            server_app(grid, context)
    finally:
        grid.close()
    assert recorder.global_round == 0  # nothing aggregated: the initial model stays
    for kept, start in zip(recorder.global_weights or [], initial, strict=True):
        np.testing.assert_array_equal(kept, start)


def test_device_refuses_a_secagg_setup_whose_aggregate_would_wrap() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id = 1, 7
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    setup = {
        Key.STAGE: Stage.SETUP,
        Key.SAMPLE_NUMBER: 2048,
        Key.SHARE_NUMBER: 2048,
        Key.THRESHOLD: 1200,
        Key.CLIPPING_RANGE: 8.0,
        Key.TARGET_RANGE: 1 << 22,
        Key.MOD_RANGE: 1 << 32,
        Key.MAX_WEIGHT: 1000.0,
    }
    message = Message(
        content=RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(setup)}),  # type: ignore[arg-type]
        dst_node_id=11,
        message_type=MessageType.TRAIN,
        group_id="1",
    )
    context = Context(
        run_id=7, node_id=11, node_config={}, state=RecordDict(), run_config={"run-name": "r"}
    )
    with pytest.raises(RoundRefusedError, match=r"R13: 2048 clients x quantization range"):
        app(message, context)  # the device's real ClientApp (mods included)
    assert "secaggplus" not in str(dict(context.state.config_records))  # no keys generated
