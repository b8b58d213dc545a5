"""The CA, CSR signing and the pure renderers (ACL, broker config, agent config, JetPack)."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_hub.commands.enroll import parse_labels, parse_ttl
from cloud_hub.enrollment import (
    BrokerTlsConfig,
    CertificateAuthority,
    CsrRejectedError,
    render_device_acl,
    render_hub_acl,
    render_mosquitto_config,
)
from cloud_hub.errors import HubConfigError
from edge_agent.config import parse_config
from edge_agent.errors import EnrollmentError
from edge_agent.service.identity import build_csr, check_issued_certificate, generate_device_key
from edge_agent.service.jetson import (
    JetsonInfo,
    detect_jetson,
    jetpack_for_l4t,
    parse_nv_tegra_release,
    wheels_for,
)
from edge_agent.service.render import AgentConfigValues, render_agent_config
from shared.topics import TopicScheme

UTC = timezone.utc


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def test_ca_is_created_once_with_a_private_key_file(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path / "ca")
    again = CertificateAuthority.load_or_create(tmp_path / "ca")
    assert first.fingerprint == again.fingerprint
    assert stat.S_IMODE(os.stat(tmp_path / "ca" / "ca.key").st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(first.cert_pem)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    (tmp_path / "ca" / "ca.crt").write_bytes(CertificateAuthority.create().cert_pem)
    with pytest.raises(HubConfigError, match="does not belong"):
        CertificateAuthority.load(tmp_path / "ca")


def test_csr_subject_is_replaced_by_the_device_id(ca: CertificateAuthority) -> None:
    key = generate_device_key()
    issued = ca.sign_device_csr(build_csr(key, "fedfleet-hub"), device_id="cam-1")
    info = check_issued_certificate(issued.pem, ca.cert_pem, key_pem=key, device_id="cam-1")
    assert info.subject == "cam-1" and info.issuer == "fedfleet hub CA"
    with pytest.raises(EnrollmentError, match="not for this device's key"):
        check_issued_certificate(
            issued.pem, ca.cert_pem, key_pem=generate_device_key(), device_id="cam-1"
        )
    with pytest.raises(EnrollmentError, match="not signed by the hub CA"):
        check_issued_certificate(
            issued.pem, CertificateAuthority.create().cert_pem, key_pem=key, device_id="cam-1"
        )


def test_leaf_never_outlives_the_ca(ca: CertificateAuthority) -> None:
    now = datetime.now(UTC)
    issued = ca.sign_device_csr(
        build_csr(generate_device_key(), "x"), device_id="d", days=3650 * 2, now=now
    )
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert issued.not_after <= ca_cert.not_valid_after_utc
    short = ca.sign_device_csr(
        build_csr(generate_device_key(), "x"), device_id="d", days=1, now=now
    )
    assert short.not_after - now <= timedelta(days=1, seconds=1)


def _csr(key: object) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())  # type: ignore[arg-type]
        .public_bytes(serialization.Encoding.PEM)
    )


def test_csr_key_types(ca: CertificateAuthority) -> None:
    ca.sign_device_csr(_csr(ed25519.Ed25519PrivateKey.generate()), device_id="ed")
    ca.sign_device_csr(_csr(ec.generate_private_key(ec.SECP384R1())), device_id="p384")
    with pytest.raises(CsrRejectedError, match="ECDSA"):
        ca.sign_device_csr(_csr(rsa.generate_private_key(65537, 2048)), device_id="rsa")
    with pytest.raises(CsrRejectedError, match="unsupported EC curve"):
        ca.sign_device_csr(_csr(ec.generate_private_key(ec.SECP256K1())), device_id="k1")
    with pytest.raises(CsrRejectedError, match="larger"):
        ca.sign_device_csr(b"x" * 20000, device_id="big")


def test_tampered_csr_signature_is_refused(ca: CertificateAuthority) -> None:
    """Proof of possession: a CSR whose signature bytes were altered is refused."""
    csr = x509.load_pem_x509_csr(build_csr(generate_device_key(), "victim"))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    pem = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + __import__("base64").encodebytes(bytes(der))
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(CsrRejectedError):
        ca.sign_device_csr(pem, device_id="victim")


def test_acl_confines_devices_to_their_own_topics() -> None:
    acl = render_device_acl(TopicScheme("plant"))
    patterns = [ln for ln in acl.splitlines() if ln and not ln.startswith("#")]
    # R2: the device listener's ACL grants nobody by name, so no device name reaches more
    assert all(p.startswith("pattern ") for p in patterns)
    assert "pattern write plant/v1/devices/%u/telemetry" in patterns
    assert "pattern read plant/v1/devices/%u/cmd" in patterns
    assert "pattern read plant/v1/bundles/+/chunks" in patterns
    # No device-wide wildcard, no write to downlink, no %c (client ids are not identities).
    assert not any("devices/+" in p or "devices/#" in p for p in patterns)
    assert not any(
        p.startswith("pattern write") and p.endswith(("/cmd", "/chunks")) for p in patterns
    )
    assert "%c" not in acl
    hub = [ln for ln in render_hub_acl(TopicScheme("plant"), hub_user="hub-1").splitlines()]
    assert [ln for ln in hub if ln and not ln.startswith("#")] == [
        "user hub-1",
        "topic readwrite plant/v1/#",
    ]
    with pytest.raises(Exception, match="invalid id"):
        render_hub_acl(TopicScheme("plant"), hub_user="bad/user")


def test_mosquitto_config_requires_client_certificates(tmp_path: Path) -> None:
    cfg = BrokerTlsConfig(
        port=18883,
        hub_port=18884,
        bind="127.0.0.1",
        cafile=tmp_path / "ca.crt",
        hub_cafile=tmp_path / "hub-ca.crt",
        certfile=tmp_path / "s.crt",
        keyfile=tmp_path / "s.key",
        acl_file=tmp_path / "acl",
        hub_acl_file=tmp_path / "acl-hub",
    )
    text = render_mosquitto_config(cfg).splitlines()
    assert "per_listener_settings true" in text
    device = text[text.index("listener 18883 127.0.0.1") : text.index("listener 18884 127.0.0.1")]
    hub = text[text.index("listener 18884 127.0.0.1") :]
    for listener, cafile, acl in ((device, "ca.crt", "acl"), (hub, "hub-ca.crt", "acl-hub")):
        for line in (
            f"cafile {tmp_path / cafile}",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            f"acl_file {tmp_path / acl}",
        ):
            assert line in listener
    # R3: on the device listener the client id is the certificate's identity
    assert "use_username_as_clientid true" in device
    assert "use_username_as_clientid true" not in hub
    for bad in ({"port": 0}, {"hub_port": 18883}):
        with pytest.raises(HubConfigError):
            BrokerTlsConfig(**{**cfg.__dict__, **bad})


_label_keys = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,15}", fullmatch=True)


@settings(max_examples=40, deadline=None)
@given(
    labels=st.dictionaries(_label_keys, st.text(max_size=20), max_size=4),
    state=st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20
    ),
)
def test_agent_config_round_trips_through_the_agent_parser(
    labels: dict[str, str], state: str
) -> None:
    import tomllib

    base = Path("/etc/fedfleet-agent")
    values = AgentConfigValues(
        device_id="cam-1",
        device_class="x86-cpu",
        state_dir=Path("/var/lib") / state.replace("/", "_"),
        trust_root=base / "trust_root.json",
        mqtt_url="mqtts://broker.example:8883",
        topic_prefix="fedfleet",
        client_id="cam-1",
        ca=base / "ca.crt",
        cert=base / "device.crt",
        key=base / "device.key",
        labels=labels,
    )
    config = parse_config(tomllib.loads(render_agent_config(values)), base_dir=base)
    assert config.labels == labels
    assert config.state_dir == values.state_dir
    assert (config.mqtt.host, config.mqtt.port) == ("broker.example", 8883)
    assert config.mqtt.tls is not None and config.mqtt.tls.key == values.key


@pytest.mark.parametrize(
    ("text", "l4t", "jetpack", "major"),
    [
        (
            "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
            "DATE: Tue Aug  1 19:57:35 UTC 2023",
            "35.4.1",
            "5.1.2",
            5,
        ),
        (
            "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, "
            "DATE: Fri Jul 19 23:24:25 UTC 2024\n# KERNEL_VARIANT: oot\n",
            "36.3.0",
            "6.0",
            6,
        ),
        ("# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref", "32.7.4", "4.6.4", 4),
        ("# R36 (release), REVISION: 9.9, GCID: 1", "36.9.9", None, 6),  # newer than the table
    ],
)
def test_nv_tegra_release_parsing(text: str, l4t: str, jetpack: str | None, major: int) -> None:
    assert parse_nv_tegra_release(text) == l4t
    assert jetpack_for_l4t(l4t) == jetpack
    info = JetsonInfo(l4t=l4t, jetpack=jetpack, source="test")
    assert info.jetpack_major == major
    advice = wheels_for(info)
    if major == 4:
        assert advice is None
    else:
        assert advice is not None and advice.jetpack_major == major
        assert ("cp38" in advice.python) == (major == 5)


def test_not_a_jetson(tmp_path: Path) -> None:
    assert parse_nv_tegra_release("Ubuntu 22.04") is None
    assert detect_jetson(tmp_path / "missing") is None
    (tmp_path / "rel").write_text("garbage")
    assert detect_jetson(tmp_path / "rel") is None


def test_cli_parsers() -> None:
    assert parse_ttl("90") == timedelta(seconds=90)
    assert parse_ttl("30m") == timedelta(minutes=30)
    assert parse_ttl("7d") == timedelta(days=7)
    with pytest.raises(HubConfigError):
        parse_ttl("1w")
    assert parse_labels(["a=1", "b = x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(HubConfigError):
        parse_labels(["novalue"])


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_release_parser_never_raises(text: str) -> None:
    result = parse_nv_tegra_release(text)
    assert result is None or result.count(".") == 2


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["device_id", "device_class", "certificate", "ca_certificate", "mqtt", "topic_prefix"]
        ),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=5),
            st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
        ),
    )
)
def test_malformed_enrollment_answers_are_refused_cleanly(data: dict[str, object]) -> None:
    from edge_agent.service.hub_client import EnrollmentAnswer

    try:
        answer = EnrollmentAnswer.from_dict(data)
    except EnrollmentError:  # the only error a malformed answer may cause
        return
    # Only a complete answer parses.
    assert set(data) == {
        "device_id",
        "device_class",
        "certificate",
        "ca_certificate",
        "mqtt",
        "topic_prefix",
    }
    assert isinstance(data["mqtt"], dict) and "url" in data["mqtt"]
    assert answer.device_id == str(data["device_id"])
