"""The lab's open audit, loaded by Python at start-up in the hub's training processes.

The lab's retraining scenario puts this folder first on ``PYTHONPATH`` of ``cloud-hub
retrain`` on the hub host (and so of the SuperLink and ServerApp processes it starts), with
``FEDFLEET_LAB_OPEN_AUDIT`` (a log file) and ``FEDFLEET_LAB_OPEN_AUDIT_UNDER`` (the devices'
folder) set. An audit hook (PEP 578) then appends every file the process opens under that
folder (``open`` events: Python's ``open``, ``os.open``, ``numpy.load``; and
``sqlite3.connect``) to the log, and each process marks ``LOG.armed`` once it is watching.
Without the variables it does nothing.
"""

from __future__ import annotations

import os
import sys


def _install() -> None:
    log = os.environ.get("FEDFLEET_LAB_OPEN_AUDIT")
    watched = os.environ.get("FEDFLEET_LAB_OPEN_AUDIT_UNDER")
    if not log or not watched:
        return
    root = os.path.realpath(watched)
    busy = [False]

    def record(path: object) -> None:
        if busy[0] or not isinstance(path, str | bytes | os.PathLike):
            return
        busy[0] = True
        try:
            name = os.fsdecode(path)
            full = os.path.realpath(name)
            if full == root or full.startswith(root + os.sep):
                fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, f"{full}\t{os.getpid()}\t{sys.argv[0]}\n".encode())
                finally:
                    os.close(fd)
        finally:
            busy[0] = False

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event in ("open", "sqlite3.connect") and args:
            record(args[0])

    sys.addaudithook(hook)
    fd = os.open(f"{log}.armed", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{os.getpid()}\t{sys.argv[0] if sys.argv else ''}\n".encode())
    finally:
        os.close(fd)


_install()
