"""Build profiles: the shipped TOML files and the validation of bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_hub.compress.profile import (
    default_profiles_dir,
    list_profiles,
    load_all_profiles,
    load_profile,
)
from cloud_hub.errors import HubConfigError

GOOD = """
name = "{name}"
device_class = "test"
targets = ["x86-avx2", "x86-vnni"]

[artifact]
format = "onnx"
precision = "int8"
calibration_size = 64

[budgets]
max_size_mb = 1.0
max_accuracy_drop_pts = 1.0
max_latency_ms = 10.0
min_accuracy_pct = 50.0

[runtime]
providers = ["CPUExecutionProvider"]
"""


def _write(tmp_path: Path, text: str, name: str = "p") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text.replace("{name}", name))
    return path


def test_shipped_profiles_state_what_each_device_class_gets() -> None:
    assert default_profiles_dir().name == "firmware_bundles"
    names = list_profiles()
    assert {"jetson-orin", "rpi4", "x86-cpu"} <= set(names)
    jetson = load_profile("jetson-orin")
    assert (jetson.format, jetson.precision) == ("onnx", "fp16")
    assert jetson.providers == (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    rpi = load_profile("rpi4")
    assert (rpi.format, rpi.precision, rpi.artifact_filename) == ("tflite", "int8", "model.tflite")
    assert rpi.needs_calibration and rpi.calibration_size > 0
    x86 = load_profile("x86-cpu")
    assert (x86.format, x86.precision, x86.providers) == ("onnx", "int8", ("CPUExecutionProvider",))
    assert x86.budgets.max_accuracy_drop_pts == 1.0
    # every profile names its targets and has an absolute accuracy floor
    assert x86.targets == ("x86-avx2", "x86-vnni") and jetson.targets == ("tensorrt",)
    assert rpi.targets == ("arm64-neon",)
    assert all(p.budgets.min_accuracy_pct >= 50 for p in load_all_profiles())
    # one x86 artifact serves both: the recipe that cannot saturate U8S8 kernels
    recipe = x86.int8_recipe
    assert recipe is not None and recipe.reduce_range and recipe.activation_type == "uint8"
    assert [p.name for p in load_all_profiles()] == list(names)


def test_a_profile_loads_from_a_path(tmp_path: Path) -> None:
    profile = load_profile(_write(tmp_path, GOOD))
    assert profile.name == "p" and profile.pruning_amount == 0.0 and profile.quantization == "auto"
    assert profile.to_dict()["budgets"]["max_size_mb"] == 1.0


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('precision = "int8"', 'precision = "int4"', "precision 'int4'"),
        ('format = "onnx"', 'format = "tflite"\nquantization = "dynamic"', "static only"),
        ("max_size_mb = 1.0", "max_size_mb = -1.0", "max_size_mb must be a positive"),
        ("max_size_mb = 1.0\n", "", "missing budgets ['max_size_mb']"),
        ("calibration_size = 64", "calibration_size = 0", "needs calibration_size > 0"),
        ("calibration_size = 64", "calibration_size = 64\npruning = 0.5", "unknown keys"),
        ('["CPUExecutionProvider"]', '["MagicProvider"]', "providers"),
        ("calibration_size = 64", "calibration_size = 64\npruning_amount = 1.5", "pruning_amount"),
        ("calibration_size = 64", 'calibration_size = "many"', "must be an integer"),
        ("[budgets]", "[budget]", "unknown keys"),
        ("min_accuracy_pct = 50.0\n", "", "missing budgets ['min_accuracy_pct']"),
        ("min_accuracy_pct = 50.0", "min_accuracy_pct = 0", "min_accuracy_pct must be in"),
        ('targets = ["x86-avx2", "x86-vnni"]\n', "", "targets must be a list"),
        ('"x86-vnni"]', '"x86-sse2"]', "targets ['x86-avx2', 'x86-sse2'] must be"),
        ('"x86-vnni"]', '"tensorrt"]', "need different int8 recipes: split the profile"),
    ],
)
def test_bad_profiles_are_refused_with_the_reason(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(HubConfigError) as err:
        load_profile(path)
    assert message in str(err.value)


def test_not_toml_and_unknown_names_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(HubConfigError, match="not valid TOML"):
        load_profile(_write(tmp_path, "name = [unclosed"))
    with pytest.raises(HubConfigError, match=r"unknown profile 'nope'; known: .*x86-cpu"):
        load_profile("nope")
    with pytest.raises(HubConfigError, match="does not match the file name"):
        load_profile(_write(tmp_path, GOOD.replace('name = "{name}"', 'name = "other"')))
