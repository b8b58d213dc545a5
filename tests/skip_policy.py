"""Which skips a test run may contain: only those that depend on hardware (or kernel
features) this machine lacks.

A skip for any other reason (a service that is down, a package that is missing, a test that
depends on another one) hides a claim that was never checked, so the run fails and lists
it. Hardware skips use one of the reason prefixes below; the run prints them at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALLOWED_SKIP_PREFIXES", "SkipVerdict", "judge_skips"]

# A skip's reason must start with one of these to be accepted.
ALLOWED_SKIP_PREFIXES: tuple[str, ...] = (
    "no GPU:",  # CUDA / TensorRT paths on a machine without an NVIDIA GPU
    "not a Jetson:",  # jtop / JetPack paths off a Jetson
    "hardware present:",  # "the hardware is absent" paths on a machine that has it
    "no network namespaces:",  # the multi-host lab where the kernel or user cannot make them
)


@dataclass(frozen=True)
class SkipVerdict:
    allowed: tuple[tuple[str, str], ...]  # (test id, reason)
    refused: tuple[tuple[str, str], ...]


def judge_skips(skips: list[tuple[str, str]]) -> SkipVerdict:
    """Split ``(test id, reason)`` pairs into allowed hardware skips and refused ones."""
    allowed, refused = [], []
    for nodeid, reason in skips:
        text = reason.removeprefix("Skipped: ").strip()
        (allowed if text.startswith(ALLOWED_SKIP_PREFIXES) else refused).append((nodeid, text))
    return SkipVerdict(allowed=tuple(allowed), refused=tuple(refused))
