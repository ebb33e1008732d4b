"""
Prometheus metrics over the published snapshot: a custom ``prometheus_client`` collector.

Nothing is counted twice: every value is read from the latest ``Snapshot`` (and process figures
from ``procstats``) at scrape time, so no metric object is updated on the selector thread and no
multiprocess mode is needed. Every per-loop metric has the labels ``loop`` and ``bundle`` (the
loop's bundles joined by ``+``; ``*`` for the default loop, which runs every unlisted bundle).
The supervisor's own process metrics are prometheus-client's ``ProcessCollector`` (``process_*``).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from multitrigger.health.procstats import ProcCache
from multitrigger.health.snapshot import Board, LoopSnapshot

STATES = ("starting", "running", "backing off", "idle", "stopped")
_LOOP = ["loop", "bundle"]


def _g(name: str, doc: str, extra: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=_LOOP + (extra or []))


def _c(name: str, doc: str, extra: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=_LOOP + (extra or []))


class SnapshotCollector(Collector):
    def __init__(self, board: Board, procs: ProcCache) -> None:
        self.board, self.procs = board, procs

    def collect(self) -> Iterator[Metric]:
        snap = self.board.latest
        yield GaugeMetricFamily("multitrigger_snapshot_age_seconds", "Age of the supervisor's latest published state",
                                value=min(self.board.age(), 1e9))
        if snap is None:
            return
        yield GaugeMetricFamily("multitrigger_ready", "1 when claiming and every wanted loop is up", value=int(snap.ready))
        yield GaugeMetricFamily("multitrigger_db_up", "1 while the metadata DB is reachable", value=int(snap.db == "ok"))
        yield GaugeMetricFamily("multitrigger_triggers_running", "Triggers held by this supervisor", value=snap.triggers)
        if snap.capacity is not None:
            yield GaugeMetricFamily("multitrigger_capacity", "Trigger capacity ([triggerer] capacity / --capacity)",
                                    value=snap.capacity)
        yield GaugeMetricFamily("multitrigger_log_files_open", "Per-trigger log files the supervisor holds open",
                                value=snap.log_files_open)
        yield CounterMetricFamily("multitrigger_log_file_reopens", "Log files opened again after being closed to stay "
                                  "under max_open_log_files (churn: raise it if this grows fast)", value=snap.log_file_reopens)
        yield CounterMetricFamily("multitrigger_log_lines_dropped", "Trigger log lines that could not be written",
                                  value=snap.log_lines_dropped)
        yield CounterMetricFamily("multitrigger_triggers_ambiguous_bundle", "Triggers found to come from several bundles "
                                  "(an asset watched by DAGs of different bundles), run in the default loop as no team",
                                  value=snap.triggers_ambiguous_bundle)
        yield from self._loops(snap.loops)

    def _loops(self, loops: tuple[LoopSnapshot, ...]) -> Iterator[Metric]:
        info = InfoMetricFamily("multitrigger_loop", "What a loop runs",
                                labels=_LOOP + ["level", "interpreter", "airflow_version", "python_version",
                                                "start_method", "cgroup"])
        state = _g("multitrigger_loop_state", "1 for the loop's current state", ["state"])
        gauges = {k: _g(f"multitrigger_loop_{k}", doc) for k, doc in (
            ("up", "1 while the loop's process runs and has checked in"),
            ("pid", "The loop process's pid (absent while none runs)"),
            ("triggers_running", "Triggers routed to this loop"),
            ("restarts_last_10m", "Restarts in the last 10 minutes"),
            ("last_exit_timestamp_seconds", "When the loop's last process ended (Unix time)"),
            ("checkin_age_seconds", "Listening time since the loop's last frame"),
            ("quarantined_triggers", "Triggers with strikes for crashing this loop"),
            ("memory_pss_bytes", "The loop process's PSS"),
            ("memory_rss_bytes", "The loop process's RSS"),
            ("limits_applied", "For a loop with limits: 1 when its cgroup enforces them, 0 when best_effort runs it without"),
        )}
        counters = {k: _c(f"multitrigger_loop_{k}", doc) for k, doc in (
            ("events", "Trigger events reported by the loop"),
            ("events_persisted", "Of those, events written to the metadata DB"),
            ("failures", "Trigger failures reported by the loop or decided by the supervisor"),
            ("failures_persisted", "Of those, failures written to the metadata DB"),
            ("restarts", "Times the loop's process ended and was restarted"),
            ("blocked_episodes", "Times the loop's event loop was blocked past blocked_main_thread_warning_threshold"),
            ("blocked_seconds", "Seconds the event loop spent blocked in those episodes"),
            ("poison_failed", "Triggers failed for crashing this loop too often"),
            ("output_dropped_bytes", "Output bytes dropped over the loop's log budget"),
            ("cpu_seconds", "CPU seconds of the loop's current process"),
        )}
        lag = _g("multitrigger_loop_lag_seconds", "Event-loop lag measured in the loop, over its last minute", ["quantile"])
        blockers = _c("multitrigger_trigger_blocked_episodes", "Blocked episodes per trigger (worst offenders)",
                      ["trigger_id", "classpath"])
        blocked_s = _c("multitrigger_trigger_blocked_seconds", "Blocked seconds per trigger (worst offenders)",
                       ["trigger_id", "classpath"])
        limits = _g("multitrigger_loop_limit", "The loop's cgroup limits, as configured", ["limit"])
        cg = {k: (_c if total else _g)(f"multitrigger_loop_cgroup_{k}", doc) for k, doc, total in (
            ("memory_bytes", "Memory charged to the loop's cgroup", False),
            ("cpu_seconds", "CPU seconds of the loop's cgroup (every process in it)", True),
            ("pids", "Processes and threads in the loop's cgroup", False),
            ("oom_kills", "OOM kills in the loop's cgroup", True),
        )}
        for loop in loops:
            labels = [loop.name, loop.bundle_label]
            proc = self.procs.get(loop.pid)
            info.add_metric(labels, {"level": loop.level, "interpreter": loop.interpreter,
                                     "airflow_version": loop.airflow_version or "", "python_version": loop.python_version or "",
                                     "start_method": loop.start_method, "cgroup": loop.cgroup_path or proc.cgroup or ""})
            for key, value in self.procs.usage(loop.cgroup).items():
                if key in cg and value is not None:
                    cg[key].add_metric(labels, value)
            for s in STATES:
                state.add_metric(labels + [s], int(loop.state == s))
            values = {"up": int(loop.up), "pid": loop.pid, "triggers_running": loop.triggers,
                      "restarts_last_10m": loop.restarts_recent, "last_exit_timestamp_seconds": loop.last_exit_at,
                      "checkin_age_seconds": loop.since_checkin, "quarantined_triggers": len(loop.quarantined),
                      "memory_pss_bytes": proc.pss_bytes, "memory_rss_bytes": proc.rss_bytes,
                      "limits_applied": None if loop.limits is None else int(not loop.limits_not_applied)}
            for key, value in values.items():
                if value is not None:
                    gauges[key].add_metric(labels, value)
            totals = {"events": loop.events, "events_persisted": loop.events_persisted, "failures": loop.failures,
                      "failures_persisted": loop.failures_persisted, "restarts": loop.restarts,
                      "blocked_episodes": loop.blocked_episodes, "blocked_seconds": loop.blocked_seconds,
                      "poison_failed": loop.poison_failed, "output_dropped_bytes": loop.output_dropped_bytes,
                      "cpu_seconds": proc.cpu_seconds}
            for key, value in totals.items():
                if value is not None:
                    counters[key].add_metric(labels, value)
            for q, value in (("0.5", loop.lag_p50), ("0.99", loop.lag_p99), ("1", loop.lag_max)):
                if value is not None:
                    lag.add_metric(labels + [q], value)
            for b in loop.worst_blockers:
                blockers.add_metric(labels + [str(b["trigger_id"]), b["classpath"]], b["episodes"])
                blocked_s.add_metric(labels + [str(b["trigger_id"]), b["classpath"]], b["seconds_total"])
            for key, value in (loop.limits or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    limits.add_metric(labels + [key], value)
        yield from (info, state, *gauges.values(), *counters.values(), lag, blockers, blocked_s, limits, *cg.values())


def registry_for(board: Board, procs: ProcCache) -> CollectorRegistry:
    """A private registry: the snapshot collector and the supervisor's own process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(board, procs))
    ProcessCollector(registry=registry)
    return registry
