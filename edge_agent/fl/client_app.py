"""The agent's Flower ``ClientApp``, as a SuperNode runs it (``edge_agent.fl.client_app:app``).

Node config (set by :class:`~edge_agent.fl.supernode.SuperNodeSupervisor`, i.e. by the
device): ``data-path`` (the device's labelled samples, ``.npz`` with ``x``/``y``),
``batch-size``, ``max-local-epochs``, ``time-budget-s``. Run config (set by the hub for the
run): ``model-name``, ``secure-aggregation`` (default true), ``dp-clipping``.

The hub may ask for more local work than the device allows; the device's limits win.
Replies carry model weights (masked under SecAgg+), counts and losses — never samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flwr.app import Context, Message
from flwr.client.mod import fixedclipping_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from edge_agent.errors import AgentConfigError
from shared.errors import ConfigError
from shared.fl.data_source import DataResolver, NodeConfigDataPath
from shared.fl.mods import hardened_secaggplus_mod

if TYPE_CHECKING:
    from shared.fl.training import LocalTrainingLimits

__all__ = ["app", "build_agent_client_app", "limits_from_node_config"]

# torch is imported only when a client actually trains: SuperNodes start a fresh ClientApp
# process per message, and SecAgg+'s key-exchange and unmask stages need no torch.


def limits_from_node_config(node_config: dict[str, Any]) -> LocalTrainingLimits:
    """The device's training limits from its SuperNode node config."""
    from shared.fl.training import LocalTrainingLimits

    try:
        return LocalTrainingLimits(
            batch_size=int(node_config.get("batch-size", 32)),
            max_local_epochs=int(node_config.get("max-local-epochs", 1)),
            time_budget_s=float(node_config.get("time-budget-s", 60.0)),
        )
    except (ConfigError, TypeError, ValueError) as exc:
        raise AgentConfigError(f"bad training limits in node config: {exc}") from exc


def _secure_aggregation(
    message: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    # On unless the hub's run explicitly turns it off (must match the hub's workflow).
    if context.run_config.get("secure-aggregation", True):
        return hardened_secaggplus_mod(message, context, call_next)
    return call_next(message, context)


def _dp_clipping(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if context.run_config.get("dp-clipping", False):
        return fixedclipping_mod(message, context, call_next)
    return call_next(message, context)


def build_agent_client_app(data: DataResolver | None = None) -> ClientApp:
    """The agent's ClientApp training on ``data`` (default: the node config's ``data-path``).

    The edge agent's sample store plugs in as ``data``: a picklable callable from the Flower
    ``Context`` to a :class:`shared.fl.LocalDataSource`.
    """
    resolver: DataResolver = data if data is not None else NodeConfigDataPath()

    def client_fn(context: Context) -> Any:
        import torch

        from shared.fl.client import LocalTrainingClient

        torch.set_num_threads(1)
        model_name = str(context.run_config.get("model-name", "digits-cnn"))
        limits = limits_from_node_config(dict(context.node_config))
        return LocalTrainingClient(model_name, resolver(context), limits).to_client()

    return ClientApp(client_fn=client_fn, mods=[_secure_aggregation, _dp_clipping])


app = build_agent_client_app()
