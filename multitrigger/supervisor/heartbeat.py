"""
The triggerer job's heartbeat, on a DB lane of its own beside the claim pass.

A claim pass that claims and builds thousands of triggers takes seconds on a loaded host, and a
heartbeat queued behind it lapsed past ``triggerer_health_check_threshold`` (10.5 s seen at 20,000
triggers over 4 members): the others took this member's triggers while its loops still ran them.
So the heartbeat step is offered to its own lane every ``BEAT_EVERY`` (one step at a time;
Airflow's ``perform_heartbeat`` writes only once per the job's heartrate).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from multitrigger.supervisor.lanes import Done, Lane

#: How often a heartbeat step is offered to its lane.
BEAT_EVERY = 0.5


class Heartbeat:
    """Offers ``beat`` to ``lane`` at most every ``BEAT_EVERY``; a step's error goes to ``on_error``."""

    def __init__(self, lane: Lane, beat: Callable[[], Any], on_error: Callable[[Done], None]) -> None:
        self.lane, self._beat, self._on_error = lane, beat, on_error
        self._next = 0.0

    def offer(self, now: float) -> None:
        if self.lane.idle and now >= self._next:
            self._next = now + BEAT_EVERY
            self.lane.submit("heartbeat", self._beat, self._done)

    def _done(self, done: Done) -> None:
        """A heartbeat never ends an outage: Airflow's ``Job.heartbeat`` logs and swallows the DB's
        ``OperationalError``, so its return says nothing about the DB (the claim pass and persisting
        do). What it raises counts like any DB step's error; a stuck one is seen by ``busy_for``."""
        if done.error is not None:
            self._on_error(done)
