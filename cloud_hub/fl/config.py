"""The validated configuration of a federated run (one dataclass per component).

Every limit is checked when the config is built, i.e. before any round starts: a bad
strategy name, a reconstruction threshold above the number of clients or a non-positive
clipping range is a :class:`~cloud_hub.errors.HubConfigError` with a clear message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from cloud_hub.errors import HubConfigError

__all__ = [
    "ROBUST_STRATEGIES",
    "STRATEGIES",
    "DifferentialPrivacyConfig",
    "FederatedRunConfig",
    "SecAggConfig",
    "StrategyConfig",
]

# Flower strategies fedfleet exposes (``flwr.server.strategy.*``).
STRATEGIES: tuple[str, ...] = (
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedavgm",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "bulyan",
)
# These inspect individual updates, which SecAgg+ hides by design: they need it off.
ROBUST_STRATEGIES: frozenset[str] = frozenset({"fedmedian", "fedtrimmedavg", "krum", "bulyan"})

_MAX_CLIENTS = 100_000
_MAX_ROUNDS = 10_000


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise HubConfigError(message)


@dataclass(frozen=True)
class SecAggConfig:
    """Flower SecAgg+ parameters (see ``flwr.server.workflow.SecAggPlusWorkflow``).

    ``num_shares`` and ``reconstruction_threshold`` are absolute counts (int) or fractions
    (float in (0, 1]) of the clients sampled per round, as in Flower. ``num_shares=1.0``
    (default) is the complete graph; for cohorts beyond a few dozen clients use a fraction
    such as 0.2, since the hub's Shamir reconstruction grows as clients x shares^2.
    """

    enabled: bool = True
    num_shares: int | float = 1.0
    reconstruction_threshold: int | float = 0.6
    clipping_range: float = 8.0
    quantization_range: int = 1 << 22
    modulus_range: int = 1 << 32
    max_weight: float = 10_000.0
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        _need(
            self.clipping_range > 0, f"secagg clipping_range must be > 0, got {self.clipping_range}"
        )
        _need(
            isinstance(self.quantization_range, int) and self.quantization_range > 1,
            f"secagg quantization_range must be an integer > 1, got {self.quantization_range}",
        )
        _need(
            isinstance(self.modulus_range, int)
            and self.modulus_range > self.quantization_range
            and self.modulus_range <= 1 << 32
            and self.modulus_range & (self.modulus_range - 1) == 0,
            "secagg modulus_range must be a power of two in (quantization_range, 2**32]",
        )
        _need(self.max_weight > 0, "secagg max_weight must be > 0")
        _need(self.timeout_s is None or self.timeout_s > 0, "secagg timeout_s must be > 0")
        for name in ("num_shares", "reconstruction_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise HubConfigError(f"secagg {name} must be an int or a float, got {value!r}")
            if isinstance(value, float):
                _need(0 < value <= 1, f"secagg {name} as a fraction must be in (0, 1], got {value}")
            else:
                _need(value >= 2, f"secagg {name} as a count must be >= 2, got {value}")

    def resolved(self, clients_per_round: int) -> tuple[int, int]:
        """``(num_shares, threshold)`` as Flower computes them for ``clients_per_round``."""
        if isinstance(self.num_shares, float):
            shares = round(self.num_shares * clients_per_round)
            if shares < clients_per_round and shares % 2 == 0:
                shares += 1
            if shares <= 2:
                shares = clients_per_round
        else:
            shares = self.num_shares
        if isinstance(self.reconstruction_threshold, float):
            threshold = max(round(self.reconstruction_threshold * shares), 2)
        else:
            threshold = self.reconstruction_threshold
        return shares, threshold

    def check_against(self, clients_per_round: int) -> None:
        """Refuse settings that cannot work with this many clients per round."""
        if not self.enabled:
            return
        _need(
            clients_per_round >= 3, f"SecAgg+ needs >= 3 clients per round, got {clients_per_round}"
        )
        shares, threshold = self.resolved(clients_per_round)
        _need(
            shares <= clients_per_round,
            f"secagg num_shares ({shares}) exceeds the clients per round ({clients_per_round})",
        )
        _need(
            threshold <= clients_per_round,
            f"secagg reconstruction_threshold ({threshold}) exceeds the clients per round "
            f"({clients_per_round})",
        )
        _need(
            threshold < shares or isinstance(self.reconstruction_threshold, float),
            f"secagg reconstruction_threshold ({threshold}) must be below num_shares ({shares})",
        )
        self.check_range(clients_per_round)

    def max_clients(self) -> int:
        """The most clients a round can sum before the aggregate wraps modulo the range."""
        return (self.modulus_range - 1) // self.quantization_range

    def check_range(self, clients: int) -> None:
        """R13: each client adds a value below ``quantization_range``; the sum of ``clients``
        of them must stay below ``modulus_range`` or the unmasked aggregate silently wraps."""
        _need(
            clients * self.quantization_range < self.modulus_range,
            f"secagg: {clients} clients x quantization_range {self.quantization_range} >= "
            f"modulus_range {self.modulus_range}: the aggregate would wrap; at most "
            f"{self.max_clients()} clients per round (lower quantization_range or raise "
            "modulus_range)",
        )


@dataclass(frozen=True)
class DifferentialPrivacyConfig:
    """Central DP with client-side fixed clipping (Flower's wrapper + ``fixedclipping_mod``).

    Client-side clipping is the variant compatible with SecAgg+: the clients clip, the hub
    adds Gaussian noise to the (securely) aggregated update.
    """

    enabled: bool = False
    noise_multiplier: float = 0.1
    clipping_norm: float = 10.0

    def __post_init__(self) -> None:
        _need(self.noise_multiplier >= 0, "dp noise_multiplier must be >= 0")
        _need(self.clipping_norm > 0, "dp clipping_norm must be > 0")


@dataclass(frozen=True)
class StrategyConfig:
    """Which Flower strategy aggregates, with its knobs."""

    name: str = "fedavg"
    proximal_mu: float = 0.01  # fedprox
    server_learning_rate: float | None = None  # fedadam/fedyogi/fedadagrad/fedavgm; None: Flower's
    server_momentum: float = 0.9  # fedavgm
    trim_beta: float = 0.2  # fedtrimmedavg
    num_malicious_clients: int = 0  # krum / bulyan

    def __post_init__(self) -> None:
        _need(
            self.name in STRATEGIES,
            f"unknown strategy {self.name!r}; known strategies: {', '.join(STRATEGIES)}",
        )
        _need(self.proximal_mu >= 0, "proximal_mu must be >= 0")
        _need(
            self.server_learning_rate is None or 0 < self.server_learning_rate <= 10,
            "server_learning_rate must be in (0, 10]",
        )
        _need(0 <= self.server_momentum < 1, "server_momentum must be in [0, 1)")
        _need(0 <= self.trim_beta < 0.5, "trim_beta must be in [0, 0.5)")
        _need(self.num_malicious_clients >= 0, "num_malicious_clients must be >= 0")


@dataclass(frozen=True)
class FederatedRunConfig:
    """One federated training run: model, cohort, rounds, aggregation and its protections."""

    model_name: str = "digits-cnn"
    num_clients: int = 10
    num_rounds: int = 5
    fraction_fit: float = 1.0
    min_fit_clients: int = 2
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    time_budget_s: float = 60.0
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    dp: DifferentialPrivacyConfig = field(default_factory=DifferentialPrivacyConfig)
    on_round_failure: str = "abort"  # "abort": stop, keep last model | "skip": keep it, go on
    engine: str = "auto"  # "inprocess" | "ray" | "auto" (in-process for small runs)
    seed: int = 0

    def __post_init__(self) -> None:
        from shared.errors import ConfigError
        from shared.models import get_spec

        try:
            get_spec(self.model_name)
        except ConfigError as exc:
            raise HubConfigError(str(exc)) from None
        _need(1 <= self.num_clients <= _MAX_CLIENTS, f"num_clients must be in [1, {_MAX_CLIENTS}]")
        _need(1 <= self.num_rounds <= _MAX_ROUNDS, f"num_rounds must be in [1, {_MAX_ROUNDS}]")
        _need(0 < self.fraction_fit <= 1, "fraction_fit must be in (0, 1]")
        _need(self.min_fit_clients >= 1, "min_fit_clients must be >= 1")
        _need(
            self.min_fit_clients <= self.num_clients,
            f"min_fit_clients ({self.min_fit_clients}) exceeds num_clients ({self.num_clients})",
        )
        _need(1 <= self.local_epochs <= 1000, "local_epochs must be in [1, 1000]")
        _need(1 <= self.batch_size <= 65_536, "batch_size must be in [1, 65536]")
        _need(0 < self.learning_rate <= 10, "learning_rate must be in (0, 10]")
        _need(0 < self.time_budget_s <= 86_400, "time_budget_s must be in (0, 86400]")
        _need(
            self.on_round_failure in ("abort", "skip"), "on_round_failure must be 'abort' or 'skip'"
        )
        _need(
            self.engine in ("auto", "inprocess", "ray"),
            "engine must be 'auto', 'inprocess' or 'ray'",
        )
        if self.secagg.enabled:
            _need(
                self.strategy.name not in ROBUST_STRATEGIES,
                f"strategy {self.strategy.name!r} needs individual updates, which SecAgg+ "
                "hides; disable secagg to use it",
            )
            self.secagg.check_against(self.clients_per_round)

    @property
    def clients_per_round(self) -> int:
        """How many clients Flower samples per round (``fraction_fit`` / ``min_fit_clients``)."""
        return max(int(self.num_clients * self.fraction_fit), self.min_fit_clients)

    def client_run_config(self) -> dict[str, Any]:
        """The run-config entries every client follows: this config is the one switch for
        SecAgg+ (and clipping); the clients get it, and the mask generator, from here."""
        from shared.fl.config_keys import RunConfigKey
        from shared.fl.secure_prg import MASK_GENERATOR

        return {
            RunConfigKey.MODEL_NAME: self.model_name,
            RunConfigKey.SECURE_AGGREGATION: self.secagg.enabled,
            RunConfigKey.DP_CLIPPING: self.dp.enabled,
            RunConfigKey.MASK_GENERATOR: MASK_GENERATOR,
        }

    @property
    def min_round_results(self) -> int:
        """The fewest client updates a round may aggregate: ``min_fit_clients``, or under
        SecAgg+ the reconstruction threshold if lower (Flower unmasks with that many)."""
        if not self.secagg.enabled:
            return self.min_fit_clients
        return min(self.min_fit_clients, self.secagg.resolved(self.clients_per_round)[1])

    def with_overrides(self, **changes: Any) -> FederatedRunConfig:
        """A copy with ``changes`` applied (re-validated)."""
        return replace(self, **changes)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FederatedRunConfig:
        """Build from a plain mapping (a TOML table); unknown keys are refused."""
        nested = {
            "strategy": StrategyConfig,
            "secagg": SecAggConfig,
            "dp": DifferentialPrivacyConfig,
        }
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        _need(not unknown, f"unknown training settings: {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in nested:
                if isinstance(value, str) and key == "strategy":
                    value = {"name": value}
                _need(isinstance(value, Mapping), f"{key} must be a table")
                sub_known = {f.name for f in fields(nested[key])}
                sub_unknown = sorted(set(value) - sub_known)
                _need(not sub_unknown, f"unknown {key} settings: {', '.join(sub_unknown)}")
                try:
                    kwargs[key] = nested[key](**value)
                except TypeError as exc:
                    raise HubConfigError(f"bad {key} settings: {exc}") from None
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def lineage(
        self, *, mask_generator: str | None = None, client_mask_generators: Sequence[str] = ()
    ) -> dict[str, Any]:
        """The settings recorded with the trained model, and what ran.

        ``mask_generator`` is the SecAgg+ mask generator the hub actually unmasked with and
        ``client_mask_generators`` the ones the clients reported (from the run's recorder);
        ``None`` / empty when no SecAgg+ round ran. ``mask_generator_required`` is the one
        the run config named (see :mod:`shared.fl.secure_prg`).
        """
        from shared.fl.secure_prg import MASK_GENERATOR

        shares, threshold = self.secagg.resolved(self.clients_per_round)
        return {
            "model": self.model_name,
            "strategy": self.strategy.name,
            "rounds": self.num_rounds,
            "clients": self.num_clients,
            "clients_per_round": self.clients_per_round,
            "secagg": {
                "enabled": self.secagg.enabled,
                "num_shares": shares,
                "reconstruction_threshold": threshold,
                "clipping_range": self.secagg.clipping_range,
                "quantization_range": self.secagg.quantization_range,
                "modulus_range": self.secagg.modulus_range,
                "mask_generator_required": MASK_GENERATOR if self.secagg.enabled else None,
                "mask_generator": mask_generator,
                "client_mask_generators": sorted(client_mask_generators),
            },
            "dp": {
                "enabled": self.dp.enabled,
                "noise_multiplier": self.dp.noise_multiplier,
                "clipping_norm": self.dp.clipping_norm,
            },
        }
