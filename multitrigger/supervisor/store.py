"""
Everything the supervisor does in the metadata database — the only process allowed to.

Checked against Airflow 3.3.2. Claiming is Airflow's, restricted to the bundles this instance
serves (``multitrigger.supervisor.claims``); the held ids are stock's query, aggregated
(``multitrigger.supervisor.held``). Workload building, event and failure persistence and
cleanup are Airflow's own code (``ids_for_triggerer`` / ``submit_event`` / ``submit_failure`` / ``clean_unused`` and the stock supervisor's
``build_trigger_workloads``), so multitrigger shares a trigger table with stock triggerers and with
other multitrigger instances under Airflow's HA semantics.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from airflow.executors import workloads
from airflow.jobs.job import Job, perform_heartbeat
from airflow.jobs.triggerer_job_runner import TriggerLoggingFactory, TriggerRunnerSupervisor
from airflow.models.crypto import get_fernet
from airflow.models.dagbag import DBDagBag
from airflow.models.serialized_dag import SerializedDagModel
from airflow.models.trigger import Trigger
from airflow.triggers.base import TriggerEvent
from airflow.utils.helpers import log_filename_template_renderer
from airflow._shared.timezones import timezone  # what airflow.models.trigger uses (3.3.2)
from airflow.utils.session import create_session
from multitrigger.config import default_config
from multitrigger.routing import Origin, origins_for
from multitrigger.supervisor import handback, held, persist
from multitrigger.scope import Scope
from multitrigger.supervisor.claims import Claim, Claimer
from multitrigger.supervisor.log_files import LogFiles, default_max_open, pool_factories
from multitrigger.supervisor.row_build import RowBuild

log = structlog.get_logger(__name__)

#: New triggers built per claim pass, at most (see ``TriggerStore.tick``).
BUILD_CHUNK = 2000


class _StockWorkloads:
    """The stock supervisor's workload and log-routing code, bound to our job.

    These are ``TriggerRunnerSupervisor`` methods that need only ``job``, ``id`` and
    ``logger_cache``; borrowing them keeps ``start_from_trigger`` templating, asset-watcher and
    callback workloads and per-trigger log paths exactly as stock builds them.
    """

    fetch_trigger_details = TriggerRunnerSupervisor.fetch_trigger_details
    fetch_non_task_trigger_ids = TriggerRunnerSupervisor.fetch_non_task_trigger_ids
    build_trigger_workloads = TriggerRunnerSupervisor.build_trigger_workloads
    _process_log_messages_from_subprocess = TriggerRunnerSupervisor._process_log_messages_from_subprocess

    def __init__(self, job: Job, log_files: LogFiles | None = None) -> None:
        self.job = job
        self.id = job.id
        self.logger_cache: dict[int, TriggerLoggingFactory] = {}
        self.log_files = log_files or LogFiles(default_max_open())
        self._dag_bag = _BatchDagBag()
        self.failed: list[tuple[int, list[str]]] = []  # this pass's triggers that could not be built

    def build(self, trigger_ids: set[int]) -> list[workloads.RunTrigger]:
        """Stock's workloads; their log factories write through ``log_files`` (no fd per trigger).
        Those that could not be built are in ``failed`` (with the reason for their task)."""
        self._dag_bag = _BatchDagBag()  # fresh per pass: a DAG re-serialized later is seen next pass
        self.failed = []
        rows = RowBuild(self._dag_bag, log_filename_template_renderer(), self.job.id, self.logger_cache)
        with create_session() as session:
            built, rest = rows.build(trigger_ids, session)
        if rest:  # what the rows do not cover: stock's per-trigger code (row_build's docstring)
            built += self.build_trigger_workloads(rest)
        pool_factories(self.logger_cache, trigger_ids, self.log_files)
        return built

    def _create_workload(self, trigger, dag_bag, render_log_fname, session):  # type: ignore[no-untyped-def]
        """The stock per-trigger build, with this pass's memoizing dag bag in place of a fresh one.

        Stock lets any error here escape the whole build, so one trigger whose DAG does not
        deserialize in the triggerer (a timetable or class it cannot import) stops every team's
        claims and the heartbeat after them, pass after pass. Here it fails that trigger alone."""
        try:
            return TriggerRunnerSupervisor._create_workload(self, trigger, self._dag_bag, render_log_fname, session)
        except Exception as err:
            raise_if_unreachable(err)
            log.exception("cannot build trigger workload", trigger_id=trigger.id)
            self.failed.append((trigger.id, [f"the triggerer could not build this trigger's workload: {err!r}\n"]))
            return None


class _Deserialized:
    """A serialized DAG model's ``data`` with its DAG deserialized once (stock does it per trigger)."""

    def __init__(self, model: SerializedDagModel) -> None:
        self.data = model.data
        self.dag = model.dag


class _BatchDagBag(DBDagBag):
    """Stock ``DBDagBag`` for one build pass, memoized per DAG version.

    The stock triggerer looks up the latest DAG version, fetches the serialized DAG and
    deserializes it once *per trigger*: 2000 triggers of 4 DAGs cost 6.6 s here, nearly all of it
    repeated work. The same lookups, once per (dag, version) and pass, give the same workloads.
    """

    def __init__(self) -> None:
        super().__init__()
        self._memo: dict[tuple, _Deserialized | Exception | None] = {}

    def get_serialized_dag_model_for_run(self, dag_run, *, session):  # type: ignore[no-untyped-def, override]
        key = ("run", dag_run.dag_id, dag_run.created_dag_version_id, dag_run.bundle_version)
        return self._once(key, lambda: super(_BatchDagBag, self).get_serialized_dag_model_for_run(dag_run, session=session))

    def get_serialized_dag_model(self, version_id, session):  # type: ignore[no-untyped-def, override]
        key = ("version", version_id)
        return self._once(key, lambda: super(_BatchDagBag, self).get_serialized_dag_model(version_id=version_id, session=session))

    def _once(self, key: tuple, fetch: Callable[[], SerializedDagModel | None]) -> _Deserialized | None:
        """Fetch and deserialize once per pass. A DAG that does not deserialize fails every trigger
        of it with the same error, raised again, not deserialized again per trigger; a database
        error is not remembered (the next trigger, or pass, asks again)."""
        if key not in self._memo:
            try:
                model = fetch()
                self._memo[key] = _Deserialized(model) if model else None
            except SQLAlchemyError:
                raise
            except Exception as err:
                self._memo[key] = err
        found = self._memo[key]
        if isinstance(found, Exception):
            raise found
        return found


class DatabaseUnavailable(Exception):
    """The metadata database cannot be reached right now (connection refused, reset, timed out)."""


class PartlyPersisted(DatabaseUnavailable):
    """The DB went away after some events (or failures) of a batch were committed (one by one):
    ``persisted`` (their positions in the batch) must not be written again (an asset watcher's event
    would register its asset change twice) nor counted again. Positions, not trigger ids: a trigger
    with two events in the batch may have had only the first committed."""

    def __init__(self, message: str, persisted: list[int]) -> None:
        super().__init__(message)
        self.persisted = persisted


def raise_if_unreachable(err: BaseException) -> None:
    """Re-raise connectivity failures as ``DatabaseUnavailable``; let the caller handle the rest."""
    if isinstance(err, DatabaseUnavailable):
        raise err
    if isinstance(err, (OperationalError, InterfaceError)) or (
        isinstance(err, DBAPIError) and err.connection_invalidated
    ):
        raise DatabaseUnavailable(str(err).splitlines()[0]) from err


def _one_by_one(items: list[tuple[int, Any]], submit: Callable[[int, Any], None], what: str) -> list[int]:
    """Stock's submit per outcome, each in its own transaction, after a batch failed; return the
    positions written. One that fails alone is logged and dropped; the DB going away raises
    ``PartlyPersisted`` naming those already committed (not to be written again)."""
    done: list[int] = []
    for position, (trigger_id, value) in enumerate(items):
        try:
            submit(trigger_id, value)
            done.append(position)
        except Exception as err:
            try:
                raise_if_unreachable(err)
            except DatabaseUnavailable as down:
                raise PartlyPersisted(str(down), done) from err
            log.exception(f"could not persist trigger {what}", trigger_id=trigger_id)
    return done


def plain_kwargs(encrypted_kwargs: str) -> str:
    """Decrypt trigger kwargs here, so no loop (user code) ever needs the Fernet key.

    ``Trigger._decrypt_kwargs`` in the loop accepts plain JSON (it starts with ``{``).
    """
    if encrypted_kwargs.startswith("{"):
        return encrypted_kwargs
    return get_fernet().decrypt(encrypted_kwargs.encode("utf-8")).decode("utf-8")


@dataclass(frozen=True)
class Tick:
    """What one claim pass found: every id we hold, new workloads with their origins, failures."""

    held: set[int]
    built: list[tuple[workloads.RunTrigger, Origin]]
    failures: list[tuple[int, list[str]]]
    alone: bool
    backlog: int = 0  # held, not yet built: built by the next pass
    more: bool = False  # the last claim stopped at max_trigger_to_select_per_loop: more may be claimable


#: Trigger ids per hand-back statement (one transaction for all): far below every DB's bind limit.
RELEASE_CHUNK = 5000


class TriggerStore:
    """The supervisor's view of the trigger table."""

    def __init__(self, job: Job, claim: Claim, scope: Scope | None = None, log_files: LogFiles | None = None) -> None:
        self.job = job
        self.claim_filters = claim
        self._claimer = Claimer(job.id, claim, scope or Scope.of(default_config()))
        self.log_files = log_files or LogFiles(default_max_open())
        self._stock = _StockWorkloads(job, self.log_files)
        self._held: set[int] | None = None  # what the last claim pass found we hold

    @property
    def logger_cache(self) -> dict[int, TriggerLoggingFactory]:
        return self._stock.logger_cache

    def log_line_consumer(self):
        """A started generator that writes a loop's JSON log lines to per-trigger log files."""
        gen = self._stock._process_log_messages_from_subprocess()
        next(gen)
        return gen

    def tick(self, known: frozenset[int], claim: bool = True) -> Tick:
        """One claim interval's DB work (on the DB lane): clean, claim, build what is new (the
        heartbeat has a lane of its own: ``supervisor.heartbeat``).

        ``known`` are triggers already routed or whose outcome is still being persisted: held, but
        never built and run again. At most ``BUILD_CHUNK`` are built per pass (``Tick.backlog``: how
        many held ones wait for the next), so no DB step grows with the backlog (20,000 at once
        build in ~25 s on a loaded 2-core machine: one step that long reads as a DB outage) and the
        first triggers reach their loops while the rest are built. ``claim=False``: only build
        more of what the last claim pass found held (no cleaning, no new claims, and no query over
        every held id: only the chunk is checked to be still ours; losses elsewhere are seen, and
        cancelled, by the next claim pass, within a claim interval as before).
        """
        if claim:
            self.clean_unused()
        t0, c0 = time.monotonic(), time.thread_time()
        held = self.claim() if claim else self._held if self._held is not None else self.held_ids()
        new = sorted(held - known)
        todo = set(new[:BUILD_CHUNK])
        if todo and not claim:  # the last claim pass's set, so: is this chunk still ours?
            if lost := todo - self.held_ids(among=todo):
                held = self._held = held - lost
                todo -= lost
                new = sorted(held - known)
        t1, c1 = time.monotonic(), time.thread_time()
        built, failures = self.build(todo) if todo else ([], [])
        if built or failures:  # *_cpu_s: this lane thread's CPU (the wall time also waits for the GIL and the DB)
            log.info("claim pass", held=len(held), built=len(built), failed=len(failures), backlog=len(new) - len(todo),
                     claim_s=round(t1 - t0, 3), build_s=round(time.monotonic() - t1, 3),
                     claim_cpu_s=round(c1 - c0, 3), build_cpu_s=round(time.thread_time() - c1, 3))
        alone = self.alone() if built else False
        return Tick(held, built, failures, alone, backlog=len(new) - len(todo), more=self._claimer.saturated)

    def claim(self) -> set[int]:
        """Assign triggers of the bundles we serve to us (``claims``: HA row locks, capacity and
        per-loop shares); return every id we hold."""
        with create_session() as session:
            self._claimer.claim(session)
        self._held = self.held_ids()
        return self._held

    def held_ids(self, among: set[int] | None = None) -> set[int]:
        """Stock ``Trigger.ids_for_triggerer``, aggregated in one row (``held``); ``among``: only
        of these ids (in one query)."""
        c = self.claim_filters
        with create_session() as session:
            if among is None:
                return held.held_ids(session, self.job.id, queues=c.queues, team_name=c.team_name)
            return set(session.scalars(select(Trigger.id).where(Trigger.id.in_(among), Trigger.triggerer_id == self.job.id)))

    def alone(self) -> bool:
        """No other triggerer job is alive (same liveness test as ``Trigger.assign_unassigned``)."""
        cutoff = timezone.utcnow() - datetime.timedelta(seconds=self.claim_filters.health_check_threshold)
        with create_session() as session:
            others = session.scalar(
                select(func.count(Job.id)).where(
                    Job.end_date.is_(None), Job.latest_heartbeat > cutoff, Job.job_type == "TriggererJob",
                    Job.id != self.job.id,
                )
            )
        return not others

    def build(self, trigger_ids: set[int]) -> tuple[list[tuple[workloads.RunTrigger, Origin]], list[tuple[int, list[str]]]]:
        """Stock workloads for new trigger ids, each with its origin (bundle, ``None`` if unknown,
        and its DAG run's bundle version), and the failures of those that cannot run (kwargs that
        do not decrypt), for the outcome queue."""
        built = self._stock.build(trigger_ids)
        build_failures = list(self._stock.failed)
        with create_session() as session:
            origins = origins_for([w.id for w in built], session)
        served = self._claimer.scope.served
        if unserved := {w.id: b for w in built if (b := origins.get(w.id, Origin(None)).bundle) not in served}:
            # Claimed by the same bundle rule, so only a trigger whose bundle changed since (a DAG
            # moved, an asset now watched by another bundle's DAG): its instance takes it over.
            log.warning("held triggers of bundles this instance does not serve; handed back", triggers=unserved)
            self.release(unserved)
            for trigger_id in unserved:
                self.logger_cache.pop(trigger_id, None)  # made by the stock build; no line was written
        result, failures = [], build_failures
        for workload in (w for w in built if w.id not in unserved):
            try:
                plain = plain_kwargs(workload.encrypted_kwargs)
                if plain is not workload.encrypted_kwargs:  # stored encrypted (else as the execution API stores them)
                    workload = workload.model_copy(update={"encrypted_kwargs": plain})
            except Exception as err:  # wrong key: fail this trigger, not the loop (stock would crash the runner)
                failures.append((workload.id, [f"cannot decrypt trigger kwargs: {err!r}\n"]))
                continue
            result.append((workload, origins.get(workload.id, Origin(None))))
        return result, failures

    def submit_events(self, entries: Iterable[tuple[int, TriggerEvent]], more: persist.More | None = None) -> list[int]:
        """Persist events in one transaction (one per event if the batch fails); return the
        positions in ``entries`` of those written.

        With ``more``, the step also takes events that arrived while it ran
        (``persist.submit_batch``), after ``entries``' own, in order; their positions count on from
        there. Raises ``DatabaseUnavailable`` if the database cannot be reached: the caller keeps the
        events and retries. An event that fails for any other reason is logged and dropped, alone.
        """
        entries = list(entries)
        try:
            with create_session() as session:
                persist.submit_batch(entries, session, more)
            return list(range(len(entries)))
        except Exception as err:
            raise_if_unreachable(err)
            log.exception("batch event submit failed; retrying one by one", count=len(entries))
        return _one_by_one(entries, lambda tid, event: Trigger.submit_event(trigger_id=tid, event=event), "event")

    def warm_up_persist(self) -> None:
        """On the persist lane, before its first burst: ``persist.warm_up`` (reads only)."""
        with create_session() as session:
            persist.warm_up(session)

    def submit_failures(self, failures: Iterable[tuple[int, list[str] | None]]) -> list[int]:
        """Persist failures in one transaction (one per failure if the batch fails); return the
        positions in ``failures`` of those written.

        Raises ``DatabaseUnavailable`` if the database cannot be reached (the caller retries;
        ``PartlyPersisted`` names those committed one by one before); a failure that cannot be
        written for any other reason is logged and dropped, alone.
        """
        failures = list(failures)
        try:
            with create_session() as session:
                for trigger_id, tb in failures:
                    Trigger.submit_failure(trigger_id=trigger_id, exc=tb, session=session)
            return list(range(len(failures)))
        except Exception as err:
            raise_if_unreachable(err)
            log.exception("batch failure submit failed; retrying one by one", count=len(failures))
        return _one_by_one(failures, lambda tid, tb: Trigger.submit_failure(trigger_id=tid, exc=tb), "failure")

    def clean_unused(self) -> None:
        Trigger.clean_unused()

    def heartbeat(self) -> None:
        perform_heartbeat(self.job, heartbeat_callback=self._heartbeat_metric, only_if_necessary=True)

    def _heartbeat_metric(self, session=None) -> None:  # type: ignore[no-untyped-def]
        """Stock ``TriggerRunnerSupervisor.heartbeat_callback`` (Airflow 3.3.2): ``triggerer_heartbeat``."""
        from airflow._shared.observability.metrics import stats

        team = self.claim_filters.team_name
        stats.incr("triggerer_heartbeat", 1, 1, tags={"team_name": team} if team else {})

    def listen_for_handbacks(self, wake: Callable[[], None]) -> handback.HandbackListener | None:
        """Other members' hand-back hints (PostgreSQL with psycopg2; else ``None``): ``handback``."""
        return handback.HandbackListener.start_for_airflow(self.job.id, wake)

    def drop_idle_connections(self) -> None:
        """Close the pool's idle connections (at shutdown, the DB unreachable).

        Airflow's ``run_job`` marks the job complete on the main thread after we return, on a
        pooled connection: its pre-ping on a connection into a black hole that still ACKs (a proxy,
        a half-dead load balancer) never returns, so the process never exits. A fresh connection
        is bounded by ``connect_timeout`` (``db_bounds``). Connections a stuck lane holds are not
        in the pool and stay where they are.
        """
        from airflow import settings

        if settings.engine is not None:
            settings.engine.dispose()

    def release(self, trigger_ids: Iterable[int] | None = None, keep: Iterable[int] = ()) -> int:
        """Hand triggers back (``triggerer_id = NULL``) so another triggerer claims them at once;
        return how many. ``trigger_ids``: these (if still ours); ``None``: every one we hold but
        ``keep``. On PostgreSQL the same transaction hints listening members to claim now
        (``handback``)."""
        from sqlalchemy import update

        ours = Trigger.triggerer_id == self.job.id
        with create_session() as session:
            if trigger_ids is None and not keep:
                chunks: list[list[int] | None] = [None]  # everything we hold: one statement, no list
            else:
                if trigger_ids is None:  # everything but ``keep``: the ids read first, so no statement
                    kept = set(keep)     # binds more values than the DB allows (SQLite: 32,766)
                    trigger_ids = [i for i in session.scalars(select(Trigger.id).where(ours)) if i not in kept]
                ids = list(trigger_ids)
                chunks = [ids[i:i + RELEASE_CHUNK] for i in range(0, len(ids), RELEASE_CHUNK)]
            released = 0
            for chunk in chunks:
                where = [ours] if chunk is None else [ours, Trigger.id.in_(chunk)]
                result = session.execute(
                    update(Trigger).where(*where).values(triggerer_id=None).execution_options(synchronize_session=False)
                )
                released += result.rowcount or 0
            if released:
                handback.notify(session, self.job.id, released)
        return released
