"""Triggers used by the benchmarks (``benchmarks/``): real ``BaseTrigger`` subclasses, no mocks.

``BlockingTrigger`` is the "noisy neighbour": it really blocks the event loop it runs in with
``time.sleep`` inside ``async run()``, again and again, and never fires.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

_PREFIX = "mt_testsupport.bench_triggers"


class BlockingTrigger(BaseTrigger):
    """Forever: yield to the loop for ``every_seconds``, then block it for ``block_seconds``.

    The block is a plain ``time.sleep`` inside the coroutine, so nothing else on the same event
    loop runs during it (what a careless synchronous client call does). The first block starts
    ``every_seconds`` after the trigger starts. With ``record_path``, appends ``start <pid> <loop>``
    when it starts and ``block <start_epoch> <end_epoch> <pid> <loop>`` after each block, so a
    benchmark can show where the blocks fell. Never fires; cancel it (or stop the triggerer) to end it.
    """

    def __init__(
        self, block_seconds: float = 5.0, every_seconds: float = 1.0, record_path: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.block_seconds = float(block_seconds)
        self.every_seconds = float(every_seconds)
        self.record_path = record_path

    def serialize(self) -> tuple[str, dict[str, Any]]:
        kwargs: dict[str, Any] = {"block_seconds": self.block_seconds, "every_seconds": self.every_seconds}
        if self.record_path:
            kwargs["record_path"] = self.record_path
        return f"{_PREFIX}.BlockingTrigger", kwargs

    def _record(self, line: str) -> None:
        if self.record_path:
            with open(self.record_path, "a") as fh:
                fh.write(f"{line} {os.getpid()} {os.environ.get('MULTITRIGGER_LOOP')}\n")

    async def run(self) -> AsyncIterator[TriggerEvent]:
        self._record("start")
        while True:
            await asyncio.sleep(self.every_seconds)
            started = time.time()
            time.sleep(self.block_seconds)  # blocks the whole event loop, on purpose
            self._record(f"block {started:.3f} {time.time():.3f}")
        yield TriggerEvent(None)  # pragma: no cover - unreachable; makes this an async generator
