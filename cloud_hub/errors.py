"""The exception tree of ``cloud_hub``.

::

    HubError
    ├── HubConfigError      invalid configuration / arguments (caught before work starts)
    ├── TrainingError       a federated run could not complete
    ├── CompressionError    export / quantization / conversion failed
    │   └── GateRefusedError  an artifact is over a profile budget
    ├── RegistryError       registry state conflict / not found
    ├── RolloutError        illegal rollout transition or failed rollout operation
    └── DeliveryError       the broker or transport failed while publishing

Errors from ``shared`` (``shared.errors.FedfleetError``) pass through unchanged; third-party
errors are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class HubError(Exception):
    """Root of every error raised by ``cloud_hub``."""


class HubConfigError(HubError):
    """Invalid configuration or arguments."""


class TrainingError(HubError):
    """A federated training run failed."""


class CompressionError(HubError):
    """A compression step failed."""


class GateRefusedError(CompressionError):
    """An artifact exceeds one of its profile's budgets."""


class RegistryError(HubError):
    """Registry state conflict or missing entity."""


class RolloutError(HubError):
    """Illegal rollout transition or failed rollout operation."""


class DeliveryError(HubError):
    """Publishing to the fleet failed."""


__all__ = [
    "CompressionError",
    "DeliveryError",
    "GateRefusedError",
    "HubConfigError",
    "HubError",
    "RegistryError",
    "RolloutError",
    "TrainingError",
]
