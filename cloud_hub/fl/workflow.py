"""Fit workflows for Flower's ``DefaultWorkflow``: SecAgg+ (hardened, guarded) and plain.

:class:`GuardedSecAggPlusWorkflow` is Flower's ``SecAggPlusWorkflow`` with two changes:

- every round runs inside :func:`shared.fl.secure_prg.secure_mask_generator`, so unmasking
  uses the same cryptographic mask generator as fedfleet's clients;
- a round that Flower would silently halt (too few clients left to reconstruct the masks)
  raises :class:`SecureRoundAbortedError`, naming the stage, survivors and threshold.
  Nothing is aggregated, so the global model of the previous round stays as it was;
- R13: a round that sampled so many clients that their quantized sum would wrap modulo
  ``modulus_range`` is aborted after the setup stage (only public keys have moved) with
  :class:`SecAggRangeError`; the config check catches it earlier when the cohort is known.

:class:`TimedFitWorkflow` times each fit round, records it and applies the run's failure
policy: ``"abort"`` re-raises (the run stops with the last good model), ``"skip"`` keeps the
previous model for that round and carries on. A round in which no client's update was
aggregated (every sampled client refused or failed, e.g. devices refusing a round without
SecAgg+, R4) is a failed round too (:class:`NoUpdatesError`), not an "ok" round that
silently kept the old model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import cast

from flwr.app import Context
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp.grid import Grid
from numpy.typing import NDArray

from cloud_hub.errors import TrainingError
from cloud_hub.fl.recorder import RoundMetrics, RunRecorder
from shared.fl.secure_prg import secure_mask_generator

__all__ = [
    "GuardedSecAggPlusWorkflow",
    "NoUpdatesError",
    "SecAggRangeError",
    "SecureRoundAbortedError",
    "TimedFitWorkflow",
]

log = logging.getLogger(__name__)


class SecureRoundAbortedError(TrainingError):
    """A SecAgg+ round lost too many clients to reconstruct; nothing was aggregated.

    :func:`cloud_hub.fl.run_federated` fills in what was kept: ``kept_round`` (the last
    completed round, 0 = the initial model), ``kept_weights`` (that global model) and
    ``rounds`` (the metrics recorded so far).
    """

    kept_round: int
    kept_weights: list[NDArray] | None
    rounds: tuple[RoundMetrics, ...]

    def __init__(self, server_round: int, stage: str, remaining: int, sampled: int, threshold: int):
        self.kept_round = -1
        self.kept_weights = None
        self.rounds = ()
        self.server_round = server_round
        self.stage = stage
        self.remaining = remaining
        self.sampled = sampled
        self.threshold = threshold
        super().__init__(
            f"SecAgg+ round {server_round} aborted at stage {stage!r}: {remaining} of {sampled} "
            f"clients remained, below the reconstruction threshold {threshold}; "
            "the previous global model is kept"
        )


class NoUpdatesError(TrainingError):
    """No client's update was aggregated in a round (all refused or failed)."""


class SecAggRangeError(TrainingError):
    """R13: the sampled clients' quantized updates would wrap modulo the SecAgg+ range."""


def _current_round(context: Context) -> int:
    return cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])


class GuardedSecAggPlusWorkflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow with cryptographic masks and a loud failure."""

    def __call__(self, grid: Grid, context: Context) -> None:
        state = WorkflowState()
        steps = (
            ("setup", self.setup_stage),
            ("share_keys", self.share_keys_stage),
            ("collect_masked_vectors", self.collect_masked_vectors_stage),
            ("unmask", self.unmask_stage),
        )
        with secure_mask_generator():
            for stage, step in steps:
                if not step(grid, context, state):  # type: ignore[arg-type]
                    raise SecureRoundAbortedError(
                        _current_round(context),
                        stage,
                        remaining=len(state.active_node_ids),
                        sampled=len(state.sampled_node_ids) or len(state.nid_to_proxies),
                        threshold=state.threshold,
                    )
                sampled = len(state.sampled_node_ids)
                if stage == "setup" and sampled * self.quantization_range >= self.modulus_range:
                    raise SecAggRangeError(  # R13: the unmasked sum would silently wrap
                        f"SecAgg+ round {_current_round(context)}: {sampled} clients x "
                        f"quantization_range {self.quantization_range} >= modulus_range "
                        f"{self.modulus_range}; nothing was aggregated"
                    )


class TimedFitWorkflow:
    """Wraps a fit workflow: timing, recording, and the failure policy."""

    def __init__(
        self,
        inner: Callable[[Grid, Context], None],
        recorder: RunRecorder,
        *,
        on_failure: str = "abort",
    ) -> None:
        self._inner = inner
        self._recorder = recorder
        self._on_failure = on_failure

    def __call__(self, grid: Grid, context: Context) -> None:
        server_round = _current_round(context)
        started = time.perf_counter()
        try:
            self._inner(grid, context)
            if self._recorder.aggregated_clients() == 0:
                raise NoUpdatesError(
                    f"round {server_round}: no client update was aggregated (every sampled "
                    "client refused or failed); the previous global model is kept"
                )
        except (SecureRoundAbortedError, NoUpdatesError) as exc:
            self._recorder.fit_finished(server_round, time.perf_counter() - started, str(exc))
            if self._on_failure == "abort":
                raise
            log.warning("%s (policy 'skip': continuing)", exc)
            return
        self._recorder.fit_finished(server_round, time.perf_counter() - started, None)
