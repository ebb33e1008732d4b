"""Pure pieces of the supervisor, tested without processes: poison policy, lanes, the request desk.

Lanes run real threads; clocks are injected where time matters.
"""

from __future__ import annotations

import threading
import time

import pytest

from airflow.sdk.execution_time import comms as c
from multitrigger.poison import PoisonPolicy
from multitrigger.supervisor.db_health import DbHealth
from multitrigger.supervisor.lanes import Lane
from multitrigger.supervisor.outcomes import Outcomes
from multitrigger.supervisor.request_desk import RequestDesk


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_poison_verdict_at_the_threshold_with_every_reason() -> None:
    clock = Clock()
    policy = PoisonPolicy("team_a", threshold=3, clock=clock)
    assert policy.strike(7, "killed by SIGKILL") is None
    assert policy.strike(8, "exited with code 1") is None  # another trigger's strikes are its own
    assert policy.strike(7, "killed by SIGSEGV") is None
    assert policy.strikes(7) == 2
    verdict = policy.strike(7, "exited with code 1")
    assert verdict is not None and verdict.trigger_id == 7
    assert verdict.reasons == ("killed by SIGKILL", "killed by SIGSEGV", "exited with code 1")
    lines = verdict.traceback()
    assert lines[0] == "trigger crashed its loop 'team_a' 3 times: exited with code 1\n"
    assert lines[1:] == ["  crash 1: killed by SIGKILL\n", "  crash 2: killed by SIGSEGV\n", "  crash 3: exited with code 1\n"]
    assert policy.strikes(7) == 0 and policy.strikes(8) == 1


def test_poison_strikes_expire_after_the_window_and_are_forgotten_with_the_trigger() -> None:
    clock = Clock()
    policy = PoisonPolicy("l", threshold=2, clock=clock, window=60)
    assert policy.strike(1, "a") is None
    clock.now += 61
    assert policy.strike(1, "b") is None  # the first strike is too old to count
    assert policy.strikes(1) == 1
    policy.forget(1)
    assert policy.strikes(1) == 0 and policy.strike(1, "c") is None


def _pump(lanes: list[Lane], until, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "lane did not complete"
        for lane in lanes:
            lane.run_completions()
        time.sleep(0.005)


def test_lane_runs_steps_in_order_off_the_calling_thread_and_completes_on_it() -> None:
    woken = threading.Event()
    lane = Lane("t", woken.set)
    seen: list[tuple[str, object, bool]] = []
    main = threading.current_thread()
    lane.submit("one", lambda: threading.current_thread() is not main, lambda d: seen.append(("one", d.value, threading.current_thread() is main)))
    lane.submit("two", lambda: 1 / 0, lambda d: seen.append(("two", type(d.error).__name__, threading.current_thread() is main)))
    assert not lane.idle
    _pump([lane], lambda: len(seen) == 2)
    assert seen == [("one", True, True), ("two", "ZeroDivisionError", True)]
    assert lane.idle and woken.is_set()
    lane.close()


def test_lane_says_which_step_is_stuck_and_for_how_long() -> None:
    clock = Clock()
    release = threading.Event()
    lane = Lane("db", lambda: None, clock)
    lane.submit("tick", release.wait, lambda d: None)
    _pump([], lambda: lane.busy_for() is not None)
    clock.now += 12.5
    assert lane.busy_for() == ("tick", 12.5)
    release.set()
    _pump([lane], lambda: lane.idle)
    assert lane.busy_for() is None
    lane.close()


def test_request_desk_answers_round_robin_and_within_its_bound_when_the_db_hangs() -> None:
    clock = Clock()
    gate = threading.Event()
    order: list[str] = []

    def answer(msg):  # type: ignore[no-untyped-def]
        order.append(msg.conn_id)
        if msg.conn_id == "hang":
            gate.wait(10)
        return {"conn_id": msg.conn_id}, None

    lane = Lane("requests", lambda: None, clock)
    desk = RequestDesk(lane, timeout=30, clock=clock, answer=answer)
    replies: dict[str, tuple] = {}
    ask = lambda loop, conn: desk.ask(loop, c.GetConnection(conn_id=conn), lambda b, e: replies.setdefault(conn, (b, e)))  # noqa: E731
    # team_a floods; team_b's one request is served second, not after the whole flood.
    for i in range(3):
        ask("team_a", f"a{i}")
    ask("team_b", "b0")
    _pump([lane], lambda: len(replies) == 4 and lane.idle, timeout=5)
    assert order == ["a0", "b0", "a1", "a2"]
    assert replies["b0"] == ({"conn_id": "b0"}, None)

    # A request that never returns, and one queued behind it: both get "unreachable" at the bound.
    ask("team_a", "hang")
    ask("team_b", "behind")
    _pump([], lambda: order[-1] == "hang")
    clock.now += 29
    desk.pump()
    assert "hang" not in replies and "behind" not in replies
    clock.now += 2
    desk.pump()
    for conn in ("hang", "behind"):
        body, error = replies[conn]
        assert body is None and "metadata DB unreachable" in error["detail"]["message"]
    gate.set()  # the late answer is dropped: each request is answered exactly once
    _pump([lane], lambda: lane.idle)
    assert replies["hang"][0] is None
    lane.close()


def test_outcomes_put_back_keeps_order_and_pending_ids_cover_the_batch_in_flight() -> None:
    outcomes = Outcomes()
    outcomes.add_failure(1, ["refused\n"])
    batch = outcomes.take()
    outcomes.add_failure(2, ["crashed\n"])
    assert outcomes.pending_ids() == {1, 2} and len(batch) == 1
    outcomes.put_back()  # the DB was unreachable
    assert [f[0] for _, f in outcomes.take().failures] == [1, 2]
    outcomes.done()
    assert outcomes.pending_ids() == set() and not outcomes


def test_events_and_failures_persist_in_separate_steps_and_committed_events_are_not_put_back() -> None:
    from airflow.jobs.triggerer_job_runner import TriggerEventEntry
    from airflow.triggers.base import TriggerEvent

    outcomes = Outcomes()
    for tid in (1, 2, 3):
        outcomes.add_event("team_a", TriggerEventEntry(trigger_id=tid, event=TriggerEvent(tid), persist_seq=None))
    outcomes.add_failure(9, ["crashed\n"])
    batch = outcomes.take()
    assert [e.trigger_id for _, e in batch.events] == [1, 2, 3] and not batch.failures  # events first, alone
    outcomes.put_back(persisted={0})  # one by one, the first (trigger 1) was committed before the DB went away
    assert outcomes.pending_ids() == {2, 3, 9}
    again = outcomes.take()
    assert [e.trigger_id for _, e in again.events] == [2, 3] and not again.failures
    outcomes.done()
    assert [f[0] for _, f in outcomes.take().failures] == [9]


def test_a_step_takes_at_most_the_limit_oldest_first_and_a_put_back_batch_goes_first_again() -> None:
    from airflow.jobs.triggerer_job_runner import TriggerEventEntry
    from airflow.triggers.base import TriggerEvent

    outcomes = Outcomes()
    for tid in range(1, 8):
        outcomes.add_event("team_a", TriggerEventEntry(trigger_id=tid, event=TriggerEvent(tid), persist_seq=None))
    outcomes.add_failure(9, ["crashed\n"])
    first = outcomes.take(limit=3)
    assert [e.trigger_id for _, e in first.events] == [1, 2, 3] and not first.failures
    assert outcomes.pending_ids() == {1, 2, 3, 4, 5, 6, 7, 9}  # the batch in flight and what waits
    outcomes.put_back(persisted={0})
    second = outcomes.take(limit=3)
    assert [e.trigger_id for _, e in second.events] == [2, 3, 4]
    outcomes.done()
    # A step of events completed and a failure waits: it goes next, not after every event (a
    # stream of events must not starve failures), then the events again.
    assert [f[0] for _, f in outcomes.take(limit=3).failures] == [9]
    outcomes.done()
    assert [e.trigger_id for _, e in outcomes.take(limit=3).events] == [5, 6, 7]
    outcomes.done()
    assert not outcomes and outcomes.pending_ids() == set()


def test_a_running_step_absorbs_later_events_up_to_the_limit_and_stops_at_a_trigger_it_has() -> None:
    """``Outcomes.absorb`` (the persist lane, while its step runs): events queued since the step took
    its batch join it, oldest first, within the step's limit, and stop at the first for a trigger the
    step already has (that trigger's events stay in order, for the next step); a failures step takes
    none; what moved is in ``pending_ids`` throughout, and a put-back batch returns with it, in order."""
    from airflow.jobs.triggerer_job_runner import TriggerEventEntry
    from airflow.triggers.base import TriggerEvent

    def event(tid: int) -> TriggerEventEntry:
        return TriggerEventEntry(trigger_id=tid, event=TriggerEvent(tid), persist_seq=None)

    outcomes = Outcomes()
    outcomes.add_event("a", event(1))
    batch = outcomes.take(limit=4)
    for tid in (2, 3, 1, 4, 5):
        outcomes.add_event("b", event(tid))
    assert outcomes.absorb({1}, limit=4) == [("b", event(2)), ("b", event(3))]  # stops at 1: the step has it
    assert [e.trigger_id for _, e in batch.events] == [1, 2, 3]
    assert outcomes.pending_ids() == {1, 2, 3, 4, 5}
    assert outcomes.absorb({1, 2, 3}, limit=4) == []  # 1 is still next in line
    outcomes.put_back()  # the DB went away: the whole batch goes first again, absorbed events included
    assert [e.trigger_id for _, e in outcomes.take(limit=2).events] == [1, 2]
    assert [e.trigger_id for _, e in outcomes.absorb({1, 2}, limit=3)] == [3]  # the limit: 3 in all
    outcomes.done()
    outcomes.add_failure(9, ["crashed\n"])
    failures = outcomes.take()  # after a completed step of events, the failure goes first
    assert failures.failures and outcomes.absorb(set()) == [] and not failures.events
    outcomes.done()
    assert [e.trigger_id for _, e in outcomes.take().events] == [1, 4, 5]


class _PersistLane:
    """A real persist ``Lane`` with a ``Persister`` on it, run one step at a time."""

    def __init__(self, outcomes: Outcomes, store: object, slots: dict) -> None:
        from multitrigger.supervisor.persisting import Persister

        def db_done(done, on_ok, on_error):
            on_ok(done.value) if done.error is None else on_error(done.error)

        self.woke = threading.Event()
        self.lane = Lane("persist", self.woke.set)
        self.persister = Persister(outcomes, self.lane, store, slots, db_done)  # type: ignore[arg-type]

    def steps(self, count: int) -> None:
        """Submit a step, wait for it, run its completion on this (the selector's) thread; ``count`` times."""
        for _ in range(count):
            self.woke.clear()
            self.persister.submit()
            assert self.woke.wait(5)
            self.lane.run_completions()


def test_failures_count_per_loop_once_written_and_a_step_cut_short_counts_only_what_it_committed() -> None:
    """``triggers.failed`` (``failures_persisted``) counts a loop's failure once it is in the DB, as
    stock counts it after ``submit_failure``: not while it waits, not twice when a step is retried."""
    from types import SimpleNamespace

    from multitrigger.supervisor.slot import LoopStats
    from multitrigger.supervisor.store import PartlyPersisted

    class Store:  # the DB goes away after the first failure of the first step was committed
        def __init__(self) -> None:
            self.written: list[int] = []

        def submit_failures(self, failures):
            if not self.written:
                self.written.append(failures[0][0])
                raise PartlyPersisted("gone", [0])
            self.written += [tid for tid, _ in failures]
            return list(range(len(failures)))

    outcomes, store = Outcomes(), Store()
    slots = {"team_a": SimpleNamespace(stats=LoopStats()), "team_b": SimpleNamespace(stats=LoopStats())}
    persist = _PersistLane(outcomes, store, slots)
    outcomes.add_failure(1, ["crashed\n"], "team_a")
    outcomes.add_failure(2, ["crashed\n"], "team_b")
    outcomes.add_failure(3, ["refused\n"])  # no loop ran it
    assert slots["team_a"].stats.failures_persisted == slots["team_b"].stats.failures_persisted == 0
    persist.steps(2)
    assert store.written == [1, 2, 3] and not outcomes and outcomes.pending_ids() == set()
    assert slots["team_a"].stats.failures_persisted == 1 and slots["team_b"].stats.failures_persisted == 1
    persist.lane.close()


def test_a_persist_step_absorbs_through_the_lane_counts_what_it_absorbed_and_puts_it_back_in_order() -> None:
    """The persist lane's wiring of ``Outcomes.absorb``: events queued while a step runs join it (the
    store's ``more``), are counted per loop and their shared-stream sequence numbers confirmed once
    written; when the DB goes away after absorbing, the whole batch goes back first, in order."""
    from types import SimpleNamespace

    from airflow.jobs.triggerer_job_runner import TriggerEventEntry
    from airflow.triggers.base import TriggerEvent
    from multitrigger.supervisor.slot import LoopStats
    from multitrigger.supervisor.store import DatabaseUnavailable

    def event(tid: int, seq: int | None = None) -> TriggerEventEntry:
        return TriggerEventEntry(trigger_id=tid, event=TriggerEvent(tid), persist_seq=seq)

    class Store:  # while the step runs, two more events arrive; the first attempt loses the DB
        def __init__(self) -> None:
            self.steps: list[list[int]] = []

        def submit_events(self, entries, more=None):
            entries = list(entries)
            if not self.steps:
                outcomes.add_event("team_b", event(2, seq=7))
                outcomes.add_event("team_b", event(3))
            entries += more({tid for tid, _ in entries})
            self.steps.append([tid for tid, _ in entries])
            if len(self.steps) == 1:
                raise DatabaseUnavailable("gone")
            return list(range(len(entries)))

    outcomes, store = Outcomes(), Store()
    confirmed: list[int] = []
    slots = {"team_a": SimpleNamespace(stats=LoopStats(), persisted=confirmed.append),
             "team_b": SimpleNamespace(stats=LoopStats(), persisted=confirmed.append)}
    persist = _PersistLane(outcomes, store, slots)
    outcomes.add_event("team_a", event(1))
    persist.steps(2)
    assert store.steps == [[1, 2, 3], [1, 2, 3]]  # absorbed, put back with the rest, in order
    assert not outcomes and outcomes.pending_ids() == set()
    assert slots["team_a"].stats.events_persisted == 1 and slots["team_b"].stats.events_persisted == 2
    assert confirmed == [7]
    persist.lane.close()


def test_a_trigger_with_two_events_keeps_the_second_when_the_db_goes_away_after_the_first() -> None:
    """One by one (after a batch failed), the DB goes away after a trigger's first event was
    committed: the commit is told by position, so its second event goes back (and the first is not
    written again: an asset watcher's would register its asset change twice)."""
    from sqlalchemy.exc import OperationalError

    from airflow.jobs.triggerer_job_runner import TriggerEventEntry
    from airflow.triggers.base import TriggerEvent
    from multitrigger.supervisor.store import PartlyPersisted, _one_by_one

    written: list[str] = []

    def submit(trigger_id: int, value: str) -> None:
        if len(written) == 1:
            raise OperationalError("UPDATE", {}, Exception("connection refused"))
        written.append(value)

    with pytest.raises(PartlyPersisted) as gone:
        _one_by_one([(5, "first"), (5, "second"), (6, "other")], submit, "event")
    assert gone.value.persisted == [0] and written == ["first"]
    outcomes = Outcomes()
    for tid, payload in ((5, "first"), (5, "second"), (6, "other")):
        outcomes.add_event("team_a", TriggerEventEntry(trigger_id=tid, event=TriggerEvent(payload), persist_seq=None))
    outcomes.take()
    outcomes.put_back(gone.value.persisted)
    assert [e.event.payload for _, e in outcomes.take().events] == ["second", "other"]


def test_db_health_with_one_lane_stuck_stays_down_while_the_other_succeeds() -> None:
    clock = Clock()
    health = DbHealth(retry_limit=60, step_bound=12, retry_after_error=1, clock=clock)
    clock.now += 13
    health.running("tick", 13.0)  # the claim pass has not returned
    stuck_since = health.down_since
    assert stuck_since is not None
    for _ in range(5):  # persists keep succeeding on the other lane, the pass is still stuck
        clock.now += 0.5
        health.ok()
        assert health.down_since == stuck_since
        health.running("tick", clock.now - stuck_since)
    clock.now += 3  # the stuck step ended (no longer reported running): the next success recovers
    health.ok()
    assert health.down_since is None and not health.exhausted


def test_db_health_backs_off_gives_up_past_the_limit_and_recovers() -> None:
    clock = Clock()
    health = DbHealth(retry_limit=60, step_bound=12, retry_after_error=1, clock=clock)
    start = clock.now
    health.unreachable("refused", queued=3)
    assert health.down_since == start and health.retry_at == start + 1 and not health.may_try
    clock.now += 1
    health.unreachable("refused", queued=3)
    assert health.retry_at == clock.now + 2  # 0.5 × 2^n, capped at MAX_BACKOFF
    for _ in range(6):
        health.unreachable("refused", queued=3)
    assert health.retry_at == clock.now + 10
    clock.now = start + 60
    assert not health.exhausted
    clock.now = start + 61
    assert health.exhausted
    health.ok()
    assert health.down_since is None and health.failures == 0 and not health.exhausted


def test_db_health_declares_an_outage_when_a_step_outlives_every_bound() -> None:
    clock = Clock()
    health = DbHealth(retry_limit=30, step_bound=12, retry_after_error=1, clock=clock)
    health.running("tick", 11.9)
    assert health.down_since is None
    health.running("tick", 13)
    assert health.down_since == clock.now - 13  # the outage began when the step did
    clock.now += 18
    health.running("tick", 31)
    assert health.exhausted
    # Another lane reaching the DB does not end it while the step is still stuck; once the step
    # is no longer seen, a success does; but a step hung past the limit is sticky.
    stuck = DbHealth(retry_limit=30, step_bound=12, retry_after_error=1, clock=clock)
    stuck.running("tick", 20)
    stuck.ok()
    assert stuck.down_since is not None and not stuck.exhausted
    clock.now += 3
    stuck.ok()
    assert stuck.down_since is None and not stuck.exhausted
    stuck.running("tick", 31)
    stuck.ok()
    assert stuck.exhausted
    # A step failing for another reason (not connectivity) is just tried again later.
    other = DbHealth(retry_limit=30, step_bound=12, retry_after_error=1, clock=clock)
    other.failed(ValueError("constraint"))
    assert other.retry_at == clock.now + 1 and other.down_since is None
