"""The restart policy is pure: driven by a fake clock and a fixed random source, no processes."""

from __future__ import annotations

import pytest

from multitrigger.restart import BackoffSettings, RestartPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(jitter: float = 0.0, rand: float = 0.5, **kw) -> tuple[RestartPolicy, FakeClock]:
    clock = FakeClock()
    settings = BackoffSettings(backoff_initial=1.0, backoff_max=8.0, backoff_multiplier=2.0, jitter=jitter, stable_after=60.0, **kw)
    return RestartPolicy(settings, clock=clock, rand=lambda: rand), clock


def test_first_restart_is_immediate_then_backoff_doubles_up_to_max() -> None:
    policy, clock = make()
    delays = []
    for _ in range(7):
        policy.started()
        clock.now += 1.0  # crashes after one second each time
        delays.append(policy.died() - clock.now)
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_stable_uptime_resets_backoff() -> None:
    policy, clock = make()
    for _ in range(4):
        policy.started()
        clock.now += 1.0
        policy.died()
    assert policy.consecutive_failures == 4
    policy.started()
    clock.now += 61.0  # ran longer than stable_after
    assert policy.died() == clock.now  # immediate again
    assert policy.consecutive_failures == 1


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 3.6), (0.5, 4.0), (1.0, 4.4)], ids=["low", "mid", "high"])
def test_jitter_spreads_delay_within_fraction(rand: float, expected: float) -> None:
    policy, clock = make(jitter=0.1, rand=rand)
    policy.consecutive_failures = 3
    policy.started()
    assert policy.died() - clock.now == pytest.approx(expected)
