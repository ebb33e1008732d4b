"""
The persist lane: outcomes (events, failures) written to the metadata DB beside the claim pass.

Two lanes, each with its own thread and so its own session and connection (Airflow's
``Session`` is thread-local): this one writes events and failures, the supervisor's ``db`` lane
runs the claim pass (clean, claim, build, heartbeat). With ~19,000 triggers held a claim pass holds
its lane 0.3-0.4 s every second; an event queued behind it missed a 50 ms p99. Now it never waits
for one (on PostgreSQL; SQLite has one writer at a time, so a persist may wait for the claim pass's
short write transactions, on the busy timeout ``db_bounds`` sets).

Why the two cannot undo each other: a trigger with an event or failure not yet in the DB is in
the supervisor's ``routes`` (until its loop reports it finished) or ``Outcomes.pending_ids()``
(until its persist step completes here), so it is in the ``known`` set every claim pass gets at
submit time, and a pass never builds or runs it again. A pass submitted after that persist
completed reads a committed write: stock's build skips a trigger whose task instance no longer
points at it, and ``clean_unused`` deletes it. The pass writes trigger rows (``triggerer_id``;
unused ones deleted), the job's heartbeat, and clears ``trigger_id`` of task instances no longer
deferred (``clean_unused``: what persisting sets already, and it matches no row a persist has not
committed). Persist writes task-instance rows (and, on stock's path, asset events and callbacks),
never a trigger row. A trigger leaves ``held`` only once deleted, i.e. after its persist committed,
so a pass never cancels a trigger whose event is still in flight. A failed claim pass never
touches the outcomes; a failed persist puts its batch back, but for what it committed.
(``tests/test_persist_lane.py``: a persist while every claim pass waits for a lock.) A step takes
at most ``outcomes.BATCH_LIMIT`` outcomes; the rest stay queued, so they stay in ``pending_ids``
and the argument holds for each step alone. Events a running step takes from the queue before it
writes (``Outcomes.absorb``: those that arrived meanwhile) move into its batch under the queue's
lock, so they are in ``pending_ids`` throughout, and a failed step puts them back with the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import structlog

from airflow.triggers.base import TriggerEvent
from multitrigger.supervisor.lanes import Done, Lane
from multitrigger.supervisor.outcomes import Batch, Outcomes
from multitrigger.supervisor.slot import LoopSlot
from multitrigger.supervisor.store import PartlyPersisted, TriggerStore

log = structlog.get_logger(__name__)

#: The supervisor's end of a DB step: ``(done, on_ok, on_error)`` (``Supervisor._db_done``).
DbDone = Callable[[Done, Callable, Callable[[BaseException], None]], None]


class Persister:
    """Takes the queued outcomes to the persist lane, one batch at a time, and settles each."""

    def __init__(self, outcomes: Outcomes, lane: Lane, store: TriggerStore, slots: Mapping[str, LoopSlot],
                 db_done: DbDone) -> None:
        self.outcomes, self.lane, self.store, self.slots, self.db_done = outcomes, lane, store, slots, db_done

    @property
    def ready(self) -> bool:
        """Something is queued and the lane is free for it."""
        return self.lane.idle and bool(self.outcomes)

    def warm_up(self) -> None:
        """First on the lane (its thread's own session): what the first persist would do the
        first time (``persist.warm_up``), so the first burst does not pay for it. Best effort."""
        self.lane.submit("persist warm-up", self.store.warm_up_persist, _warmed_up)

    def submit(self) -> None:
        batch = self.outcomes.take()
        self.lane.submit("persist", lambda: self._persist(batch),
                         lambda done: self.db_done(done, lambda persisted: self._persisted(batch, persisted),
                                                   lambda error: self._failed(batch, error)))

    def _persist(self, batch: Batch) -> set[int]:
        """On the persist lane: the batch's events, or its failures (``Outcomes.take``: never both).
        Returns the positions, in that list, of the outcomes written."""
        if batch.events:
            return set(self.store.submit_events([(e.trigger_id, e.event) for _, e in batch.events], more=self._more))
        return set(self.store.submit_failures([f for _, f in batch.failures]))

    def _more(self, known: set[int]) -> list[tuple[int, TriggerEvent]]:
        """On the persist lane: the events that arrived while this step ran, now in its batch."""
        return [(entry.trigger_id, entry.event) for _, entry in self.outcomes.absorb(known)]

    def _persisted(self, batch: Batch, persisted: set[int]) -> None:
        self.outcomes.done()
        self._confirm(batch, persisted)

    def _failed(self, batch: Batch, error: BaseException) -> None:
        """Put the batch back, but for what was committed before the DB went away."""
        persisted = set(error.persisted) if isinstance(error, PartlyPersisted) else set()
        self.outcomes.put_back(persisted)
        self._confirm(batch, persisted)

    def _confirm(self, batch: Batch, persisted: set[int]) -> None:
        """Count the written events and failures per loop (stock counts ``triggers.succeeded`` and
        ``triggers.failed`` once written); confirm the events' shared-stream sequence numbers."""
        for position, (loop, entry) in enumerate(batch.events):
            if position in persisted and (slot := self.slots.get(loop)):
                slot.stats.events_persisted += 1
                if entry.persist_seq is not None:
                    slot.persisted(entry.persist_seq)
        for position, (failed_in, _) in enumerate(batch.failures):
            if position in persisted and failed_in is not None and (slot := self.slots.get(failed_in)):
                slot.stats.failures_persisted += 1


def _warmed_up(done: Done) -> None:
    if done.error is not None:  # the DB is not there yet, say: the first persist pays, as before
        log.info("persist warm-up failed", error=repr(done.error))
