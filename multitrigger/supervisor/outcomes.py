"""
Events and failures waiting to be written to the metadata DB: the one queue every outcome takes.

Every failure goes through here, whatever its source — a routing refusal, kwargs that cannot be
decrypted, a failure the loop reported, a poison verdict — and so does every event. The DB lane
persists a batch (``take``); if the DB is unreachable the batch goes back (``put_back``) and the
supervisor's retry, backoff and ``db_retry_limit`` cover it like every other DB step. Nothing is
dropped while the supervisor runs.

``pending_ids`` are triggers whose outcome is not in the DB yet: their rows still look claimed and
unfinished, so a claim must not build and run them again.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from airflow.jobs.triggerer_job_runner import TriggerEventEntry

Failure = tuple[int, list[str] | None]


@dataclass
class Batch:
    events: list[tuple[str, TriggerEventEntry]]  # (loop, entry)
    failures: list[Failure]

    def __len__(self) -> int:
        return len(self.events) + len(self.failures)


@dataclass
class Outcomes:
    _events: list[tuple[str, TriggerEventEntry]] = field(default_factory=list)
    _failures: list[Failure] = field(default_factory=list)
    _in_flight: Batch | None = None

    def add_event(self, loop: str, entry: TriggerEventEntry) -> None:
        self._events.append((loop, entry))

    def add_failure(self, trigger_id: int, traceback: list[str] | None) -> None:
        self._failures.append((trigger_id, traceback))

    def __len__(self) -> int:
        return len(self._events) + len(self._failures)

    def take(self) -> Batch:
        """What is queued, for one persist step (``done`` or ``put_back`` it): every event, or if
        there is none, every failure. Never both: events and failures commit apart, so a step
        that fails half-way puts back only what it did not write."""
        if self._events:
            batch, self._events = Batch(self._events, []), []
        else:
            batch, self._failures = Batch([], self._failures), []
        self._in_flight = batch
        return batch

    def done(self) -> None:
        self._in_flight = None

    def put_back(self, persisted: Collection[int] = ()) -> None:
        """The persist step did not reach the DB: its batch goes first in the next one, but for
        the events it did commit (``persisted``) before the DB went away."""
        if self._in_flight is not None:
            self._events[:0] = [(loop, e) for loop, e in self._in_flight.events if e.trigger_id not in persisted]
            self._failures[:0] = self._in_flight.failures
            self._in_flight = None

    def pending_ids(self) -> set[int]:
        batches = [Batch(self._events, self._failures)] + ([self._in_flight] if self._in_flight else [])
        return {e.trigger_id for b in batches for _, e in b.events} | {tid for b in batches for tid, _ in b.failures}
