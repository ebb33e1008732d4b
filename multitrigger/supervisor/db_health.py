"""
Is the metadata DB reachable: when to try a DB step again, and when to give up.

A pure object beside ``RestartPolicy`` and ``PoisonPolicy``: it sees only what the supervisor tells
it (a step succeeded, failed to connect, failed otherwise, has been running for N seconds) and the
time from an injected clock, so it is tested without a database. It owns the outage's log lines,
so an operator reads one story: "metadata DB unreachable; retrying" (with the outage so far and the
next try), "… a DB step has not returned" (a call no bound ended), "metadata DB reachable again",
and, from the supervisor, "unreachable for too long; exiting" once ``exhausted`` (the outage
outlasted ``retry_limit``): it exits 1, so a service manager restarts it and other triggerers take
its triggers over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

#: Retries back off from 1 s (0.5 × 2) to this many seconds.
MAX_BACKOFF = 10.0
#: A step seen running past the bound this recently is still stuck (the selector checks every pass).
STUCK_FRESH = 2.0


@dataclass
class DbHealth:
    retry_limit: float  # seconds of outage tolerated ([supervisor] db_retry_limit)
    step_bound: float  # a step running longer than this means the DB is unreachable
    retry_after_error: float  # a step that failed for another reason is tried again after this
    clock: Callable[[], float]
    down_since: float | None = None
    failures: int = 0
    retry_at: float = 0.0
    _stuck_reported: bool = False
    _stuck_too_long: bool = False  # a step outran retry_limit: sticky (see ``running``)
    _stuck_seen: float | None = None  # when a step was last seen running past ``step_bound``

    @property
    def may_try(self) -> bool:
        return self.clock() >= self.retry_at

    @property
    def exhausted(self) -> bool:
        """The outage has lasted longer than ``retry_limit``, or one step has: time to exit."""
        return self._stuck_too_long or (self.down_since is not None and self.clock() - self.down_since > self.retry_limit)

    def ok(self) -> None:
        """A step reached the DB. While the other lane's step is still stuck past the bound, the
        outage goes on (no "reachable again" between every persist and the next stuck report)."""
        if self._stuck_seen is not None and self.clock() - self._stuck_seen < STUCK_FRESH:
            self.failures = 0
            return
        self._stuck_seen = None
        if self.down_since is not None:
            log.info("metadata DB reachable again", outage=round(self.clock() - self.down_since, 1))
        self.down_since, self.failures, self._stuck_reported = None, 0, False

    def unreachable(self, error: str, queued: int) -> None:
        """A step could not reach the DB: back off, and say so."""
        now = self.clock()
        self.down_since = self.down_since if self.down_since is not None else now
        self.failures += 1
        self.retry_at = now + min(MAX_BACKOFF, 0.5 * 2 ** min(self.failures, 5))
        self._stuck_reported = False
        log.error("metadata DB unreachable; retrying", error=error, outage=round(now - self.down_since, 1),
                  queued_outcomes=queued, retry_in=round(self.retry_at - now, 1))

    def failed(self, error: BaseException) -> None:
        """A step failed for a reason other than connectivity (a bug, a constraint): try later."""
        log.error("DB step failed; retrying", error=repr(error), exc_info=error)
        self.retry_at = self.clock() + self.retry_after_error

    def running(self, step: str, seconds: float) -> None:
        """A step has been running ``seconds``: past the bound, the DB is unreachable now.

        With two DB lanes (persist; claim pass) one lane's success ends the outage (``ok``) while
        the other's step may still hang; a step that outruns ``retry_limit`` is therefore an
        outage too long on its own, whatever succeeded meanwhile: a supervisor whose claim pass
        and heartbeat never return must exit, so HA peers take its triggers over cleanly.
        """
        if seconds <= self.step_bound:
            return
        self._stuck_seen = self.clock()
        if seconds > self.retry_limit:
            self._stuck_too_long = True
        if not self._stuck_reported:
            self._stuck_reported = True
            log.error("metadata DB unreachable: a DB step has not returned", step=step, seconds=round(seconds, 1))
        if self.down_since is None:
            self.down_since = self.clock() - seconds
