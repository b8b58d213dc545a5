"""Federated training on the hub: Flower ServerApp with SecAgg+, strategies, runs, model store.

Entry point for callers: :func:`run_federated` (simulation engine, in-process or Ray).
"""

from cloud_hub.fl.config import (
    DifferentialPrivacyConfig,
    FederatedRunConfig,
    SecAggConfig,
    StrategyConfig,
)
from cloud_hub.fl.model_store import CandidateRecord, ModelStore
from cloud_hub.fl.partition import PartitionSpec, partition_arrays, split_holdout
from cloud_hub.fl.recorder import RoundMetrics
from cloud_hub.fl.run import FederatedRunResult, run_federated
from cloud_hub.fl.workflow import SecureRoundAbortedError

__all__ = [
    "CandidateRecord",
    "DifferentialPrivacyConfig",
    "FederatedRunConfig",
    "FederatedRunResult",
    "ModelStore",
    "PartitionSpec",
    "RoundMetrics",
    "SecAggConfig",
    "SecureRoundAbortedError",
    "StrategyConfig",
    "partition_arrays",
    "run_federated",
    "split_holdout",
]
