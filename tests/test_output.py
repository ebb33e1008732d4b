"""Line cutting and the per-loop output budget are pure: fed bytes, driven by a fake clock.

The JSON records they are fed are real: written by Airflow's own loop-side logging
(``_configure_logs_over_json_channel``, what every loop runs) in a subprocess, so a change in
Airflow's record layout (key order: ``trigger_id`` after ``event``) shows up here.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import msgspec
import pytest
from structlog.stdlib import NAME_TO_LEVEL

from multitrigger.supervisor.output import TAIL_BYTES, CutLine, LineCutter, OutputLimits, cut_json_record, cut_text_line
from multitrigger.supervisor.relay import (ENTRY_OVERHEAD, MIN_LINE_CHARGE, LogRelay, OutputGate, Stream, TokenBucket,
                                          output_busy_until, pressed)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reference_lines(data: bytes, limit: int) -> list[tuple[bytes, int]]:
    """What a cutter must produce: (kept head, bytes cut) per newline-terminated line."""
    return [(line[:limit], max(0, len(line) - limit)) for line in data.split(b"\n")[:-1]]


def as_lines(pieces: list[bytes | CutLine]) -> list[tuple[bytes, int]]:
    out: list[tuple[bytes, int]] = []
    for piece in pieces:
        if isinstance(piece, CutLine):
            out.append((piece.head, piece.cut))
        else:
            assert piece.endswith(b"\n")
            out += [(line, 0) for line in piece.split(b"\n")[:-1]]
    return out


# -- LineCutter -------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 7, 64, 4096])
@pytest.mark.parametrize("seed", range(5))
def test_cutter_matches_the_reference_whatever_the_chunking(limit: int, seed: int) -> None:
    rng = random.Random(seed)
    data = b"".join(b"x" * rng.choice([0, 1, 5, 63, 64, 65, 300, 5000]) + b"\n" for _ in range(200))
    cutter, got, pos = LineCutter(limit), [], 0
    while pos < len(data):
        step = rng.choice([1, 3, 100, 4096, 70_000])
        got += as_lines(cutter.feed(data[pos: pos + step]))
        pos += step
    assert got == reference_lines(data, limit)
    assert cutter.flush() == [] and cutter.pending == 0


def test_a_line_at_the_limit_is_kept_whole_and_one_byte_more_is_cut() -> None:
    cutter = LineCutter(10)
    assert cutter.feed(b"0123456789\n") == [b"0123456789\n"]
    (cut,) = cutter.feed(b"0123456789A\n")
    assert (cut.head, cut.cut, cut.total) == (b"0123456789", 1, 11)


def test_an_endless_line_is_never_held_beyond_the_limit_and_counted_when_it_ends() -> None:
    limit, chunk = 1024, bytes(range(256)).replace(b"\n", b"") * 1024  # ~255 KiB, no newline
    cutter = LineCutter(limit)
    for _ in range(64):  # ~16 MiB of one line
        assert cutter.feed(chunk) == []
        assert cutter.pending <= limit + TAIL_BYTES
    (cut,) = cutter.feed(b"END\n")
    assert cut.total == 64 * len(chunk) + 3 and cut.cut == cut.total - limit
    assert cut.head == chunk[:limit] and cut.tail.endswith(b"END")
    text = cut_text_line(cut)
    assert text.startswith(chunk[:limit]) and text.endswith(b"; limit 1024]\n")
    assert f"{cut.cut} bytes cut from this line of {cut.total}".encode() in text


def test_flush_returns_the_unfinished_line_at_eof() -> None:
    cutter = LineCutter(4)
    assert cutter.feed(b"ab\ncd") == [b"ab\n"]
    assert cutter.flush() == [b"cd\n"]
    cutter.feed(b"abcdefgh")
    (cut,) = cutter.flush()
    assert (cut.head, cut.cut) == (b"abcd", 4)


def test_limits_are_the_resolved_supervisor_settings(tmp_path) -> None:
    from multitrigger.supervisor.settings import RunSettings

    assert OutputLimits.of(RunSettings(state_dir=tmp_path)) == OutputLimits()
    assert OutputLimits.of(RunSettings(state_dir=tmp_path, max_log_line_bytes=4096)).max_log_line_bytes == 4096
    assert (OutputLimits().max_log_line_bytes, OutputLimits().log_bytes_per_second, OutputLimits().log_buffer_bytes) \
        == (1 << 20, 8 << 20, 16 << 20)


# -- cut JSON log records (from Airflow's real loop-side logging) -------------------------------

LOGGER = """
import os, sys
from airflow.sdk.execution_time.supervisor import _configure_logs_over_json_channel
_configure_logs_over_json_channel(os.dup(1))
import structlog
from structlog.contextvars import bind_contextvars
bind_contextvars(trigger_id=4242, dag_id="dag_a")
log = structlog.get_logger("airflow.triggers.flood")
log.warning("response: " + 'q"\\\\\\u00e9\\u2603' * 300_000)   # quotes, backslashes, non-ASCII
log.info("short event", response="r" * 3_000_000)            # a huge field after the event
log.error("small")
"""


@pytest.fixture(scope="module")
def airflow_records() -> list[bytes]:
    out = subprocess.run([sys.executable, "-c", LOGGER], capture_output=True, timeout=120, check=True).stdout
    lines = out.split(b"\n")[:-1]
    assert len(lines) == 3 and all(b'"trigger_id":4242' in ln for ln in lines)
    return lines


@pytest.mark.parametrize("limit", [200, 4096, 1 << 20])
def test_a_cut_json_record_is_a_valid_record_of_its_trigger(airflow_records: list[bytes], limit: int) -> None:
    cutter = LineCutter(limit)
    pieces = cutter.feed(b"\n".join(airflow_records) + b"\n")
    cuts = [p for p in pieces if isinstance(p, CutLine)]
    assert len(cuts) == 2  # the short one passes as it is
    for cut, (level, starts) in zip(cuts, [("warning", 'response: q"\\\u00e9\u2603'), ("info", "short event")]):
        record = msgspec.json.decode(cut_json_record(cut))  # what the stock consumer decodes
        assert record["trigger_id"] == 4242 and record["logger"] == "airflow.triggers.flood"
        assert record["level"] == level and record["level"] in NAME_TO_LEVEL
        assert record["timestamp"].startswith("20")
        marker = f"[multitrigger: {cut.cut} bytes cut from this line of {cut.total}; limit {limit}]"
        assert record["event"].endswith(marker)
        assert record["event"].startswith(starts)
        assert len(cut_json_record(cut)) <= limit + 512


def test_a_cut_line_that_is_not_json_becomes_a_valid_record() -> None:
    (cut,) = LineCutter(8).feed(b"not json at all, and long\n")
    record = json.loads(cut_json_record(cut))
    assert record["event"].startswith("not json") and "bytes cut" in record["event"]
    assert record["level"] == "warning" and "trigger_id" not in record


# -- TokenBucket ------------------------------------------------------------------------------


def test_bucket_allows_its_rate_and_a_burst_and_waits_out_a_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=100, clock=clock)
    assert bucket.take(60) and bucket.take(60)  # the second overdraws: 100 - 120 = -20
    assert not bucket.take(1)
    assert bucket.ready_at() == pytest.approx(clock.now + 0.02, abs=1e-3)
    clock.now += 0.021
    assert bucket.take(5000)  # one big line passes, then pays for itself
    clock.now += 4.0
    assert not bucket.take(1)
    clock.now += 1.1
    assert bucket.take(1)
    clock.now += 3600  # an idle hour saves no more than the burst
    assert bucket.take(100) and not bucket.take(1)


# -- LogRelay ---------------------------------------------------------------------------------


def make_relay(rate: int = 10_000, capacity: int = 100_000) -> tuple[LogRelay, FakeClock, list[bytes], list[str]]:
    clock, got, drops = FakeClock(), [], []
    relay = LogRelay("noisy", TokenBucket(rate, burst=rate / 10, clock=clock), capacity, drops.append, clock)
    relay.stream = Stream(got.append)  # type: ignore[attr-defined]
    return relay, clock, got, drops


def test_relay_delivers_at_the_budgeted_rate() -> None:
    relay, clock, got, _ = make_relay(rate=10_000, capacity=10**6)
    line = b"y" * 999 + b"\n"
    relay.put([line * 500], relay.stream)  # 500 KB: 50 s of budget
    for _ in range(100):  # 10 s, pumped every 0.1 s
        relay.pump()
        clock.now += 0.1
    assert 95 <= len(got) <= 102, len(got)  # ~10 KB/s of 1000-byte lines (+ the burst)
    assert got[0] == b"y" * 999


def test_relay_charges_a_minimum_per_line() -> None:
    relay, clock, got, _ = make_relay(rate=MIN_LINE_CHARGE * 100, capacity=10**6)
    relay.put([b"\n" * 10_000], relay.stream)
    for _ in range(10):
        relay.pump()
        clock.now += 0.1
    assert 95 <= len(got) <= 115, len(got)


def test_relay_pump_stops_at_the_deadline() -> None:
    relay, clock, got, _ = make_relay(rate=10**9, capacity=10**6)
    relay.stream = Stream(lambda line: (got.append(line), setattr(clock, "now", clock.now + 0.004)))  # type: ignore[attr-defined]
    relay.put([b"a\n" * 100], relay.stream)
    relay.pump(deadline=clock.now + 0.01)
    assert len(got) == 3  # 0, 4, 8 ms: the line at 12 ms waits for the next pass


def test_relay_drops_past_its_capacity_with_one_counted_marker_per_episode() -> None:
    relay, clock, got, drops = make_relay(rate=10**9, capacity=10_000)
    batch = b"z" * 999 + b"\n"
    for _ in range(30):  # 30 KB into a 10 KB queue, nothing delivered meanwhile
        relay.put([batch], relay.stream)
    assert relay.queued <= 10_000 and drops == []  # the episode is still going on
    kept = 10_000 // (1000 + ENTRY_OVERHEAD)  # 8
    relay.budget = TokenBucket(1, burst=500, clock=clock)  # deliver one line only
    relay.pump()
    relay.put([batch], relay.stream)  # there is room for one, but the queue is not down to half yet
    assert drops == [] and len(got) == 1
    relay.budget = TokenBucket(10**9, clock=clock)
    relay.pump()  # drained to half: the episode ends with its one marker, whether or not more comes
    (marker,) = drops
    assert marker == f"{(31 - kept) * 1000} bytes ({31 - kept} lines) of log output dropped: loop noisy over its log budget"
    assert relay.dropped_total == (31 - kept) * 1000
    relay.put([batch], relay.stream)
    assert len(drops) == 1


def test_a_long_drop_episode_is_reported_while_it_lasts() -> None:
    relay, clock, _, drops = make_relay(capacity=0)
    for _ in range(25):
        relay.put([b"x\n"], relay.stream)
        clock.now += 1.0
    assert drops == [f"{n} of log output dropped: loop noisy over its log budget"
                     for n in ("22 bytes (11 lines)", "20 bytes (10 lines)")]


def test_one_byte_writes_cannot_make_the_queue_outgrow_its_capacity() -> None:
    relay, _, _, drops = make_relay(capacity=1_000_000)
    for _ in range(100_000):
        relay.put([b"\n"], relay.stream)
    assert len(relay._queue) <= 1_000_000 // (ENTRY_OVERHEAD + 1)


def test_after_runs_once_the_lines_queued_before_it_are_delivered() -> None:
    relay, clock, got, _ = make_relay(rate=1000, capacity=10**6)
    order: list[object] = []
    relay.stream = Stream(order.append)  # type: ignore[attr-defined]
    relay.put([b"last words of trigger 7\n" * 20], relay.stream)
    relay.after(lambda: order.append("close 7"))
    relay.put([b"later\n"], relay.stream)
    relay.pump()
    assert "close 7" not in order  # the budget holds the lines, and the close waits for them
    for _ in range(80):  # 20 lines x MIN_LINE_CHARGE at 1000 B/s: ~5 s
        clock.now += 0.1
        relay.pump()
    assert order.index("close 7") == 20 and order[-1] == b"later"
    ran: list[int] = []
    relay.after(lambda: ran.append(1))  # nothing queued: at once
    assert ran == [1]


def test_flush_delivers_everything_whatever_the_budget_and_renders_cut_lines() -> None:
    relay, _, got, _ = make_relay(rate=1, capacity=10**7)
    pieces = LineCutter(16).feed(b"short\n" + b"L" * 100 + b"\nend\n")
    relay.put(pieces, relay.stream)
    relay.flush()
    assert got[0] == b"short" and got[2] == b"end"
    assert got[1].startswith(b"L" * 16 + b" ") and b"84 bytes cut from this line of 100; limit 16]" in got[1]
    assert relay.queued == 0 and relay.next_due() == float("inf")


# -- OutputGate: events before log lines --------------------------------------------------------


def test_output_waits_while_a_batch_is_written_but_at_most_every_interval() -> None:
    clock = FakeClock()
    gate = OutputGate(0.05, clock)
    assert gate.enter(busy=False) and gate.enter(busy=False)  # idle: every pass delivers
    assert gate.opens_at(busy=False) == float("-inf")
    assert not gate.enter(busy=True)  # a batch is being written: wait...
    assert gate.opens_at(busy=True) == pytest.approx(100.05)
    clock.now += 0.049
    assert not gate.enter(busy=True)
    clock.now += 0.002
    assert gate.enter(busy=True)  # ...but never longer than the interval (a hung DB step)
    assert not gate.enter(busy=True)
    assert gate.enter(busy=False)  # the batch is written: at once


def test_a_filling_queue_is_served_at_the_shorter_interval_while_a_batch_is_written() -> None:
    clock = FakeClock()
    gate = OutputGate(0.25, clock, pressed_every=0.05)
    assert gate.enter(busy=True)
    clock.now += 0.06
    assert not gate.enter(busy=True)  # no queue filling up: the long interval
    assert gate.enter(busy=True, pressed=True)  # one is: the short one
    clock.now += 0.06
    assert not gate.enter(busy=True) and gate.enter(busy=True, pressed=True)
    clock.now += 0.25
    assert gate.enter(busy=True)


def test_output_is_busy_while_a_step_is_young_and_while_a_takeover_is_young() -> None:
    """Events, then triggers taken over from a member that handed them back, before log lines; each
    for a bounded time, so a hung DB step or a member handing back for ever never starves output."""
    assert output_busy_until(10.0, None, None, step_max=0.5, takeover_max=5.0) is None  # nothing going on
    assert output_busy_until(10.0, 0.1, None, step_max=0.5, takeover_max=5.0) == pytest.approx(10.4)  # a step 0.1 s old
    assert output_busy_until(10.0, 0.5, None, step_max=0.5, takeover_max=5.0) is None  # an old step: output flows again
    assert output_busy_until(10.0, None, 8.0, step_max=0.5, takeover_max=5.0) == 13.0  # a hint heard 2 s ago
    assert output_busy_until(13.0, None, 8.0, step_max=0.5, takeover_max=5.0) is None  # ... 5 s ago: no longer
    assert output_busy_until(12.9, 0.1, 8.0, step_max=0.5, takeover_max=5.0) == pytest.approx(13.3)  # both: the later


def test_pressed_means_some_queue_holds_over_a_quarter_of_its_capacity() -> None:
    clock = FakeClock()
    relays = [LogRelay(f"l{i}", TokenBucket(1e9, clock=clock), 4096, lambda _: None, clock) for i in range(2)]
    sink = Stream(lambda _: None)
    relays[0].put([b"x" * (1024 - ENTRY_OVERHEAD)], sink)  # exactly a quarter: not yet
    assert not pressed(relays)
    relays[1].put([b"y"], sink)
    relays[0].put([b"z"], sink)
    assert pressed(relays)
    relays[0].flush()
    assert not pressed(relays)


def test_a_loop_over_its_budget_does_not_press() -> None:
    """Its lines could not go faster: every other loop keeps the long interval."""
    clock = FakeClock()
    relay = LogRelay("flood", TokenBucket(1000.0, burst=1000.0, clock=clock), 4096, lambda _: None, clock)
    relay.put([b"x" * 2000], Stream(lambda _: None))
    assert pressed([relay])
    relay.pump()  # the budget is spent (in debt) delivering it
    relay.put([b"y" * 2000], Stream(lambda _: None))
    assert relay.queued * 4 > relay.capacity and not pressed([relay])
    clock.now += 2.0
    assert pressed([relay])
