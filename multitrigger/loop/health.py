"""
What a loop measures about itself, for the supervisor's health surface: event-loop lag and
blocked episodes, and which Airflow it runs.

* **Lag.** A probe task sleeps ``PROBE_INTERVAL`` and records how much later than asked it woke:
  that is how long ready callbacks waited for the event loop. p50/p99 are over the last
  ``WINDOW_SAMPLES`` samples (one minute). This replaces the stock ``block_watchdog``, which
  measured the same thing but could only say "a trigger" was blocking.
* **Blocked episodes.** ``BlameSlot`` times every step of every trigger; a step longer than
  ``[triggerer] blocked_main_thread_warning_threshold`` is one episode, with its trigger's id. A
  lag sample over the threshold with no such step is an episode of the runner's own code (id 0).

Both leave the loop in its check-in: every poll (``multitrigger.protocol``) carries a
``HealthReport`` under ``HEALTH_KEY`` at most every ``REPORT_EVERY`` seconds, and at once when an
episode is waiting. The supervisor logs each episode once, with the trigger's classpath and task.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque

from multitrigger.protocol import HealthReport

#: The probe's sleep (s), as the stock watchdog's.
PROBE_INTERVAL = 0.1
#: Samples in the lag window: one minute of probes.
WINDOW_SAMPLES = 600
#: A report goes with a poll at most this often (s), unless an episode is waiting.
REPORT_EVERY = 0.5
#: Episodes held between two reports; beyond it they are counted only.
MAX_PENDING = 100


class LoopHealth:
    """The loop side: lag samples, blocked episodes not yet reported."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._lag: deque[float] = deque(maxlen=WINDOW_SAMPLES)
        self._episodes: list[tuple[int, float]] = []
        self._unlisted = 0  # episodes beyond MAX_PENDING since the last report
        self._last_trigger_episode = 0.0  # perf_counter when a trigger's step last ended blocked
        self._last_report = -float("inf")
        import airflow

        self._versions = (getattr(airflow, "__version__", "unknown"), sys.version.split()[0])

    def long_step(self, trigger_id: int, seconds: float) -> None:
        """``BlameSlot.on_long_step``: a trigger's step blocked the loop for ``seconds``."""
        self._last_trigger_episode = time.perf_counter()
        self._add(trigger_id, seconds)

    def _add(self, trigger_id: int, seconds: float) -> None:
        if len(self._episodes) < MAX_PENDING:
            self._episodes.append((trigger_id, seconds))
        else:
            self._unlisted += 1

    async def probe(self, stopped) -> None:  # type: ignore[no-untyped-def]
        """Sample the lag until ``stopped()``; a long lag nobody's step explains is the runner's."""
        while not stopped():
            asked = time.perf_counter()
            await asyncio.sleep(PROBE_INTERVAL)
            woke = time.perf_counter()
            lag = max(0.0, woke - asked - PROBE_INTERVAL)
            self._lag.append(lag)
            if lag > self.threshold and self._last_trigger_episode < asked:
                self._add(0, lag)

    def report(self, now: float | None = None) -> HealthReport | None:
        """A report if one is due (see ``REPORT_EVERY``), else None."""
        now = time.monotonic() if now is None else now
        if not self._episodes and not self._unlisted and now - self._last_report < REPORT_EVERY:
            return None
        self._last_report = now
        lags = sorted(self._lag)
        episodes, self._episodes = self._episodes, []
        unlisted, self._unlisted = self._unlisted, 0
        return HealthReport(
            airflow_version=self._versions[0], python_version=self._versions[1],
            lag_p50=_quantile(lags, 0.5), lag_p99=_quantile(lags, 0.99), lag_max=lags[-1] if lags else None,
            samples=len(lags), threshold=self.threshold, blocked=episodes, blocked_unlisted=unlisted,
        )


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
