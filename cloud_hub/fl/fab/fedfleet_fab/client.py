"""ClientApp entry point (see ``edge_agent.fl.client_app``)."""

from edge_agent.fl.client_app import app

__all__ = ["app"]
