"""
Airflow's own metrics, through Airflow's ``Stats`` (statsd, Datadog or OpenTelemetry, as
``[metrics]`` configures), with the loop they concern.

Checked against Airflow 3.3.2, whose triggerer emits: ``triggers.running`` and
``triggerer.capacity_left`` (gauges, tags ``hostname``, ``team_name``), ``triggers.succeeded``,
``triggers.failed``, ``triggers.blocked_main_thread`` and ``triggerer_heartbeat`` (counters).
Here, from each published snapshot (at most once per ``EMIT_EVERY``, on the selector thread; a
UDP datagram per value, non-blocking):

* ``triggers.running`` per loop, tags ``loop`` and ``bundle`` added: their sum is stock's value;
* ``triggerer.capacity_left`` once per supervisor (capacity is shared by all loops, so a per-loop
  value would mean nothing);
* ``triggers.succeeded``, ``triggers.failed``, ``triggers.blocked_main_thread`` per loop, as
  increments since the last emission; ``succeeded`` counts events once written to the DB, as
  stock counts them after ``on_trigger_event`` (so an outage does not count what may be lost);
  ``failed`` counts a loop's failures (reported by it, or its poison verdicts) once written to the
  DB, as stock counts them after ``submit_failure``;
* multitrigger's own: ``multitrigger.loop.restarts`` (counter), ``multitrigger.loop.up``,
  ``multitrigger.loop.lag_p50`` and ``multitrigger.loop.lag_p99`` (gauges, milliseconds).

``triggerer_heartbeat`` is counted where the job heartbeats (``TriggerStore.heartbeat``): it is
the supervisor's, not a loop's, so it carries no loop tag.
"""

from __future__ import annotations

from airflow._shared.observability.metrics import stats
from multitrigger.health.snapshot import Snapshot

#: Gauges are sent at most this often (s), as the stock triggerer's loop does.
EMIT_EVERY = 1.0


class AirflowStats:
    """A ``Board`` subscriber that turns snapshots into Airflow metrics."""

    def __init__(self) -> None:
        self._next = 0.0
        self._sent: dict[tuple[str, str], int] = {}  # (loop, counter) → total already counted

    def __call__(self, snap: Snapshot) -> None:
        if snap.taken_at < self._next:
            return
        self._next = snap.taken_at + EMIT_EVERY
        base = {"hostname": snap.hostname} | ({"team_name": snap.team_name} if snap.team_name else {})
        if snap.capacity is not None:
            stats.gauge("triggerer.capacity_left", snap.capacity - snap.triggers, tags=base)
        for loop in snap.loops:
            tags = base | {"loop": loop.name, "bundle": loop.bundle_label}
            stats.gauge("triggers.running", loop.triggers, tags=tags)
            stats.gauge("multitrigger.loop.up", int(loop.up), tags=tags)
            for name, value in (("multitrigger.loop.lag_p50", loop.lag_p50), ("multitrigger.loop.lag_p99", loop.lag_p99)):
                if value is not None:
                    stats.gauge(name, round(value * 1000, 3), tags=tags)
            for name, total in (("triggers.succeeded", loop.events_persisted), ("triggers.failed", loop.failures_persisted),
                                ("triggers.blocked_main_thread", loop.blocked_episodes),
                                ("multitrigger.loop.restarts", loop.restarts)):
                if (delta := total - self._sent.get((loop.name, name), 0)) > 0:
                    stats.incr(name, delta, tags=tags)
                    self._sent[(loop.name, name)] = total
        # A slot that ended (a bundle version's) starts from 0 if it comes back: forget what it sent.
        present = {loop.name for loop in snap.loops}
        self._sent = {key: sent for key, sent in self._sent.items() if key[0] in present}
