"""The device's key pair, its CSR, and checks on the certificate the hub returns.

The key is ECDSA P-256 (every TLS stack, Mosquitto 2.0 with OpenSSL 1.1/3 included, accepts
it for client certificates); it is generated on the device and never leaves it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.errors import EnrollmentError

__all__ = [
    "CertificateInfo",
    "build_csr",
    "certificate_info",
    "check_issued_certificate",
    "fingerprint",
    "generate_device_key",
]

UTC = timezone.utc


def generate_device_key() -> bytes:
    """A new ECDSA P-256 private key (PKCS#8 PEM, unencrypted: the file is mode 0600)."""
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise EnrollmentError("the device key is not an ECDSA key")
    return key


def build_csr(key_pem: bytes, common_name: str) -> bytes:
    """A PKCS#10 request signed with the device key (the hub sets the final subject)."""
    key = _load_key(key_pem)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert_pem: bytes) -> str:
    """``sha256:<hex>`` of a PEM certificate's DER bytes."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise EnrollmentError(f"not a PEM certificate: {exc}") from exc
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass(frozen=True)
class CertificateInfo:
    """What ``edge-agent status`` shows about a certificate."""

    subject: str
    issuer: str
    not_before: datetime
    not_after: datetime
    fingerprint: str

    def valid_at(self, now: datetime) -> bool:
        return self.not_before <= now < self.not_after


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()


def certificate_info(cert_pem: bytes) -> CertificateInfo:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise EnrollmentError(f"not a PEM certificate: {exc}") from exc
    return CertificateInfo(
        subject=_cn(cert.subject),
        issuer=_cn(cert.issuer),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint=fingerprint(cert_pem),
    )


def check_issued_certificate(
    cert_pem: bytes, ca_pem: bytes, *, key_pem: bytes, device_id: str
) -> CertificateInfo:
    """Refuse a hub answer whose certificate is not for our key, our id, or not from the CA."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise EnrollmentError(f"the hub returned an unreadable certificate: {exc}") from exc
    if cert.public_key() != _load_key(key_pem).public_key():
        raise EnrollmentError("the hub's certificate is not for this device's key")
    if _cn(cert.subject) != device_id:
        raise EnrollmentError(f"certificate CN {_cn(cert.subject)!r} is not {device_id!r}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise EnrollmentError("the device certificate is not signed by the hub CA") from exc
    return certificate_info(cert_pem)
