"""What a demo home reads back from the metadata DB, and how: task-instance rows, read with plain
SQL through SQLAlchemy Core and decoded without importing Airflow (``DbReader``, which
:class:`multitrigger.demo.home.AirflowHome` is).  Column names are Airflow 3.3.2's."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple


def decode_serde(value: Any) -> Any:
    """Decode ``airflow.sdk.serde`` output (as stored in ``task_instance.next_kwargs``) without Airflow.

    Plain JSON passes through; ``{"__classname__", "__version__", "__data__"}`` envelopes for
    tuple/set/frozenset/datetime/date/timedelta are decoded, unknown envelopes are returned as-is.
    """
    if isinstance(value, list):
        return [decode_serde(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__classname__" in value and "__data__" in value:
        cls, data = value["__classname__"], value["__data__"]
        if cls == "builtins.tuple":
            return tuple(decode_serde(v) for v in data)
        if cls in ("builtins.set", "builtins.frozenset"):
            items = [decode_serde(v) for v in data]
            try:
                return set(items) if cls == "builtins.set" else frozenset(items)
            except TypeError:
                return items
        if cls in ("datetime.datetime", "pendulum.datetime.DateTime") and isinstance(data, dict):
            tz = _dt.timezone.utc
            return _dt.datetime.fromtimestamp(float(data["timestamp"]), tz=tz)
        if cls == "datetime.date" and isinstance(data, str):
            return _dt.date.fromisoformat(data)
        if cls == "datetime.timedelta" and isinstance(data, (int, float)):
            return _dt.timedelta(seconds=float(data))
        return value
    return {k: decode_serde(v) for k, v in value.items()}


@dataclasses.dataclass(frozen=True)
class TaskRef:
    """Identifies a task instance created by :meth:`AirflowHome.defer` (hashable; usable as dict key)."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    ti_id: str | None = dataclasses.field(default=None, compare=False)
    trigger_id: int | None = dataclasses.field(default=None, compare=False)

    def key(self) -> dict[str, Any]:
        return {"dag_id": self.dag_id, "run_id": self.run_id, "task_id": self.task_id, "map_index": self.map_index}


class _TIStateTuple(NamedTuple):
    state: str | None
    next_kwargs: Any  # JSON as stored (serde-encoded dict, already json-decoded), None if NULL
    trigger_id: int | None


class TIState(_TIStateTuple):
    """``(state, next_kwargs, trigger_id)`` of one task instance, plus ``.next_method`` and ``.event``.

    Unpacks as the 3-tuple; ``next_method`` is an extra attribute (not part of equality).
    """

    def __new__(cls, state: str | None, next_kwargs: Any, trigger_id: int | None, next_method: str | None = None):
        self = super().__new__(cls, state, next_kwargs, trigger_id)
        self.next_method = next_method
        return self

    def __repr__(self) -> str:
        return (
            f"TIState(state={self.state!r}, next_kwargs={self.next_kwargs!r}, trigger_id={self.trigger_id!r}, "
            f"next_method={self.next_method!r})"
        )

    @property
    def event(self) -> Any:
        """Decoded payload of the TriggerEvent that resumed the task (``next_kwargs["event"]``), or None."""
        if not isinstance(self.next_kwargs, dict):
            return None
        return decode_serde(self.next_kwargs.get("event"))


class DbReader:
    """Reads a home's metadata DB (``db_url``) with plain SQL; one NullPool engine, made lazily."""

    db_url: str
    _engine: Any

    @property
    def engine(self):
        if self._engine is None:
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool

            is_sqlite = self.db_url.startswith("sqlite")
            connect_args = {"timeout": 30} if is_sqlite else {}
            engine = create_engine(self.db_url, poolclass=NullPool, connect_args=connect_args)
            if is_sqlite:
                from sqlalchemy import event

                @event.listens_for(engine, "connect")
                def _pragmas(dbapi_connection, _record):  # same as Airflow's own SQLite connections
                    cursor = dbapi_connection.cursor()
                    cursor.execute("PRAGMA foreign_keys=ON")
                    cursor.close()

            self._engine = engine
        return self._engine

    def sql(self, query: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        """Run one SQL statement on the home's DB (autocommitted); returns rows for SELECTs."""
        from sqlalchemy import text

        with self.engine.begin() as conn:
            result = conn.execute(text(query), dict(params or {}))
            return [tuple(row) for row in result] if result.returns_rows else []

    def ti_states(self, refs: Iterable[TaskRef]) -> dict[TaskRef, TIState]:
        """``{ref: TIState(state, next_kwargs, trigger_id, next_method)}`` read with one query per run."""
        refs = list(refs)
        by_run: dict[tuple[str, str], list[TaskRef]] = {}
        for ref in refs:
            by_run.setdefault((ref.dag_id, ref.run_id), []).append(ref)
        out: dict[TaskRef, TIState] = {}
        for (dag_id, run_id), group in by_run.items():
            rows = self.sql(
                "SELECT task_id, map_index, state, next_kwargs, trigger_id, next_method FROM task_instance "
                "WHERE dag_id = :dag_id AND run_id = :run_id",
                {"dag_id": dag_id, "run_id": run_id},
            )
            found = {(r[0], r[1]): r for r in rows}
            for ref in group:
                row = found.get((ref.task_id, ref.map_index))
                if row is None:
                    raise LookupError(f"no task instance for {ref}")
                nk = row[3]
                if isinstance(nk, (str, bytes)):
                    nk = json.loads(nk)
                out[ref] = TIState(row[2], nk, row[4], row[5])
        return out

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
