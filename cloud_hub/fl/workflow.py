"""Fit workflows for Flower's ``DefaultWorkflow``: SecAgg+ (hardened, guarded) and plain.

:class:`GuardedSecAggPlusWorkflow` is Flower's ``SecAggPlusWorkflow`` with two changes:

- every round runs inside :func:`shared.fl.secure_prg.secure_mask_generator`, so unmasking
  uses the same cryptographic mask generator as fedfleet's clients;
- a round that Flower would silently halt (too few clients left to reconstruct the masks)
  raises :class:`SecureRoundAbortedError`, naming the stage, survivors and threshold.
  Nothing is aggregated, so the global model of the previous round stays as it was;
- R13: a round that sampled so many clients that their quantized sum would wrap modulo
  ``modulus_range`` is aborted after the setup stage (only public keys have moved) with
  :class:`SecAggRangeError`; the config check catches it earlier when the cohort is known;
- after unmasking, the aggregate must be one that honest masked updates can produce
  (:func:`check_secure_aggregate`); masks that did not cancel (a client masking with another
  generator, e.g. a stock Flower client) fail the round with :class:`AggregateSanityError`
  and the previous global model is put back. The generator the hub unmasked with and the
  ones the clients reported are recorded for the model's lineage.

:class:`TimedFitWorkflow` times each fit round, records it and applies the run's failure
policy: ``"abort"`` re-raises (the run stops with the last good model), ``"skip"`` keeps the
previous model for that round and carries on. A round in which fewer client updates were
aggregated than its minimum (none at all: every sampled client refused or failed, e.g.
devices refusing a round without SecAgg+, R4) is a failed round too
(:class:`NoUpdatesError`), not an "ok" round that silently kept the old model. An aggregate
that fails the sanity check ends the run whatever the policy: a client that cannot mask
correctly fails every round the same way.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import cast

import numpy as np
from flwr.app import Context, Message
from flwr.common import parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp.grid import Grid
from numpy.typing import NDArray

from cloud_hub.errors import TrainingError
from cloud_hub.fl.fast_grid import DelegatingGrid
from cloud_hub.fl.recorder import RoundMetrics, RunRecorder
from shared.fl.config_keys import SecAggReportKey
from shared.fl.secure_prg import (
    MASK_GENERATOR,
    SERVER_MODULE,
    mask_generator_in_use,
    secure_mask_generator,
)

__all__ = [
    "AggregateSanityError",
    "GuardedSecAggPlusWorkflow",
    "NoUpdatesError",
    "SecAggRangeError",
    "SecureRoundAbortedError",
    "TimedFitWorkflow",
    "check_secure_aggregate",
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

    def __init__(
        self,
        server_round: int,
        stage: str,
        remaining: int,
        sampled: int,
        threshold: int,
        client_errors: Sequence[str] = (),
    ):
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
            + (f"; clients said: {'; '.join(client_errors)}" if client_errors else "")
        )


class NoUpdatesError(TrainingError):
    """No client's update was aggregated in a round (all refused or failed)."""


class SecAggRangeError(TrainingError):
    """R13: the sampled clients' quantized updates would wrap modulo the SecAgg+ range."""


class AggregateSanityError(TrainingError):
    """The unmasked aggregate is not one honest masked updates can produce; not applied."""


#: How far (in quantization steps) a recovered sum may sit from an integer: float64 rounding
#: of Flower's dequantization stays below 1e-6 for every range the config allows.
_INTEGER_TOLERANCE = 1e-3


def check_secure_aggregate(
    aggregate: Sequence[NDArray],
    declared_examples: Sequence[int],
    *,
    clipping_range: float,
    quantization_range: int,
    max_weight: float,
    generator: str = MASK_GENERATOR,
) -> None:
    """Raise :class:`AggregateSanityError` unless ``aggregate`` is a SecAgg+ sum that cancelled.

    Each client quantizes ``clip(ratio * weights)`` to integers in ``[0, quantization_range]``
    with ``ratio = round(num_examples / max_weight * quantization_range) /
    quantization_range`` and the hub divides the unmasked sum by the total ratio. Undoing
    that with the ratios of the examples the clients declared must give back, for every
    element, an *integer* in ``[0, n * quantization_range]``. Masks that did not cancel leave
    a uniformly random sum (and a random total ratio): practically no element passes.
    """
    why = _aggregate_flaw(
        aggregate, declared_examples, clipping_range, quantization_range, max_weight
    )
    if why is not None:
        raise AggregateSanityError(
            f"aggregate failed the sanity check: masks did not cancel? (a client that does "
            f"not run mask generator {generator}): {why}; the previous global model is kept"
        )


def _aggregate_flaw(
    aggregate: Sequence[NDArray],
    declared_examples: Sequence[int],
    clipping_range: float,
    quantization_range: int,
    max_weight: float,
) -> str | None:
    q = quantization_range
    clients = len(declared_examples)
    total = sum(round(n / max_weight * q) for n in declared_examples)
    values = [np.asarray(a, dtype=np.float64) for a in aggregate]
    if any(not np.isfinite(v).all() for v in values):
        return "non-finite values"
    if total <= 0 or clients == 0:
        return f"{clients} clients declared no examples"
    outside = 0
    elements = 0
    for v in values:
        sums = (v * (total / q) + clients * clipping_range) * (q / (2 * clipping_range))
        off_grid = np.abs(sums - np.rint(sums)) > _INTEGER_TOLERANCE
        out_of_range = (sums < -_INTEGER_TOLERANCE) | (sums > clients * q + _INTEGER_TOLERANCE)
        outside += int(np.count_nonzero(off_grid | out_of_range))
        elements += v.size
    if outside:
        largest = max((float(np.abs(v).max()) for v in values if v.size), default=0.0)
        return (
            f"{outside} of {elements} values are not a sum of {clients} quantized updates "
            f"(largest magnitude {largest:.3g})"
        )
    return None


class _ReplyTap(DelegatingGrid):
    """``inner``, with every reply that ``send_and_receive`` returns shown to ``seen``."""

    def __init__(self, inner: Grid, seen: Callable[[Message], None]) -> None:
        super().__init__(inner)
        self._seen = seen

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = list(self._inner.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            self._seen(reply)
        return replies


def reported_mask_generator(reply: Message) -> str | None:
    """The generator a masked-vector reply says it masked with ("unreported": it did not
    say, e.g. a stock Flower client); ``None`` for any other reply."""
    if reply.has_error():
        return None
    configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is None or SecAggKey.MASKED_PARAMETERS not in configs:
        return None
    return str(configs.get(SecAggReportKey.MASK_GENERATOR, "unreported"))


def _client_errors(failures: Sequence[BaseException], most: int = 3) -> list[str]:
    """The distinct reasons the clients' error replies gave (a refusal names its cause)."""
    reasons: list[str] = []
    for failure in failures:
        error = failure.args[0] if failure.args else failure
        reason = str(getattr(error, "reason", error))
        if reason not in reasons:
            reasons.append(reason)
    return reasons[:most]


def _current_round(context: Context) -> int:
    return cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])


class GuardedSecAggPlusWorkflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow with cryptographic masks, a sane aggregate and a loud failure.

    ``recorder`` (optional) learns the generator the hub unmasked with and the ones the
    clients reported, round by round.
    """

    def __init__(self, *args: object, recorder: RunRecorder | None = None, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._recorder = recorder
        self._reports: Counter[str] = Counter()

    def _see(self, reply: Message) -> None:
        generator = reported_mask_generator(reply)
        if generator is not None:
            self._reports[generator] += 1

    def __call__(self, grid: Grid, context: Context) -> None:
        state = WorkflowState()
        self._reports = Counter()
        steps = (
            ("setup", self.setup_stage),
            ("share_keys", self.share_keys_stage),
            ("collect_masked_vectors", self.collect_masked_vectors_stage),
            ("unmask", self.unmask_stage),
        )
        tapped = _ReplyTap(grid, self._see)
        with secure_mask_generator():
            for stage, step in steps:
                if not step(tapped, context, state):  # type: ignore[arg-type]
                    raise SecureRoundAbortedError(
                        _current_round(context),
                        stage,
                        remaining=len(state.active_node_ids),
                        sampled=len(state.sampled_node_ids) or len(state.nid_to_proxies),
                        threshold=state.threshold,
                        client_errors=_client_errors(state.failures),
                    )
                sampled = len(state.sampled_node_ids)
                if stage == "setup" and sampled * self.quantization_range >= self.modulus_range:
                    raise SecAggRangeError(  # R13: the unmasked sum would silently wrap
                        f"SecAgg+ round {_current_round(context)}: {sampled} clients x "
                        f"quantization_range {self.quantization_range} >= modulus_range "
                        f"{self.modulus_range}; nothing was aggregated"
                    )

    def unmask_stage(self, grid: Grid, context: Context, state: WorkflowState) -> bool:  # type: ignore[override]
        """Flower's unmasking, then the sanity check of what it produced (see module doc)."""
        previous = context.state.array_records.get(MAIN_PARAMS_RECORD)
        generator = mask_generator_in_use(SERVER_MODULE)
        if self._recorder is not None:
            self._recorder.secure_round(generator, dict(self._reports))
        results = list(state.legacy_results)
        if not super().unmask_stage(grid, context, state):  # type: ignore[arg-type]
            return False
        try:
            check_secure_aggregate(
                parameters_to_ndarrays(results[0][1].parameters) if results else [],
                [fitres.num_examples for _, fitres in results],
                clipping_range=self.clipping_range,
                quantization_range=self.quantization_range,
                max_weight=self.max_weight,
                generator=generator,
            )
        except AggregateSanityError as exc:
            if previous is not None:  # the strategy already stored it: put the old model back
                context.state.array_records[MAIN_PARAMS_RECORD] = previous
            reports = ", ".join(f"{n} x {g}" for g, n in sorted(self._reports.items()))
            raise AggregateSanityError(
                f"round {_current_round(context)}: {exc}; clients reported: {reports or 'none'}"
            ) from None
        return True


class TimedFitWorkflow:
    """Wraps a fit workflow: timing, recording, the minimum of results and the failure policy."""

    def __init__(
        self,
        inner: Callable[[Grid, Context], None],
        recorder: RunRecorder,
        *,
        on_failure: str = "abort",
        min_results: int = 1,
    ) -> None:
        self._inner = inner
        self._recorder = recorder
        self._on_failure = on_failure
        self._min_results = max(1, min_results)

    def __call__(self, grid: Grid, context: Context) -> None:
        server_round = _current_round(context)
        started = time.perf_counter()
        previous = context.state.array_records.get(MAIN_PARAMS_RECORD)
        try:
            self._inner(grid, context)
            aggregated = self._recorder.aggregated_clients()
            if aggregated < self._min_results:
                raise NoUpdatesError(
                    f"round {server_round}: {aggregated} client updates aggregated, below the "
                    f"round's minimum of {self._min_results} (the other sampled clients refused "
                    "or failed); the previous global model is kept"
                    if aggregated
                    else f"round {server_round}: no client update was aggregated (every sampled "
                    "client refused or failed); the previous global model is kept"
                )
        except (SecureRoundAbortedError, NoUpdatesError, AggregateSanityError) as exc:
            self._recorder.fit_finished(server_round, time.perf_counter() - started, str(exc))
            if previous is not None:  # a failed round leaves the global model as it was
                context.state.array_records[MAIN_PARAMS_RECORD] = previous
            if self._on_failure == "abort" or isinstance(exc, AggregateSanityError):
                raise
            log.warning("%s (policy 'skip': continuing)", exc)
            return
        self._recorder.fit_finished(server_round, time.perf_counter() - started, None)
