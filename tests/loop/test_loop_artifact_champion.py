"""The retraining loop's champion rule applies to the artifact on the data the candidate beat
the champion on (the hub's validation set), not on the calibration set: a model retrained
for drifted devices may lose on the old distribution and still be the better model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_hub.errors import HubError
from cloud_hub.loop.champion import artifact_faces_champion
from tests.onnx_models import linear_onnx


def _artifact(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(linear_onnx(np.eye(4, dtype=np.float32)))  # predicts argmax(x)
    return path


def _validation(correct: int, n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    y = x.argmax(1)
    y[correct:] = (y[correct:] + 1) % 4  # the artifact gets exactly `correct` of n right
    return x, y


@pytest.mark.parametrize(
    ("correct", "champion", "refused"),
    [(98, 0.99, False), (97, 0.99, True), (60, None, False)],
    ids=["within-budget", "trails-the-champion", "no-champion"],
)
def test_artifact_faces_the_champion_on_the_validation_set(
    tmp_path: Path, correct: int, champion: float | None, refused: bool
) -> None:
    validation = _validation(correct)
    if refused:
        with pytest.raises(HubError, match=r"artifact accuracy 97.00% .* champion 99.00% - 1.00"):
            artifact_faces_champion(_artifact(tmp_path), champion, 1.0, validation)
    else:
        artifact_faces_champion(_artifact(tmp_path), champion, 1.0, validation)
