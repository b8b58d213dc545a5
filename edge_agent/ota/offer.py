"""Checks of a deploy offer and of what was downloaded for it (pure: values in, verdicts out).

Trust decisions are ``shared.bundle``'s; this module adds what only the receiving agent can
judge: whether a command's transfer geometry is sane for this device, and — when a
downloaded bundle fails verification — which chunks are corrupt, so exactly those are
fetched again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from edge_agent.config import AgentLimits
from edge_agent.errors import InstallError
from shared.bundle import (
    BundleManifest,
    VerifiedBundle,
    VerifiedOffer,
    VerifyPolicy,
    container_prefix,
    verify_bundle,
    verify_offer,
    verify_rollback_order,
)
from shared.chunks import chunk_count
from shared.errors import ConfigError
from shared.messages import DeployCommand
from shared.topics import TopicScheme

__all__ = ["check_geometry", "corrupt_chunks", "verify_command", "verify_download"]


def check_geometry(cmd: DeployCommand, *, limits: AgentLimits, topics: TopicScheme) -> None:
    """Refuse transfer parameters this device will not accept (``InstallError``)."""
    if not 0 < cmd.total_size <= limits.max_bundle_bytes:
        raise InstallError(f"bundle size {cmd.total_size} outside 1..{limits.max_bundle_bytes}")
    if not 0 < cmd.chunk_size <= limits.max_chunk_bytes:
        raise InstallError(f"chunk size {cmd.chunk_size} outside 1..{limits.max_chunk_bytes}")
    if cmd.chunk_count != chunk_count(cmd.total_size, cmd.chunk_size):
        raise InstallError("chunk count does not match size / chunk size")
    try:
        expected_topic = topics.bundle_chunks(cmd.bundle_id)
    except ConfigError as exc:
        raise InstallError(f"bad bundle id: {exc}") from exc
    if cmd.chunk_topic != expected_topic:  # never subscribe where an offer says
        raise InstallError(f"chunk topic {cmd.chunk_topic!r} is not {expected_topic!r}")


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


def verify_download(
    data: bytes, command: Mapping[str, Any], policy: VerifyPolicy, bundle_id: str
) -> VerifiedBundle:
    """Fully verify downloaded bundle bytes against the offer that announced them."""
    return verify_bundle(
        data, policy, expected_bundle_id=bundle_id, rollback_order=_order(command, policy)
    )


def corrupt_chunks(
    data: bytes, command: Mapping[str, Any], manifest: BundleManifest, chunk_size: int
) -> list[int]:
    """Chunks overlapping the parts of ``data`` that differ from the (verified) offer: the
    container header, which the offer determines exactly, and every artifact whose bytes do
    not match their signed sha256. Empty if the offer's geometry itself is inconsistent."""
    prefix = container_prefix(command["manifest"], command["keyring"])
    if len(data) != len(prefix) + sum(a.wire_size for a in manifest.artifacts):
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
