"""Drift detection: PSI/KS per feature against bundle reference stats, Page-Hinkley on confidence."""

from edge_agent.drift.detector import (
    ConfidenceDrift,
    DriftConfig,
    DriftDetector,
    DriftWindowReport,
    FeatureDrift,
)
from edge_agent.drift.page_hinkley import PageHinkley, PageHinkleyConfig
from edge_agent.drift.statistics import ks_critical_value, ks_statistic, psi, psi_noise_floor

__all__ = [
    "ConfidenceDrift",
    "DriftConfig",
    "DriftDetector",
    "DriftWindowReport",
    "FeatureDrift",
    "PageHinkley",
    "PageHinkleyConfig",
    "ks_critical_value",
    "ks_statistic",
    "psi",
    "psi_noise_floor",
]
