"""Inference backends behind one interface, chosen from a profile and the device's abilities.

Importing this package loads neither torch nor a TFLite runtime: backends import their
engine only when selected.
"""

from edge_agent.runtime.base import BackendAttempt, InferenceBackend, ModelArtifacts, RuntimeReport
from edge_agent.runtime.capabilities import DeviceCapabilities, detect_capabilities
from edge_agent.runtime.selection import (
    CANDIDATES,
    GPU_CANDIDATES,
    LoadedModel,
    RuntimeConfig,
    RuntimeProfile,
    load_backend,
    select_backend,
    smoke_check,
)

__all__ = [
    "CANDIDATES",
    "GPU_CANDIDATES",
    "BackendAttempt",
    "DeviceCapabilities",
    "InferenceBackend",
    "LoadedModel",
    "ModelArtifacts",
    "RuntimeConfig",
    "RuntimeProfile",
    "RuntimeReport",
    "detect_capabilities",
    "load_backend",
    "select_backend",
    "smoke_check",
]
