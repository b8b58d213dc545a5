"""The champion a retraining candidate must beat, and the two rules it is judged by.

The champion is the (version, bundle) most of a class's devices have installed. A candidate
replaces it only if it beats the champion's weights on the hub's validation set by the
loop's ``min_improvement`` (:func:`candidate_shortfall`), and its compressed artifact may
then trail the champion there by at most the profile's quantization budget
(:func:`artifact_faces_champion`).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from cloud_hub.errors import HubError
from cloud_hub.registry import Registry, catalog
from cloud_hub.registry import devices as device_repo

if TYPE_CHECKING:
    from cloud_hub.fl.model_store import ModelStore

__all__ = [
    "Arrays",
    "Champion",
    "artifact_faces_champion",
    "candidate_shortfall",
    "champion_weights",
    "find_champion",
    "torch_accuracy",
]

#: a labelled data set: inputs and class labels
Arrays = tuple[NDArray[np.float32], NDArray[np.int64]]


@dataclass(frozen=True)
class Champion:
    """The version most devices of the class run, and its weights (if the hub trained it)."""

    version: int
    bundle_id: str
    training_run_id: str | None


def find_champion(registry: Registry, model_name: str, device_class: str) -> Champion | None:
    """The (version, bundle) of ``model_name`` most of the class's devices have installed."""
    with registry.session() as s:
        page = device_repo.list_devices(
            s, device_repo.DeviceQuery(device_class=device_class, limit=1000)
        )
        counts = collections.Counter(
            (d.installed_version, d.installed_bundle_id)
            for d in page.items
            if d.installed_model == model_name
            and d.installed_version is not None
            and d.installed_bundle_id
        )
        if not counts:
            return None
        (version, bundle_id), _n = counts.most_common(1)[0]
        try:
            run_id = catalog.get_model_version(s, model_name, int(version)).training_run_id
        except HubError:
            run_id = None
    return Champion(int(version), str(bundle_id), run_id)


def champion_weights(model_store: ModelStore, champion: Champion | None) -> dict[str, Any] | None:
    """The champion's weights from the model store; ``None`` if the hub did not train it or
    no longer holds them (the run then starts from fresh weights and faces no champion)."""
    if champion is None or not champion.training_run_id:
        return None
    try:
        return model_store.load_state_dict(champion.training_run_id)
    except HubError:
        return None


def torch_accuracy(model_name: str, state: dict[str, Any], data: Arrays) -> float:
    """Accuracy of ``model_name`` with weights ``state`` on ``data`` (torch, fp32)."""
    import torch

    from shared.models import build_model

    model = build_model(model_name)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(data[0], dtype=np.float32)))
    return float((logits.argmax(1).numpy() == data[1]).mean())


def candidate_shortfall(
    candidate_accuracy: float,
    champion_accuracy: float | None,
    champion_version: int | None,
    min_improvement: float,
) -> str:
    """Why the candidate does not replace the champion; ``""`` when it does (or there is no
    champion to beat)."""
    if champion_accuracy is not None and candidate_accuracy < champion_accuracy + min_improvement:
        named = "?" if champion_version is None else champion_version
        return (
            f"candidate accuracy {candidate_accuracy:.4f} does not beat champion "
            f"v{named} {champion_accuracy:.4f} (+{min_improvement})"
        )
    return ""


def artifact_faces_champion(
    artifact_path: Path, champion_accuracy: float | None, margin_pts: float, validation: Arrays
) -> None:
    """The compressed artifact faces the champion on the data the candidate beat it on (the
    hub's validation set): it may trail the champion's fp32 accuracy there by at most
    ``margin_pts`` (the profile's quantization budget); ``HubError`` otherwise."""
    from cloud_hub.compress.evaluate import accuracy, onnx_predictor, predict, tflite_predictor

    if champion_accuracy is None:
        return
    path = Path(artifact_path)
    fn = tflite_predictor(path) if path.suffix == ".tflite" else onnx_predictor(path)
    x, y = validation
    got = accuracy(predict(fn, np.ascontiguousarray(x, dtype=np.float32)), y)
    if got * 100.0 + 1e-9 < champion_accuracy * 100.0 - margin_pts:
        raise HubError(
            f"compression gate refused the candidate: artifact accuracy {got * 100:.2f}% "
            f"on the validation set < champion {champion_accuracy * 100:.2f}% "
            f"- {margin_pts:.2f} pts"
        )
