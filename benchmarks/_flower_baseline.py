"""Stock Flower, written without fedfleet: the fair baseline of ``benchmarks/fl.py``.

The same structure as fedfleet's ServerApp, so that the comparison is of the same work:
``ServerApp`` + ``@app.main()`` running ``DefaultWorkflow`` over a ``LegacyContext`` with
``FedAvg`` and a centralized evaluation every round; optionally Flower's own
``SecAggPlusWorkflow`` on the server and ``secaggplus_mod`` on the clients (stock Flower 1.41:
its mask generator and Shamir code, none of fedfleet's layer). The clients train the same
model with the same optimizer, learning rate, batch size and epochs as fedfleet's clients.
Only the model definition (``shared.models.build_model``) is shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp

from shared.models import build_model

__all__ = ["StockFlowerRun", "stock_flower_apps"]

Arrays = list[np.ndarray]


@dataclass
class StockFlowerRun:
    """The apps of one stock-Flower run and what its evaluation saw last."""

    server_app: ServerApp
    client_app: ClientApp
    scores: dict[str, float]

    @property
    def accuracy(self) -> float:
        return self.scores.get("accuracy", float("nan"))


def _weights(model: torch.nn.Module) -> Arrays:
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def _load(model: torch.nn.Module, arrays: Arrays) -> None:
    keys = list(model.state_dict().keys())
    model.load_state_dict({k: torch.as_tensor(a) for k, a in zip(keys, arrays, strict=True)})


class _Client(NumPyClient):
    def __init__(self, x: np.ndarray, y: np.ndarray, lr: float, batch_size: int, epochs: int):
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.model = build_model("digits-cnn", seed=0)
        self.lr, self.batch_size, self.epochs = lr, batch_size, epochs

    def fit(self, parameters: Arrays, config: dict[str, Any]) -> tuple[Arrays, int, dict]:
        _load(self.model, parameters)
        opt = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        self.model.train()
        for _ in range(self.epochs):
            order = torch.randperm(len(self.y))
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                opt.zero_grad()
                loss_fn(self.model(self.x[idx]), self.y[idx]).backward()
                opt.step()
        return _weights(self.model), len(self.y), {}


def stock_flower_apps(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    validation: tuple[np.ndarray, np.ndarray],
    *,
    rounds: int,
    secagg: dict[str, Any] | None,
    learning_rate: float = 0.05,
    batch_size: int = 16,
    local_epochs: int = 1,
) -> StockFlowerRun:
    """Server and client apps of plain Flower; ``secagg`` holds SecAggPlusWorkflow's args."""
    x_val, y_val = validation
    eval_model = build_model("digits-cnn")
    scores: dict[str, float] = {}

    def evaluate(server_round: int, arrays: Arrays, config: dict) -> tuple[float, dict]:
        _load(eval_model, arrays)
        eval_model.eval()
        with torch.no_grad():
            logits = eval_model(torch.from_numpy(x_val))
        scores["accuracy"] = float((logits.argmax(1).numpy() == y_val).mean())
        loss = float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(y_val)))
        return loss, {"accuracy": scores["accuracy"]}

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=2,
            min_available_clients=2,
            evaluate_fn=evaluate,
            initial_parameters=ndarrays_to_parameters(_weights(build_model("digits-cnn", seed=0))),
        )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy
        )
        fit_workflow = SecAggPlusWorkflow(**secagg) if secagg is not None else None
        DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)

    def client_fn(context: Context) -> Any:
        x, y = parts[int(context.node_config["partition-id"])]
        return _Client(x, y, learning_rate, batch_size, local_epochs).to_client()

    mods: list[Mod] = [secaggplus_mod] if secagg is not None else []
    return StockFlowerRun(server_app, ClientApp(client_fn=client_fn, mods=mods), scores)
