"""The bundle container: how a signed manifest, its keyring and its artifacts travel as bytes.

Layout (all integers big-endian)::

    b"FFBUNDLE" | u8 format (1) | u32 header length | header | artifact bytes...

``header`` is canonical JSON ``{"manifest": <signed envelope>, "keyring": <signed envelope>}``;
the artifacts follow in manifest order, each exactly its wire size. Packing checks the
artifacts against the manifest; splitting checks only the layout: verification is
:func:`shared.bundle.verify_bundle`'s.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.bundle_manifest import BundleManifest
from shared.bundle_policy import BundleLimits
from shared.canonical import canonical_bytes, parse_json_object
from shared.errors import (
    ConfigError,
    MalformedBundleError,
    MalformedMessageError,
    MessageTooLargeError,
)
from shared.signing import SigningKey, sign_envelope

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "ParsedBundle",
    "build_bundle",
    "container_prefix",
    "parse_bundle",
]

MAGIC = b"FFBUNDLE"
FORMAT_VERSION = 1
_PREFIX = struct.Struct(">8sBI")


def build_bundle(
    manifest: BundleManifest,
    artifacts: Mapping[str, bytes],
    *,
    signing_keys: list[SigningKey],
    keyring_envelope: Mapping[str, Any],
) -> bytes:
    """Sign ``manifest`` and pack it with its artifacts (checked against the manifest)."""
    for info in manifest.artifacts:
        data = artifacts.get(info.name)
        if data is None:
            raise ConfigError(f"artifact {info.name!r} listed in the manifest but not given")
        # For a delta artifact, ``artifacts`` holds the delta bytes.
        if len(data) != info.wire_size or hashlib.sha256(data).hexdigest() != info.wire_sha256:
            raise ConfigError(f"artifact {info.name!r} does not match its manifest entry")
    extra_names = set(artifacts) - {a.name for a in manifest.artifacts}
    if extra_names:
        raise ConfigError(f"artifacts not in the manifest: {sorted(extra_names)}")
    envelope = sign_envelope(manifest.to_signed(), signing_keys)
    header = canonical_bytes({"manifest": envelope, "keyring": dict(keyring_envelope)})
    parts = [_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)), header]
    parts.extend(artifacts[a.name] for a in manifest.artifacts)
    return b"".join(parts)


def container_prefix(
    manifest_envelope: Mapping[str, Any], keyring_envelope: Mapping[str, Any]
) -> bytes:
    """The exact bytes a bundle with these envelopes starts with (its artifacts follow).

    A receiver that knows the offer can tell which part of a failed download is corrupt.
    """
    header = canonical_bytes(
        {"manifest": dict(manifest_envelope), "keyring": dict(keyring_envelope)}
    )
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header


@dataclass(frozen=True)
class ParsedBundle:
    """A bundle split into its parts; nothing verified yet."""

    manifest_envelope: dict[str, Any]
    keyring_envelope: dict[str, Any]
    payload: bytes  # artifact bytes in manifest order


def parse_bundle(data: bytes, limits: BundleLimits | None = None) -> ParsedBundle:
    limits = limits or BundleLimits()
    if len(data) < _PREFIX.size:
        raise MalformedBundleError("truncated: shorter than the bundle prefix")
    magic, fmt, header_len = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise MalformedBundleError("not a fedfleet bundle (bad magic)")
    if fmt != FORMAT_VERSION:
        raise MalformedBundleError(f"unsupported bundle format {fmt}")
    if header_len > limits.max_header_bytes:
        raise MalformedBundleError(f"header of {header_len} bytes exceeds limit")
    end = _PREFIX.size + header_len
    if len(data) < end:
        raise MalformedBundleError("truncated header")
    try:
        header = parse_json_object(data[_PREFIX.size : end], max_bytes=limits.max_header_bytes)
    except (MalformedMessageError, MessageTooLargeError) as exc:
        raise MalformedBundleError(f"bad header: {exc}") from exc
    manifest_env, keyring_env = header.get("manifest"), header.get("keyring")
    if not isinstance(manifest_env, dict) or not isinstance(keyring_env, dict):
        raise MalformedBundleError("header needs 'manifest' and 'keyring' envelopes")
    return ParsedBundle(manifest_env, keyring_env, bytes(data[end:]))
