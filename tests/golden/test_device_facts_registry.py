"""The registry stores what a device's hello says it is (migration 0003), and a device that
sends no facts (an older agent) is stored without them."""

from __future__ import annotations

import time
from pathlib import Path

from cloud_hub.registry import devices, open_registry
from shared.device_facts import DeviceFacts
from shared.messages import Hello

EPYC = DeviceFacts(arch="x86_64", cpu_model="AMD EPYC 7763 64-Core Processor", isa_flags=["avx2"])
ORIN = DeviceFacts(
    arch="aarch64",
    cpu_model="ARMv8 Processor rev 1 (v8l)",
    isa_flags=["dotprod", "neon"],
    gpu_model="Orin",
    compute_capability="8.7",
    tensorrt_version="10.3.0",
)


def test_hello_facts_and_the_target_they_imply_are_stored(tmp_path: Path) -> None:
    reg = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        now = time.time()
        with reg.session() as s:
            devices.record_hellos(
                s,
                [
                    Hello("epyc", "x86-cpu", "0.1", [], 1, 1, facts=EPYC, ts=now),
                    Hello("orin", "jetson-orin", "0.1", [], 1, 1, facts=ORIN, ts=now),
                    Hello("old", "x86-cpu", "0.1", [], 1, 1, ts=now),
                ],
                now=now,
            )
        with reg.session() as s:
            epyc, orin, old = (devices.get_device(s, d) for d in ("epyc", "orin", "old"))
        assert epyc.facts == EPYC.to_dict() and epyc.target == "x86-avx2"
        assert orin.facts is not None and orin.facts["compute_capability"] == "8.7"
        assert orin.target == "tensorrt"
        assert old.facts is None and old.target is None
    finally:
        reg.close()
