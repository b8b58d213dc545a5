"""The Deployment Engine's pollers ask again soon after activity, ever less often while idle."""

from __future__ import annotations

import pytest

from shared.poll_backoff import PollBackoff


def test_waits_grow_from_fast_to_slow_and_activity_resets_them() -> None:
    backoff = PollBackoff(fast_s=0.05, slow_s=0.2, growth=2)
    assert [backoff.next_wait_s() for _ in range(5)] == [0.05, 0.1, 0.2, 0.2, 0.2]
    backoff.activity()
    assert backoff.next_wait_s() == 0.05


def test_an_idle_poller_asks_a_fraction_as_often_as_a_fixed_0_2_s_one() -> None:
    backoff, waited, polls = PollBackoff(), 0.0, 0
    while waited < 10.0:  # ten idle seconds (a long SecAgg+ stage on a loaded machine)
        waited += backoff.next_wait_s()
        polls += 1
    assert polls <= 27 < 10.0 / 0.2  # fixed 0.2 s: 50 pulls, each costing SuperLink CPU


@pytest.mark.parametrize(
    ("fast_s", "slow_s", "growth"), [(0, 1, 1.5), (0.5, 0.1, 1.5), (0.1, 1, 0.5)]
)
def test_nonsense_waits_are_refused(fast_s: float, slow_s: float, growth: float) -> None:
    with pytest.raises(ValueError):
        PollBackoff(fast_s=fast_s, slow_s=slow_s, growth=growth)
