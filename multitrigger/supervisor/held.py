"""
Every trigger id this triggerer holds, read as one row: stock ``Trigger.ids_for_triggerer``'s own
query, aggregated in the database.

Why: the claim pass asks for every id it holds, every claim interval, for as long as it runs.
Stock returns them as one ORM row each: with 22,200 held that is 25-32 ms of Python with the
interpreter lock held (PostgreSQL, Airflow 3.3.2), every second, on a lock the persist lane and the
selector thread share. One aggregated row (``array_agg`` on PostgreSQL, a JSON array on SQLite) is
the same ids for ~4 ms; a whole claim pass's own CPU went from 30-44 to 14-21 ms (issue 13,
``benchmarks/README.md``). It did not measurably change a 200-event burst's latency with 22,000
held: a persist step that overlapped a pass once waited 27 ms for a read that took 1.2 ms after
it, but most of that latency is elsewhere.

Stock's query is taken from stock itself: ``ids_for_triggerer`` builds its select (triggerer id,
``queue``, and ``team_name`` when ``[core] multi_team``: checked against Airflow 3.3.2) and hands it
to ``session.scalars``; a recording session keeps it instead of running it. If that ever changes
shape (no select recorded), or on another database, stock's own call runs as before.
``tests/test_held.py`` proves the two agree on every filter. SQLAlchemy only.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from airflow.models.trigger import Trigger


class _Recorder:
    """A stand-in session for ``ids_for_triggerer``: keeps the select it would run, returns no rows."""

    def __init__(self) -> None:
        self.query: Select[Any] | None = None

    def scalars(self, query: Select[Any]) -> _Recorder:
        self.query = query
        return self

    def all(self) -> list[int]:
        return []


def stock_query(triggerer_id: int, queues: set[str] | None, team_name: str | None) -> Select[Any] | None:
    """The select stock ``Trigger.ids_for_triggerer`` would run, or ``None`` if it ran none."""
    recorder = _Recorder()
    try:
        Trigger.ids_for_triggerer(triggerer_id, queues=queues, team_name=team_name, session=recorder)  # type: ignore[arg-type]
    except Exception:  # a stock that does more with its session than this recorder answers
        return None
    return recorder.query if isinstance(recorder.query, Select) else None


def held_ids(session: Session, triggerer_id: int, queues: set[str] | None = None,
             team_name: str | None = None) -> set[int]:
    """``set(Trigger.ids_for_triggerer(...))``, in one row where the database can aggregate."""
    dialect = session.get_bind().dialect.name
    query = stock_query(triggerer_id, queues, team_name) if dialect in ("postgresql", "sqlite") else None
    if query is None:
        return set(Trigger.ids_for_triggerer(triggerer_id, queues=queues, team_name=team_name, session=session))
    ids = query.subquery().c[0]
    if dialect == "postgresql":
        return set(session.scalar(select(func.array_agg(ids))) or ())
    return set(json.loads(session.scalar(select(func.json_group_array(ids))) or "[]"))
