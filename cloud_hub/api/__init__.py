"""The hub's REST API (FastAPI): ``create_app(ApiContext(registry, ...))``.

Resources under ``/api/v1``: devices, device classes, models and versions, bundles,
rollouts (actions delegated to :mod:`cloud_hub.rollout`), events, drift, training runs,
tokens, audit, enrollment tokens; plus ``/healthz`` and Prometheus ``/metrics``.
"""

from cloud_hub.api.app import create_app
from cloud_hub.api.auth import Principal, require
from cloud_hub.api.context import ApiContext
from cloud_hub.api.errors import ApiError

__all__ = ["ApiContext", "ApiError", "Principal", "create_app", "require"]
