"""Flower client mods fedfleet adds around its ClientApp (torch-free).

- :func:`hardened_secaggplus_mod` is fedfleet's SecAgg+ client
  (:func:`shared.fl.secaggplus_client.secaggplus_client_mod`: Flower's client protocol and
  messages, masks from ChaCha20, see :mod:`shared.fl.secure_prg`). It refuses a round whose
  run config names a mask generator it cannot run (:class:`MaskGeneratorRefusedError`) and
  reports the generator it masked with in its masked-vector reply, so the hub records what
  ran.
- :class:`DropoutSchedule` makes chosen clients fail at a chosen SecAgg+ stage (simulated
  device loss, for fault scenarios and tests).
- :func:`client_mods` / :func:`compose_client_app` fix the mod order of every ClientApp
  (the agent's and the simulations'): round guard, dropout, SecAgg+, clipping.

Kept apart from :mod:`shared.fl.client` so that a SuperNode's ClientApp process can run
the key-exchange and unmask stages of SecAgg+ without importing torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flwr.app import Context, Message
from flwr.client.mod import fixedclipping_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from shared.errors import ConfigError
from shared.fl.config_keys import NodeConfigKey, RunConfigKey, SecAggReportKey
from shared.fl.secaggplus_client import MASKED_WITH, secaggplus_client_mod
from shared.fl.secure_prg import MASK_GENERATOR

__all__ = [
    "DropoutSchedule",
    "MaskGeneratorRefusedError",
    "RunConfigSwitch",
    "SimulatedDropoutError",
    "client_mods",
    "compose_client_app",
    "hardened_secaggplus_mod",
]


def _partition_id(context: Context) -> int:
    try:
        return int(context.node_config[NodeConfigKey.PARTITION_ID])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"node config has no integer {NodeConfigKey.PARTITION_ID!r}") from exc


class SimulatedDropoutError(RuntimeError):
    """Raised inside a ClientApp to simulate a device that disappears mid-round."""


@dataclass(frozen=True)
class DropoutSchedule:
    """Which clients vanish, and when (fault injection for simulations and tests).

    A client drops in a round when its partition id is listed in ``partitions`` or, for
    the others, with probability ``rate`` (decided by a hash of seed, round and partition,
    so runs are reproducible and all processes agree). ``stage`` is the SecAgg+ stage at
    which it stops answering (``"collect_masked_vectors"``: after sharing its keys — the
    case where the server must reconstruct its masks); plain rounds drop at training.
    """

    rate: float = 0.0
    seed: int = 0
    stage: str = "collect_masked_vectors"
    partitions: tuple[int, ...] = ()
    rounds: tuple[int, ...] = ()  # empty: every round

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ConfigError(f"dropout rate must be in [0, 1), got {self.rate}")
        stages = ("setup", "share_keys", "collect_masked_vectors", "unmask")
        if self.stage not in stages:
            raise ConfigError(f"dropout stage must be one of {stages}, got {self.stage!r}")

    def drops(self, server_round: int, partition_id: int) -> bool:
        if self.rounds and server_round not in self.rounds:
            return False
        if partition_id in self.partitions:
            return True
        if self.rate <= 0:
            return False
        digest = hashlib.sha256(f"{self.seed}/{server_round}/{partition_id}".encode()).digest()
        return int.from_bytes(digest[:8], "little") / 2**64 < self.rate

    def mod(self, message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """A Flower ``Mod`` raising :class:`SimulatedDropoutError` when this client drops."""
        if (
            message.metadata.message_type == "train"
            and NodeConfigKey.PARTITION_ID in context.node_config
        ):
            configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
            stage = str(configs[Key.STAGE]) if configs is not None else self.stage
            server_round = int(message.metadata.group_id or 0)
            if stage == self.stage and self.drops(server_round, _partition_id(context)):
                raise SimulatedDropoutError(
                    f"partition {_partition_id(context)} dropped at {stage}, round {server_round}"
                )
        return call_next(message, context)


class MaskGeneratorRefusedError(RuntimeError):
    """The run asks for SecAgg+ masks from a generator this client does not run."""


def check_mask_generator(context: Context) -> None:
    """Refuse a run whose config names another mask generator than this client's.

    A run config without the key (an older hub) gets this client's generator."""
    required = context.run_config.get(RunConfigKey.MASK_GENERATOR, MASK_GENERATOR)
    if required != MASK_GENERATOR:
        raise MaskGeneratorRefusedError(
            f"this run requires SecAgg+ mask generator {required!r}; this client masks with "
            f"{MASK_GENERATOR!r} only, so its masks would not cancel: round refused"
        )


def hardened_secaggplus_mod(
    message: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """fedfleet's SecAgg+ client, refusing a run that asks for another mask generator."""
    check_mask_generator(context)
    reply = secaggplus_client_mod(message, context, call_next)
    configs = None if reply.has_error() else reply.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is not None and Key.MASKED_PARAMETERS in configs:
        configs[SecAggReportKey.MASK_GENERATOR] = MASKED_WITH
    return reply


@dataclass(frozen=True)
class RunConfigSwitch:
    """A mod that is on or off as the run's config says (the hub decides per run)."""

    key: str
    default: bool

    def on(self, context: Context) -> bool:
        return bool(context.run_config.get(self.key, self.default))

    def gate(self, mod: Mod) -> Mod:
        def switched(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
            if self.on(context):
                return mod(message, context, call_next)
            return call_next(message, context)

        return switched


#: SecAgg+ is on unless the run turns it off; clipping is off unless the run turns it on.
SECURE_AGGREGATION_FROM_RUN = RunConfigSwitch(RunConfigKey.SECURE_AGGREGATION, True)
DP_CLIPPING_FROM_RUN = RunConfigSwitch(RunConfigKey.DP_CLIPPING, False)

Switch = bool | RunConfigSwitch


def _switched(switch: Switch, mod: Mod) -> list[Mod]:
    if isinstance(switch, RunConfigSwitch):
        return [switch.gate(mod)]
    return [mod] if switch else []


def client_mods(
    *,
    round_guard: Mod | None = None,
    dropout: DropoutSchedule | None = None,
    secure_aggregation: Switch = SECURE_AGGREGATION_FROM_RUN,
    dp_clipping: Switch = DP_CLIPPING_FROM_RUN,
) -> list[Mod]:
    """The one mod order of every fedfleet ClientApp (the outermost mod comes first).

    The round guard refuses a round before anything runs; dropout fires before SecAgg+;
    SecAgg+ masks what the inner mods return; clipping sees only the fit message (SecAgg+
    calls inward only at its collect stage).
    """
    mods: list[Mod] = [] if round_guard is None else [round_guard]
    if dropout is not None:
        mods.append(dropout.mod)
    mods += _switched(secure_aggregation, hardened_secaggplus_mod)
    mods += _switched(dp_clipping, fixedclipping_mod)
    return mods


def compose_client_app(
    client_fn: Callable[[Context], Any],
    *,
    round_guard: Mod | None = None,
    dropout: DropoutSchedule | None = None,
    secure_aggregation: Switch = SECURE_AGGREGATION_FROM_RUN,
    dp_clipping: Switch = DP_CLIPPING_FROM_RUN,
) -> ClientApp:
    """A Flower ``ClientApp`` around ``client_fn`` with :func:`client_mods`."""
    mods = client_mods(
        round_guard=round_guard,
        dropout=dropout,
        secure_aggregation=secure_aggregation,
        dp_clipping=dp_clipping,
    )
    return ClientApp(client_fn=client_fn, mods=mods)
