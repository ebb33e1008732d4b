"""The demo's triggers: real ``BaseTrigger`` subclasses its deferred tasks run.

Every trigger serializes to ``("<its module>.<its class>", kwargs)`` so any triggerer (stock
Airflow or multitrigger) whose interpreter can import the class can re-hydrate it. Events carry
``pid`` / ``executable`` / ``loop`` (the ``MULTITRIGGER_LOOP`` environment variable), which is
how the demo shows which loop, process and interpreter ran each trigger.

Importing this module imports Airflow (3.3.2's ``airflow.triggers.base``).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def parse_moment(moment: str | _dt.datetime) -> _dt.datetime:
    """An ISO timestamp (or datetime) as an aware datetime; naive means UTC."""
    if isinstance(moment, _dt.datetime):
        value = moment
    else:
        value = _dt.datetime.fromisoformat(str(moment).replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value


def classpath(trigger: BaseTrigger) -> str:
    return f"{type(trigger).__module__}.{type(trigger).__qualname__}"


def process_info() -> dict[str, Any]:
    """Identify the process running a trigger (part of every event payload)."""
    return {
        "pid": os.getpid(),
        "executable": sys.executable,
        "loop": os.environ.get("MULTITRIGGER_LOOP"),
    }


class FireAtTrigger(BaseTrigger):
    """Sleep (one ``asyncio.sleep``) until ``moment`` (ISO datetime, naive = UTC), then fire once
    with ``fired_at``, :func:`process_info` and ``payload``."""

    def __init__(self, moment: str, payload: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(moment, _dt.datetime):
            moment = parse_moment(moment).isoformat()
        self.moment = moment
        self.payload = payload

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return classpath(self), {"moment": self.moment, "payload": self.payload}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        delay = (parse_moment(self.moment) - utcnow()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)
        yield TriggerEvent({"fired_at": utcnow().isoformat(), **process_info(), **(self.payload or {})})


class RaiseTrigger(BaseTrigger):
    """Fail immediately with ``RuntimeError(message)``: the demo's broken trigger, which fails its
    own task and nothing else."""

    def __init__(self, message: str = "RaiseTrigger failed", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.message = message

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return classpath(self), {"message": self.message}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        raise RuntimeError(self.message)
        yield  # pragma: no cover - makes this an async generator
