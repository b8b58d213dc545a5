"""Flower strategies (``flwr.server.strategy``) built from a :class:`StrategyConfig`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.common import NDArrays, Parameters, Scalar, ndarrays_to_parameters
from flwr.server import strategy as fl_strategy
from flwr.server.strategy import Strategy

from cloud_hub.errors import HubConfigError
from cloud_hub.fl.config import FederatedRunConfig
from shared.fl.config_keys import FitConfigKey

__all__ = ["EvaluateFn", "build_strategy"]

EvaluateFn = Callable[[int, NDArrays, dict[str, Scalar]], tuple[float, dict[str, Scalar]] | None]


def build_strategy(
    config: FederatedRunConfig,
    *,
    initial_weights: NDArrays,
    evaluate_fn: EvaluateFn | None,
    fit_metrics_fn: Callable[[list[tuple[int, dict[str, Any]]]], dict[str, Any]] | None = None,
) -> Strategy:
    """The configured Flower strategy, wrapped for DP if asked, evaluating on the hub."""
    initial: Parameters = ndarrays_to_parameters(initial_weights)

    def fit_config(server_round: int) -> dict[str, Scalar]:
        return {
            "server-round": server_round,
            FitConfigKey.LOCAL_EPOCHS: config.local_epochs,
            FitConfigKey.BATCH_SIZE: config.batch_size,
            FitConfigKey.LEARNING_RATE: config.learning_rate,
        }

    per_round = config.clients_per_round
    common: dict[str, Any] = {
        "fraction_fit": config.fraction_fit,
        "fraction_evaluate": 0.0,  # evaluation happens on the hub's validation set
        "min_fit_clients": config.min_fit_clients,
        "min_evaluate_clients": 0,
        "min_available_clients": min(config.num_clients, max(config.min_fit_clients, 1)),
        "evaluate_fn": evaluate_fn,
        "on_fit_config_fn": fit_config,
        "fit_metrics_aggregation_fn": fit_metrics_fn,
        "initial_parameters": initial,
    }
    s = config.strategy
    name = s.name
    # The server learning rate is passed only when configured, else Flower's default applies.
    eta: dict[str, Any] = {}
    server_lr: dict[str, Any] = {}
    if s.server_learning_rate is not None:
        eta = {"eta": s.server_learning_rate}
        server_lr = {"server_learning_rate": s.server_learning_rate}
    built: Strategy
    if name == "fedavg":
        built = fl_strategy.FedAvg(**common)
    elif name == "fedprox":
        built = fl_strategy.FedProx(**common, proximal_mu=s.proximal_mu)
    elif name == "fedadam":
        built = fl_strategy.FedAdam(**common, **eta, eta_l=config.learning_rate)
    elif name == "fedyogi":
        built = fl_strategy.FedYogi(**common, **eta, eta_l=config.learning_rate)
    elif name == "fedadagrad":
        built = fl_strategy.FedAdagrad(**common, **eta, eta_l=config.learning_rate)
    elif name == "fedavgm":
        built = fl_strategy.FedAvgM(**common, **server_lr, server_momentum=s.server_momentum)
    elif name == "fedmedian":
        built = fl_strategy.FedMedian(**common)
    elif name == "fedtrimmedavg":
        built = fl_strategy.FedTrimmedAvg(**common, beta=s.trim_beta)
    elif name == "krum":
        built = fl_strategy.Krum(**common, num_malicious_clients=s.num_malicious_clients)
    elif name == "bulyan":
        built = fl_strategy.Bulyan(**common, num_malicious_clients=s.num_malicious_clients)
    else:  # StrategyConfig validates the name; this guards a new name without a branch
        raise HubConfigError(f"strategy {name!r} has no builder")
    if config.dp.enabled:
        built = fl_strategy.DifferentialPrivacyClientSideFixedClipping(
            built,
            noise_multiplier=config.dp.noise_multiplier,
            clipping_norm=config.dp.clipping_norm,
            num_sampled_clients=per_round,
        )
    return built
