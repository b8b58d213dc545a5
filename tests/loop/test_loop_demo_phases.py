"""The demo's phase clock: named phases timed as they run, in the demo's order."""

from __future__ import annotations

import pytest

from simulations.demo.phases import PHASES, PhaseClock


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_phase_is_the_time_its_block_took_and_repeats_add_up() -> None:
    clock = _Clock()
    phases = PhaseClock(clock)
    with phases.phase("retraining"):
        clock.now += 2.5
    with phases.phase("retraining"):
        clock.now += 1.0
    assert phases.as_dict() == {"retraining": 3.5}


def test_a_phase_that_raises_is_still_timed() -> None:
    clock = _Clock()
    phases = PhaseClock(clock)
    with pytest.raises(RuntimeError), phases.phase("fleet_start"):
        clock.now += 4.0
        raise RuntimeError("a device did not say hello")
    assert phases.as_dict() == {"fleet_start": 4.0}


def test_phases_come_out_in_the_demos_order_whatever_order_they_were_recorded() -> None:
    phases = PhaseClock(_Clock())
    for name in reversed(list(PHASES)):
        phases.record(name, 1.0)
    assert list(phases.as_dict()) == list(PHASES)


def test_an_unknown_phase_or_a_negative_duration_is_not_recorded_as_time() -> None:
    phases = PhaseClock(_Clock())
    with pytest.raises(KeyError):
        phases.record("coffee_break", 1.0)
    phases.record("drift_detection", -0.2)  # clocks of two machines: never negative time
    assert phases.as_dict() == {"drift_detection": 0.0}
