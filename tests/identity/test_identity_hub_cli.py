"""``cloud-hub enroll-token|enroll-list|broker-config`` over a hub data directory and registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cloud_hub.cli import main as hub_main
from cloud_hub.enrollment import EnrollmentRequest, TokenUsedError, open_enrollment
from cloud_hub.keys import KeyStore
from cloud_hub.registry import devices, open_registry
from edge_agent.service.identity import build_csr, generate_device_key


def test_enroll_token_cli_then_enrollment_registers_the_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "hub-data"
    keys = KeyStore.init(data / "keys")
    rc = hub_main(
        [
            "enroll-token",
            "--class",
            "jetson-orin",
            "--labels",
            "site=plant-3",
            "--ttl",
            "2h",
            "--data-dir",
            str(data),
            "--hub-url",
            "https://hub.example:8443",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    token = re.search(r"^token\s+(\S+)$", out, re.M).group(1)  # type: ignore[union-attr]
    fp = re.search(r"^ca fingerprint\s+(sha256:[0-9a-f]{64})$", out, re.M).group(1)  # type: ignore[union-attr]
    assert f"--token {token} --ca-fingerprint {fp}" in out
    assert token not in (data / "hub.db").read_bytes().decode("latin-1")

    service = open_enrollment(data)
    assert service.ca.fingerprint == fp
    result = service.enroll(
        EnrollmentRequest(token=token, csr_pem=build_csr(generate_device_key(), "x"))
    )
    assert result.trust_root == keys.trust_root()
    with pytest.raises(TokenUsedError):
        service.enroll(
            EnrollmentRequest(token=token, csr_pem=build_csr(generate_device_key(), "x"))
        )
    # The fleet registry knows the device (class, labels) before its first hello.
    registry = open_registry(f"sqlite:///{(data / 'hub.db').resolve()}")
    with registry.session() as s:
        record = devices.find_device(s, result.device_id)
    registry.close()
    assert record is not None
    assert record.device_class == "jetson-orin" and record.labels == {"site": "plant-3"}

    assert hub_main(["enroll-list", "--data-dir", str(data)]) == 0
    listing = capsys.readouterr().out
    assert result.device_id in listing and "jetson-orin" in listing


def test_enroll_token_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["enroll-token", "--data-dir", str(tmp_path)]
    assert hub_main([*base, "--class", "bad/class"]) == 2
    assert hub_main([*base, "--class", "x", "--ttl", "90d"]) == 2
    assert hub_main([*base, "--class", "x", "--labels", "novalue"]) == 2
    assert hub_main([*base, "--class", "x", "--device-id", "fedfleet-hub"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 4


def test_broker_config_cli_writes_a_complete_setup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "broker"
    rc = hub_main(
        [
            "broker-config",
            "--out",
            str(out_dir),
            "--data-dir",
            str(tmp_path / "hub"),
            "--port",
            "18883",
            "--prefix",
            "plant",
            "--hostname",
            "broker.example",
        ]
    )
    assert rc == 0
    names = {p.name for p in out_dir.iterdir()}
    assert names == {
        "mosquitto.conf",
        "acl",
        "acl-hub",
        "ca.crt",
        "hub-ca.crt",
        "server.crt",
        "server.key",
        "hub.crt",
        "hub.key",
        "crl.pem",
        "hub-crl.pem",
        "dynamic-security.json",  # deleted devices are dropped through it at run time
    }
    conf = (out_dir / "mosquitto.conf").read_text()
    assert "require_certificate true" in conf and "listener 18883 0.0.0.0" in conf
    assert "plant/v1/devices/%u/status" in (out_dir / "acl").read_text()
    assert (
        "listener 8884 0.0.0.0" in conf and "user fedfleet-hub" in (out_dir / "acl-hub").read_text()
    )
    assert (out_dir / "server.key").stat().st_mode & 0o077 == 0


def test_enroll_init_issues_the_https_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography import x509

    data = tmp_path / "hub-data"
    args = ["enroll-init", "--data-dir", str(data), "--hostname", "hub.local"]
    assert hub_main([*args, "--hostname", "10.0.0.5"]) == 0
    first = (data / "tls" / "hub.crt").read_bytes()
    cert = x509.load_pem_x509_certificate(first)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["hub.local"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert (data / "tls" / "hub.key").stat().st_mode & 0o077 == 0
    assert hub_main(args) == 0  # idempotent: the existing certificate stays
    assert (data / "tls" / "hub.crt").read_bytes() == first
    assert hub_main([*args, "--renew"]) == 0
    assert (data / "tls" / "hub.crt").read_bytes() != first
    assert "ca fingerprint  sha256:" in capsys.readouterr().out


def test_enroll_revoke_refreshes_the_broker_crl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography import x509

    data, broker_dir = tmp_path / "hub-data", tmp_path / "broker"
    common = ["--data-dir", str(data)]
    assert hub_main(["broker-config", "--out", str(broker_dir), *common]) == 0
    assert f"crlfile {broker_dir / 'crl.pem'}" in (broker_dir / "mosquitto.conf").read_text()
    empty = x509.load_pem_x509_crl((broker_dir / "crl.pem").read_bytes())
    assert len(list(empty)) == 0

    service = open_enrollment(data)
    secret, _ = service.issue_token(device_class="rpi4")
    result = service.enroll(
        EnrollmentRequest(token=secret, csr_pem=build_csr(generate_device_key(), "x"))
    )
    serial = x509.load_pem_x509_certificate(result.certificate_pem).serial_number
    rc = hub_main(["enroll-revoke", result.device_id, "--broker-dir", str(broker_dir), *common])
    assert rc == 0
    crl = x509.load_pem_x509_crl((broker_dir / "crl.pem").read_bytes())
    ca = x509.load_pem_x509_certificate(service.ca.cert_pem)
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert hub_main(["enroll-revoke", "no-such-device", *common]) == 2
    assert hub_main(["enroll-list", *common]) == 0
    assert "REVOKED" in capsys.readouterr().out
