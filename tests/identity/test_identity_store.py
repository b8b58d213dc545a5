"""One contract suite for every ``EnrollmentRepository`` backend: memory, SQLite, PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from cloud_hub.enrollment import (
    EnrolledDevice,
    EnrollmentConflictError,
    InMemoryEnrollmentRepository,
    SqlEnrollmentRepository,
    TokenExpiredError,
    TokenUsedError,
    UnknownTokenError,
)
from cloud_hub.enrollment.tokens import TOKEN_PREFIX, hash_token, issue_token
from cloud_hub.errors import HubConfigError, RegistryError

UTC = timezone.utc
T0 = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _pg_engine() -> Iterator[Any]:
    schema = f"enroll_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception:
        admin.dispose()
        raise  # a missing server is a failed run, not a skip (CI starts PostgreSQL)
    engine = create_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield InMemoryEnrollmentRepository()
    elif request.param == "sqlite":
        yield SqlEnrollmentRepository(create_engine(f"sqlite:///{tmp_path / 'e.sqlite'}"))
    else:
        gen = _pg_engine()
        engine = next(gen)
        yield SqlEnrollmentRepository(engine)
        next(gen, None)


def _device(device_id: str, serial: int = 1) -> EnrolledDevice:
    return EnrolledDevice(
        device_id=device_id,
        device_class="x86-cpu",
        cert_serial=serial,
        cert_fingerprint="sha256:" + "ab" * 32,
        cert_not_after=T0 + timedelta(days=365),
        enrolled_at=T0,
        labels={"site": "lab"},
        token_id="t",
    )


def _token(repo: Any, **kw: Any) -> tuple[str, Any]:
    secret, record = issue_token(
        device_class="x86-cpu", ttl=kw.pop("ttl", timedelta(hours=1)), now=T0, **kw
    )
    repo.add_token(record)
    return secret, record


def test_round_trip_keeps_every_field(repo: Any) -> None:
    _, record = _token(repo, labels={"a": "1"}, device_id="dev-1")
    assert repo.get_token(record.token_hash) == record
    assert repo.list_tokens() == [record]
    assert repo.get_token(hash_token("nope")) is None


def test_redeem_once_then_refused(repo: Any) -> None:
    secret, record = _token(repo)
    dev = _device("dev-1", serial=2**159 + 7)  # CA serials are up to 160 bits
    used = repo.redeem(hash_token(secret), dev, now=T0, replace_device=False)
    assert used.used_by == "dev-1" and used.used_at == T0
    assert repo.get_device("dev-1") == dev
    with pytest.raises(TokenUsedError):
        repo.redeem(record.token_hash, _device("dev-2"), now=T0, replace_device=False)
    assert repo.get_device("dev-2") is None


def test_expired_and_unknown_tokens(repo: Any) -> None:
    _, record = _token(repo, ttl=timedelta(minutes=5))
    with pytest.raises(TokenExpiredError):
        repo.redeem(
            record.token_hash, _device("d"), now=T0 + timedelta(minutes=5), replace_device=False
        )
    assert repo.get_token(record.token_hash).used_at is None
    with pytest.raises(UnknownTokenError):
        repo.redeem(hash_token("x"), _device("d"), now=T0, replace_device=False)


def test_device_conflict_consumes_nothing(repo: Any) -> None:
    _, first = _token(repo)
    repo.redeem(first.token_hash, _device("dev-1"), now=T0, replace_device=False)
    _, second = _token(repo)
    with pytest.raises(EnrollmentConflictError):
        repo.redeem(second.token_hash, _device("dev-1", 9), now=T0, replace_device=False)
    assert repo.get_token(second.token_hash).used_at is None
    assert repo.get_device("dev-1").cert_serial == 1
    repo.redeem(second.token_hash, _device("dev-1", 9), now=T0, replace_device=True)
    assert repo.get_device("dev-1").cert_serial == 9
    assert [d.device_id for d in repo.list_devices()] == ["dev-1"]


def test_concurrent_redeemers_only_one_wins(repo: Any) -> None:
    _, record = _token(repo)
    results: list[str] = []
    barrier = threading.Barrier(6)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            repo.redeem(record.token_hash, _device(f"racer-{i}"), now=T0, replace_device=False)
            results.append("won")
        except TokenUsedError:
            results.append("used")
        except Exception as exc:  # e.g. SQLite "database is locked" would be a defect
            results.append(f"error: {exc}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["used"] * 5 + ["won"], results
    assert len(repo.list_devices()) == 1


def test_token_issue_validation() -> None:
    with pytest.raises(HubConfigError):
        issue_token(device_class="bad/class", ttl=timedelta(hours=1), now=T0)
    with pytest.raises(HubConfigError):
        issue_token(device_class="x", ttl=timedelta(days=31), now=T0)
    with pytest.raises(HubConfigError):
        issue_token(device_class="x", ttl=timedelta(hours=1), now=T0, labels={"bad key": "v"})
    a, ra = issue_token(device_class="x", ttl=timedelta(hours=1), now=T0)
    b, rb = issue_token(device_class="x", ttl=timedelta(hours=1), now=T0)
    assert a != b and ra.token_hash != rb.token_hash and len(a) >= 43
    assert ra.token_hash == hash_token(a) and a not in repr(ra)


def test_revocation_keeps_serials_across_re_enrollment(repo: Any) -> None:
    _, first = _token(repo)
    repo.redeem(first.token_hash, _device("dev-1", serial=11), now=T0, replace_device=False)
    with pytest.raises(RegistryError):
        repo.revoke("nobody", now=T0)
    later = T0 + timedelta(hours=1)
    assert repo.revoke("dev-1", now=later).revoked_at == later
    assert repo.revoke("dev-1", now=later + timedelta(hours=1)).revoked_at == later  # idempotent
    assert repo.revoked_certificates() == [(11, later)]
    # Re-enrolled: a fresh, unrevoked certificate; the old serial stays on the list.
    _, again = _token(repo, device_id="dev-1", ttl=timedelta(hours=3))
    repo.redeem(again.token_hash, _device("dev-1", serial=12), now=later, replace_device=True)
    assert repo.get_device("dev-1").revoked_at is None
    assert repo.revoked_certificates() == [(11, later)]
    # Re-enrolling a device that was not revoked revokes the certificate it replaces.
    _, third = _token(repo, device_id="dev-1", ttl=timedelta(hours=3))
    repo.redeem(third.token_hash, _device("dev-1", serial=13), now=later, replace_device=True)
    assert [s for s, _ in repo.revoked_certificates()] == [11, 12]


def test_a_token_is_never_read_as_a_command_line_option() -> None:
    """base64url secrets start with "-" one time in 64: `edge-agent install --token -X…` was
    then refused by the argument parser (seen in CI). Every token starts with its prefix."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--token")
    for _ in range(500):  # P(no leading "-" in 500 draws without the prefix) < 0.0004
        secret, _record = issue_token(device_class="x", ttl=timedelta(hours=1), now=T0)
        assert secret.startswith(TOKEN_PREFIX)
        assert parser.parse_args(["--token", secret]).token == secret
