"""What the demo runs with, and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_hub.errors import HubError

__all__ = ["CLASS", "MODEL", "DemoConfig", "DemoResult"]

CLASS = "x86-cpu"
MODEL = "sensor-mlp"


@dataclass(frozen=True)
class DemoConfig:
    out_dir: Path = Path("demo-out")
    agents: int = 6
    drifted: int = 3  # devices at site=plant-3 (>= 3: SecAgg+ needs three clients)
    mqtt_url: str | None = None  # None: start an embedded broker
    broker: str = "auto"  # embedded broker: auto (Mosquitto if installed) | amqtt
    port: int = 0  # hub API port; 0 = a free one
    batch: int = 50  # inputs per request
    steps_before_drift: int = 10  # request rounds (one batch per device) before the drift
    # after the drifted devices serve the retrained model: at least this many rounds, and
    # more until its rollout has reached the other sites (their figure is the new model's)
    steps_after_retrain: int = 20
    drift_window: int = 200
    # SecAgg+ rounds of the initial training (from fresh weights: one reaches ~0.99 on the
    # clean sites here) and of the retraining (from the champion's weights: one round
    # recovers plant-3 but costs the other sites ~20 points; two keep both)
    num_rounds: int = 1
    retrain_rounds: int = 2
    # None: a canary at the drifted site, the rest of that site (it needs a retrained model
    # first: the serving after the retraining overlaps the last stage), then every other
    # device (simulations.demo.steps.drifted_site_first)
    rollout_stages: tuple[dict[str, object], ...] | None = None
    gate_window_s: float = 1.0
    controller_interval_s: float = 0.5  # how often the retraining policy looks at the class
    # while the hub retrains, one streaming step per this many seconds: the cores go to
    # the federated training (a step a second cost the devices ~0.25 of a core), the
    # timeline still shows the drifted devices' accuracy
    training_stream_pace_s: float = 2.0
    # "deployment" (default, the product's path: SuperLink + signed TrainCommands, each
    # device trains as a SuperNode on its own samples) or "inprocess" (a simulation
    # shortcut: run_federated in this process, fed by the local devices' sample stores)
    training_engine: str = "deployment"
    max_wait_s: float = 200.0  # for the retraining to be rolled out to the drifted devices
    plots: bool = True
    quiet: bool = False

    def __post_init__(self) -> None:
        if not (1 <= self.num_rounds <= 100 and 1 <= self.retrain_rounds <= 100):
            raise HubError("num_rounds and retrain_rounds must be in [1, 100]")
        if not (
            0.05 <= self.controller_interval_s <= 60 and 0 <= self.training_stream_pace_s <= 60
        ):
            raise HubError(
                "controller_interval_s in [0.05, 60] and training_stream_pace_s in [0, 60]"
            )
        if not 3 <= self.drifted <= self.agents <= 64:
            raise HubError("need 3 <= drifted <= agents <= 64 (SecAgg+ needs 3 clients)")


@dataclass
class DemoResult:
    summary: dict[str, Any]
    timeline: list[dict[str, Any]] = field(default_factory=list)
