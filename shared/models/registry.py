"""A registry of small model definitions fit for edge devices."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from shared.errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of fedfleet needs to know about a model family."""

    name: str
    task: str  # "image-classification" | "tabular-classification"
    input_shape: tuple[int, ...]  # per-sample shape, without the batch dimension
    num_classes: int
    factory: Callable[[], nn.Module]


class DigitsCNN(nn.Module):
    """A compact CNN for 8x8 grey images (scikit-learn's bundled digits)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(32, 32, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SensorMLP(nn.Module):
    """An MLP for tabular sensor windows (predictive maintenance)."""

    def __init__(self, num_features: int = 12, num_classes: int = 3, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EdgeCNN(nn.Module):
    """An edge-sized CNN for 3x32x32 images (~30 M MACs): the compression benchmark's
    latency model, where int8 has enough arithmetic to pay off (the digits CNN is too tiny)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, 32),
            *block(32, 32),
            nn.MaxPool2d(2),  # 32 -> 16
            *block(32, 64),
            *block(64, 64),
            nn.MaxPool2d(2),  # 16 -> 8
            *block(64, 128),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


MODEL_SPECS: dict[str, ModelSpec] = {
    "digits-cnn": ModelSpec(
        name="digits-cnn",
        task="image-classification",
        input_shape=(1, 8, 8),
        num_classes=10,
        factory=DigitsCNN,
    ),
    "sensor-mlp": ModelSpec(
        name="sensor-mlp",
        task="tabular-classification",
        input_shape=(12,),
        num_classes=3,
        factory=SensorMLP,
    ),
    "edge-cnn": ModelSpec(
        name="edge-cnn",
        task="image-classification",
        input_shape=(3, 32, 32),
        num_classes=10,
        factory=EdgeCNN,
    ),
}


def get_spec(name: str) -> ModelSpec:
    """Return the spec of a registered model, or raise ``ConfigError``."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        known = ", ".join(sorted(MODEL_SPECS))
        raise ConfigError(f"unknown model {name!r}; known models: {known}") from None


def build_model(name: str, *, seed: int | None = None) -> nn.Module:
    """Instantiate a fresh model; ``seed`` makes the initial weights reproducible."""
    spec = get_spec(name)
    if seed is not None:
        torch.manual_seed(seed)
    return spec.factory()
