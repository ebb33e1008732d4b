"""
Persisting a burst of trigger events: stock's ``Trigger.submit_event``, bulk.

Checked against Airflow 3.3.2 (``airflow.models.trigger``: ``Trigger.submit_event``,
``handle_event_submit``, ``_fail_unresumable_task_instance``).

What stock does per event: load every deferred task instance of the trigger as an ORM entity
(with its DagRun, joined), run ``handle_event_submit`` on it (which decodes its ``next_kwargs``,
adds the payload, re-encodes with serde, clears ``trigger_id``, sets ``state = scheduled`` and
``scheduled_dttm = utcnow()``, or routes it to ``__fail__`` if that cannot be done) and flush; then
load the trigger with its asset watchers to feed assets and callbacks. Profiled on 2000 events at
once, the ORM work (entity loading, unit-of-work flush per row) is most of the supervisor's time.

Here the same stock ``handle_event_submit`` runs on a ``_Row``: the task instance's columns as
plain values, every attribute it sets recorded. The recorded writes then go to the database as one
UPDATE by primary key per shape of row (``_write``: ``UPDATE ... FROM unnest(arrays)`` on PostgreSQL,
one DBAPI executemany elsewhere; both apply ``updated_at``'s ``onupdate`` as a flush does). So the
rows written, the ``next_kwargs``, the state changes and the failure routing are stock's own code's
output; only the unit of work is replaced. ``tests/test_persist.py`` proves it against stock
``Trigger.submit_event`` on the same inputs.

What does not fit the row model goes through stock unchanged, on the same session: a trigger
feeding assets or a callback, a trigger with several events in the batch, a ``BaseTaskEndEvent``
(its handler uses relationships: DAG model, DagRun, XComs, callbacks), and any task instance whose
handler touched anything but the loaded columns (``_NeedsEntity``: a future Airflow change, say).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import BindParameter, Column, Integer, String, any_, bindparam, cast, func, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from airflow.models.asset import AssetWatcherModel
from airflow.models.callback import Callback
from airflow.models.taskinstance import TaskInstance
from airflow.models.trigger import Trigger, handle_event_submit
from airflow.triggers.base import BaseTaskEndEvent, TriggerEvent
from airflow.utils.state import TaskInstanceState

#: The columns ``handle_event_submit`` reads for a plain ``TriggerEvent`` (and ``__repr__`` for its
#: log lines), loaded per deferred task instance.
_READ = ("id", "dag_id", "task_id", "run_id", "map_index", "try_number", "state", "trigger_id",
         "next_method", "next_kwargs")
#: Columns a ``_Row`` may be written on (anything else: that task instance takes the ORM path).
_WRITABLE = frozenset(c.key for c in TaskInstance.__table__.columns) - {"id"}
#: Bound on the ids in one ``IN (...)`` (SQLite's variable limit is 32766).
_CHUNK = 5000


class _NeedsEntity(Exception):
    """``handle_event_submit`` wanted more than the loaded columns: use the ORM entity."""


class _Row:
    """A deferred task instance as plain values; attribute writes are recorded, not applied."""

    __slots__ = ("_values", "writes")

    def __init__(self, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "writes", {})

    def __getattr__(self, name: str) -> Any:
        writes, values = object.__getattribute__(self, "writes"), object.__getattribute__(self, "_values")
        if name in writes:
            return writes[name]
        if name in values:
            return values[name]
        raise _NeedsEntity(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _WRITABLE:
            raise _NeedsEntity(name)
        self.writes[name] = value

    def __repr__(self) -> str:  # stock's log lines name the task instance the stock way
        return TaskInstance.__repr__(self)  # type: ignore[arg-type]


class _NoFlush:
    """The session ``handle_event_submit`` gets for a ``_Row``: its ``flush`` is the bulk UPDATE's."""

    def flush(self, objects: object = None) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise _NeedsEntity(f"session.{name}")


def special_triggers(ids: Sequence[int], session: Session) -> set[int]:
    """Triggers whose event must take stock ``submit_event``: repeated in the batch, feeding
    assets (asset watchers) or a callback."""
    special = {tid for tid, n in Counter(ids).items() if n > 1}
    dialect = session.get_bind().dialect.name
    query = _queries(dialect)[0]
    for chunk in _chunks(sorted(set(ids))):
        special |= set(session.connection().scalars(query, {"ids": _ids_value(chunk, dialect)}))
    return special


def _deferred_rows(chunk: list[int], session: Session) -> Any:
    """``_READ`` of the task instances pointing at the triggers in ``chunk``, whatever their state."""
    dialect = session.get_bind().dialect.name
    return session.connection().execute(_queries(dialect)[1], {"ids": _ids_value(chunk, dialect)})


@functools.lru_cache(maxsize=8)
def _queries(dialect: str) -> tuple[Any, Any]:
    """The two statements of every step, built once per dialect (building them cost ~1 of the
    ~2 ms CPU a step of one event takes), each with the trigger ids as one parameter ``ids``:
    asset-watcher and callback triggers among them; the task instances pointing at them.

    Stock selects ``trigger_id = ? AND state = 'deferred'``; the state is checked in Python
    (``submit_batch``), not in SQL: SQLite (no statistics) would then search the ``ti_state``
    index, i.e. read every deferred task instance of the DB (20,000 held: all 20,000) per chunk.
    """
    watchers, callbacks = AssetWatcherModel.__table__.c.trigger_id, Callback.__table__.c.trigger_id
    ids = _ids_param(dialect)
    special = select(watchers).where(_among(watchers, ids, dialect)).union(
        select(callbacks).where(_among(callbacks, ids, dialect)))
    table = TaskInstance.__table__
    rows = select(*(table.c[c] for c in _READ)).where(_among(table.c.trigger_id, ids, dialect))
    return special, rows


def _ids_param(dialect: str) -> BindParameter[Any]:
    """The trigger ids as one parameter: an array on PostgreSQL, a JSON list (read by
    ``json_each``) on SQLite, an expanding ``IN`` elsewhere. A plain ``IN`` of 2000 ids renders
    2000 placeholders for every statement (~10 ms here, per statement)."""
    if dialect == "postgresql":
        return bindparam("ids", type_=ARRAY(Integer))
    if dialect == "sqlite":
        return bindparam("ids", type_=String())
    return bindparam("ids", expanding=True)


def _ids_value(chunk: list[int], dialect: str) -> Any:
    return json.dumps(chunk) if dialect == "sqlite" else list(chunk)


def _among(column: ColumnElement[Any], ids: BindParameter[Any], dialect: str) -> ColumnElement[bool]:
    """``column IN <ids>`` (``_ids_param``).

    PostgreSQL: ``= ANY((SELECT array_agg(v) FROM unnest(:ids) AS v))``, not ``= ANY(:ids)``. With
    the ids inline (psycopg2 binds client-side) and a table never analyzed (a new database, a server
    with ``autovacuum = off``), the planner expects ``= ANY`` of 150 constants to match most of
    ``task_instance`` and scans all of it: 14 ms for 22,200 rows (``EXPLAIN ANALYZE``, PostgreSQL
    15), where stock's one-event ``trigger_id = ?`` uses the ``ti_trigger_id`` index. Behind an
    init plan (the cast keeps ``= ANY`` an array comparison) the array is a parameter of unknown
    content, planned as selective, with statistics or without: an index scan, ~0.2 ms (issue 13,
    ``benchmarks/README.md``)."""
    if dialect == "postgresql":
        v = func.unnest(ids).table_valued("v").render_derived()
        return column == any_(cast(select(func.array_agg(v.c.v)).scalar_subquery(), ARRAY(Integer)))
    if dialect == "sqlite":
        return column.in_(select(func.json_each(ids).table_valued("value").c.value))
    return column.in_(ids)


#: At most this many times a step takes the events that arrived while it ran (``submit_batch``).
ABSORB_ROUNDS = 4

#: ``more(known)``: events queued since the step began, none for a trigger in ``known`` (``Outcomes.absorb``).
More = Callable[[set[int]], list[tuple[int, TriggerEvent]]]


def submit_batch(entries: list[tuple[int, TriggerEvent]], session: Session, more: More | None = None) -> Counter[str]:
    """``Trigger.submit_event`` for every entry, in ``session`` (the caller commits). Returns how
    many task instances took each path (``bulk``, ``entity``) and how many events went to stock
    ``submit_event`` (``stock``).

    With ``more``: once its entries are handled, and before anything is written, the step takes the
    events that arrived meanwhile (``more``) and handles them too, up to ``ABSORB_ROUNDS`` times;
    they are appended to ``entries``, so the caller knows what it wrote. In a burst the loops' pushes
    arrive a few ms apart: the later ones no longer wait for the first step's write and commit and a
    step's fixed costs of their own. Events of a trigger already in the step stay queued for the
    next (a trigger's events are handled in order, as stock's one-by-one path would)."""
    updates: list[dict[str, Any]] = []
    by_entity: list[tuple[Any, TriggerEvent]] = []  # (task instance id, event): the ORM path
    special: set[int] = set()
    todo, rounds, known = list(entries), 0, {tid for tid, _ in entries}
    while todo:
        special |= _handle(todo, session, updates, by_entity)
        todo = []
        if more is not None and rounds < ABSORB_ROUNDS:
            rounds += 1
            todo = more(known)
            entries.extend(todo)
            known.update(tid for tid, _ in todo)
    for keys, group in _by_keys(updates):
        _write(session, keys, group)
    for ti_id, event in by_entity:
        ti = session.get(TaskInstance, ti_id)
        if ti is not None and ti.state == TaskInstanceState.DEFERRED:
            handle_event_submit(event, task_instance=ti, session=session)
    session.flush()
    stock = [(tid, event) for tid, event in entries if tid in special]
    for trigger_id, event in stock:
        Trigger.submit_event(trigger_id=trigger_id, event=event, session=session)
    return Counter(bulk=len(updates), entity=len(by_entity), stock=len(stock))


def _handle(entries: list[tuple[int, TriggerEvent]], session: Session, updates: list[dict[str, Any]],
            by_entity: list[tuple[Any, TriggerEvent]]) -> set[int]:
    """Stock's ``handle_event_submit`` on a ``_Row`` of every deferred task instance of ``entries``'
    triggers, its writes added to ``updates`` (or the task instance to ``by_entity``); returns the
    triggers that must take stock ``submit_event`` instead (``special_triggers``)."""
    special = special_triggers([tid for tid, _ in entries], session)
    events = {tid: event for tid, event in entries if tid not in special}
    no_flush = _NoFlush()
    for chunk in _chunks(list(events)):
        for values in _deferred_rows(chunk, session):
            row = _Row(dict(zip(_READ, values)))
            if row.state != TaskInstanceState.DEFERRED:
                continue
            event = events[row.trigger_id]
            if isinstance(event, BaseTaskEndEvent):
                by_entity.append((row.id, event))
                continue
            try:
                handle_event_submit(event, task_instance=row, session=no_flush)  # type: ignore[arg-type]
            except _NeedsEntity:
                by_entity.append((row.id, event))
                continue
            if row.writes:
                updates.append({"id": row.id, **row.writes})
    return special


def _write(session: Session, keys: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """UPDATE the rows (each sets ``keys``) by primary key, every value through its column's own
    bind processing (JSON, UUID, UtcDateTime), and the columns' Python-side ``onupdate``
    (``updated_at``) set as a flush sets it.

    PostgreSQL: one ``UPDATE task_instance SET ... FROM unnest(<one array per column>)`` per
    ``_CHUNK`` rows, the arrays bound as parameters and cast to each column's type: psycopg2 runs
    an executemany as one round trip per row (0.5 ms each here), and a ``VALUES`` list is compiled
    anew for every batch (1.7 ms per row). Elsewhere (SQLite: executemany is in-process): one
    DBAPI executemany of the compiled ``UPDATE task_instance SET ... WHERE id = ?`` (SQLAlchemy's
    ORM bulk UPDATE spent two thirds of its time building per-row parameters; 2000 rows here:
    0.30 s -> 0.15 s of CPU, under cProfile).
    """
    table = TaskInstance.__table__
    names = ["id", *(k for k in keys if k != "id")]
    stamped = [c for c in table.columns if c.onupdate is not None and c.key not in names]
    if session.get_bind().dialect.name == "postgresql":
        _write_unnest(session, names, stamped, rows)
    else:
        _write_many(session, names, stamped, rows)


def _write_unnest(session: Session, names: list[str], stamped: list[Column[Any]], rows: list[dict[str, Any]]) -> None:
    dialect, table = session.get_bind().dialect, TaskInstance.__table__
    procs = {c: table.c[c].type.bind_processor(dialect) for c in names}
    sets = [f"{c} = v.{c}" for c in names[1:]] + [f"{c.key} = :onupdate_{c.key}" for c in stamped]
    arrays = ", ".join(f"CAST(:{c} AS {table.c[c].type.compile(dialect=dialect)}[])" for c in names)
    sql = text(f"UPDATE task_instance SET {', '.join(sets)} FROM unnest({arrays}) AS v({', '.join(names)}) "
               "WHERE task_instance.id = v.id")
    for i in range(0, len(rows), _CHUNK):
        chunk = rows[i: i + _CHUNK]
        params: dict[str, Any] = {c: [procs[c](r[c]) if procs[c] else r[c] for r in chunk] for c in names}
        params.update({f"onupdate_{c.key}": _bound(c.type.bind_processor(dialect), _onupdate(c)) for c in stamped})
        session.execute(sql, params)


def _write_many(session: Session, names: list[str], stamped: list[Column[Any]], rows: list[dict[str, Any]]) -> None:
    """One DBAPI executemany, its statement compiled by SQLAlchemy for the dialect and each value
    through the processor of the dialect's own implementation of its type, as a compiled statement
    does (on SQLite a datetime must become SQLAlchemy's string, not sqlite3's default adapter's)."""
    dialect, table = session.get_bind().dialect, TaskInstance.__table__
    procs = {c: table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in names}
    stamps = {c.key: _bound(c.type.dialect_impl(dialect).bind_processor(dialect), _onupdate(c)) for c in stamped}
    sql, order = _update_by_id(dialect, tuple(names), tuple(stamps))
    columns = {c: [stamps[c]] * len(rows) if c in stamps else _processed(procs[c], [r[c] for r in rows])
               for c in (*names, *stamps)}  # column by column: no call per value but its processor's
    if order is not None:
        params: list[Any] = list(zip(*(columns[c] for c in order)))
    else:
        params = [dict(zip((f"v_{c}" for c in columns), values)) for values in zip(*columns.values())]
    session.connection().exec_driver_sql(sql, params)


def _processed(proc: Callable[[Any], Any] | None, values: list[Any]) -> list[Any]:
    return [proc(v) for v in values] if proc else values


@functools.lru_cache(maxsize=64)
def _update_by_id(dialect: Dialect, names: tuple[str, ...], stamps: tuple[str, ...]) -> tuple[str, tuple[str, ...] | None]:
    """``UPDATE task_instance SET <names[1:]>, <stamps> WHERE id = <names[0]>`` compiled for the
    dialect (once per shape of row: ~1 ms, a batch of 200 costs ~15), and the order of its positional
    parameters (``None``: a named paramstyle, ``v_<column>``)."""
    table = TaskInstance.__table__
    values = {c: bindparam(f"v_{c}") for c in (*names[1:], *stamps)}
    compiled = update(table).where(table.c.id == bindparam("v_id")).values(values).compile(dialect=dialect)
    if not compiled.positional:
        return compiled.string, None
    return compiled.string, tuple(p[2:] for p in compiled.positiontup or ())  # "v_state" -> "state"


def _onupdate(column: Column[Any]) -> Any:
    """The value a flush would set for ``column``'s ``onupdate`` (``updated_at``: ``utcnow()``)."""
    return column.onupdate.arg(None) if column.onupdate.is_callable else column.onupdate.arg  # type: ignore[union-attr]


def _bound(proc: Callable[[Any], Any] | None, value: Any) -> Any:
    return proc(value) if proc else value


def _by_keys(updates: Iterable[dict[str, Any]]) -> list[tuple[tuple[str, ...], list[dict[str, Any]]]]:
    """Rows grouped by the columns they set (one executemany per shape, in first-seen order)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for u in updates:
        groups.setdefault(tuple(sorted(u)), []).append(u)
    return list(groups.items())


def _chunks(ids: list[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i: i + _CHUNK]


#: A task instance that is never in the DB (``warm_up`` runs stock's handler on it).
_NO_SUCH_TI = {"id": "00000000-0000-0000-0000-000000000000", "dag_id": "-", "task_id": "-", "run_id": "-",
               "map_index": -1, "try_number": 1, "state": TaskInstanceState.DEFERRED, "trigger_id": -1,
               "next_method": "execute_complete", "next_kwargs": None}


def warm_up(session: Session) -> None:
    """Do once, at start-up, what a process's first persist does the first time, writing nothing.

    The first ``submit_batch`` of a process cost 13-18 ms of CPU against 3-4 ms for the next ones
    (one event, SQLite, ``thread_time``): the lane thread's first session and connection, the
    queries' first compilation, serde's first encoding. Paid by the first events of the first burst
    (``crash``: the slowest of its 60 events in two runs of two was the very first of the window).
    Here: the same two queries for a trigger id that does not exist, and stock ``handle_event_submit``
    on a ``_Row`` of a task instance that does not exist (its writes are recorded, never applied);
    then the transaction is rolled back. After it the first persist costs 5-8 ms.
    """
    special_triggers([-1], session)
    _deferred_rows([-1], session).all()
    handle_event_submit(TriggerEvent({"warm_up": True}), task_instance=_Row(dict(_NO_SUCH_TI)), session=_NoFlush())  # type: ignore[arg-type]
    session.rollback()
