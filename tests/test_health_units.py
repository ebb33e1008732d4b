"""
The pure pieces of per-loop health, without processes: the loop's lag probe and episode list, the
report on the wire, the supervisor's per-trigger record of episodes, the blame slot's step timer,
and the stream that files a trigger's output under its id.
"""

from __future__ import annotations

import asyncio
import gc
import io
import sys
import time

import msgspec
from pydantic import TypeAdapter
from structlog.contextvars import bound_contextvars
from structlog.testing import capture_logs

from airflow.jobs.triggerer_job_runner import ToTriggerSupervisor, messages
from airflow.sdk.execution_time.comms import _RequestFrame
from multitrigger.health.loop_health import MAX_BLOCKERS, ReportedHealth, TriggerInfo
from multitrigger.loop.blame import BlameSlot, read_blame
from multitrigger.loop.health import REPORT_EVERY, LoopHealth
from multitrigger.loop.output import AttributedStream
from multitrigger.loop.runner import _Poll
from multitrigger.protocol import HEALTH_KEY, HealthReport


def test_lag_probe_samples_and_reports_quantiles_and_a_runner_block():
    health = LoopHealth(threshold=0.15)

    async def main():
        stop = False
        probe = asyncio.create_task(health.probe(lambda: stop))
        await asyncio.sleep(0.35)
        time.sleep(0.3)  # the runner's own code blocks: no trigger's step explains it
        await asyncio.sleep(0.25)
        stop = True
        await probe

    asyncio.run(main())
    report = health.report(now=1000.0)
    assert report is not None and report.samples >= 4
    assert report.lag_p50 < 0.1 and 0.15 < report.lag_p99 <= report.lag_max < 1.0
    assert [tid for tid, _ in report.blocked] == [0] and report.blocked[0][1] > 0.15
    assert health.report(now=1000.0 + REPORT_EVERY / 2) is None  # not due, nothing waiting
    health.long_step(42, 0.5)
    assert health.report(now=1000.0 + REPORT_EVERY / 2).blocked == [(42, 0.5)]  # an episode: at once


def test_a_poll_carries_the_report_and_stock_decoding_ignores_it():
    report = HealthReport("3.3.2", "3.11.7", 0.001, 0.2, 0.3, 600, 0.2, [(7, 1.5)])
    frame = _RequestFrame(id=3, body=_Poll(multitrigger_health=report.to_body()).model_dump())
    body = msgspec.msgpack.decode(msgspec.msgpack.encode(frame), type=_RequestFrame).body
    assert HealthReport.from_body(body[HEALTH_KEY]) == report
    assert isinstance(TypeAdapter(ToTriggerSupervisor).validate_python(body), messages.TriggerStateChanges)
    assert HealthReport.from_body({"lag_p50": "garbage"}) is None  # ignored, never fatal


def test_episodes_are_logged_once_with_the_trigger_and_counted_worst_first():
    health, logged = ReportedHealth(), []

    class Log:
        def warning(self, event, **kw):
            logged.append((event, kw))

    info = {7: TriggerInfo("pkg.Slow", "dag", "task", "run")}
    report = HealthReport("3.3.2", "3.11.7", 0.0, 0.1, 0.2, 10, 0.2, [(7, 1.0), (8, 0.3), (7, 2.0), (0, 0.5)])
    health.take(report, info.get, Log(), wall=lambda: 5.0)
    assert health.blocked_episodes == 4 and round(health.blocked_seconds, 3) == 3.8
    assert [e for e, _ in logged] == ["event loop blocked by trigger"] * 3 + ["event loop blocked outside any trigger's code"]
    assert logged[0][1] | {} == {"trigger_id": 7, "classpath": "pkg.Slow", "dag_id": "dag", "task_id": "task",
                                 "run_id": "run", "seconds": 1.0, "threshold": 0.2, "episodes": 1}
    worst = health.worst()
    assert [(b["trigger_id"], b["episodes"], b["seconds_max"]) for b in worst] == [(7, 2, 2.0), (0, 1, 0.5), (8, 1, 0.3)]
    assert worst[2]["classpath"] == "(unknown)" and worst[1]["classpath"] == "(runner)"
    health.restarted()
    assert health.lag_p99 is None and health.blocked_episodes == 4  # episodes outlive the process

    many = HealthReport("3.3.2", "3.11.7", None, None, None, 0, 0.2, [(i, 0.3) for i in range(1, MAX_BLOCKERS + 50)])
    health.take(many, lambda _: None, Log())
    assert len(health.blockers) == MAX_BLOCKERS and 7 in health.blockers  # bounded; the worst kept


def test_blame_slot_times_steps_and_reports_only_long_ones(tmp_path):
    long_steps = []
    slot = BlameSlot(tmp_path / "blame", long_step=0.05, on_long_step=lambda tid, s: long_steps.append((tid, s)))
    slot.enter(5)
    assert read_blame(tmp_path / "blame") == 5
    slot.leave()
    slot.enter(6)
    time.sleep(0.08)
    slot.leave()
    assert read_blame(tmp_path / "blame") == 0
    assert [tid for tid, _ in long_steps] == [6] and long_steps[0][1] >= 0.08
    slot.close()


def test_a_full_collection_within_a_step_is_not_the_triggers_block(tmp_path):
    """A full collection walks every object of the loop (every trigger it holds); it runs in
    whichever step allocates, so its pause is not that step's trigger's (``blame``). Here a real
    ``gc.collect()`` over ~10^6 objects lasts longer than the threshold inside one step (the
    threshold is set from a first collection: machines differ), and a real sleep of its own code
    blocks the next: only the second is reported, and at its own length."""
    heap = [[i] for i in range(1_000_000)]
    try:
        t0 = time.perf_counter()
        gc.collect()
        threshold = (time.perf_counter() - t0) / 4
        long_steps = []
        slot = BlameSlot(tmp_path / "blame", long_step=threshold, on_long_step=lambda tid, s: long_steps.append((tid, s)))
        slot.enter(5)
        t0 = time.perf_counter()
        gc.collect()
        collecting = time.perf_counter() - t0
        slot.leave()
        slot.enter(6)
        gc.collect()
        time.sleep(2 * threshold)
        slot.leave()
        slot.close()
    finally:
        del heap
    assert collecting > threshold, "the collection must outlast the threshold for this test to mean anything"
    assert slot.collected_s >= collecting
    assert [tid for tid, _ in long_steps] == [6] and 2 * threshold <= long_steps[0][1] < 2 * threshold + collecting


def test_output_of_a_running_trigger_becomes_its_log_records_and_the_rest_stays_output():
    raw = io.StringIO()
    stream = AttributedStream(raw, "stdout")
    with capture_logs() as records:
        stream.write("runner says hi\n")
        with bound_contextvars(trigger_id=9):
            print("one", file=stream)
            stream.write("two, in ")
            stream.write("pieces\nthree without newline")
            stream.flush()
    assert raw.getvalue() == "runner says hi\n"
    assert [(r["event"], r["printed_by_trigger"], r["stream"]) for r in records] == [
        ("one", 9, "stdout"), ("two, in pieces", 9, "stdout"), ("three without newline", 9, "stdout")]
    assert stream.fileno is not None and stream.getvalue() == raw.getvalue()  # the rest is the real stream's


def test_a_partial_line_left_when_its_trigger_ends_is_still_its_log_record(monkeypatch):
    """A trigger that writes without a final newline and never flushes: when its coroutine ends
    (here: it returns; cancel and failure take the same ``finally``), the rest is its last line."""
    import asyncio

    from multitrigger.loop.output import finishing_output

    raw = io.StringIO()
    stream = AttributedStream(raw, "stdout")
    monkeypatch.setattr(sys, "stdout", stream)

    async def trigger() -> str:
        with bound_contextvars(trigger_id=4):  # what stock run_trigger binds
            print("done", end="")
        return "event"

    with capture_logs() as records:
        assert asyncio.run(finishing_output(trigger(), 4)) == "event"
    assert [(r["event"], r["printed_by_trigger"]) for r in records] == [("done", 4)]
    assert raw.getvalue() == ""


def test_airflow_counters_restart_from_zero_for_a_slot_that_ended_and_came_back(monkeypatch):
    """Counters are sent as increments over what was counted; a bundle version's slot that ends and
    is made again starts its totals at 0, so what it sent before is forgotten with it."""
    from types import SimpleNamespace

    from multitrigger.health import airflow_stats

    sent: list[tuple[str, int, str]] = []
    monkeypatch.setattr(airflow_stats, "stats", SimpleNamespace(
        gauge=lambda *a, **k: None, incr=lambda name, n, tags: sent.append((name, n, tags["loop"]))))

    def loop(name: str, events: int):
        return SimpleNamespace(name=name, bundle_label="b", triggers=0, up=True, lag_p50=None, lag_p99=None,
                               events=events, events_persisted=events, failures=0, failures_persisted=0, blocked_episodes=0, restarts=0)

    def snap(at: float, *loops):
        return SimpleNamespace(taken_at=at, hostname="h", team_name=None, capacity=10, triggers=0, loops=loops)

    emit = airflow_stats.AirflowStats()
    emit(snap(0, loop("team", 1), loop("team[g@a]", 5)))
    emit(snap(2, loop("team", 3)))  # the version slot ended
    emit(snap(4, loop("team", 3), loop("team[g@a]", 2)))  # ... and was made again: 2 new events
    assert [s for s in sent if s[0] == "triggers.succeeded"] == [
        ("triggers.succeeded", 1, "team"), ("triggers.succeeded", 5, "team[g@a]"),
        ("triggers.succeeded", 2, "team"), ("triggers.succeeded", 2, "team[g@a]")]
