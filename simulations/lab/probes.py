"""Small programs the lab runs inside a host's namespace to look at the network from there
(the controller's own network stack cannot reach the lab bridge): each function returns the
command line, run with ``ip netns exec``."""

from __future__ import annotations

import sys

__all__ = [
    "connect_probe",
    "https_get_probe",
    "listen_probe",
    "predict_probe",
    "timed_https_get_probe",
]

_LISTEN = """\
import socket, sys, time
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
"""

_CONNECT = """\
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
except OSError:
    sys.exit(1)
"""

# the bearer token comes from the environment (LAB_TOKEN), never the command line
_GET = """\
import os, ssl, sys, time, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
headers = {"Authorization": "Bearer " + os.environ["LAB_TOKEN"]} if "LAB_TOKEN" in os.environ else {}
t = time.monotonic()
body = urllib.request.urlopen(urllib.request.Request(sys.argv[1], headers=headers), timeout=30, context=ctx).read()
print(time.monotonic() - t if sys.argv[3] == "time" else body.decode())
"""

# a device's local prediction API, fed batches of the inputs in an .npy file
_PREDICT = """\
import json, sys, urllib.request
import numpy as np
x = np.load(sys.argv[2])
for start in range(0, len(x), 50):  # the agent takes batches of up to 64
    body = json.dumps({"inputs": x[start:start + 50].tolist()}).encode()
    request = urllib.request.Request(sys.argv[1].rstrip("/") + "/predict", data=body,
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).read()
print(len(x))
"""


def listen_probe(address: str, port: int, timeout_s: float) -> list[str]:
    """Exits 0 once something accepts TCP on ``address:port``, 1 after ``timeout_s``."""
    return [sys.executable, "-c", _LISTEN, address, str(port), str(timeout_s)]


def connect_probe(address: str, port: int) -> list[str]:
    """Exits 0 when a TCP connection to ``address:port`` opens within 2 s, else 1."""
    return [sys.executable, "-c", _CONNECT, address, str(port)]


def https_get_probe(url: str, ca_file: str) -> list[str]:
    """Prints the body of ``GET url``, the server verified by ``ca_file``."""
    return [sys.executable, "-c", _GET, url, ca_file, "body"]


def timed_https_get_probe(url: str, ca_file: str) -> list[str]:
    """Prints the seconds ``GET url`` took: TCP, TLS handshake, request, answer."""
    return [sys.executable, "-c", _GET, url, ca_file, "time"]


def predict_probe(api_url: str, inputs_npy: str) -> list[str]:
    """Posts the inputs of ``inputs_npy`` to ``api_url``'s ``/predict`` in batches of 50;
    prints how many it sent."""
    return [sys.executable, "-c", _PREDICT, api_url, inputs_npy]
