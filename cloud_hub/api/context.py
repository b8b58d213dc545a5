"""What the API app is built from: the registry plus the optional services it delegates to."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cloud_hub.registry import Registry

if TYPE_CHECKING:
    from cloud_hub.bundles.store import BundleStore
    from cloud_hub.enrollment.service import EnrollmentService
    from cloud_hub.ingest.ingest import IngestStats
    from cloud_hub.rollout.commands import RolloutCommands

__all__ = ["ApiContext"]


@dataclass
class ApiContext:
    """Dependencies of the API. Absent services answer ``409`` with a JSON reason (never a 5xx).

    - ``rollouts``: the rollout commands (create/start/pause/resume/abort/rollback/resolve):
      the engine where this process runs it, else registry-only commands (a replica).
    - ``enrollment``: issues enrollment tokens (``POST /api/v1/enrollment-tokens``).
    - ``ingest_stats``: counters of the MQTT ingest for ``/metrics``.
    - ``bundles``: the hub's bundle store; uploads and registrations are verified against
      its keys and kept there (refused without it).
    - ``shutting_down``: set when the server begins to shut down; long-lived responses (the
      dashboard's live stream) end on it instead of holding the shutdown open.
    """

    registry: Registry
    rollouts: RolloutCommands | None = None
    enrollment: EnrollmentService | None = None
    ingest_stats: Callable[[], IngestStats] | None = None
    bundles: BundleStore | None = None
    clock: Callable[[], float] = time.time
    max_upload_bytes: int = 512 * 1024 * 1024
    shutting_down: threading.Event = field(default_factory=threading.Event)
