"""The agent's Flower ``ClientApp``, as a SuperNode runs it (``edge_agent.fl.client_app:app``).

Node config (set by :class:`~edge_agent.fl.supernode.SuperNodeSupervisor`, i.e. by the
device) and run config (set by the hub for the run): the keys of
:class:`shared.fl.config_keys.NodeConfigKey` and :class:`~shared.fl.config_keys.RunConfigKey`.
The mod order is the one of every fedfleet ClientApp (:func:`shared.fl.mods.client_mods`).

R4: the device, not the server, decides whether its update may leave unmasked. A round of
another run than the order's, or one without SecAgg+ when the order or the device requires
it, or a SecAgg+ setup whose aggregate would wrap (R13), is refused with
:class:`RoundRefusedError`; Flower returns it to the server as this node's error reply.
Under SecAgg+ the run config also names the mask generator (``mask-generator``); a run that
names one this device does not run is refused too
(:class:`shared.fl.mods.MaskGeneratorRefusedError`, naming the generator required).

The hub may ask for more local work than the device allows; the device's limits win.
Replies carry model weights (masked under SecAgg+), counts and losses — never samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from edge_agent.errors import AgentConfigError, AgentError
from shared.errors import ConfigError
from shared.fl.config_keys import NodeConfigKey, RunConfigKey
from shared.fl.data_source import DataResolver, NodeConfigDataPath
from shared.fl.mods import SECURE_AGGREGATION_FROM_RUN, compose_client_app

if TYPE_CHECKING:
    from shared.fl.training import LocalTrainingLimits

__all__ = [
    "RoundRefusedError",
    "app",
    "build_agent_client_app",
    "limits_from_node_config",
]


class RoundRefusedError(AgentError):
    """This device refuses to take part in the round (R4, R13); nothing was trained."""


# torch is imported only when a client actually trains: SuperNodes start a fresh ClientApp
# process per message, and SecAgg+'s key-exchange and unmask stages need no torch.


def limits_from_node_config(node_config: dict[str, Any]) -> LocalTrainingLimits:
    """The device's training limits from its SuperNode node config."""
    from shared.fl.training import LocalTrainingLimits

    try:
        return LocalTrainingLimits(
            batch_size=int(node_config.get(NodeConfigKey.BATCH_SIZE, 32)),
            max_local_epochs=int(node_config.get(NodeConfigKey.MAX_LOCAL_EPOCHS, 1)),
            time_budget_s=float(node_config.get(NodeConfigKey.TIME_BUDGET_S, 60.0)),
        )
    except (ConfigError, TypeError, ValueError) as exc:
        raise AgentConfigError(f"bad training limits in node config: {exc}") from exc


def check_round(message: Message, context: Context) -> None:
    """Refuse a round the signed order does not cover (pure: raises or returns)."""
    ordered_run = context.node_config.get(NodeConfigKey.ORDER_RUN_ID)
    if ordered_run is not None and context.run_config.get(RunConfigKey.RUN_NAME) != ordered_run:
        raise RoundRefusedError(
            f"R4: round of run {context.run_config.get(RunConfigKey.RUN_NAME)!r}, the order is for "
            f"{ordered_run!r}"
        )
    configs = None
    if message.metadata.message_type == "train":
        configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is not None and configs.get(Key.STAGE) == Stage.SETUP:
        _check_secagg_range(configs)
    if not context.node_config.get(NodeConfigKey.REQUIRE_SECURE_AGGREGATION, False):
        return
    if not SECURE_AGGREGATION_FROM_RUN.on(context):
        raise RoundRefusedError("R4: SecAgg+ is required here and the run turned it off")
    if message.metadata.message_type == "train" and (configs is None or Key.STAGE not in configs):
        raise RoundRefusedError("R4: SecAgg+ is required here; this train message has no stage")
    # evaluation sends the global model in; only metrics come back


def _check_secagg_range(configs: Any) -> None:
    samples = configs.get(Key.SAMPLE_NUMBER)
    target = configs.get(Key.TARGET_RANGE)
    modulus = configs.get(Key.MOD_RANGE)
    if not all(isinstance(v, int) for v in (samples, target, modulus)):
        raise RoundRefusedError("R13: SecAgg+ setup without integer ranges")
    if samples * target >= modulus:  # R13: the sum of the masked updates would wrap
        raise RoundRefusedError(
            f"R13: {samples} clients x quantization range {target} >= modulus {modulus}"
        )


def _order_guard(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    check_round(message, context)
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
        model_name = str(context.run_config.get(RunConfigKey.MODEL_NAME, "digits-cnn"))
        limits = limits_from_node_config(dict(context.node_config))
        return LocalTrainingClient(model_name, resolver(context), limits).to_client()

    # SecAgg+ and clipping as the hub's run config says (must match the hub's workflow)
    return compose_client_app(client_fn, round_guard=_order_guard)


app = build_agent_client_app()
