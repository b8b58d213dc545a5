"""The lab's tests build real network namespaces: they need root and ``ip netns``. Where a
namespace cannot be made they skip with a reason starting ``no network namespaces:``."""

from __future__ import annotations

import pytest

from simulations.lab import netns


@pytest.fixture(scope="session")
def namespaces() -> None:
    reason = netns.namespaces_unavailable()
    if reason is not None:
        pytest.skip(f"no network namespaces: {reason}")
