"""The hub's Flower ``ServerApp`` (legacy stack: ``DefaultWorkflow`` + ``LegacyContext``).

SecAgg+ is on unless the config turns it off: the fit workflow is then
:class:`~cloud_hub.fl.workflow.GuardedSecAggPlusWorkflow` (Flower's SecAgg+ with fedfleet's
mask generator and a sanity check of the unmasked aggregate). A round that aggregates fewer
updates than :attr:`~cloud_hub.fl.config.FederatedRunConfig.min_round_results` fails. After every round the global model is evaluated on the hub's validation
set (the strategy's ``evaluate_fn``) and the result goes to a :class:`RunRecorder`.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.common import NDArrays, Scalar
from flwr.server import LegacyContext, ServerConfig
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.default_workflows import default_fit_workflow
from flwr.serverapp import Grid, ServerApp
from numpy.typing import NDArray

from cloud_hub.fl.config import FederatedRunConfig
from cloud_hub.fl.recorder import RunRecorder
from cloud_hub.fl.strategies import build_strategy
from cloud_hub.fl.workflow import GuardedSecAggPlusWorkflow, TimedFitWorkflow

__all__ = ["ValidationEvaluator", "build_server_app"]


class ValidationEvaluator:
    """Server-side evaluation of the global model on a hub-held validation set."""

    def __init__(self, model_name: str, x: NDArray, y: NDArray, recorder: RunRecorder) -> None:
        from shared.models import build_model

        self._model = build_model(model_name)
        self._x, self._y = x, y
        self._recorder = recorder

    def __call__(
        self, server_round: int, weights: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, dict[str, Scalar]]:
        from shared.fl.training import evaluate_model, set_weights

        set_weights(self._model, weights)
        loss, accuracy = evaluate_model(self._model, self._x, self._y)
        self._recorder.evaluated(server_round, weights, loss, accuracy)
        return loss, {"accuracy": accuracy}


def build_server_app(
    config: FederatedRunConfig,
    *,
    initial_weights: NDArrays,
    evaluator: ValidationEvaluator,
    recorder: RunRecorder,
) -> ServerApp:
    """A ``ServerApp`` running ``config`` from ``initial_weights``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = build_strategy(
            config,
            initial_weights=initial_weights,
            evaluate_fn=evaluator,
            fit_metrics_fn=recorder.aggregate_fit_metrics,
        )
        legacy = LegacyContext(
            context=context,
            config=ServerConfig(num_rounds=config.num_rounds),
            strategy=strategy,
        )
        if config.secagg.enabled:
            s = config.secagg
            fit = GuardedSecAggPlusWorkflow(
                num_shares=s.num_shares,
                reconstruction_threshold=s.reconstruction_threshold,
                max_weight=s.max_weight,
                clipping_range=s.clipping_range,
                quantization_range=s.quantization_range,
                modulus_range=s.modulus_range,
                timeout=s.timeout_s,
                recorder=recorder,
            )
            inner = fit
        else:
            inner = default_fit_workflow  # type: ignore[assignment]
        workflow = DefaultWorkflow(
            fit_workflow=TimedFitWorkflow(
                inner,
                recorder,
                on_failure=config.on_round_failure,
                min_results=config.min_round_results,
            )
        )
        workflow(grid, legacy)

    return app
