"""A private Mosquitto on a free loopback port, for demos, benchmarks and fault tests.

It listens on 127.0.0.1 only and allows anonymous clients — never use it beyond loopback.
``restart()`` stops and starts the broker on the same port, which is how tests exercise a
broker restart in the middle of a transfer. Persistence is on by default (in the broker's temp
folder), as it must be in production: without it, persistent sessions and their queued QoS 1
messages vanish on a restart, and reports that agents flush right after reconnecting — before
the hub's ingest has subscribed again — are acknowledged by the broker and dropped.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from cloud_hub.errors import DeliveryError
from shared.net import free_port

__all__ = ["LocalMosquitto", "spawn_listening", "stop_process"]


def spawn_listening(
    argv: list[str], *, port: int, log_path: Path, name: str, timeout: float
) -> subprocess.Popen[bytes]:
    """Start a broker process and wait until it accepts connections on ``port``."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeliveryError(
                f"{name} exited with {proc.returncode}: "
                + log_path.read_text(errors="replace")[-500:]
            )
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2),
        ):
            return proc
        time.sleep(0.05)
    stop_process(proc)
    raise DeliveryError(f"{name} did not listen on port {port} within {timeout}s")


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """Terminate, then kill after 5 s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LocalMosquitto:
    """``with LocalMosquitto() as broker: broker.url``."""

    def __init__(
        self, *, port: int | None = None, extra_conf: str = "", persistence: bool = True
    ) -> None:
        exe = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if exe is None:
            raise DeliveryError("mosquitto is not installed (apt-get install mosquitto)")
        self.exe = exe
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="fedfleet-mosquitto-"))
        self.conf = self._dir / "mosquitto.conf"
        persist = "persistence false\n"
        if persistence:
            # Mosquitto drops root privileges before writing its database: a directory of
            # its own that its user may write to
            db = self._dir / "db"
            db.mkdir()
            self._dir.chmod(0o711)  # it may traverse our folder...
            db.chmod(0o777)  # ...and write in its own
            persist = f"persistence true\npersistence_location {db}/\n"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{persist}"
            f"max_queued_messages 10000\n{extra_conf}\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self._proc = spawn_listening(
            [self.exe, "-c", str(self.conf)],
            port=self.port,
            log_path=self._dir / "mosquitto.log",
            name="mosquitto",
            timeout=timeout,
        )

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> LocalMosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
