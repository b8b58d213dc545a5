"""Refusals of untrusted input are logged once per reason and interval, then summarised
(#15: 41,000 warning lines in 45 s of garbage), on the hub and on the agent."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from shared.refusal_log import RefusalLog
from tests.agent_ota.agent_ota_helpers import Clock, Harness, make_authority


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_first_refusal_in_full_then_one_summary_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    clock = _Clock()
    refusals = RefusalLog(logging.getLogger("t.refusals"), interval_s=10.0, clock=clock)
    for i in range(41_000):
        refusals.warn("garbage", "dropped message %d", i)
        clock.t += 45 / 41_000
    refusals.flush()  # the last interval is not over: its count waits
    assert "more 'garbage'" not in caplog.records[-1].getMessage()
    clock.t += 10
    refusals.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "dropped message 0"
    assert len(lines) == 10, lines  # 5 intervals: a line and a summary each, not 41,000
    summaries = [line for line in lines if "more 'garbage' refusals" in line]
    assert summaries and "(last: dropped message" in summaries[0]
    assert refusals.counts == {"garbage": 41_000}
    total = sum(int(line.split()[1]) for line in summaries) + (len(lines) - len(summaries))
    assert total == 41_000  # every refusal is in a line or a count


def test_reasons_are_separate_and_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    refusals = RefusalLog(logging.getLogger("t.refusals2"), max_reasons=2, clock=_Clock())
    for reason in ("a", "b", "c", "d"):
        refusals.warn(reason, "refused %s", reason)
    assert set(refusals.counts) == {"a", "b", "other"}
    assert [r.getMessage() for r in caplog.records] == ["refused a", "refused b", "refused c"]


def test_garbage_chunk_frames_to_the_agent_log_a_few_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent")
    h = Harness(state_dir=tmp_path / "state", auth=make_authority(), clock=Clock())
    for i in range(5_000):
        h.updater.handle_chunk(b"FFCH garbage %d" % i)
    h.updater.tick()
    lines = [r.getMessage() for r in caplog.records if "chunk frame" in r.getMessage()]
    assert len(lines) == 1, lines
    assert h.updater.refusals.counts["bad-chunk-frame"] == 5_000
