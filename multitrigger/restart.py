"""
When to restart a loop that died: exponential backoff with jitter, reset after a stable period.

A pure object: it sees only the times it is told about (an injected clock) and a random source,
so it is tested without processes. The mechanism (``LoopSlot``) asks it two questions: "this loop
just died, when may it start again?" and "it has been up since T, is it stable now?".
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BackoffSettings:
    """Per-loop restart settings (``[loops.<name>.restart]`` in the config)."""

    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.1
    stable_after: float = 60.0


@dataclass
class RestartPolicy:
    """Backoff state of one loop."""

    settings: BackoffSettings
    clock: Callable[[], float]
    rand: Callable[[], float] = field(default=random.random)
    consecutive_failures: int = 0
    _started_at: float | None = None

    def started(self) -> None:
        """The loop (re)started now."""
        self._started_at = self.clock()

    def died(self) -> float:
        """The loop died now; return the monotonic time at which it may start again."""
        now = self.clock()
        if self._started_at is not None and now - self._started_at >= self.settings.stable_after:
            self.consecutive_failures = 0
        self._started_at = None
        delay = self.delay_for(self.consecutive_failures)
        self.consecutive_failures += 1
        return now + delay

    def delay_for(self, failures: int) -> float:
        """Backoff before restart number ``failures + 1``: first restart is immediate-ish."""
        s = self.settings
        if failures == 0:
            base = 0.0
        else:
            base = min(s.backoff_max, s.backoff_initial * s.backoff_multiplier ** (failures - 1))
        return base * (1.0 + s.jitter * (2.0 * self.rand() - 1.0))
