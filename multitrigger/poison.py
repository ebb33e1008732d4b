"""
When to fail a trigger that keeps killing its loop: strikes per trigger, a threshold, a window.

A pure object beside ``multitrigger.restart.RestartPolicy``: it sees only the times it is told
about (an injected clock), so it is tested without processes. The mechanism (``LoopSlot``) tells
it "the loop died while this trigger's code was running, for this reason" and gets back either
nothing or a ``Verdict``: fail that trigger, with every reason, so the rest of the bundle runs.
Without it, a trigger that crashes its loop would crash every restart, forever.

Strikes older than ``window`` seconds are forgotten, so a trigger that crashed once a day for an
unrelated reason (an OOM of its neighbour, a deploy) is never failed for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

#: Strikes older than this (seconds) no longer count.
DEFAULT_WINDOW = 3600.0


@dataclass(frozen=True)
class Verdict:
    """Fail this trigger: ``reasons`` are its strikes, oldest first."""

    trigger_id: int
    loop: str
    reasons: tuple[str, ...]

    def traceback(self) -> list[str]:
        """The failure text written on the task instance."""
        head = f"trigger crashed its loop {self.loop!r} {len(self.reasons)} times: {self.reasons[-1]}\n"
        return [head, *(f"  crash {i + 1}: {r}\n" for i, r in enumerate(self.reasons))]


@dataclass
class PoisonPolicy:
    """Strike counting for one loop's triggers."""

    loop: str
    threshold: int
    clock: Callable[[], float]
    window: float = DEFAULT_WINDOW
    _strikes: dict[int, list[tuple[float, str]]] = field(default_factory=dict)

    def strike(self, trigger_id: int, reason: str) -> Verdict | None:
        """The loop died running ``trigger_id``'s code; a ``Verdict`` once it reaches the threshold."""
        now = self.clock()
        recent = [(t, r) for t, r in self._strikes.get(trigger_id, ()) if now - t < self.window]
        recent.append((now, reason))
        if len(recent) >= self.threshold:
            self._strikes.pop(trigger_id, None)
            return Verdict(trigger_id, self.loop, tuple(r for _, r in recent))
        self._strikes[trigger_id] = recent
        return None

    def strikes(self, trigger_id: int) -> int:
        now = self.clock()
        return sum(1 for t, _ in self._strikes.get(trigger_id, ()) if now - t < self.window)

    def struck(self) -> dict[int, int]:
        """Every trigger with strikes in the window, and how many (the health surface's "quarantined")."""
        return {tid: n for tid in self._strikes if (n := self.strikes(tid))}

    def forget(self, trigger_id: int) -> None:
        """The trigger is gone (finished, failed, cancelled): its strikes with it."""
        self._strikes.pop(trigger_id, None)
