"""What tests read back from a home's metadata DB beyond the demo's task-instance states: trigger
rows, DAG bundles, and polling for a condition (``wait_for``).  Plain SQL on Airflow 3.3.2's
tables; importing this does not import Airflow."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

from multitrigger.demo.rows import DbReader, TaskRef, TIState

T = TypeVar("T")


class _TriggerRowTuple(NamedTuple):
    id: int
    classpath: str
    triggerer_id: int | None


class TriggerRow(_TriggerRowTuple):
    """``(id, classpath, triggerer_id)`` of one ``trigger`` row, plus ``.queue`` (not part of equality)."""

    def __new__(cls, id: int, classpath: str, triggerer_id: int | None, queue: str | None = None):  # noqa: A002
        self = super().__new__(cls, id, classpath, triggerer_id)
        self.queue = queue
        return self

    def __repr__(self) -> str:
        return (
            f"TriggerRow(id={self.id!r}, classpath={self.classpath!r}, triggerer_id={self.triggerer_id!r}, "
            f"queue={self.queue!r})"
        )


class StateReader(DbReader):
    """The demo's :class:`~multitrigger.demo.rows.DbReader` plus what tests read and wait for."""

    def ti_state(self, ref: TaskRef) -> TIState:
        return self.ti_states([ref])[ref]

    def event(self, ref: TaskRef) -> Any:
        """Decoded TriggerEvent payload written into the TI's ``next_kwargs`` (None if not fired yet)."""
        return self.ti_state(ref).event

    def trigger_rows(self) -> list[TriggerRow]:
        rows = self.sql("SELECT id, classpath, triggerer_id, queue FROM trigger ORDER BY id")
        return [TriggerRow(*r) for r in rows]

    def dag_bundles(self) -> dict[str, str]:
        """``dag_id -> DagModel.bundle_name`` straight from the DB."""
        return dict(self.sql("SELECT dag_id, bundle_name FROM dag ORDER BY dag_id"))

    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float = 30,
        interval: float = 0.2,
        message: str | Callable[[], str] | None = None,
    ) -> T:
        """Poll ``predicate`` until it returns something truthy (returned) or raise ``TimeoutError``.

        An ``AssertionError`` from the predicate is a failed check, not a busy DB: it is raised at
        once. Other exceptions (the DB locked or briefly unreachable) keep it polling until the
        deadline, and the last one is chained to the ``TimeoutError``.
        """
        deadline = time.monotonic() + timeout
        last_exc: BaseException | None = None
        while True:
            try:
                value = predicate()
                if value:
                    return value
                last_exc = None
            except AssertionError:
                raise
            except Exception as exc:  # DB busy etc. -- keep polling until the deadline
                last_exc = exc
            if time.monotonic() >= deadline:
                detail = message() if callable(message) else message
                raise TimeoutError(
                    f"condition not met within {timeout}s" + (f": {detail}" if detail else "")
                ) from last_exc
            time.sleep(interval)

    def wait_for_states(
        self, refs: Iterable[TaskRef], states: str | Iterable[str | None], timeout: float = 30
    ) -> dict[TaskRef, TIState]:
        """Wait until every ref is in one of ``states``; returns the final states."""
        refs = list(refs)
        wanted = {states} if isinstance(states, str) or states is None else set(states)
        last: dict[TaskRef, TIState] = {}

        def check():
            nonlocal last
            last = self.ti_states(refs)
            return last if all(s.state in wanted for s in last.values()) else None

        return self.wait_for(
            check, timeout, message=lambda: f"wanted {wanted}, have {[s.state for s in last.values()]}"
        )
