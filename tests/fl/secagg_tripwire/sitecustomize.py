"""A tripwire loaded by every Python process started with this folder on ``PYTHONPATH``.

Test-only (``tests/fl/test_fl_secagg_processes.py``): the SuperLink, the ServerApp, the
SuperNodes and their ClientApp processes all inherit the environment, so each of them runs
this file at start-up. When ``FEDFLEET_SECAGG_TRIPWIRE_DIR`` names a folder it wraps, as soon
as Flower's modules are imported (before anything binds their names):

- ``secaggplus_utils.pseudo_rand_gen`` (Flower's weak mask generator): every call writes
  ``weak-PID-N.json``. fedfleet swaps it out while a secure round runs, so any call is a
  process that masked or unmasked with the weak generator;
- ``ndarrays_arithmetic.factor_combine`` (client side, the quantized update before masking):
  writes ``client-PID-N.npz``;
- ``ndarrays_arithmetic.factor_extract`` (server side, the unmasked sum): writes
  ``server-PID-N.npz``.

Nothing else changes: each wrapper calls the function it wraps and returns its result.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import itertools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

_OUT = os.environ.get("FEDFLEET_SECAGG_TRIPWIRE_DIR", "")
_counter = itertools.count()


def _path(kind: str, suffix: str) -> Path:
    return Path(_OUT) / f"{kind}-{os.getpid()}-{next(_counter)}.{suffix}"


def _save_arrays(kind: str, arrays: Sequence[Any]) -> None:
    import numpy as np

    np.savez(_path(kind, "npz"), *[np.asarray(a, dtype=np.int64) for a in arrays])


def _wrap_utils(module: ModuleType) -> None:
    weak: Callable[..., Any] = getattr(module, "pseudo_rand_gen")  # noqa: B009

    def pseudo_rand_gen(seed: bytes, num_range: int, dimensions_list: list[Any]) -> Any:
        record = {"pid": os.getpid(), "argv": sys.argv, "num_range": num_range}
        _path("weak", "json").write_text(json.dumps(record))
        return weak(seed, num_range, dimensions_list)

    setattr(module, "pseudo_rand_gen", pseudo_rand_gen)  # noqa: B010


def _wrap_arithmetic(module: ModuleType) -> None:
    combine: Callable[..., Any] = getattr(module, "factor_combine")  # noqa: B009
    extract: Callable[..., Any] = getattr(module, "factor_extract")  # noqa: B009

    def factor_combine(factor: int, parameters: list[Any]) -> list[Any]:
        combined: list[Any] = combine(factor, parameters)
        _save_arrays("client", combined)
        return combined

    def factor_extract(parameters: list[Any]) -> tuple[int, list[Any]]:
        _save_arrays("server", parameters)
        extracted: tuple[int, list[Any]] = extract(parameters)
        return extracted

    setattr(module, "factor_combine", factor_combine)  # noqa: B010
    setattr(module, "factor_extract", factor_extract)  # noqa: B010


_WRAPPERS: dict[str, Callable[[ModuleType], None]] = {
    "flwr.common.secure_aggregation.secaggplus_utils": _wrap_utils,
    "flwr.common.secure_aggregation.ndarrays_arithmetic": _wrap_arithmetic,
}


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Runs the module's wrapper right after the module itself has executed."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        wrapper = _WRAPPERS.get(name)
        if wrapper is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader: Any = spec.loader
        execute = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            wrapper(module)

        loader.exec_module = exec_module
        return spec


if _OUT:
    sys.meta_path.insert(0, _WrapOnImport())
