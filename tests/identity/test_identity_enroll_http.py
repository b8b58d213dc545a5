"""Enrollment over real HTTPS (uvicorn + the hub CA's server certificate)."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_hub.enrollment import CertificateAuthority
from edge_agent.errors import EnrollmentError
from edge_agent.service import hub_client
from edge_agent.service.identity import (
    build_csr,
    check_issued_certificate,
    fingerprint,
    generate_device_key,
)

pytestmark = pytest.mark.integration


def _enroll(hub: Any, token: str, **kw: object) -> hub_client.EnrollmentAnswer:
    endpoint = hub_client.HubEndpoint(hub.url, timeout_s=10)
    ca_pem = hub_client.fetch_pinned_ca(endpoint, hub.service.ca.fingerprint)
    key_pem = generate_device_key()
    args: dict[str, object] = {"device_class": None, "device_id": None, "labels": {}}
    args.update(kw)
    answer = hub_client.enroll(
        endpoint,
        ca_pem=ca_pem,
        token=token,
        csr_pem=build_csr(key_pem, "whatever-the-device-asks"),
        **args,  # type: ignore[arg-type]
    )
    check_issued_certificate(
        answer.certificate_pem, ca_pem, key_pem=key_pem, device_id=answer.device_id
    )
    return answer


def test_happy_path_issues_a_client_certificate_for_the_device_id(hub: Any) -> None:
    secret, record = hub.service.issue_token(
        device_class="jetson-orin", labels={"site": "plant-3", "line": "2"}
    )
    answer = _enroll(
        hub,
        secret,
        device_class="jetson-orin",
        device_id="orin-001",
        labels={"site": "device-says-elsewhere", "camera": "usb"},
    )
    assert answer.device_id == "orin-001"
    assert answer.device_class == "jetson-orin"
    # Operator labels from the token win over what the device reports about itself.
    assert answer.labels == {"site": "plant-3", "line": "2", "camera": "usb"}
    assert answer.topic_prefix == hub.service.config.topic_prefix
    assert answer.mqtt_url == hub.service.config.mqtt_url
    assert answer.mqtt_client_id == "orin-001"
    assert answer.trust_root == hub.trust_root.to_dict()
    cert = x509.load_pem_x509_certificate(answer.certificate_pem)
    # The CSR asked for another CN: the hub sets subject and SAN to the device id.
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "orin-001"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["orin-001"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    stored = hub.service.repository.get_device("orin-001")
    assert stored is not None and stored.cert_fingerprint == fingerprint(answer.certificate_pem)
    used = hub.service.repository.get_token(record.token_hash)
    assert used is not None and used.used_by == "orin-001"


def test_token_is_stored_hashed_only(hub: Any) -> None:
    secret, record = hub.service.issue_token(device_class="x86-cpu")
    db = (hub.tmp / "enroll.sqlite").read_bytes()
    assert secret.encode() not in db
    assert record.token_hash.encode() in db


def test_reused_token_is_refused(hub: Any) -> None:
    secret, _ = hub.service.issue_token(device_class="x86-cpu")
    first = _enroll(hub, secret)
    assert first.device_id.startswith("x86-cpu-")  # the hub picked an id
    with pytest.raises(EnrollmentError, match=r"HTTP 403.*already used"):
        _enroll(hub, secret)


def test_expired_token_is_refused_and_stays_unused(hub: Any) -> None:
    secret, record = hub.service.issue_token(device_class="x86-cpu", ttl=timedelta(minutes=10))
    hub.clock.advance(minutes=10, seconds=1)
    with pytest.raises(EnrollmentError, match=r"HTTP 403.*expired"):
        _enroll(hub, secret)
    stored = hub.service.repository.get_token(record.token_hash)
    assert stored is not None and stored.used_at is None


def test_unknown_token_is_refused(hub: Any) -> None:
    with pytest.raises(EnrollmentError, match=r"HTTP 403.*unknown"):
        _enroll(hub, "not-a-token-the-hub-issued")


def test_class_mismatch_refused_without_consuming_the_token(hub: Any) -> None:
    secret, record = hub.service.issue_token(device_class="rpi4")
    with pytest.raises(EnrollmentError, match=r"HTTP 409.*rpi4"):
        _enroll(hub, secret, device_class="jetson-orin")
    # The refused request spent nothing: the right class still enrolls with the same token.
    assert _enroll(hub, secret, device_class="rpi4").device_class == "rpi4"
    stored = hub.service.repository.get_token(record.token_hash)
    assert stored is not None and stored.used_at is not None


def test_taken_device_id_needs_a_token_issued_for_it(hub: Any) -> None:
    a, _ = hub.service.issue_token(device_class="x86-cpu")
    _enroll(hub, a, device_id="dup-001")
    b, _ = hub.service.issue_token(device_class="x86-cpu")
    with pytest.raises(EnrollmentError, match=r"HTTP 409.*already enrolled"):
        _enroll(hub, b, device_id="dup-001")
    # Re-installing the device: the operator issues a token bound to its id.
    c, _ = hub.service.issue_token(device_class="x86-cpu", device_id="dup-001")
    assert _enroll(hub, c).device_id == "dup-001"


def test_hub_user_name_cannot_be_taken_by_a_device(hub: Any) -> None:
    secret, _ = hub.service.issue_token(device_class="x86-cpu")
    with pytest.raises(EnrollmentError, match=r"HTTP 409.*reserved"):
        _enroll(hub, secret, device_id=hub.service.config.hub_user)


def test_garbage_csr_is_a_400(hub: Any) -> None:
    secret, _ = hub.service.issue_token(device_class="x86-cpu")
    endpoint = hub_client.HubEndpoint(hub.url, timeout_s=10)
    with pytest.raises(EnrollmentError, match=r"HTTP 400.*signing request"):
        hub_client.enroll(
            endpoint,
            ca_pem=hub.ca_file.read_bytes(),
            token=secret,
            csr_pem=b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            device_class=None,
            device_id=None,
            labels={},
        )


def test_wrong_ca_pin_is_refused_before_the_token_is_sent(hub: Any) -> None:
    endpoint = hub_client.HubEndpoint(hub.url, timeout_s=10)
    other = CertificateAuthority.create()
    with pytest.raises(EnrollmentError, match="does not match the pinned"):
        hub_client.fetch_pinned_ca(endpoint, other.fingerprint)


def test_tls_against_another_ca_fails(hub: Any, tmp_path: Path) -> None:
    """The enroll request itself is verified: a hub whose certificate is not from the CA we
    trust never sees the token."""
    secret, record = hub.service.issue_token(device_class="x86-cpu")
    endpoint = hub_client.HubEndpoint(hub.url, timeout_s=10)
    with pytest.raises(EnrollmentError, match="CERTIFICATE_VERIFY_FAILED"):
        hub_client.enroll(
            endpoint,
            ca_pem=CertificateAuthority.create().cert_pem,
            token=secret,
            csr_pem=build_csr(generate_device_key(), "x"),
            device_class=None,
            device_id=None,
            labels={},
        )
    stored = hub.service.repository.get_token(record.token_hash)
    assert stored is not None and stored.used_at is None


def test_ca_endpoint_serves_the_ca_over_verified_tls(hub: Any) -> None:
    ctx = ssl.create_default_context(cafile=str(hub.ca_file))
    with urllib.request.urlopen(f"{hub.url}/api/v1/enroll/ca.pem", context=ctx) as resp:
        assert fingerprint(resp.read()) == hub.service.ca.fingerprint
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(
            urllib.request.Request(
                f"{hub.url}/api/v1/enroll",
                data=b'{"token": ""}',
                headers={"Content-Type": "application/json"},
            ),
            context=ctx,
        )
    assert info.value.code == 422
    info.value.close()
