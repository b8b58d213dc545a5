"""R15 (CA part): the hub CA's files and the broker CRL are written atomically, in a safe
order, through ``shared.files``: a crash at any point leaves either the old file or the new
one, never half of one, and never a certificate whose key is gone.

The crash is real I/O failing: the rename that publishes a file raises, as a full disk or a
kill at that instant would leave it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography import x509

from cloud_hub.cli import main as hub_main
from cloud_hub.enrollment import CertificateAuthority, EnrollmentRequest, open_enrollment
from cloud_hub.errors import HubConfigError
from edge_agent.service.identity import build_csr, generate_device_key

_real_replace = os.replace


def _crash_when_publishing(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """``os.replace`` onto ``name`` fails (the process dies before the rename)."""

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == name:
            raise OSError(28, "No space left on device (injected)")
        _real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_crash_before_the_certificate_is_published_recovers_from_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_dir = tmp_path / "ca"
    with monkeypatch.context() as m:
        _crash_when_publishing(m, "ca.crt")
        with pytest.raises(OSError, match="injected"):
            CertificateAuthority.load_or_create(ca_dir)
    # the key was written first and whole; no half-written certificate exists
    assert (ca_dir / "ca.key").stat().st_mode & 0o077 == 0
    assert not (ca_dir / "ca.crt").exists()
    key_before = (ca_dir / "ca.key").read_bytes()
    ca = CertificateAuthority.load_or_create(ca_dir)  # the next start finishes the job
    assert (ca_dir / "ca.key").read_bytes() == key_before  # the same key, not a new CA
    cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    assert cert.public_key() == ca._key.public_key()
    assert CertificateAuthority.load(ca_dir).fingerprint == ca.fingerprint
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.crt", "ca.key"]  # no temp files


def test_crash_before_the_key_is_published_leaves_nothing_half_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_dir = tmp_path / "ca"
    with monkeypatch.context() as m:
        _crash_when_publishing(m, "ca.key")
        with pytest.raises(OSError, match="injected"):
            CertificateAuthority.load_or_create(ca_dir)
    assert not (ca_dir / "ca.key").exists() and not (ca_dir / "ca.crt").exists()
    CertificateAuthority.load_or_create(ca_dir)  # starts over cleanly
    assert {p.name for p in ca_dir.iterdir()} == {"ca.crt", "ca.key"}


def test_a_certificate_whose_key_is_lost_is_refused_not_replaced(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    CertificateAuthority.load_or_create(ca_dir)
    pinned = (ca_dir / "ca.crt").read_bytes()
    (ca_dir / "ca.key").unlink()
    with pytest.raises(HubConfigError, match="cannot load the hub CA"):
        CertificateAuthority.load_or_create(ca_dir)
    assert (ca_dir / "ca.crt").read_bytes() == pinned  # devices pin this: never overwritten


def test_revocation_replaces_the_crl_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "hub"
    broker = tmp_path / "broker"
    service = open_enrollment(data)
    for device_id in ("cam-1", "cam-2"):
        secret, _ = service.issue_token(device_class="x86-cpu")
        service.enroll(
            EnrollmentRequest(
                token=secret,
                csr_pem=build_csr(generate_device_key(), device_id),
                device_id=device_id,
            )
        )
    argv = ["broker-config", "--out", str(broker), "--data-dir", str(data), "--port", "18883"]
    assert hub_main(argv) == 0
    crl_before = (broker / "crl.pem").read_bytes()
    revoke = ["enroll-revoke", "--broker-dir", str(broker), "--data-dir", str(data)]
    with monkeypatch.context() as m:
        _crash_when_publishing(m, "crl.pem")
        assert hub_main([*revoke, "cam-1"]) != 0
    assert "injected" in capsys.readouterr().err  # the failure is reported, with its cause
    assert (broker / "crl.pem").read_bytes() == crl_before  # the broker still reads a whole CRL
    assert hub_main([*revoke, "cam-2"]) == 0
    crl = x509.load_pem_x509_crl((broker / "crl.pem").read_bytes())
    assert len(list(crl)) == 2  # both revocations are in the file now
    assert (broker / "crl.pem").stat().st_mode & 0o777 == 0o644
    assert not [p for p in broker.iterdir() if p.name.endswith(".tmp")]
