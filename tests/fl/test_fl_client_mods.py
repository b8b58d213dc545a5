"""The one ClientApp mod order and the run-config keys both sides share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict
from flwr.client.mod import fixedclipping_mod

from cloud_hub.fl.config import FederatedRunConfig
from cloud_hub.fl.superlink_app import DeploymentRunSettings, client_run_config
from shared.fl.config_keys import RunConfigKey
from shared.fl.mods import (
    DropoutSchedule,
    RunConfigSwitch,
    client_mods,
    hardened_secaggplus_mod,
)


def _guard(message: Any, context: Any, call_next: Any) -> Any:
    return call_next(message, context)


def _context(run_config: dict[str, Any]) -> Context:
    return Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config=run_config)


def test_mod_order_is_guard_dropout_secagg_clipping() -> None:
    dropout = DropoutSchedule(partitions=(0,))
    mods = client_mods(
        round_guard=_guard, dropout=dropout, secure_aggregation=True, dp_clipping=True
    )
    assert mods == [_guard, dropout.mod, hardened_secaggplus_mod, fixedclipping_mod]
    assert client_mods(secure_aggregation=False, dp_clipping=False) == []


def test_run_config_switch_follows_the_run() -> None:
    calls: list[str] = []

    def inner(message: Any, context: Any, call_next: Any) -> Any:
        calls.append("mod")
        return call_next(message, context)

    gated = RunConfigSwitch(RunConfigKey.DP_CLIPPING, False).gate(inner)

    def terminal(message: Any, context: Any) -> str:
        calls.append("app")
        return "reply"

    assert gated(None, _context({}), terminal) == "reply"  # type: ignore[arg-type]
    assert calls == ["app"]
    calls.clear()
    assert gated(None, _context({RunConfigKey.DP_CLIPPING: True}), terminal) == "reply"  # type: ignore[arg-type]
    assert calls == ["mod", "app"]


def test_hub_run_config_round_trips_through_the_server_settings(tmp_path: Path) -> None:
    settings = DeploymentRunSettings(
        config_path=tmp_path / "train.toml",
        validation_path=tmp_path / "validation.npz",
        results_dir=tmp_path / "results",
        model_store=tmp_path / "models",
        run_name="run-7",
    )
    entries = settings.to_run_config() | client_run_config(FederatedRunConfig())
    assert DeploymentRunSettings.from_run_config(entries) == settings
    keys = {v for k, v in vars(RunConfigKey).items() if k.isupper()}
    assert set(entries) <= keys
    assert {RunConfigKey.SECURE_AGGREGATION, RunConfigKey.DP_CLIPPING} <= set(entries)
