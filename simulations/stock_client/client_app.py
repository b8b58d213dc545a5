"""A Flower client as Flower's documentation writes one (PyTorch quickstart style).

Nothing here comes from fedfleet: the model, the training loop and the data loading are
the client's own, written against Flower's public API only. The model has the layout of the
hub's ``sensor-mlp`` (12 features, two hidden layers of 64, 3 classes) so the weights the
hub sends fit it. The node config names the device's data file (``data-path``: an ``.npz``
with ``x`` and ``y``), as a SuperNode's ``--node-config`` would.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Context
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def get_weights(net: nn.Module) -> list[np.ndarray]:
    return [val.cpu().numpy() for _, val in net.state_dict().items()]


def set_weights(net: nn.Module, parameters: list[np.ndarray]) -> None:
    state_dict = {
        k: torch.tensor(v) for k, v in zip(net.state_dict().keys(), parameters, strict=True)
    }
    net.load_state_dict(state_dict, strict=True)


class FlowerClient(NumPyClient):
    def __init__(self, net: nn.Module, x: np.ndarray, y: np.ndarray) -> None:
        self.net = net
        self.x = torch.tensor(x, dtype=torch.float32)
        self.y = torch.tensor(y, dtype=torch.long)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        set_weights(self.net, parameters)
        optimizer = torch.optim.SGD(self.net.parameters(), lr=0.05)
        criterion = nn.CrossEntropyLoss()
        self.net.train()
        loss = torch.tensor(0.0)
        for start in range(0, len(self.y), 32):
            optimizer.zero_grad()
            loss = criterion(self.net(self.x[start : start + 32]), self.y[start : start + 32])
            loss.backward()
            optimizer.step()
        return get_weights(self.net), len(self.y), {"train_loss": float(loss.item())}

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        set_weights(self.net, parameters)
        with torch.no_grad():
            logits = self.net(self.x)
            loss = nn.CrossEntropyLoss()(logits, self.y).item()
            accuracy = (logits.argmax(1) == self.y).float().mean().item()
        return loss, len(self.y), {"accuracy": accuracy}


def client_fn(context: Context) -> Any:
    with np.load(str(context.node_config["data-path"])) as data:
        x, y = data["x"], data["y"]
    return FlowerClient(Net(), x, y).to_client()


# Flower App, plain federated averaging
app = ClientApp(client_fn=client_fn)

# Flower App with secure aggregation (Flower's SecAgg+ example)
secagg_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
