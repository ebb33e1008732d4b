"""
The loop's ``TriggerStateChanges`` with fired events, built and dumped without pydantic's validation.

Checked against Airflow 3.3.2 (``TriggerRunner.process_trigger_events``, ``messages.TriggerStateChanges``,
``TriggerEventEntry``, ``TriggerCommsDecoder.asend``) and pydantic 2 (``model_construct``, ``model_dump``).

Every push of fired events builds a ``TriggerStateChanges`` (pydantic validates each entry, the
event through its discriminated union) and ``asend`` dumps it again (``model_dump``) into the frame's
body: ~6 us an event (microbench), paid by the loop for every firing trigger. For the common case
(every event exactly a ``TriggerEvent`` whose payload is made of plain JSON values: ``dict`` with
``str`` keys, ``list``, ``tuple``, ``str``, ``int``, ``float``, ``bool``, ``None``) the validation
changes nothing (a ``TriggerEvent`` is kept as it is; the entries' fields are already of their types)
and the dump is the same values in the same shape, so ``changes`` builds the message with
``model_construct`` and hands ``asend`` that body as it is: the frame's bytes are stock's
(``tests/test_state_sync.py``). Anything else (a failure to report, another event class, a payload
holding any other type or nested deeper than ``MAX_DEPTH``) takes stock's path, which also keeps
stock's handling of an event that does not serialise (``sanitize_trigger_events``).
"""

from __future__ import annotations

from typing import Any

from pydantic import PrivateAttr

from airflow.jobs.triggerer_job_runner import TriggerEventEntry, messages
from airflow.triggers.base import TriggerEvent

#: A payload nested deeper than this takes stock's path.
MAX_DEPTH = 16
_SCALARS = (str, int, float, bool, type(None))


def _plain(value: Any, depth: int = 0) -> bool:
    """Made only of plain JSON values (exact types), which pydantic's ``Any`` dumps as they are."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if depth >= MAX_DEPTH:
        return False
    if kind is dict:
        return all(type(k) is str and _plain(v, depth + 1) for k, v in value.items())
    if kind is list or kind is tuple:
        return all(_plain(v, depth + 1) for v in value)
    return False


class PlainChanges(messages.TriggerStateChanges):
    """A ``TriggerStateChanges`` whose plain ``model_dump()`` is the body made when it was built."""

    _body: dict[str, Any] | None = PrivateAttr(default=None)

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        if kwargs or self._body is None:
            return super().model_dump(**kwargs)
        return self._body


def changes(events: list[TriggerEventEntry], finished: list[int]) -> PlainChanges | None:
    """The message for ``events`` and ``finished`` (no failures) without validation; None: not plain."""
    for entry in events:
        if type(entry) is not TriggerEventEntry or type(entry.event) is not TriggerEvent:
            return None
        if type(entry.trigger_id) is not int or type(entry.persist_seq) not in (int, type(None)):
            return None
        if not _plain(entry.event.payload):
            return None
    msg = PlainChanges.model_construct(events=events or None, finished=finished or None, failures=None)
    msg._body = {
        "type": msg.type,
        "events": [(e.trigger_id, {"payload": e.event.payload}, e.persist_seq) for e in events] if events else None,
        "failures": None,
        "finished": list(finished) if finished else None,
    }
    return msg
