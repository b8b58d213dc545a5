"""A certificate authority: one ECDSA P-256 key and a self-signed CA certificate.

The hub runs two (R2), so that the broker can tell the hub from any device:

- the device CA (``DATA_DIR/ca``) signs device client certificates (from the device's CSR;
  CN and SAN = the device id), which the broker maps to the MQTT user name
  (``use_identity_as_username``), and server certificates for the hub's HTTPS API and for
  the broker; devices pin its fingerprint. It also issues the hub's admin certificate for
  the broker's dynamic security plugin (CN ``HUB:broker-admin``, a name no device id can
  have; see :mod:`.dynsec`);
- the hub client CA (``DATA_DIR/hub-ca``, see :mod:`.hub_identity`) signs only the hub's own
  MQTT client certificate, which only the broker's hub listener accepts.

P-256 rather than Ed25519: Mosquitto 2.0.11 with OpenSSL 3 can negotiate Ed25519 only in TLS
1.3, and many device TLS stacks still cannot; P-256 works everywhere.

On disk (``directory``, created on first use; R15: each file written atomically, the key
first)::

    ca.key   PKCS#8 PEM, mode 0600
    ca.crt   PEM
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_hub.enrollment.errors import CsrRejectedError
from cloud_hub.errors import HubConfigError
from shared.files import atomic_write

__all__ = [
    "CertificateAuthority",
    "IssuedCertificate",
    "ServerCredentials",
    "cert_fingerprint",
    "generate_private_key_pem",
]

UTC = timezone.utc
_CLOCK_SKEW = timedelta(minutes=5)  # leaves are valid slightly before "now" (device clocks)
MAX_CSR_BYTES = 16 * 1024


def cert_fingerprint(cert_pem: bytes) -> str:
    """``sha256:<hex>`` of the certificate's DER encoding (what ``--ca-fingerprint`` pins)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def generate_private_key_pem() -> bytes:
    """A fresh ECDSA P-256 key as unencrypted PKCS#8 PEM."""
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate the CA signed."""

    subject: str
    serial: int
    not_after: datetime
    pem: bytes

    @property
    def fingerprint(self) -> str:
        return cert_fingerprint(self.pem)


@dataclass(frozen=True)
class ServerCredentials:
    """A server (or hub client) key pair with its CA-signed certificate, as PEM."""

    key_pem: bytes
    cert_pem: bytes


def _san_entries(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Signatures only; a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _self_signed(
    key: ec.EllipticCurvePrivateKey, *, common_name: str, days: int, now: datetime | None
) -> x509.Certificate:
    """A CA certificate for ``key`` (self-signed, path length 0: it signs only leaves)."""
    now = now or datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


class CertificateAuthority:
    """A loaded CA (key + certificate). Create or load one with :meth:`load_or_create`."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self._cert = cert

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def create(
        cls, *, common_name: str = "fedfleet hub CA", days: int = 3650, now: datetime | None = None
    ) -> CertificateAuthority:
        """A new in-memory CA (self-signed, path length 0: it signs only leaves)."""
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key, _self_signed(key, common_name=common_name, days=days, now=now))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CertificateAuthority:
        """Load ``ca.key``/``ca.crt`` from ``directory``."""
        d = Path(directory)
        try:
            key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
        except (OSError, ValueError) as exc:
            raise HubConfigError(f"cannot load the hub CA from {d}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise HubConfigError(f"{d / 'ca.key'} is not an EC key")
        if cert.public_key() != key.public_key():
            raise HubConfigError(f"{d / 'ca.crt'} does not belong to {d / 'ca.key'}")
        return cls(key, cert)

    @classmethod
    def load_or_create(
        cls, directory: str | os.PathLike[str], *, common_name: str = "fedfleet hub CA"
    ) -> CertificateAuthority:
        """Load the CA in ``directory``, creating it (mode 0700 dir, 0600 key) on first use.

        R15: both files are written atomically, the key first. A crash between the two
        leaves a key without a certificate: nothing was ever issued or pinned then, so the
        certificate is re-made from that key. A certificate without its key is refused
        (never silently replaced: devices may pin it)."""
        d = Path(directory)
        key_path, cert_path = d / "ca.key", d / "ca.crt"
        if cert_path.exists():
            return cls.load(d)
        if key_path.exists():
            return cls._finish_creation(d, common_name)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        ca = cls.create(common_name=common_name)
        atomic_write(key_path, ca.key_pem(), mode=0o600)
        atomic_write(cert_path, ca.cert_pem, mode=0o644)
        return ca

    @classmethod
    def _finish_creation(cls, d: Path, common_name: str) -> CertificateAuthority:
        """A creation interrupted after ``ca.key``: self-sign that key and write ``ca.crt``."""
        try:
            key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise HubConfigError(f"cannot load the hub CA key in {d}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise HubConfigError(f"{d / 'ca.key'} is not an EC key")
        ca = cls(key, _self_signed(key, common_name=common_name, days=3650, now=None))
        atomic_write(d / "ca.crt", ca.cert_pem, mode=0o644)
        return ca

    # -- accessors ---------------------------------------------------------------------------
    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        return cert_fingerprint(self.cert_pem)

    def key_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    # -- signing -----------------------------------------------------------------------------
    def _leaf(
        self,
        public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
        *,
        common_name: str,
        sans: Sequence[str],
        usage: x509.ObjectIdentifier,
        days: int,
        now: datetime | None,
    ) -> IssuedCertificate:
        now = now or datetime.now(UTC)
        not_after = min(now + timedelta(days=days), self._cert.not_valid_after_utc)
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_san_entries(sans)), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        return IssuedCertificate(
            subject=common_name,
            serial=serial,
            not_after=not_after,
            pem=cert.public_bytes(serialization.Encoding.PEM),
        )

    def sign_device_csr(
        self, csr_pem: bytes, *, device_id: str, days: int = 365, now: datetime | None = None
    ) -> IssuedCertificate:
        """Sign a device's CSR. The CSR only contributes its public key (after its
        self-signature is checked): subject and SAN are set by the hub to ``device_id``,
        whatever the CSR asked for."""
        if len(csr_pem) > MAX_CSR_BYTES:
            raise CsrRejectedError(f"CSR larger than {MAX_CSR_BYTES} bytes")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CsrRejectedError(f"not a PEM certificate signing request: {exc}") from exc
        try:
            valid = csr.is_signature_valid
        except InvalidSignature:  # some key types raise instead of returning False
            valid = False
        if not valid:
            raise CsrRejectedError("the CSR's signature does not verify (proof of key possession)")
        public = csr.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            if not isinstance(public.curve, ec.SECP256R1 | ec.SECP384R1):
                raise CsrRejectedError(f"unsupported EC curve {public.curve.name}")
        elif not isinstance(public, ed25519.Ed25519PublicKey):
            raise CsrRejectedError("device keys must be ECDSA P-256/P-384 or Ed25519")
        return self._leaf(
            public,
            common_name=device_id,
            sans=[device_id],
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            days=days,
            now=now,
        )

    def build_crl(
        self,
        revoked: Sequence[tuple[int, datetime]],
        *,
        days: int = 365,
        now: datetime | None = None,
    ) -> bytes:
        """A PEM CRL listing ``(serial, revoked_at)``. OpenSSL refuses *every* client once the
        CRL is past its next-update time, so it is long-lived and re-issued on each change."""
        if not 1 <= days <= 3650:
            raise HubConfigError("CRL validity must be between 1 and 3650 days")
        now = now or datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._cert.subject)
            .last_update(now - _CLOCK_SKEW)
            .next_update(now + timedelta(days=days))
        )
        for serial, when in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(min(when, now))
                .build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)

    def issue_client(
        self, common_name: str, *, days: int = 365, now: datetime | None = None
    ) -> ServerCredentials:
        """A key pair + client certificate generated here (the hub's own MQTT identity)."""
        key_pem = generate_private_key_pem()
        key = serialization.load_pem_private_key(key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        leaf = self._leaf(
            key.public_key(),
            common_name=common_name,
            sans=[],
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            days=days,
            now=now,
        )
        return ServerCredentials(key_pem=key_pem, cert_pem=leaf.pem)

    def issue_server(
        self, hostnames: Sequence[str], *, days: int = 365, now: datetime | None = None
    ) -> ServerCredentials:
        """A key pair + TLS server certificate for ``hostnames`` (DNS names or IP addresses)."""
        if not hostnames:
            raise HubConfigError("a server certificate needs at least one host name")
        key_pem = generate_private_key_pem()
        key = serialization.load_pem_private_key(key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        leaf = self._leaf(
            key.public_key(),
            common_name=hostnames[0],
            sans=hostnames,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            days=days,
            now=now,
        )
        return ServerCredentials(key_pem=key_pem, cert_pem=leaf.pem)
