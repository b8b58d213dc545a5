"""The exception tree of ``edge_agent``.

::

    AgentError
    ├── AgentConfigError    invalid config file / arguments
    ├── EnrollmentError     enrollment with the hub failed or was refused
    ├── InstallError        an OTA deployment failed (the previous slot stays active)
    ├── RuntimeBackendError no inference backend could load the model
    ├── InferenceInputError a prediction request is invalid (shape, dtype, NaN, size)
    └── TransportError      broker unreachable / MQTT failure

Errors from ``shared`` pass through; third-party errors are translated at the boundary.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error raised by ``edge_agent``."""


class AgentConfigError(AgentError):
    """Invalid agent configuration."""


class EnrollmentError(AgentError):
    """Enrollment failed or was refused."""


class InstallError(AgentError):
    """A deployment could not be installed."""


class RuntimeBackendError(AgentError):
    """No inference backend could load the model."""


class InferenceInputError(AgentError):
    """A prediction request is invalid."""


class TransportError(AgentError):
    """MQTT transport failure."""


__all__ = [
    "AgentConfigError",
    "AgentError",
    "EnrollmentError",
    "InferenceInputError",
    "InstallError",
    "RuntimeBackendError",
    "TransportError",
]
