"""Reference feature statistics that a bundle ships and the agent's drift detector reads.

One definition for both sides: the hub (``cloud_hub.compress``) calls
``ReferenceStats.from_samples(x_train).to_json()`` and puts the bytes in the bundle; the agent
calls ``ReferenceStats.from_json(data)`` and compares live windows against it. numpy only —
no torch — so ``fedfleet[agent]`` can import it.

Features
    Tabular input ``(n, d)`` is compared column by column. Tensor input ``(n, C, ...)`` (NCHW
    images, sequences) would give far too many per-element features, so it is summarised per
    sample into the mean and standard deviation of each channel (``c0_mean``, ``c0_std``, ...);
    ``feature_matrix`` is that one mapping, used on both sides.

Per feature the JSON keeps: mean, std, quantile bin edges with the reference fraction in each
bin (for PSI), and an evenly spaced quantile sketch of the reference distribution (for KS).

JSON shape (``schema_version`` 1)::

    {"type": "drift-reference-stats", "schema_version": 1, "n_samples": 5000,
     "input_shape": [12], "feature_kind": "columns",
     "features": [{"name": "f0", "mean": 0.1, "std": 1.2, "bin_edges": [...],
                   "bin_fractions": [...], "quantiles": [...]}, ...],
     "confidence": {"mean": 0.93, "std": 0.08} | null}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from shared.canonical import canonical_bytes, parse_json_object
from shared.errors import ConfigError, MalformedMessageError, UnsupportedVersionError

REFERENCE_STATS_TYPE = "drift-reference-stats"
SCHEMA_VERSION = 1
DEFAULT_BINS = 10
DEFAULT_QUANTILES = 201
MAX_FEATURES = 4096
MIN_SAMPLES = 20
MAX_JSON_BYTES = 16 * 1024 * 1024
_FRACTION_FLOOR = 1e-4  # keeps PSI finite when a bin is empty on one side

__all__ = [
    "DEFAULT_BINS",
    "DEFAULT_QUANTILES",
    "REFERENCE_STATS_TYPE",
    "SCHEMA_VERSION",
    "ConfidenceStats",
    "FeatureStats",
    "ReferenceStats",
    "feature_kind",
    "feature_matrix",
    "feature_names",
]


def feature_kind(input_shape: Sequence[int]) -> str:
    """``"columns"`` for per-sample vectors, ``"channel-summary"`` for tensors."""
    return "columns" if len(input_shape) <= 1 else "channel-summary"


def feature_names(input_shape: Sequence[int]) -> tuple[str, ...]:
    """Names of the drift features for a per-sample input shape (no batch dimension)."""
    if len(input_shape) == 0:
        return ("f0",)
    if len(input_shape) == 1:
        return tuple(f"f{i}" for i in range(int(input_shape[0])))
    channels = int(input_shape[0])
    return tuple(name for c in range(channels) for name in (f"c{c}_mean", f"c{c}_std"))


def feature_matrix(x: ArrayLike) -> NDArray[np.float64]:
    """Map a batch ``(n, *input_shape)`` to its drift features ``(n, d)``."""
    arr = np.asarray(x)
    if arr.ndim == 0:
        raise ConfigError("feature_matrix needs a batch, got a scalar")
    if arr.ndim == 1:
        return arr.astype(np.float64, copy=False).reshape(-1, 1)
    if arr.ndim == 2:
        return arr.astype(np.float64, copy=False)
    flat = arr.reshape(arr.shape[0], arr.shape[1], -1)
    out = np.empty((arr.shape[0], 2 * arr.shape[1]), dtype=np.float64)
    # float32 pixels: float32 pairwise sums are exact enough and twice as fast as float64
    acc = np.float32 if arr.dtype in (np.float16, np.float32) else np.float64
    out[:, 0::2] = flat.mean(axis=2, dtype=acc)
    out[:, 1::2] = flat.std(axis=2, dtype=acc)
    return out


def _floats(value: Any, what: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
        raise MalformedMessageError(f"{what} must be a list of numbers")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class FeatureStats:
    """Reference distribution of one feature."""

    name: str
    mean: float
    std: float
    bin_edges: tuple[float, ...]  # inner cut points; bins are (-inf, e0], (e0, e1], ..., (ek, inf)
    bin_fractions: tuple[float, ...]  # len(bin_edges) + 1 values summing to 1
    quantiles: tuple[float, ...]  # evenly spaced quantiles (probabilities 0..1) for KS

    def __post_init__(self) -> None:
        if len(self.bin_fractions) != len(self.bin_edges) + 1:
            raise MalformedMessageError(f"feature {self.name!r}: bin counts do not match edges")
        if len(self.quantiles) < 2:
            raise MalformedMessageError(f"feature {self.name!r}: needs at least 2 quantiles")
        if any(b < a for a, b in zip(self.quantiles, self.quantiles[1:], strict=False)):
            raise MalformedMessageError(f"feature {self.name!r}: quantiles are not sorted")
        if any(b <= a for a, b in zip(self.bin_edges, self.bin_edges[1:], strict=False)):
            raise MalformedMessageError(f"feature {self.name!r}: bin edges not increasing")
        if not math.isclose(sum(self.bin_fractions), 1.0, abs_tol=1e-6):
            raise MalformedMessageError(f"feature {self.name!r}: bin fractions do not sum to 1")

    @classmethod
    def from_values(
        cls, name: str, values: NDArray[np.float64], *, bins: int, quantiles: int
    ) -> FeatureStats:
        """Summarise one feature's reference values."""
        probs = np.linspace(0.0, 1.0, bins + 1)[1:-1]
        edges = np.unique(np.quantile(values, probs))
        counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1)
        fractions = counts / counts.sum()
        return cls(
            name=name,
            mean=float(values.mean()),
            std=float(values.std()),
            bin_edges=tuple(float(e) for e in edges),
            bin_fractions=tuple(float(f) for f in fractions),
            quantiles=tuple(float(q) for q in np.quantile(values, np.linspace(0, 1, quantiles))),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mean": self.mean,
            "std": self.std,
            "bin_edges": list(self.bin_edges),
            "bin_fractions": list(self.bin_fractions),
            "quantiles": list(self.quantiles),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureStats:
        try:
            return cls(
                name=str(data["name"]),
                mean=float(data["mean"]),
                std=float(data["std"]),
                bin_edges=_floats(data["bin_edges"], "bin_edges"),
                bin_fractions=_floats(data["bin_fractions"], "bin_fractions"),
                quantiles=_floats(data["quantiles"], "quantiles"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessageError(f"bad feature stats: {exc}") from exc

    def psi_fractions(self) -> NDArray[np.float64]:
        """Reference bin fractions, floored so that PSI stays finite."""
        return np.maximum(np.asarray(self.bin_fractions), _FRACTION_FLOOR)


@dataclass(frozen=True)
class ConfidenceStats:
    """Reference distribution of the model's top-class confidence."""

    mean: float
    std: float


@dataclass(frozen=True)
class ReferenceStats:
    """Reference statistics of a model's training features (shipped in its bundle)."""

    n_samples: int
    input_shape: tuple[int, ...]
    features: tuple[FeatureStats, ...]
    confidence: ConfidenceStats | None = None

    def __post_init__(self) -> None:
        if self.n_samples < MIN_SAMPLES:
            raise MalformedMessageError(f"reference needs >= {MIN_SAMPLES} samples")
        expected = feature_names(self.input_shape)
        if tuple(f.name for f in self.features) != expected:
            raise MalformedMessageError("feature names do not match the input shape")

    @property
    def feature_kind(self) -> str:
        return feature_kind(self.input_shape)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @classmethod
    def from_samples(
        cls,
        x: ArrayLike,
        *,
        confidences: ArrayLike | None = None,
        bins: int = DEFAULT_BINS,
        quantiles: int = DEFAULT_QUANTILES,
    ) -> ReferenceStats:
        """Compute the statistics of a training batch ``(n, *input_shape)``.

        ``confidences`` (optional): the model's top-class probability on held-out data, the
        baseline for the streaming confidence detector.
        """
        arr = np.asarray(x)
        if arr.ndim < 1 or arr.shape[0] < MIN_SAMPLES:
            raise ConfigError(f"need a batch of at least {MIN_SAMPLES} samples")
        if not 2 <= bins <= 100 or not 11 <= quantiles <= 2001:
            raise ConfigError("bins must be in [2, 100] and quantiles in [11, 2001]")
        feats = feature_matrix(arr)
        if feats.shape[1] > MAX_FEATURES:
            raise ConfigError(f"{feats.shape[1]} features exceed the limit of {MAX_FEATURES}")
        if not np.all(np.isfinite(feats)):
            raise ConfigError("reference samples contain NaN or infinity")
        shape = tuple(int(s) for s in arr.shape[1:])
        stats = tuple(
            FeatureStats.from_values(name, feats[:, i], bins=bins, quantiles=quantiles)
            for i, name in enumerate(feature_names(shape))
        )
        conf = None
        if confidences is not None:
            c = np.asarray(confidences, dtype=np.float64).ravel()
            conf = ConfidenceStats(mean=float(c.mean()), std=float(c.std()))
        return cls(n_samples=int(arr.shape[0]), input_shape=shape, features=stats, confidence=conf)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": REFERENCE_STATS_TYPE,
            "schema_version": SCHEMA_VERSION,
            "n_samples": self.n_samples,
            "input_shape": list(self.input_shape),
            "feature_kind": self.feature_kind,
            "features": [f.to_dict() for f in self.features],
            "confidence": None
            if self.confidence is None
            else {"mean": self.confidence.mean, "std": self.confidence.std},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceStats:
        if not isinstance(data, Mapping) or data.get("type") != REFERENCE_STATS_TYPE:
            raise MalformedMessageError(f"not a {REFERENCE_STATS_TYPE} document")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise UnsupportedVersionError(f"reference stats schema {version!r} not supported")
        try:
            conf_raw = data.get("confidence")
            conf = (
                None
                if conf_raw is None
                else ConfidenceStats(mean=float(conf_raw["mean"]), std=float(conf_raw["std"]))
            )
            features = data["features"]
            if not isinstance(features, list):
                raise TypeError("features must be a list")
            return cls(
                n_samples=int(data["n_samples"]),
                input_shape=tuple(int(s) for s in data["input_shape"]),
                features=tuple(FeatureStats.from_dict(f) for f in features),
                confidence=conf,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessageError(f"bad reference stats: {exc}") from exc

    def to_json(self) -> bytes:
        """Canonical JSON bytes (what goes into the bundle)."""
        return canonical_bytes(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str, *, max_bytes: int = MAX_JSON_BYTES) -> ReferenceStats:
        """Parse untrusted bytes; raises ``MalformedMessageError`` / ``MessageTooLargeError``."""
        raw = data.encode() if isinstance(data, str) else data
        return cls.from_dict(parse_json_object(raw, max_bytes=max_bytes))
