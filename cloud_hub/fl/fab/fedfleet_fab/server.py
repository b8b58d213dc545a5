"""ServerApp entry point (see ``cloud_hub.fl.deployment``)."""

from cloud_hub.fl.deployment import app

__all__ = ["app"]
