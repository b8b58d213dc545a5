"""Bad configuration is refused before any round starts, with a clear message."""

from __future__ import annotations

import pytest

from cloud_hub.errors import HubConfigError
from cloud_hub.fl import FederatedRunConfig, SecAggConfig, StrategyConfig
from cloud_hub.fl.strategies import build_strategy


def test_defaults_are_valid_with_secagg_on() -> None:
    cfg = FederatedRunConfig()
    assert cfg.secagg.enabled
    secagg = cfg.lineage()["secagg"]
    assert secagg["mask_generator_required"] == "chacha20-hkdf-sha256"
    assert secagg["mask_generator"] is None  # what ran comes from a run, not from the config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {
                "secagg": SecAggConfig(num_shares=5, reconstruction_threshold=4),
                "num_clients": 3,
                "min_fit_clients": 3,
            },
            "exceeds the clients per round",
        ),
        (
            {"secagg": SecAggConfig(reconstruction_threshold=12), "num_clients": 10},
            "reconstruction_threshold (12) exceeds the clients per round (10)",
        ),
        ({"strategy": StrategyConfig(name="krum")}, "SecAgg+"),
        ({"num_clients": 2}, "needs >= 3 clients"),
        ({"model_name": "resnet-9000"}, "unknown model"),
        ({"engine": "spark"}, "engine"),
    ],
)
def test_bad_run_settings(changes: dict, message: str) -> None:
    with pytest.raises(
        HubConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")
    ):
        FederatedRunConfig(**changes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clipping_range": 0.0}, "clipping_range must be > 0"),
        ({"clipping_range": -1.0}, "clipping_range must be > 0"),
        ({"quantization_range": 1}, "quantization_range"),
        ({"modulus_range": 3 << 20}, "modulus_range"),
        ({"reconstruction_threshold": 1.5}, "fraction"),
        ({"num_shares": True}, "int or a float"),
    ],
)
def test_bad_secagg_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(HubConfigError, match=message):
        SecAggConfig(**kwargs)


def test_unknown_strategy_is_named() -> None:
    with pytest.raises(
        HubConfigError, match=r"unknown strategy 'fedfoo'; known strategies: fedavg"
    ):
        StrategyConfig(name="fedfoo")


def test_from_mapping_refuses_unknown_keys_and_builds_nested() -> None:
    cfg = FederatedRunConfig.from_mapping(
        {"num_clients": 6, "strategy": "fedprox", "secagg": {"reconstruction_threshold": 0.5}}
    )
    assert cfg.strategy.name == "fedprox" and cfg.secagg.reconstruction_threshold == 0.5
    with pytest.raises(HubConfigError, match="unknown training settings: colour"):
        FederatedRunConfig.from_mapping({"colour": "blue"})
    with pytest.raises(HubConfigError, match="unknown secagg settings: shares"):
        FederatedRunConfig.from_mapping({"secagg": {"shares": 3}})


@pytest.mark.parametrize(
    "name", ["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm"]
)
def test_every_secagg_compatible_strategy_builds(name: str) -> None:
    from flwr.server.strategy import Strategy

    cfg = FederatedRunConfig(model_name="sensor-mlp", strategy=StrategyConfig(name=name))
    strategy = build_strategy(cfg, initial_weights=[], evaluate_fn=None)
    assert isinstance(strategy, Strategy)
    assert type(strategy).__name__.lower() == name


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg", "krum", "bulyan"])
def test_robust_strategies_build_without_secagg(name: str) -> None:
    cfg = FederatedRunConfig(
        model_name="sensor-mlp",
        strategy=StrategyConfig(name=name),
        secagg=SecAggConfig(enabled=False),
    )
    assert type(build_strategy(cfg, initial_weights=[], evaluate_fn=None)).__name__.lower() == name


def test_dp_wraps_the_strategy() -> None:
    from cloud_hub.fl.config import DifferentialPrivacyConfig

    cfg = FederatedRunConfig(model_name="sensor-mlp", dp=DifferentialPrivacyConfig(enabled=True))
    wrapped = build_strategy(cfg, initial_weights=[], evaluate_fn=None)
    assert type(wrapped).__name__ == "DifferentialPrivacyClientSideFixedClipping"
