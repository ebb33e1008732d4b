"""
The supervisor's record of what one loop reports about itself (``protocol.HealthReport``).

Lag is the loop's latest window; blocked episodes are counted per trigger, and each is logged
once, when its report arrives, with the trigger's classpath and task (the loop sends only ids).
Pure but for that log line; kept by ``LoopSlot.stats`` on the selector thread, copied into each
snapshot (``multitrigger.health.snapshot``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from multitrigger.protocol import HealthReport

#: Triggers remembered as blockers per loop; beyond it the one with the fewest episodes is dropped.
MAX_BLOCKERS = 200


@dataclass(frozen=True)
class TriggerInfo:
    """What the supervisor knows of a trigger, to name it."""

    classpath: str
    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None


@dataclass
class Blocker:
    """One trigger's blocked episodes in one loop."""

    trigger_id: int
    info: TriggerInfo | None
    episodes: int = 0
    seconds_total: float = 0.0
    seconds_max: float = 0.0
    last_at: float = 0.0  # wall clock

    def as_dict(self) -> dict[str, Any]:
        info = self.info or TriggerInfo("(runner)" if self.trigger_id == 0 else "(unknown)")
        return {"trigger_id": self.trigger_id, "classpath": info.classpath, "dag_id": info.dag_id,
                "task_id": info.task_id, "run_id": info.run_id, "episodes": self.episodes,
                "seconds_total": round(self.seconds_total, 3), "seconds_max": round(self.seconds_max, 3),
                "last_at": self.last_at}


@dataclass
class ReportedHealth:
    """A loop's latest lag window and its blocked episodes so far (across restarts)."""

    airflow_version: str | None = None
    python_version: str | None = None
    lag_p50: float | None = None
    lag_p99: float | None = None
    lag_max: float | None = None
    threshold: float | None = None
    blocked_episodes: int = 0
    blocked_seconds: float = 0.0
    blockers: dict[int, Blocker] = field(default_factory=dict)

    def restarted(self) -> None:
        """A new process: the old one's lag window no longer describes the loop."""
        self.lag_p50 = self.lag_p99 = self.lag_max = None

    def take(self, report: HealthReport, describe: Callable[[int], TriggerInfo | None], log: Any,
             wall: Callable[[], float] = time.time) -> None:
        self.airflow_version, self.python_version = report.airflow_version, report.python_version
        self.lag_p50, self.lag_p99, self.lag_max = report.lag_p50, report.lag_p99, report.lag_max
        self.threshold = report.threshold
        for trigger_id, seconds in report.blocked:
            self._episode(trigger_id, seconds, describe(trigger_id) if trigger_id else None, wall(), log)
        if report.blocked_unlisted:
            self.blocked_episodes += report.blocked_unlisted
            log.warning("event loop blocked more often than reported one by one", episodes=report.blocked_unlisted)

    def episode(self, trigger_id: int, seconds: float, info: TriggerInfo | None, log: Any,
                wall: Callable[[], float] = time.time) -> None:
        """An episode the supervisor saw itself: a loop silent past the hang threshold, killed."""
        self._episode(trigger_id, seconds, info, wall(), log)

    def _episode(self, trigger_id: int, seconds: float, info: TriggerInfo | None, now: float, log: Any) -> None:
        self.blocked_episodes += 1
        self.blocked_seconds += seconds
        blocker = self.blockers.get(trigger_id)
        if blocker is None:
            if len(self.blockers) >= MAX_BLOCKERS:
                del self.blockers[min(self.blockers.values(), key=lambda b: (b.episodes, b.last_at)).trigger_id]
            blocker = self.blockers[trigger_id] = Blocker(trigger_id, info)
        blocker.info = info or blocker.info
        blocker.episodes += 1
        blocker.seconds_total += seconds
        blocker.seconds_max = max(blocker.seconds_max, seconds)
        blocker.last_at = now
        named = blocker.as_dict()
        if trigger_id:
            log.warning("event loop blocked by trigger", trigger_id=trigger_id, classpath=named["classpath"],
                        dag_id=named["dag_id"], task_id=named["task_id"], run_id=named["run_id"],
                        seconds=round(seconds, 3), threshold=self.threshold, episodes=blocker.episodes)
        else:
            log.warning("event loop blocked outside any trigger's code", seconds=round(seconds, 3), threshold=self.threshold)

    def worst(self, n: int = 5) -> list[dict[str, Any]]:
        """The ``n`` triggers with the most blocked time."""
        ranked = sorted(self.blockers.values(), key=lambda b: (-b.seconds_total, b.trigger_id))
        return [b.as_dict() for b in ranked[:n]]
