"""
Events and failures waiting to be written to the metadata DB: the one queue every outcome takes.

Every failure goes through here, whatever its source — a routing refusal, kwargs that cannot be
decrypted, a failure the loop reported, a poison verdict — and so does every event. The DB lane
persists a batch (``take``); if the DB is unreachable the batch goes back (``put_back``) and the
supervisor's retry, backoff and ``db_retry_limit`` cover it like every other DB step. Nothing is
dropped while the supervisor runs.

``pending_ids`` are triggers whose outcome is not in the DB yet: their rows still look claimed and
unfinished, so a claim must not build and run them again.

A step takes at most ``BATCH_LIMIT`` outcomes, the oldest first; the rest wait for the next step,
which the supervisor submits as soon as this one completes. A step of events also takes, before it
writes, the events that arrived while it ran (``absorb``), up to the same limit. So a burst of
20,000 events is not one transaction of several seconds: its first events commit (and are visible
to the scheduler) while later ones are still arriving, a step stays far below the bound past which
a DB step is taken for an outage (``DbHealth.step_bound``), and on SQLite the claim pass's writes
never wait long for the one writer. At ~0.06-0.12 ms per event a step of 1000 is ~0.1 s; what a
step costs regardless of its size (session, one query for asset and callback triggers, commit) is
~2-5 ms.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass, field

from airflow.jobs.triggerer_job_runner import TriggerEventEntry

Failure = tuple[int, list[str] | None]  # (trigger id, traceback), as ``TriggerStore.submit_failures`` takes them

#: At most this many events (or failures) per persist step.
BATCH_LIMIT = 1000


@dataclass
class Batch:
    events: list[tuple[str, TriggerEventEntry]]  # (loop, entry)
    failures: list[tuple[str | None, Failure]]  # (loop, failure); no loop: refused or not built before one ran it

    def __len__(self) -> int:
        return len(self.events) + len(self.failures)


@dataclass
class Outcomes:
    """The queue; the selector thread's, but for ``absorb``, which the persist lane calls while its
    step runs: the queued events and the step's batch change under ``_lock``, so ``pending_ids`` never
    sees an event in neither (the claim pass's ``known`` set)."""

    _events: list[tuple[str, TriggerEventEntry]] = field(default_factory=list)
    _failures: list[tuple[str | None, Failure]] = field(default_factory=list)
    _in_flight: Batch | None = None
    _failures_next: bool = False  # the last completed step wrote events: failures waiting go first
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_event(self, loop: str, entry: TriggerEventEntry) -> None:
        with self._lock:
            self._events.append((loop, entry))

    def add_failure(self, trigger_id: int, traceback: list[str] | None, loop: str | None = None) -> None:
        self._failures.append((loop, (trigger_id, traceback)))

    def __len__(self) -> int:
        return len(self._events) + len(self._failures)

    def take(self, limit: int = BATCH_LIMIT) -> Batch:
        """What is queued, for one persist step (``done`` or ``put_back`` it): the ``limit``
        oldest events, or the ``limit`` oldest failures. Never both: events and failures commit
        apart, so a step that fails half-way puts back only what it did not write. Events go first,
        as stock's triggerer handles a loop's events before its failures; but after a step of
        events that completed, waiting failures go next: a stream of events arriving faster than
        they are written must not hold failures (and their deferred tasks) back for ever."""
        with self._lock:
            if self._events and not (self._failures and self._failures_next):
                batch, self._events = Batch(self._events[:limit], []), self._events[limit:]
            else:
                batch, self._failures = Batch([], self._failures[:limit]), self._failures[limit:]
            self._in_flight = batch
        return batch

    def absorb(self, known: set[int], limit: int = BATCH_LIMIT) -> list[tuple[str, TriggerEventEntry]]:
        """On the persist lane: the events queued since the running step took its batch, oldest
        first, moved into that batch (an events step only, up to ``limit`` events in all), stopping
        at the first for a trigger in ``known`` (its events stay in order, for the next step)."""
        with self._lock:
            batch = self._in_flight
            if batch is None or not batch.events:
                return []
            taken: list[tuple[str, TriggerEventEntry]] = []
            for item in self._events[: max(0, limit - len(batch.events))]:
                if item[1].trigger_id in known:
                    break
                taken.append(item)
            batch.events.extend(taken)
            del self._events[: len(taken)]
            return taken

    def done(self) -> None:
        with self._lock:
            self._failures_next = bool(self._in_flight and self._in_flight.events)
            self._in_flight = None

    def put_back(self, persisted: Collection[int] = ()) -> None:
        """The persist step did not reach the DB: its batch goes first in the next one, but for
        the outcomes it did commit (``persisted``: their positions in the batch's events, or in its
        failures: a batch holds one kind) before the DB went away."""
        with self._lock:
            if self._in_flight is not None:
                self._events[:0] = [item for i, item in enumerate(self._in_flight.events) if i not in persisted]
                self._failures[:0] = [item for i, item in enumerate(self._in_flight.failures) if i not in persisted]
                self._in_flight = None

    def pending_ids(self) -> set[int]:
        with self._lock:
            batches = [Batch(self._events, self._failures)] + ([self._in_flight] if self._in_flight else [])
            return {e.trigger_id for b in batches for _, e in b.events} | {f[0] for b in batches for _, f in b.failures}
