"""Configuration of the retraining controller (one validated frozen dataclass)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cloud_hub.errors import HubConfigError
from cloud_hub.fl.eligibility import EligibilityLimits
from cloud_hub.loop.policy import RetrainPolicy

__all__ = ["TRAINING_MODES", "LoopConfig"]

#: "sync": rounds of SecAgg+ FedAvg; "async": FedBuff buffers, SecAgg+ per buffer
TRAINING_MODES = ("sync", "async")


@dataclass(frozen=True)
class LoopConfig:
    """What the closed loop trains, how, and how it rolls the result out.

    ``rollout_stages`` are the rollout's stages as the API takes them (canary first);
    ``rollout_gates`` its gate thresholds (``None`` disables a check).
    """

    model_name: str = "sensor-mlp"
    work_dir: Path = Path("hub-data/loop")  # model store, compression outputs
    policy: RetrainPolicy = field(default_factory=lambda: RetrainPolicy(min_devices=3))
    num_rounds: int = 3
    local_epochs: int = 2
    learning_rate: float = 0.05
    batch_size: int = 32
    secagg: bool = True
    # "deployment" (the product): Flower's Deployment Engine, a SuperLink on the hub and
    # each cohort device training as a SuperNode on its own samples (device_training.py);
    # "inprocess": run_federated over a CohortData the caller supplies (simulations, tests)
    training_engine: str = "deployment"
    max_samples_per_device: int = 400  # newest labelled samples each client trains on
    min_samples_per_device: int = 20  # a device with fewer labelled samples is left out
    train_with_class_peers: bool = True  # the class's other online devices join the cohort
    min_improvement: float = 0.0  # candidate accuracy must beat the champion's by this
    profiles_dir: Path | None = None  # default: the repository's firmware_bundles/
    rollout_stages: tuple[dict[str, object], ...] = (
        {"count": 1},
        {"percent": 50.0},
        {"percent": 100.0},
    )
    rollout_gate_window_s: float = 2.0
    rollout_offline_timeout_s: float = 60.0
    rollout_gates: dict[str, object] = field(
        default_factory=lambda: {
            "min_install_success": 1.0,
            "max_error_rate": 0.05,
            "max_p95_ratio": None,
            "max_drift_score": None,
            "max_accuracy_drop": None,
        }
    )
    build_deltas: bool = True
    seed: int = 0
    # per device class: "sync" or "async" (TRAINING_MODES); classes not named are "sync"
    class_modes: dict[str, str] = field(default_factory=dict)
    async_buffer_size: int = 3  # K: held updates folded per secure buffer
    async_buffers: int = 3  # buffers (new global versions) per asynchronous run
    async_max_staleness: int = 5
    async_server_lr: float = 1.0
    # who may take an asynchronous order: online, not serving, cool, within power, new samples
    async_eligibility: EligibilityLimits = field(default_factory=EligibilityLimits)

    def mode_of(self, device_class: str) -> str:
        """The training mode of ``device_class``."""
        return self.class_modes.get(device_class, "sync")

    def __post_init__(self) -> None:
        if self.training_engine not in ("inprocess", "deployment"):
            raise HubConfigError("training_engine must be 'inprocess' or 'deployment'")
        if not 1 <= self.num_rounds <= 100:
            raise HubConfigError("num_rounds must be in [1, 100]")
        if not 1 <= self.local_epochs <= 50:
            raise HubConfigError("local_epochs must be in [1, 50]")
        if not 0 < self.learning_rate <= 10:
            raise HubConfigError("learning_rate must be in (0, 10]")
        if not 1 <= self.batch_size <= 4096:
            raise HubConfigError("batch_size must be in [1, 4096]")
        if not 1 <= self.min_samples_per_device <= self.max_samples_per_device <= 1_000_000:
            raise HubConfigError("need 1 <= min_samples_per_device <= max_samples_per_device")
        if not -1 < self.min_improvement < 1:
            raise HubConfigError("min_improvement must be in (-1, 1)")
        if not self.rollout_stages:
            raise HubConfigError("a rollout needs at least one stage")
        if self.secagg and self.policy.min_devices < 3:
            raise HubConfigError("SecAgg+ needs cohorts of >= 3 devices (policy.min_devices)")
        self._check_async()

    def _check_async(self) -> None:
        for device_class, mode in self.class_modes.items():
            if mode not in TRAINING_MODES:
                raise HubConfigError(
                    f"class_modes[{device_class!r}] must be one of {TRAINING_MODES}, got {mode!r}"
                )
        if "async" not in self.class_modes.values():
            return
        if not self.secagg:
            raise HubConfigError("asynchronous classes always train under SecAgg+ (secagg = true)")
        if not 3 <= self.async_buffer_size <= self.policy.min_devices:
            raise HubConfigError(
                "async_buffer_size must be in [3, policy.min_devices] "
                f"({self.policy.min_devices}), got {self.async_buffer_size}"
            )
        if not 1 <= self.async_buffers <= 100:
            raise HubConfigError("async_buffers must be in [1, 100]")
