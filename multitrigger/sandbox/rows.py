"""What the sandbox reads back from the metadata DB: task-instance and trigger rows, decoded without
importing Airflow (``multitrigger.sandbox.home`` reads them with plain SQL)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
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
