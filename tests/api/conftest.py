"""A real registry (SQLite), tokens of every role, and the app over an in-process client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud_hub.api import ApiContext, create_app
from cloud_hub.registry import Registry, admin, open_registry

T0 = 1_800_000_000.0


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    yield reg
    reg.close()


@pytest.fixture
def tokens(registry: Registry) -> dict[str, str]:
    out = {}
    with registry.session() as s:
        for role in admin.ROLES:
            _, out[role] = admin.create_token(s, name=f"{role}-bot", role=role, now=T0)
    return out


@pytest.fixture
def context(registry: Registry, tmp_path: Path) -> ApiContext:
    return ApiContext(registry=registry, clock=Clock())


@pytest.fixture
def client(context: ApiContext) -> Iterator[TestClient]:
    with TestClient(create_app(context), raise_server_exceptions=False) as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
