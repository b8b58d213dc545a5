"""Federated-learning pieces both the hub and the agents use.

Import-light on purpose: this package imports neither torch nor Flower. The training
client (``shared.fl.client``, torch + Flower), the training loop (``shared.fl.training``,
torch) and the SecAgg+ hardening (``shared.fl.secure_prg``, Flower) are imported by
training paths only.
"""

from shared.fl.data_source import (
    ArrayDataSource,
    LocalDataSource,
    NpzDataSource,
    PartitionDirectory,
    save_partition,
)

__all__ = [
    "ArrayDataSource",
    "LocalDataSource",
    "NpzDataSource",
    "PartitionDirectory",
    "save_partition",
]
