"""The loop's log records are stock's: made inline (``multitrigger.loop.inline_log``) and with the
cheaper ``redact_jwt`` and ``merge_contextvars`` swapped into the chain (``multitrigger.log_processors``).

Every variant runs in a subprocess with Airflow's real loop-side logging
(``_configure_logs_over_json_channel``, what every loop runs), from the same call sites, in the
same bound context; the JSON records they write must be equal but for their timestamps.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_nature-1"

SCRIPT = """
import asyncio, contextvars, os, sys
from airflow.sdk.execution_time.supervisor import _configure_logs_over_json_channel
_configure_logs_over_json_channel(os.dup(1))
from structlog.contextvars import bind_contextvars, unbind_contextvars
from airflow.jobs.triggerer_job_runner import TriggerRunner
from airflow.triggers.base import TriggerEvent
from multitrigger import log_processors
from multitrigger.loop import inline_log
from multitrigger.loop.inline_log import InlineLogger
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_nature-1"


class BadRepr:
    def __repr__(self):
        raise ValueError("no repr")

async def sites(log):
    bind_contextvars(trigger_id=7, dag_id="dag_a", map_index=3)
    await log.ainfo("Trigger fired event", name="dag_a/run/t0/3/1 (ID 7)", result=TriggerEvent({"due": "x", "n": 1.5}))
    await log.ainfo("trigger %s starting", "name with %s", extra=[1, {"password": "hunter22"}])
    await log.awarning("on_kill() timed out", timeout=10, name="n")
    await log.aerror("Trigger cancelled due to timeout")
    await log.adebug("below the level: not written")
    await log.ainfo("token " + JWT, header=JWT, mixed=f"a {JWT} b eyJ", plain="no token", n=[JWT])
    # TriggerEvents as stock's encoder hook renders them: at the top (a JWT in it is not redacted
    # in the loop), nested, with a lone surrogate (repr escapes it) and with a repr that raises
    # (the hook falls back to str(), which raises too: the call fails in both)
    await log.ainfo("trigger completed", name="n", result=TriggerEvent({"token": JWT}), many=[TriggerEvent(2)])
    await log.ainfo("surrogate", result=TriggerEvent(chr(0xD800)))
    try:
        await log.ainfo("repr raises", result=TriggerEvent(BadRepr()))
    except Exception as err:
        log.info("repr raised", error=type(err).__name__)
    unbind_contextvars("map_index")
    await log.ainfo("after unbind", extra_key=b"bytes value")
    # contextvars: another library's variable, a key the call passes too, a key bound late
    contextvars.ContextVar("structlog").set("not a structlog key")
    contextvars.ContextVar("other_lib").set("x")
    bind_contextvars(late="yes")
    await log.ainfo("keys", dag_id="from the call")
    log.info("sync record", token=JWT)
    try:
        raise ValueError("boom")
    except ValueError:
        await log.awarning("on_kill() raised an exception", name="n", exc_info=True)

async def main():
    which = sys.argv[1]
    if "fastjwt" in which:
        assert log_processors.use_in_structlog() == 2
        log_processors._MAX_KEYS = 4  # the memo starts again, more than once
    fused = []
    real_emit = inline_log._emit
    def counting_emit(*args):
        done = real_emit(*args)
        fused.append(done)
        return done
    inline_log._emit = counting_emit
    await sites(InlineLogger(TriggerRunner.log) if "inline" in which else TriggerRunner.log)
    print("fused", fused.count(True), fused.count(False), file=sys.stderr)

asyncio.run(main())
"""


def records(which: str) -> tuple[list[dict], tuple[int, int]]:
    """The records ``which`` writes, and how many ``fused_log.emit`` made / left to stock's path."""
    out = subprocess.run([sys.executable, "-c", SCRIPT, which], capture_output=True, timeout=100, check=True)
    recs = [json.loads(line) for line in out.stdout.splitlines()]
    for rec in recs:
        rec.pop("timestamp")
    made, left = out.stderr.decode().rsplit("fused ", 1)[1].split()
    return recs, (int(made), int(left))


@pytest.mark.parametrize("which", ["inline", "fastjwt", "inline+fastjwt"])
def test_records_equal_stock_but_for_the_timestamp(which: str) -> None:
    (stock, _), (ours, fused) = records("stock"), records(which)
    assert len(stock) == 12  # the debug record is below the level in both
    assert ours == stock
    assert all(rec["trigger_id"] == 7 and rec["dag_id"] == "dag_a" for i, rec in enumerate(stock) if i != 9)
    assert {rec.get("filename") for rec in stock} == {"<string>"}  # the call site, not inline_log.py
    assert len({rec["lineno"] for rec in stock}) == 12
    jwt = stock[4]
    assert (jwt["event"], jwt["header"], jwt["mixed"], jwt["plain"]) == ("token eyJ***", "eyJ***", "a eyJ*** b eyJ***", "no token")
    events = stock[5]
    assert events["result"] == f"TriggerEvent<{{'token': '{JWT}'}}>" and events["many"] == ["TriggerEvent<2>"]
    assert stock[6]["result"] == "TriggerEvent<'\\ud800'>" and stock[7]["error"] == "ValueError"
    assert "map_index" not in stock[8] and stock[8]["extra_key"] == "bytes value"
    assert (stock[9]["dag_id"], stock[9]["late"], "other_lib" in stock[9]) == ("from the call", "yes", False)
    # the fused path made every record without positional arguments or exc_info (the debug one: nothing;
    # the one whose repr raised raised from it)
    assert fused == ((0, 0) if which == "fastjwt" else (9, 0))


def test_an_inline_record_still_gives_the_event_loop_a_turn() -> None:
    """Stock's ``await log.ainfo`` always lets other tasks run (the pool hop); so does the inline
    record. A trigger yielding 200 events without awaiting anything else: the other triggers of its
    loop (here one counting task) run between them, as under stock."""
    script = """
import asyncio, os
from airflow.sdk.execution_time.supervisor import _configure_logs_over_json_channel
_configure_logs_over_json_channel(os.open(os.devnull, os.O_WRONLY))
from airflow.jobs.triggerer_job_runner import TriggerRunner
from multitrigger.loop.inline_log import InlineLogger

async def main():
    turns, done = [0], asyncio.Event()
    async def other():
        while not done.is_set():
            turns[0] += 1
            await asyncio.sleep(0)
    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    log = InlineLogger(TriggerRunner.log)
    for i in range(200):  # a generator that never awaits between its events
        await log.ainfo("Trigger fired event", n=i)
    done.set()
    await task
    print(turns[0])

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=100, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) >= 200, out.stdout


def test_the_turn_comes_before_the_record_and_a_cancel_in_it_still_writes_the_record() -> None:
    """The record is made when the caller resumes, as stock's is made while its caller awaits the
    pool: in a burst, every trigger's "trigger completed" record comes after the main loop's push
    of the events that were queued before it, not before. A task cancelled during that turn still
    writes its record, then the cancel goes on, even when the record itself raises (stock drops the
    pool's error: ``run_trigger`` must see the cancel); so does a coroutine closed in the turn (stock's
    pool job was submitted before the await)."""
    script = """
import asyncio, os
from airflow.sdk.execution_time.supervisor import _configure_logs_over_json_channel
_configure_logs_over_json_channel(os.open(os.devnull, os.O_WRONLY))
from airflow.jobs.triggerer_job_runner import TriggerRunner
from multitrigger.loop import inline_log
from airflow.triggers.base import TriggerEvent
from multitrigger.loop.inline_log import InlineLogger

class BadRepr:
    def __repr__(self):
        raise ValueError("no repr")

order = []
real_emit = inline_log._emit
def emit(inner, level, event, kw, caller):
    order.append(event)
    return real_emit(inner, level, event, kw, caller)
inline_log._emit = emit

async def main():
    log = InlineLogger(TriggerRunner.log)
    async def other():
        order.append("other ran")
    async def completing():
        await log.ainfo("trigger completed", name="n")
        order.append("after the record")
    task = asyncio.create_task(completing())
    asyncio.get_running_loop().create_task(other())  # ready behind it: it runs in the record's turn
    await task
    cancelled = asyncio.create_task(log.ainfo("Trigger cancelled by user action, invoking on_kill", name="n"))
    await asyncio.sleep(0)
    cancelled.cancel()
    try:
        await cancelled
    except asyncio.CancelledError:
        order.append("cancelled")
    raising = asyncio.create_task(log.ainfo("repr raises", result=TriggerEvent(BadRepr())))
    await asyncio.sleep(0)
    raising.cancel()
    try:
        await raising
    except asyncio.CancelledError:  # the cancel wins over the record's own error, as in stock
        order.append("cancelled, not ValueError")
    try:
        await log.ainfo("repr raises", result=TriggerEvent(BadRepr()))
    except ValueError:  # without a cancel, the record's error reaches the caller (test_records_equal_stock...)
        order.append("ValueError")
    closed = log.ainfo("closed in the turn", name="n")  # a coroutine closed there (e.g. collected)
    closed.send(None)
    closed.close()
    order.append("closed")
    print(order)

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=100, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == repr(["other ran", "trigger completed", "after the record",
                                       "Trigger cancelled by user action, invoking on_kill", "cancelled",
                                       "repr raises", "cancelled, not ValueError", "repr raises", "ValueError",
                                       "closed in the turn", "closed"])
