"""Start/stop the hub's Flower SuperLink and submit training runs to it.

Deployment path: the hub runs ``flower-superlink`` (or connects to an existing one), agents
run SuperNodes (:mod:`edge_agent.fl.supernode`), and :meth:`SuperLinkProcess.submit_run`
submits fedfleet's Flower App (``cloud_hub/fl/fab``) with ``flwr run``; the ServerApp
(:mod:`cloud_hub.fl.superlink_app`) writes ``summary.json`` when the run ends.

TLS (the default): give the SuperLink ``ssl_certfile``/``ssl_keyfile``/``ssl_ca_certfile``
(``flower-superlink --ssl-certfile ... --ssl-keyfile ... --ssl-ca-certfile ...``); give each
SuperNode the CA as ``--root-certificates`` (``SuperNodeConfig.root_certificates``) and the
``flwr`` CLI connection ``root-certificates``. The server certificate must name the address
the SuperNodes dial (SAN, e.g. ``IP:10.0.0.5`` or ``DNS:hub.example``). Plain HTTP needs an
explicit ``insecure=True`` (``--insecure``), meant for loopback tests only.

The SuperLink always runs with ``--disable-runtime-dependency-installation``: the FAB's
components are fedfleet's installed modules and nothing is fetched at run time. It is
stopped with SIGINT (it ignores SIGTERM for several seconds). Its state lives in a database
file (``:memory:`` breaks runs in Flower 1.41).
"""

from __future__ import annotations

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

from cloud_hub.errors import HubConfigError, TrainingError
from shared.files import atomic_write
from shared.fl.config_keys import RunConfigKey

__all__ = [
    "FAB_DIR",
    "SuperLinkConfig",
    "SuperLinkProcess",
    "check_run_config",
    "fab_sha256",
    "issue_superlink_tls",
    "wait_for_summary",
]

FAB_DIR = Path(__file__).resolve().parent / "fab"


def _bin(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        raise HubConfigError(f"{name} not found next to {sys.executable} (install fedfleet[hub])")
    return str(path)


def fab_sha256(fab_dir: Path = FAB_DIR) -> str:
    """The sha256 of the FAB ``flwr run fab_dir`` submits (Flower builds it reproducibly).

    Signed training orders name this hash; devices run no other FAB (R4)."""
    import hashlib

    from flwr.cli.build import build_fab_from_disk

    try:
        return hashlib.sha256(build_fab_from_disk(Path(fab_dir))).hexdigest()
    except Exception as exc:  # flwr raises click/typer and OS errors alike
        raise HubConfigError(f"cannot build the Flower App in {fab_dir}: {exc}") from exc


def issue_superlink_tls(ca_dir: Path, host: str, out_dir: Path) -> tuple[Path, Path, Path]:
    """A server certificate for ``host`` signed by the hub CA in ``ca_dir`` (the CA devices
    pinned at enrollment), written to ``out_dir``: ``(certfile, keyfile, ca_certfile)``."""
    from cloud_hub.enrollment.ca import CertificateAuthority
    from shared.files import atomic_write

    ca = CertificateAuthority.load(ca_dir)
    credentials = ca.issue_server([host], days=2)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "superlink.crt", out / "superlink.key", out / "ca.crt")
    atomic_write(paths[0], credentials.cert_pem)
    atomic_write(paths[1], credentials.key_pem, mode=0o600)
    atomic_write(paths[2], ca.cert_pem)
    return paths


@dataclass(frozen=True)
class SuperLinkConfig:
    """The hub's SuperLink."""

    database: Path
    host: str = "127.0.0.1"
    port: int = 9092
    insecure: bool = False
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_ca_certfile: Path | None = None

    def __post_init__(self) -> None:
        if str(self.database) == ":memory:":
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

    def argv(self) -> list[str]:
        argv = [
            _bin("flower-superlink"),
            "--database",
            str(self.database),
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
    """A ``flower-superlink`` child process of the hub."""

    def __init__(self, config: SuperLinkConfig, *, workdir: Path) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self._process: subprocess.Popen[bytes] | None = None
        self._log = self.workdir / "superlink.log"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the SuperLink and wait until its port accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self._log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self._process = subprocess.Popen(
            self.config.argv(),
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

        ``expected_fab_sha256``: the hash the signed training orders name; a FAB that
        ``flwr run`` built differently (the app folder changed) raises ``TrainingError``.
        The training config the run names is checked first: a bad one (e.g. SecAgg+ with
        2 clients) raises ``HubConfigError`` here instead of failing inside Flower."""
        check_run_config(run_config)
        home = self.workdir / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        connection = [f'address = "{self.config.address}"']
        if self.config.insecure:
            connection.append("insecure = true")
        else:
            connection.append(f'root-certificates = "{self.config.ssl_ca_certfile}"')
        text = '[superlink]\ndefault = "fedfleet"\n\n[superlink.fedfleet]\n' + "\n".join(connection)
        atomic_write(home / "config.toml", (text + "\n").encode("utf-8"))  # R15
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        argv = [
            _bin("flwr"),
            "run",
            str(fab_dir),
            "fedfleet",
            "--format",
            "json",
            "--run-config",
            overrides,
        ]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=self._env(),
            cwd=self.workdir,
        )
        try:
            payload = json.loads(done.stdout[done.stdout.index("{") :])
            run_id = int(payload["run-id"])
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            raise TrainingError(
                f"flwr run failed ({done.returncode}): {done.stdout[-800:]} {done.stderr[-800:]}"
            ) from exc
        submitted = str(payload.get("fab-hash", ""))
        if expected_fab_sha256 is not None and not (
            submitted and expected_fab_sha256.startswith(submitted)
        ):
            raise TrainingError(
                f"the SuperLink got FAB {submitted!r}, the orders name {expected_fab_sha256[:12]}"
            )
        return run_id

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
