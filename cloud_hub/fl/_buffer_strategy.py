"""The Flower ``Strategy`` one SecAgg+ buffer exchange runs with (private to ``async_run``).

Flower's ``SecAggPlusWorkflow`` asks a strategy whom to sample (``configure_fit``) and hands
it the unmasked result (``aggregate_fit``). For a buffer the members are chosen before the
exchange, and the result is kept rather than applied: :class:`BufferStrategy` does just that.
Every fit result of one exchange carries the same unmasked mean; the order ids the devices
report must be the orders the hub expected from them, or the buffer is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from cloud_hub.errors import TrainingError
from shared.fl.config_keys import AsyncTrainingKey as K

__all__ = ["BufferStrategy"]


class BufferStrategy(Strategy):
    """Samples exactly the buffer's members; keeps ``(mean, folded node ids)``."""

    def __init__(
        self, instructions: Sequence[tuple[ClientProxy, FitIns]], expected_orders: dict[int, str]
    ) -> None:
        self._instructions = list(instructions)
        self._expected = expected_orders
        self.result: tuple[NDArrays, set[int]] | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return list(self._instructions)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not results:
            return None, {}
        folded: set[int] = set()
        for proxy, fitres in results:
            node_id = int(proxy.node_id)
            if fitres.metrics.get(K.ORDER_ID) != self._expected.get(node_id):
                raise TrainingError(
                    f"buffer {server_round}: node {node_id} masked order "
                    f"{fitres.metrics.get(K.ORDER_ID)!r}, expected {self._expected.get(node_id)!r}"
                )
            folded.add(node_id)
        self.result = (parameters_to_ndarrays(results[0][1].parameters), folded)
        return None, {}  # the run folds the buffer itself (FedBuff), Flower applies nothing

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return None
