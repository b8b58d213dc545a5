"""Start/stop the hub's Flower SuperLink and submit training runs to it.

Deployment path: the hub runs ``flower-superlink`` (or connects to an existing one), agents
run SuperNodes (:mod:`edge_agent.fl.supernode`), and :meth:`SuperLinkProcess.submit_run`
submits fedfleet's Flower App (``cloud_hub/fl/fab``) through the SuperLink's Control API,
from the hub's process (what ``flwr run`` does, without a CLI process that imports Flower
anew); the ServerApp (:mod:`cloud_hub.fl.superlink_app`) writes ``summary.json`` when the
run ends.

TLS (the default): give the SuperLink ``ssl_certfile``/``ssl_keyfile``/``ssl_ca_certfile``
(``flower-superlink --ssl-certfile ... --ssl-keyfile ... --ssl-ca-certfile ...``); give each
SuperNode the CA as ``--root-certificates`` (``SuperNodeConfig.root_certificates``); the
Control API client verifies the SuperLink with the same CA. The server certificate must name
the address the SuperNodes dial (SAN, e.g. ``IP:10.0.0.5`` or ``DNS:hub.example``). Plain HTTP
needs an explicit ``insecure=True`` (``--insecure``), meant for loopback tests only.

The SuperLink always runs with ``--disable-runtime-dependency-installation``: the FAB's
components are fedfleet's installed modules and nothing is fetched at run time. Each run's
ServerApp runs in a thread of the SuperLink process on its own LinkState
(``SuperLinkProcess(serverapp="inprocess")``, the default:
:mod:`cloud_hub.fl.inprocess_serverapp`), or (``"forked"``, also
``FEDFLEET_SUPERLINK_SERVERAPP=forked``) in a process forked from the warm SuperExec
:mod:`cloud_hub.fl.warm_serverapp`, which asks for runs 0.05-0.5 s apart and talks to the
SuperLink's runtime API over HTTP. It is stopped with SIGINT (it
ignores SIGTERM for several seconds). Its state lives in Flower's in-memory state unless a
database file is named (sqlite's ``:memory:`` breaks runs in Flower 1.41).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_hub.config import SERVERAPP_MODES
from cloud_hub.errors import HubConfigError, TrainingError
from shared.files import atomic_write
from shared.fl.config_keys import RunConfigKey

__all__ = [
    "DEFAULT_SERVERAPP",
    "FAB_DIR",
    "SERVERAPP_ENV",
    "SuperLinkConfig",
    "SuperLinkProcess",
    "build_fab",
    "check_run_config",
    "fab_sha256",
    "issue_superlink_tls",
    "serverapp_mode",
    "wait_for_summary",
]

FAB_DIR = Path(__file__).resolve().parent / "fab"
_IN_MEMORY_STATE = ":flwr-in-memory:"  # Flower's own in-memory state (not sqlite's :memory:)


def _bin(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        raise HubConfigError(f"{name} not found next to {sys.executable} (install fedfleet[hub])")
    return str(path)


def build_fab(fab_dir: Path = FAB_DIR) -> bytes:
    """The FAB of the Flower App in ``fab_dir``, as ``flwr run`` builds it (reproducibly)."""
    from flwr.cli.build import build_fab_from_disk

    try:
        fab: bytes = build_fab_from_disk(Path(fab_dir))
    except Exception as exc:  # flwr raises click/typer and OS errors alike
        raise HubConfigError(f"cannot build the Flower App in {fab_dir}: {exc}") from exc
    return fab


def fab_sha256(fab_dir: Path = FAB_DIR) -> str:
    """The sha256 of the FAB :meth:`SuperLinkProcess.submit_run` submits for ``fab_dir``.

    Signed training orders name this hash; devices run no other FAB (R4)."""
    return hashlib.sha256(build_fab(fab_dir)).hexdigest()


def issue_superlink_tls(ca_dir: Path, host: str, out_dir: Path) -> tuple[Path, Path, Path]:
    """A server certificate for ``host`` signed by the hub CA in ``ca_dir`` (the CA devices
    pinned at enrollment), written to ``out_dir``: ``(certfile, keyfile, ca_certfile)``."""
    from cloud_hub.enrollment.ca import CertificateAuthority

    ca = CertificateAuthority.load(ca_dir)
    credentials = ca.issue_server([host], days=2)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "superlink.crt", out / "superlink.key", out / "ca.crt")
    atomic_write(paths[0], credentials.cert_pem)
    atomic_write(paths[1], credentials.key_pem, mode=0o600)
    atomic_write(paths[2], ca.cert_pem)
    return paths


DEFAULT_SERVERAPP = SERVERAPP_MODES[0]
#: The environment variable that picks the mode where the code starting the SuperLink names
#: none (``SuperLinkProcess(serverapp=None)``), e.g. ``FEDFLEET_SUPERLINK_SERVERAPP=forked``.
SERVERAPP_ENV = "FEDFLEET_SUPERLINK_SERVERAPP"


def serverapp_mode(named: str | None = None) -> str:
    """The ServerApp mode ``named``, else :data:`SERVERAPP_ENV`'s, else the default;
    ``HubConfigError`` for one that is not in :data:`SERVERAPP_MODES`."""
    mode = named or os.environ.get(SERVERAPP_ENV) or DEFAULT_SERVERAPP
    if mode not in SERVERAPP_MODES:
        raise HubConfigError(
            f"the SuperLink's ServerApp mode must be one of {', '.join(SERVERAPP_MODES)}, "
            f"not {mode!r}"
        )
    return mode


@dataclass(frozen=True)
class SuperLinkConfig:
    """The hub's SuperLink. ``database``: a file for its state, or ``None`` (the default)
    for Flower's in-memory state: a SuperLink serves one run and dies with it, and each of
    its SuperNodes' pulls then costs half the CPU (measured: 0.07 instead of 0.15 CPU
    seconds per second for three idle SuperNodes)."""

    database: Path | None = None
    host: str = "127.0.0.1"
    port: int = 9092
    insecure: bool = False
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_ca_certfile: Path | None = None

    def __post_init__(self) -> None:
        if self.database is not None and str(self.database) == ":memory:":
            raise HubConfigError("the SuperLink database must be a file (':memory:' breaks runs)")
        if not 0 < self.port < 65536:
            raise HubConfigError("port must be a TCP port")
        tls = (self.ssl_certfile, self.ssl_keyfile, self.ssl_ca_certfile)
        if self.insecure and any(tls):
            raise HubConfigError("insecure=True cannot be combined with TLS files")
        if not self.insecure and not all(tls):
            raise HubConfigError(
                "TLS needs ssl_certfile, ssl_keyfile and ssl_ca_certfile; set insecure=True "
                "explicitly for plain text"
            )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def argv(self, serverapp: str = DEFAULT_SERVERAPP) -> list[str]:
        """The SuperLink's command line; ``serverapp``: where it runs each run's ServerApp
        (:data:`SERVERAPP_MODES`)."""
        _bin("flower-superlink")  # the same installation check
        if serverapp_mode(serverapp) == "inprocess":
            entry = ["cloud_hub.fl.inprocess_serverapp"]
        else:
            entry = ["shared.warm_superexec", "superlink", "cloud_hub.fl.warm_serverapp"]
        argv = [
            sys.executable,
            "-m",
            *entry,
            "--database",
            _IN_MEMORY_STATE if self.database is None else str(self.database),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        if self.insecure:
            argv.append("--insecure")
        else:
            argv += [
                "--ssl-certfile", str(self.ssl_certfile),
                "--ssl-keyfile", str(self.ssl_keyfile),
                "--ssl-ca-certfile", str(self.ssl_ca_certfile),
            ]  # fmt: skip
        return argv


class SuperLinkProcess:
    """A ``flower-superlink`` child process of the hub; ``serverapp``: where it runs each
    run's ServerApp (:func:`serverapp_mode`: named, else the environment's, else in process)."""

    def __init__(
        self, config: SuperLinkConfig, *, workdir: Path, serverapp: str | None = None
    ) -> None:
        self.config = config
        self.serverapp = serverapp_mode(serverapp)
        self.workdir = Path(workdir)
        self._process: subprocess.Popen[bytes] | None = None
        self._log = self.workdir / "superlink.log"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the SuperLink and wait until its port accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self._log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self._process = subprocess.Popen(
            self.config.argv(self.serverapp),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=self._env(),
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise TrainingError(f"flower-superlink exited early: {self.log_tail()}")
            try:
                with socket.create_connection((self.config.host, self.config.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TrainingError(f"flower-superlink did not listen on {self.config.address}")

    def _env(self) -> dict[str, str]:
        # FLWR_HOME keeps the flwr CLI's connection file (and app cache) inside workdir; the
        # SuperLink spawns ``flower-superexec`` by name, so our interpreter's bin goes first.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        return {
            **os.environ,
            "PATH": path,
            "FLWR_HOME": str(self.workdir / "flwr-home"),
            "PYTHONUNBUFFERED": "1",
        }

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        return self._log.read_text(errors="replace")[-chars:] if self._log.exists() else ""

    def submit_run(
        self,
        run_config: dict[str, Any],
        *,
        fab_dir: Path = FAB_DIR,
        timeout_s: float = 60.0,
        expected_fab_sha256: str | None = None,
    ) -> int:
        """Submit fedfleet's Flower App with ``run_config``; returns Flower's run id.

        ``expected_fab_sha256``: the hash the signed training orders name; a FAB built
        differently (the app folder changed) raises ``TrainingError`` before it is sent.
        The training config the run names is checked first: a bad one (e.g. SecAgg+ with
        2 clients) raises ``HubConfigError`` here instead of failing inside Flower."""
        check_run_config(run_config)
        fab = build_fab(fab_dir)
        submitted = hashlib.sha256(fab).hexdigest()
        if expected_fab_sha256 is not None and submitted != expected_fab_sha256:
            raise TrainingError(
                f"the FAB in {fab_dir} is {submitted[:12]}, the orders name "
                f"{expected_fab_sha256[:12]}"
            )
        return self._start_run(fab, submitted, run_config, timeout_s)

    def _start_run(
        self, fab: bytes, fab_hash: str, run_config: dict[str, Any], timeout_s: float
    ) -> int:
        """``StartRun`` on the SuperLink's Control API (TLS with the hub CA unless insecure)."""
        from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
        from flwr.common.config import parse_config_args
        from flwr.common.serde import fab_to_proto, user_config_to_proto
        from flwr.proto.control_pb2 import StartRunRequest
        from flwr.supercore.control import ControlHttpClient
        from flwr.supercore.fab import Fab
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        request = StartRunRequest(
            fab=fab_to_proto(Fab(fab_hash, fab, {})),
            override_config=user_config_to_proto(parse_config_args([overrides])),
        )
        scheme = "http" if self.config.insecure else "https"
        try:
            client = ControlHttpClient(
                f"{scheme}://{self.config.address}",
                interceptors=[
                    CliClientHttpInterceptor(),
                    RuntimeVersionHttpInterceptor(component_name="flwr CLI"),
                ],
                verify=True if self.config.insecure else str(self.config.ssl_ca_certfile),
                timeout=timeout_s,
            )
            try:
                response = client.StartRun(request)
            finally:
                client.close()
        except Exception as exc:  # httpx, protobuf and Flower's own errors alike
            raise TrainingError(f"the SuperLink refused the run: {exc}") from exc
        if not response.HasField("run_id"):
            raise TrainingError(f"the SuperLink started no run: {response}")
        return int(response.run_id)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGINT, then SIGKILL after ``timeout_s``."""
        process = self._process
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def __enter__(self) -> SuperLinkProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check_run_config(run_config: dict[str, Any]) -> None:
    """Raise ``HubConfigError`` if the training config a run names would fail in Flower."""
    if RunConfigKey.CONFIG_PATH not in run_config:
        return  # not a fedfleet training run (e.g. a refusal test's minimal config)
    from cloud_hub.fl.superlink_app import DeploymentRunSettings

    DeploymentRunSettings.from_run_config(run_config).training_config()


def wait_for_summary(
    results_dir: Path,
    timeout_s: float,
    *,
    poll_s: float = 0.5,
    link: SuperLinkProcess | None = None,
) -> dict[str, Any]:
    """Wait for the deployment ServerApp's ``summary.json``; raise on failure or timeout.

    The ServerApp writes a failed summary for any error it meets, so a failed run raises
    as soon as it ends; with ``link``, a SuperLink that exited raises at once too."""
    path = Path(results_dir) / "summary.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if link is not None and not link.is_running() and not path.exists():
            raise TrainingError(f"the SuperLink exited during the run: {link.log_tail(800)}")
        if path.exists():
            summary: dict[str, Any] = json.loads(path.read_text())
            if summary.get("status") != "ok":
                raise TrainingError(f"deployment run failed: {summary.get('error')}")
            return summary
        time.sleep(poll_s)
    raise TrainingError(f"no result in {results_dir} after {timeout_s:.0f} s")
