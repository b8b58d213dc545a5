"""The agent's asynchronous ClientApp, as a SuperNode runs it (``edge_agent.fl.async_client_app:app``).

The device side of buffered training (:mod:`shared.fl.async_client`) with the agent's rules:
the signed-order guard of :func:`edge_agent.fl.client_app.check_round` before every message
(R4: another run's messages are refused; R13: a SecAgg+ setup whose sum would wrap is
refused), samples from the node config's ``data-path``, limits from the node config, and the
held update in the node config's ``held-update-dir`` — a folder in the agent's state, so
the update survives an agent or SuperNode restart.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from edge_agent.fl.client_app import check_round
from shared.fl.async_client import AsyncClientSpec, build_async_client_app
from shared.fl.data_source import NodeConfigDataPath

__all__ = ["app", "build_agent_async_client_app"]


class _NodeLimits(AsyncClientSpec):
    """Limits come from the node config of the message's node, not from the spec."""

    def train_and_hold(self, message: Message, context: Context) -> Message:
        import dataclasses

        from edge_agent.fl.client_app import limits_from_node_config

        limited = dataclasses.replace(
            self, limits=limits_from_node_config(dict(context.node_config))
        )
        return AsyncClientSpec.train_and_hold(limited, message, context)


def _order_guard(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    check_round(message, context)
    return call_next(message, context)


def build_agent_async_client_app() -> ClientApp:
    spec: Any = _NodeLimits(model_name=None, data=NodeConfigDataPath())
    return build_async_client_app(spec, guard=_order_guard)


app = build_agent_async_client_app()
