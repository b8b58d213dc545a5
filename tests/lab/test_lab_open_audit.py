"""The lab's open audit (``simulations/lab/audit_site``): a Python process started with it
records every file it opens under the watched folder (``open``, ``numpy.load``,
``sqlite3.connect``) and nothing outside it; without the variables it records nothing. The
retraining scenario relies on it to show no hub process opened a device's file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from simulations.lab.retrain_steps import OpenAudit

_OPENS = """
import sqlite3, sys
import numpy as np
watched, outside = sys.argv[1], sys.argv[2]
open(outside + "/hub-file.txt", "w").close()
np.load(watched + "/train.npz")
sqlite3.connect(watched + "/samples.db").close()
"""


def _run(env: dict[str, str], devices: Path, hub: Path) -> None:
    argv = [sys.executable, "-c", _OPENS, str(devices), str(hub)]
    subprocess.run(argv, env={**os.environ, **env}, check=True, timeout=120)


def test_the_audit_records_opens_under_the_devices_folder_only(tmp_path: Path) -> None:
    import numpy as np

    devices, hub = tmp_path / "devices", tmp_path / "hub"
    devices.mkdir()
    hub.mkdir()
    np.savez(devices / "train.npz", x=np.zeros(2))
    audit = OpenAudit(tmp_path / "audit.log")
    _run(audit.env(devices), devices, hub)
    assert audit.armed() == 1
    opened = [line.split("\t")[0] for line in audit.opened()]
    assert opened == [str(devices / "samples.db"), str(devices / "train.npz")]


def test_without_the_variables_nothing_is_recorded(tmp_path: Path) -> None:
    import numpy as np

    devices = tmp_path / "devices"
    devices.mkdir()
    np.savez(devices / "train.npz", x=np.zeros(2))
    audit = OpenAudit(tmp_path / "audit.log")
    env = audit.env(devices)
    _run({"PYTHONPATH": env["PYTHONPATH"]}, devices, tmp_path)
    assert audit.armed() == 0 and audit.opened() == []
