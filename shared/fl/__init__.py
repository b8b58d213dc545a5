"""Federated-learning pieces both the hub and the agents use.

Import-light on purpose: this package imports neither torch nor Flower. The training
client (``shared.fl.client``, torch + Flower), the training loop (``shared.fl.training``,
torch), the client mods (``shared.fl.mods``: hardened SecAgg+, dropout injection; Flower)
and the SecAgg+ mask generator (``shared.fl.secure_prg``) are imported by training paths
only.
"""

from shared.fl.data_source import (
    ArrayDataSource,
    DataResolver,
    InMemoryPartitions,
    LocalDataSource,
    NodeConfigDataPath,
    NpzDataSource,
    PartitionDirectory,
    PartitionFiles,
    save_partition,
)

__all__ = [
    "ArrayDataSource",
    "DataResolver",
    "InMemoryPartitions",
    "LocalDataSource",
    "NodeConfigDataPath",
    "NpzDataSource",
    "PartitionDirectory",
    "PartitionFiles",
    "save_partition",
]
