"""``edge-agent install`` / ``uninstall``: the steps, in an order that loses nothing.

Install:

1. preflight — not installed yet, ``systemctl`` present (unless ``--no-systemd``), trust in
   the hub CA established (``--ca-cert`` or ``--ca-fingerprint``), and on a Jetson the GPU
   backend loads. All of this happens *before* the single-use token is spent;
2. create the config and state folders, generate the device key (0600) and a CSR;
3. enroll over HTTPS; check that the returned certificate is for our key and id and signed by
   the CA we trust;
4. write certificate, CA, trust root, ``config.toml``, ``identity.json``, the unit file;
5. ``systemctl daemon-reload`` + ``enable --now`` (skipped with ``--no-systemd``).

A failure in steps 2-5 removes everything this run created. ``install.json`` in the config
directory lists what was created, so ``uninstall`` removes exactly that.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edge_agent.config import load_config
from edge_agent.errors import EnrollmentError, InstallError
from edge_agent.ota.trusted import TrustedStore
from edge_agent.service import hub_client
from edge_agent.service.identity import (
    build_csr,
    check_issued_certificate,
    fingerprint,
    generate_device_key,
)
from edge_agent.service.jetson import (
    GpuProbe,
    JetsonInfo,
    detect_jetson,
    probe_gpu_backend,
    wheels_for,
)
from edge_agent.service.layout import SERVICE_NAME, InstallLayout
from edge_agent.service.render import AgentConfigValues, render_agent_config, render_unit
from shared.errors import FedfleetError
from shared.files import atomic_write
from shared.signing import TrustRoot, verify_keyring

__all__ = ["InstallOptions", "InstallReport", "Systemctl", "install", "uninstall"]

log = logging.getLogger(__name__)
MANIFEST = "install.json"

Systemctl = Callable[[Sequence[str]], None]
"""Runs ``systemctl ARGS``; raises ``InstallError`` on failure (a function: easy to swap)."""


def run_systemctl(args: Sequence[str]) -> None:
    try:
        subprocess.run(["systemctl", *args], check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise InstallError("systemctl not found; use --no-systemd") from exc
    except subprocess.CalledProcessError as exc:
        raise InstallError(f"systemctl {' '.join(args)} failed: {exc.stderr.strip()}") from exc


@dataclass(frozen=True, kw_only=True)
class InstallOptions:
    hub_url: str
    token: str
    layout: InstallLayout = field(default_factory=InstallLayout)
    device_class: str | None = None
    device_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ca_cert: Path | None = None
    ca_fingerprint: str | None = None
    trust_root: Path | None = None  # overrides / supplies the trust root the hub returns
    systemd: bool = True
    require_gpu: bool = True  # on a Jetson: fail unless a GPU backend loads
    timeout_s: float = 30.0
    exec_start: Sequence[str] | None = None  # default: this Python running `edge-agent run`
    jetson_release_file: Path = Path("/etc/nv_tegra_release")

    def __post_init__(self) -> None:
        if not self.token.strip():
            raise InstallError("--token is empty")
        if (self.ca_cert is None) == (self.ca_fingerprint is None):
            raise InstallError(
                "give exactly one of --ca-cert FILE or --ca-fingerprint sha256:... "
                "(printed by `cloud-hub enroll-token`)"
            )


@dataclass(frozen=True)
class InstallReport:
    device_id: str
    device_class: str
    layout: InstallLayout
    jetson: JetsonInfo | None
    gpu: GpuProbe | None
    systemd_enabled: bool
    messages: tuple[str, ...]


class _Created:
    """What this run created, in creation order (for rollback and the manifest)."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def mkdir(self, path: Path, mode: int = 0o755) -> None:
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir(mode=mode)
            self.paths.append(d)

    def write(self, path: Path, data: bytes, mode: int = 0o644) -> None:
        atomic_write(path, data, mode=mode)
        self.paths.append(path)


def _remove(paths: Sequence[Path]) -> list[str]:
    """Remove what install created, deepest first; a created folder goes with whatever the
    agent wrote into it at run time."""
    removed = []
    for p in sorted(paths, key=lambda x: len(x.parts), reverse=True):
        if p.is_symlink() or p.is_file():
            p.unlink()
            removed.append(str(p))
        elif p.is_dir():
            shutil.rmtree(p)
            removed.append(str(p))
    return removed


def _preflight(
    opts: InstallOptions, messages: list[str]
) -> tuple[JetsonInfo | None, GpuProbe | None]:
    layout = opts.layout
    if layout.config_path.exists() or layout.identity_path.exists():
        raise InstallError(
            f"an agent is already installed in {layout.config_dir}; run `edge-agent uninstall` first"
        )
    if opts.systemd and shutil.which("systemctl") is None:
        raise InstallError("systemctl not found; pass --no-systemd to install without a unit")
    jetson = detect_jetson(opts.jetson_release_file)
    gpu: GpuProbe | None = None
    if jetson is None:
        messages.append(
            "not a Jetson (no jetson-stats, no /etc/nv_tegra_release): JetPack check skipped"
        )
        return None, None
    messages.append(
        f"Jetson: L4T {jetson.l4t}, JetPack {jetson.jetpack or 'unknown'} ({jetson.source})"
    )
    advice = wheels_for(jetson)
    lines: list[str] = []
    if advice is not None:
        lines += [
            f"  python {advice.python}, CUDA {advice.cuda}",
            f"  onnxruntime-gpu: {advice.onnxruntime_gpu}",
            f"  torch: {advice.torch}",
        ]
        if advice.index_url:
            lines.append(f"  index: {advice.index_url}")
        lines.append(f"  {advice.notes}")
    else:
        lines.append("  no wheel table for this JetPack (JetPack 5 and 6 are covered)")
    messages += lines
    gpu = probe_gpu_backend()
    if gpu.ok:
        messages.append(f"GPU backend loads: {gpu.backend} ({gpu.detail})")
    elif opts.require_gpu:
        raise InstallError(
            f"no GPU inference backend loads on this Jetson: {gpu.detail}.\n"
            "Matching builds:\n" + "\n".join(lines) + "\n"
            "Install them, or pass --allow-cpu to install anyway (inference runs on the CPU)."
        )
    else:
        messages.append(f"WARNING: no GPU backend loads ({gpu.detail}); running on the CPU")
    return jetson, gpu


def _ca_pem(opts: InstallOptions, hub: hub_client.HubEndpoint) -> bytes:
    if opts.ca_cert is not None:
        try:
            return opts.ca_cert.read_bytes()
        except OSError as exc:
            raise InstallError(f"cannot read --ca-cert {opts.ca_cert}: {exc}") from exc
    assert opts.ca_fingerprint is not None
    return hub_client.fetch_pinned_ca(hub, opts.ca_fingerprint)


def install(opts: InstallOptions, *, systemctl: Systemctl = run_systemctl) -> InstallReport:
    """Install, enroll and (optionally) start the agent; see the module docstring."""
    messages: list[str] = []
    jetson, gpu = _preflight(opts, messages)
    hub = hub_client.HubEndpoint(opts.hub_url, timeout_s=opts.timeout_s)
    ca_pem = _ca_pem(opts, hub)  # before any file exists: a wrong pin leaves nothing behind
    layout = opts.layout
    created = _Created()
    enrolled: str | None = None
    try:
        created.mkdir(layout.config_dir)
        os.chmod(layout.config_dir, 0o750)
        created.mkdir(layout.state_dir)
        for sub in layout.state_subdirs:
            created.mkdir(sub)
        key_pem = generate_device_key()
        created.write(layout.key_path, key_pem, 0o600)
        csr = build_csr(key_pem, opts.device_id or "pending")
        answer = hub_client.enroll(
            hub,
            ca_pem=ca_pem,
            token=opts.token.strip(),
            csr_pem=csr,
            device_class=opts.device_class,
            device_id=opts.device_id,
            labels=opts.labels,
        )
        enrolled = answer.device_id
        if answer.ca_certificate_pem.strip() != ca_pem.strip():
            raise EnrollmentError("the hub answered with a CA other than the one we trust")
        cert = check_issued_certificate(
            answer.certificate_pem, ca_pem, key_pem=key_pem, device_id=answer.device_id
        )
        created.write(layout.cert_path, answer.certificate_pem)
        created.write(layout.ca_path, ca_pem)
        trust = _trust_root(opts, answer, messages)
        if trust is not None:
            created.write(layout.trust_root_path, trust)
            _pin_keyring(layout, answer, trust, messages)
        _init_stores(layout, created)
        values = AgentConfigValues(
            device_id=answer.device_id,
            device_class=answer.device_class,
            state_dir=layout.state_dir,
            trust_root=layout.trust_root_path,
            mqtt_url=answer.mqtt_url,
            topic_prefix=answer.topic_prefix,
            client_id=answer.mqtt_client_id,
            ca=layout.ca_path,
            cert=layout.cert_path,
            key=layout.key_path,
            labels=answer.labels,
        )
        created.write(layout.config_path, render_agent_config(values).encode("utf-8"), 0o640)
        written = load_config(layout.config_path)  # what we wrote is what the agent reads
        if written.mqtt.tls is None:
            messages.append(
                f"the hub named a plain-TCP broker ({written.mqtt.endpoint.url}): no TLS; the "
                "device certificate is kept for an mqtts:// broker later"
            )
        identity = {
            "device_id": answer.device_id,
            "device_class": answer.device_class,
            "hub": opts.hub_url,
            "ca_fingerprint": fingerprint(ca_pem),
            "cert_fingerprint": cert.fingerprint,
            "cert_not_after": cert.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "enrolled_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "jetson": None if jetson is None else {"l4t": jetson.l4t, "jetpack": jetson.jetpack},
            "gpu_backend": None if gpu is None else gpu.backend,
        }
        created.write(layout.identity_path, (json.dumps(identity, indent=2) + "\n").encode())
        created.mkdir(layout.unit_dir)
        exec_start = list(opts.exec_start or [sys.executable, "-m", "edge_agent.cli", "run"])
        unit = render_unit(
            exec_start=[*exec_start, "--config", str(layout.config_path)],
            state_dir=layout.state_dir,
            config_dir=layout.config_dir,
        )
        created.write(layout.unit_path, unit.encode("utf-8"))
        manifest = {"created": [str(p) for p in created.paths], "systemd": opts.systemd}
        manifest_path = layout.config_dir / MANIFEST
        created.write(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())
        if opts.systemd:
            systemctl(["daemon-reload"])
            systemctl(["enable", "--now", str(layout.unit_path)])
            messages.append(f"systemd unit {SERVICE_NAME}.service enabled and started")
        else:
            messages.append(f"unit written to {layout.unit_path} (not enabled: --no-systemd)")
    except BaseException as exc:
        _remove(created.paths)
        if enrolled is not None:  # the token is spent: say how to retry
            raise InstallError(
                f"install failed after enrolling as {enrolled} ({exc}); everything written was "
                f"removed. Retry with a token bound to the id: "
                f"`cloud-hub enroll-token --device-id {enrolled} ...`"
            ) from exc
        if isinstance(exc, OSError):
            raise InstallError(f"install failed: {exc}") from exc
        raise
    messages.append(f"enrolled as {answer.device_id} (class {answer.device_class})")
    return InstallReport(
        device_id=answer.device_id,
        device_class=answer.device_class,
        layout=layout,
        jetson=jetson,
        gpu=gpu,
        systemd_enabled=opts.systemd,
        messages=tuple(messages),
    )


def _trust_root(
    opts: InstallOptions, answer: hub_client.EnrollmentAnswer, messages: list[str]
) -> bytes | None:
    if opts.trust_root is not None:
        try:
            data = json.loads(opts.trust_root.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise InstallError(f"cannot read --trust-root {opts.trust_root}: {exc}") from exc
        if answer.trust_root is not None and answer.trust_root != data:
            raise EnrollmentError("the hub's trust root differs from --trust-root")
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    if answer.trust_root is None:
        messages.append(
            "WARNING: the hub has no signing key store yet (`cloud-hub keys init`); "
            "copy its trust_root.json to the config directory before deploying models"
        )
        return None
    return (json.dumps(answer.trust_root, indent=2, sort_keys=True) + "\n").encode()


def _pin_keyring(
    layout: InstallLayout,
    answer: hub_client.EnrollmentAnswer,
    trust_json: bytes,
    messages: list[str],
) -> None:
    """R10: start at the fleet's keyring floor (the keyring the hub sent, verified against the
    trust root), so a broker cannot feed a new device an older keyring."""
    if answer.keyring is None:
        messages.append("WARNING: the hub sent no keyring; the device learns it from the broker")
        return
    try:
        root = TrustRoot.from_dict(json.loads(trust_json))
        keyring = verify_keyring(answer.keyring, root, now=datetime.now(timezone.utc))
    except (ValueError, FedfleetError) as exc:
        raise EnrollmentError(f"the hub's keyring does not verify: {exc}") from exc
    TrustedStore(layout.state_dir).accept_keyring(keyring, answer.keyring)


def _init_stores(layout: InstallLayout, created: _Created) -> None:
    """Create the outbox and the sample store with their owners' code (schema, WAL mode)."""
    from edge_agent.samples.store import SampleStore, SampleStoreConfig
    from edge_agent.transport.outbox import Outbox

    Outbox(layout.outbox_path).close()
    SampleStore(SampleStoreConfig(path=layout.sample_store_path)).close()
    for db in (layout.outbox_path, layout.sample_store_path):
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(db) + suffix)
            if p.exists():
                created.paths.append(p)


def uninstall(
    layout: InstallLayout,
    *,
    systemd: bool = True,
    keep_state: bool = False,
    systemctl: Systemctl = run_systemctl,
) -> list[str]:
    """Stop and remove the agent; returns the removed paths. ``keep_state`` keeps models and
    samples (the state directory) for a later re-install."""
    manifest_path = layout.config_dir / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text("utf-8"))
        created = [Path(p) for p in manifest["created"]]
    except FileNotFoundError as exc:
        raise InstallError(
            f"no agent installed in {layout.config_dir} ({MANIFEST} missing)"
        ) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InstallError(f"{manifest_path} is unreadable: {exc}") from exc
    if systemd and manifest.get("systemd", True) and layout.unit_path.exists():
        try:
            systemctl(["disable", "--now", f"{SERVICE_NAME}.service"])
        except InstallError as exc:
            log.warning("%s (continuing)", exc)
    if keep_state:
        state = layout.state_dir
        created = [p for p in created if p != state and state not in p.parents]
        created = [p for p in created if p not in state.parents]
    # Folders go with whatever the agent wrote into them at run time.
    removed = _remove([p for p in created if p.exists()])
    if systemd and manifest.get("systemd", True):
        try:
            systemctl(["daemon-reload"])
        except InstallError as exc:
            log.warning("%s (continuing)", exc)
    return removed
