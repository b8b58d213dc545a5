"""Federated training on the hub: Flower ServerApp with SecAgg+, strategies, runs, model store.

Entry points for callers: :func:`run_federated` (synchronous rounds: simulation engine,
in-process or Ray) and :func:`run_buffered` (asynchronous FedBuff buffers, SecAgg+ each).
"""

from cloud_hub.fl.async_federated import BufferedRunConfig, BufferedRunResult, run_buffered
from cloud_hub.fl.async_run import AsyncBufferedRun, BufferRecord
from cloud_hub.fl.config import (
    DifferentialPrivacyConfig,
    FederatedRunConfig,
    SecAggConfig,
    StrategyConfig,
)
from cloud_hub.fl.fedbuff import FedBuffConfig
from cloud_hub.fl.model_store import CandidateRecord, ModelStore
from cloud_hub.fl.partition import PartitionSpec, partition_arrays, split_holdout
from cloud_hub.fl.recorder import RoundMetrics
from cloud_hub.fl.run import FederatedRunResult, run_federated
from cloud_hub.fl.workflow import SecureRoundAbortedError

__all__ = [
    "AsyncBufferedRun",
    "BufferRecord",
    "BufferedRunConfig",
    "BufferedRunResult",
    "CandidateRecord",
    "DifferentialPrivacyConfig",
    "FedBuffConfig",
    "FederatedRunConfig",
    "FederatedRunResult",
    "ModelStore",
    "PartitionSpec",
    "RoundMetrics",
    "SecAggConfig",
    "SecureRoundAbortedError",
    "StrategyConfig",
    "partition_arrays",
    "run_buffered",
    "run_federated",
    "split_holdout",
]
