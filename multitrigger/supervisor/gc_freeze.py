"""
Full garbage collections that walk only what is new: what survives one is frozen.

Why: the supervisor holds every running trigger's objects (its workload, task instance, log
factory and logger: hundreds of gc-tracked objects each) for as long as the trigger runs. CPython
starts a full (generation 2) collection whenever the objects that survived the young collections
since the last full one pass a quarter of what that one kept, and a full collection walks every
tracked object outside the permanent generation. Measured with 20,000 triggers held (Python 3.11.7,
a ``gc.callbacks`` probe, issue 13): one every ~6 s while idle, 140-200 ms of CPU each with the
interpreter lock held (on the claim lane or the selector thread), collecting nothing; in the
20,000-event burst, four in 8 s, 0.8 s of CPU; with 2000 held, one in the 2000-event burst, 27 ms
on the selector thread. ``Supervisor.run`` already freezes what start-up made (``gc.freeze``:
Airflow's modules); ``SurvivorFreezer`` does the same after every full collection: its survivors
(and the young objects made since, after a young collection) go to the permanent generation and
are never walked again, so the next full collection walks only what was made since. (CPython 3.11
starts one when the survivors of young collections pass a quarter of what the last full one kept,
frozen objects not counted: after the first, full collections come more often, but each is small.)

The price: a frozen object that later becomes part of an unreachable cycle is not collected while
it is frozen (objects without cycles are freed by their reference counts, frozen or not). So once
every ``REFREEZE_EVERY`` seconds, when the selector is idle (and after twice that in any case),
everything is unfrozen, collected and frozen again: cyclic garbage lives at most that long, and that
one full walk costs what one of the every-6-s walks cost before, plus Airflow's modules (~0.25 s).

The callback only sets a flag (it runs inside the collector, on whichever thread allocated); the
selector thread freezes (``tend``). Stdlib only.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

#: At most this long (s) between walks of everything (cyclic garbage among frozen objects).
REFREEZE_EVERY = 600.0


class SurvivorFreezer:
    """Freeze what survives each full collection; now and then, unfreeze, collect and freeze again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, every: float = REFREEZE_EVERY) -> None:
        self.clock, self.every = clock, every
        self._collected_full = False
        self._next_refreeze = clock() + every
        self.freezes = self.refreezes = 0

    def install(self) -> None:
        gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info.get("generation") == 2:
            self._collected_full = True

    def tend(self, idle: bool) -> None:
        """On the selector thread, every pass: freeze after a full collection; refreeze when due and
        ``idle`` (nothing queued to deliver or persist: the walk stalls the selector), or when due
        for ``every`` more seconds (never idle: a flood of output, a DB outage holding outcomes)."""
        now = self.clock()
        if now >= self._next_refreeze and (idle or now >= self._next_refreeze + self.every):
            self._next_refreeze = now + self.every
            gc.unfreeze()
            gc.collect()  # sets the flag: frozen below
            self.refreezes += 1
        if self._collected_full:
            self._collected_full = False
            gc.collect(1)  # young cycles made since the full collection: not frozen with the rest
            gc.freeze()
            self.freezes += 1
