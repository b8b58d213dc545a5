"""Checks of a deploy offer and of what was downloaded for it (pure: values in, verdicts out).

Trust decisions are ``shared.bundle``'s; this module adds what only the receiving agent can
judge: whether the unsigned parts of a command (ids, transfer geometry) are sane for this
device and consistent with the signed manifest, and — when a downloaded bundle fails
verification — which chunks are corrupt, so exactly those are fetched again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.config import AgentLimits
from edge_agent.errors import InstallError
from shared.bundle import (
    BundleManifest,
    VerifiedOffer,
    VerifyPolicy,
    container_prefix,
    parse_bundle,
    verify_artifacts,
    verify_offer,
    verify_rollback_order,
)
from shared.chunks import chunk_count
from shared.errors import ConfigError, MixAndMatchError
from shared.messages import DeployCommand, RollbackCommand
from shared.topics import TopicScheme

__all__ = [
    "MAX_ID_CHARS",
    "GeometryError",
    "OfferFieldError",
    "VerifiedDownload",
    "check_geometry",
    "check_offer_ids",
    "corrupt_chunks",
    "expected_bundle_size",
    "verify_command",
    "verify_download",
]

MAX_ID_CHARS = 128
_ID_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_ID_CHARS}}}")


class OfferFieldError(InstallError):
    """An unsigned field of an offer is malformed or too long."""


class GeometryError(InstallError):
    """An offer's transfer geometry does not fit its signed manifest or this device."""


def check_offer_ids(cmd: DeployCommand | RollbackCommand) -> None:
    """Refuse unsigned ids that are not short topic-safe names (``OfferFieldError``): they are
    persisted and echoed in every report, so a 100,000-character id must go no further."""
    names = ("deployment_id", "command_id")
    for name in (*names, "bundle_id") if isinstance(cmd, DeployCommand) else names:
        value = getattr(cmd, name)
        if not isinstance(value, str) or not _ID_RE.fullmatch(value):
            size = len(value) if isinstance(value, str) else 0
            raise OfferFieldError(
                f"{name} must be 1-{MAX_ID_CHARS} of [A-Za-z0-9._-] (got {size} characters)"
            )


def expected_bundle_size(cmd: Mapping[str, Any], manifest: BundleManifest) -> int:
    """The size in bytes of the bundle the signed manifest describes: its container header
    (determined by the two envelopes) followed by every artifact as it travels."""
    prefix = container_prefix(cmd["manifest"], cmd["keyring"])
    return len(prefix) + sum(a.wire_size for a in manifest.artifacts)


def check_geometry(
    cmd: DeployCommand, manifest: BundleManifest, *, limits: AgentLimits, topics: TopicScheme
) -> None:
    """Refuse transfer parameters this device will not accept (``GeometryError``).

    Runs after the offer's signature checked out and before anything is allocated: the
    unsigned ``total_size`` must be the signed manifest's, and ``chunk_size`` may not split it
    into more chunks than ``limits.max_chunk_count``.
    """
    # R7: geometry must match the signed manifest before we allocate
    expected = expected_bundle_size(cmd.to_dict(), manifest)
    if cmd.total_size != expected:
        raise GeometryError(
            f"total_size {cmd.total_size} is not the signed manifest's {expected} bytes"
        )
    if not 0 < expected <= limits.max_bundle_bytes:
        raise GeometryError(f"bundle size {expected} outside 1..{limits.max_bundle_bytes}")
    if not 0 < cmd.chunk_size <= limits.max_chunk_bytes:
        raise GeometryError(f"chunk size {cmd.chunk_size} outside 1..{limits.max_chunk_bytes}")
    count = chunk_count(expected, cmd.chunk_size)
    if count > limits.max_chunk_count:  # R7: bound the received map and the request lists
        raise GeometryError(
            f"chunk size {cmd.chunk_size} makes {count} chunks (limit {limits.max_chunk_count})"
        )
    if cmd.chunk_count != count:
        raise GeometryError("chunk count does not match size / chunk size")
    try:
        expected_topic = topics.bundle_chunks(cmd.bundle_id)
    except ConfigError as exc:
        raise GeometryError(f"bad bundle id: {exc}") from exc
    if cmd.chunk_topic != expected_topic:  # never subscribe where an offer says
        raise GeometryError(f"chunk topic {cmd.chunk_topic[:200]!r} is not {expected_topic!r}")


def _order(command: Mapping[str, Any], policy: VerifyPolicy) -> Any:
    raw = command.get("rollback_order")
    if raw is None:
        return None
    return verify_rollback_order(raw, command.get("keyring"), policy)


def verify_command(command: Mapping[str, Any], policy: VerifyPolicy) -> VerifiedOffer:
    """``verify_offer`` for a deploy command (as ``to_dict``), with its rollback order."""
    return verify_offer(
        command.get("manifest"),
        command.get("keyring"),
        policy,
        rollback_order=_order(command, policy),
    )


@dataclass(frozen=True)
class VerifiedDownload:
    """A downloaded bundle that passed every check; its artifacts are views into the
    download's bytes (no copy), valid while the caller holds them."""

    offer: VerifiedOffer
    artifacts: dict[str, memoryview]

    @property
    def manifest(self) -> BundleManifest:
        return self.offer.manifest


_CONTAINER_PREFIX_BYTES = 13  # b"FFBUNDLE" | u8 format | u32 header length


def verify_download(
    data: bytes | memoryview, command: Mapping[str, Any], policy: VerifyPolicy, bundle_id: str
) -> VerifiedDownload:
    """Fully verify downloaded bundle bytes against the offer that announced them: the
    checks of ``shared.bundle.verify_bundle`` (container layout, keyring and manifest
    signatures, target, version, the offered bundle id, payload size, every artifact's
    sha256) without copying the artifacts — a 20 MB bundle is hashed where it lies (the
    download file's pages) instead of being copied three times into fresh memory first."""
    view = memoryview(data).cast("B")
    # the header is parsed by the container's own parser, from a bounded leading slice
    head = view[: _CONTAINER_PREFIX_BYTES + policy.limits.max_header_bytes].tobytes()
    parsed = parse_bundle(head, policy.limits)
    payload = view[len(head) - len(parsed.payload) :]
    offer = verify_offer(
        parsed.manifest_envelope,
        parsed.keyring_envelope,
        policy,
        rollback_order=_order(command, policy),
    )
    if offer.bundle_id != bundle_id:
        raise MixAndMatchError("bundle does not carry the manifest it was offered with")
    return VerifiedDownload(offer=offer, artifacts=verify_artifacts(offer.manifest, payload))


def corrupt_chunks(
    data: bytes | memoryview, command: Mapping[str, Any], manifest: BundleManifest, chunk_size: int
) -> list[int]:
    """Chunks overlapping the parts of ``data`` that differ from the (verified) offer: the
    container header, which the offer determines exactly, and every artifact whose bytes do
    not match their signed sha256. Empty if the offer's geometry itself is inconsistent."""
    prefix = container_prefix(command["manifest"], command["keyring"])
    if len(data) != expected_bundle_size(command, manifest):
        return []
    ranges = []
    if data[: len(prefix)] != prefix:
        ranges.append((0, len(prefix)))
    offset = len(prefix)
    for a in manifest.artifacts:  # as they travel: a delta's bytes for a delta artifact
        if hashlib.sha256(data[offset : offset + a.wire_size]).hexdigest() != a.wire_sha256:
            ranges.append((offset, offset + a.wire_size))
        offset += a.wire_size
    bad: set[int] = set()
    for start, end in ranges:
        bad.update(range(start // chunk_size, max(start, end - 1) // chunk_size + 1))
    return sorted(bad)
