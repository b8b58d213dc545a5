"""The on-disk sample buffer for local retraining (bounded by size, count and age)."""

from edge_agent.samples.store import SampleStore, SampleStoreConfig, SampleStoreStats

__all__ = ["SampleStore", "SampleStoreConfig", "SampleStoreStats"]
