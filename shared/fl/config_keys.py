"""The keys of Flower's run, node and fit configs, one constant each for hub and device.

Like Flower's own ``secaggplus_constants.Key``: the hub's ServerApp and training orders and
the agent's ClientApp and SuperNode import these names instead of spelling the strings on
both sides, so a renamed key breaks at import time rather than silently reading a default.
"""

from __future__ import annotations

__all__ = [
    "AsyncTrainingKey",
    "FitConfigKey",
    "NodeConfigKey",
    "RunConfigKey",
    "SecAggReportKey",
]


class RunConfigKey:
    """Run config: set by the hub for one run (``flwr run --run-config``)."""

    # read by the ServerApp on the hub (cloud_hub.fl.superlink_app)
    CONFIG_PATH = "config-path"  # TOML whose [training] table is the FederatedRunConfig
    VALIDATION_PATH = "validation-path"  # hub-held validation set (.npz with x and y)
    RESULTS_DIR = "results-dir"  # where rounds.json / summary.json are written
    MODEL_STORE = "model-store"  # optional ModelStore root
    INITIAL_WEIGHTS_PATH = "initial-weights-path"  # optional .npz state dict (default: fresh)
    # read by both sides
    RUN_NAME = "run-name"  # the hub's run id; a device compares it with its signed order
    # read by the agent's ClientApp (must match the hub's workflow)
    MODEL_NAME = "model-name"
    SECURE_AGGREGATION = "secure-aggregation"  # default on; the hub's training config decides
    MASK_GENERATOR = "mask-generator"  # SecAgg+ masks; a client that cannot run it refuses
    DP_CLIPPING = "dp-clipping"  # default off


class SecAggReportKey:
    """Keys a fedfleet client adds to its SecAgg+ replies (Flower's own keys are untouched)."""

    # in the masked-vector reply: the generator the client masked with
    MASK_GENERATOR = "fedfleet.mask-generator"


class NodeConfigKey:
    """Node config: set by the device for its SuperNode (``--node-config``)."""

    DATA_PATH = "data-path"  # the device's labelled samples (.npz with x and y)
    BATCH_SIZE = "batch-size"
    MAX_LOCAL_EPOCHS = "max-local-epochs"
    TIME_BUDGET_S = "time-budget-s"
    # from the signed training order (R4)
    ORDER_RUN_ID = "order-run-id"
    REQUIRE_SECURE_AGGREGATION = "require-secure-aggregation"
    # simulated clients (Simulation Engine, in-process grid)
    PARTITION_ID = "partition-id"
    NUM_PARTITIONS = "num-partitions"


class FitConfigKey:
    """Fit config: sent by the hub's strategy each round; the client caps it by its limits."""

    LOCAL_EPOCHS = "local-epochs"
    BATCH_SIZE = "batch-size"
    LEARNING_RATE = "learning-rate"


class AsyncTrainingKey:
    """Asynchronous buffered training (``cloud_hub.fl.async_run`` <-> ``shared.fl.async_client``)."""

    # record names in the messages of asynchronous training
    GLOBAL_RECORD = "global"  # ArrayRecord of a training order: the model to start from
    ORDER_RECORD = "order"  # ConfigRecord of orders, held/release queries and their replies
    # training order ("train.order"): the device trains from this version and holds its update
    ORDER_ID = "order-id"
    BASE_VERSION = "base-version"
    NUM_EXAMPLES = "num-examples"
    # "query.held" reply: the held update already went out in a masked vector (never again)
    SPENT = "spent"
    # secure buffer exchange (SecAgg+ fit config): the device weights its held update itself
    CURRENT_VERSION = "current-version"
    MAX_STALENESS = "max-staleness"
    # node config: where the device keeps its held update (survives agent restarts)
    HELD_UPDATE_DIR = "held-update-dir"
