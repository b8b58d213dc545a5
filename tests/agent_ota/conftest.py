"""Fixtures for the agent OTA tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent_ota.agent_ota_helpers import Authority, Clock, Harness, make_authority


@pytest.fixture
def authority() -> Authority:
    return make_authority()


@pytest.fixture
def harness(tmp_path: Path, authority: Authority) -> Harness:
    return Harness(state_dir=tmp_path / "state", auth=authority, clock=Clock())
