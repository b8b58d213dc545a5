"""Serving: the hot-swappable model server, post-prediction observers, the local HTTP API
and its keep-alive client."""

from edge_agent.serving.client import LocalApiClient, LocalApiClientConfig, LocalApiError
from edge_agent.serving.http_api import HttpApiConfig, LocalApi
from edge_agent.serving.observers import (
    ObserverConfig,
    ObserverStats,
    PredictionBatch,
    PredictionObservers,
)
from edge_agent.serving.server import (
    ModelServer,
    Prediction,
    PredictionResult,
    ServerStats,
    ServingConfig,
)
from edge_agent.serving.validation import InputSpec, parse_request_inputs, validate_batch

__all__ = [
    "HttpApiConfig",
    "InputSpec",
    "LocalApi",
    "LocalApiClient",
    "LocalApiClientConfig",
    "LocalApiError",
    "ModelServer",
    "ObserverConfig",
    "ObserverStats",
    "Prediction",
    "PredictionBatch",
    "PredictionObservers",
    "PredictionResult",
    "ServerStats",
    "ServingConfig",
    "parse_request_inputs",
    "validate_batch",
]
