"""Model compression per device class: export, optimize, quantize, evaluate, gate.

The closed loop calls ``compress_for_profile`` / ``compress_all``; ``cloud-hub compress``
is the CLI over them (``cloud_hub.commands.compress``). Build profiles: ``profile.py``;
output layout consumed by the bundle builder: ``layout.py``.
"""

from cloud_hub.compress.calibration import LabelledSet
from cloud_hub.compress.evaluate import ArtifactMetrics, LatencyConfig
from cloud_hub.compress.pipeline import (
    CompressedArtifact,
    CompressionConfig,
    ProfileOutcome,
    compress_all,
    compress_for_profile,
)
from cloud_hub.compress.profile import (
    Budgets,
    BuildProfile,
    default_profiles_dir,
    list_profiles,
    load_all_profiles,
    load_profile,
)

__all__ = [
    "ArtifactMetrics",
    "Budgets",
    "BuildProfile",
    "CompressedArtifact",
    "CompressionConfig",
    "LabelledSet",
    "LatencyConfig",
    "ProfileOutcome",
    "compress_all",
    "compress_for_profile",
    "default_profiles_dir",
    "list_profiles",
    "load_all_profiles",
    "load_profile",
]
