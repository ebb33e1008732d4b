"""One burst of exact-time triggers through multitrigger, with CPU seconds per process (issue 13).

A profiling driver, not a scenario: ``N`` ``FireAtTrigger``s over ``--bundles`` loops, all due at
one instant, SQLite, multitrigger only. It reports the latency (``scheduled_dttm - due``, from
the DB) and, per process of the triggerer's tree (supervisor, zygote, each loop), the CPU seconds
spent from just before the due time until every event is in the DB, per 1000 events: on a loaded
machine that, not the latency, is what compares across runs. ``--pyspy DIR`` records the tree with
py-spy (``--subprocesses``, raw collapsed stacks, one file) over the burst.

    .venv/bin/python -m benchmarks.burst_probe -n 2000 --out /tmp/bench-burst
    .venv/bin/python -m benchmarks.burst_probe -n 2000 --pyspy /tmp/bench-burst/spy
    .venv/bin/python -m benchmarks.burst_probe -n 200 --held 5000 --margin 15   # a burst while others are held
    MTBENCH_DB_SUFFIX=_bp .venv/bin/python -m benchmarks.burst_probe -n 200 --held 22000 --db pg --margin 40
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks import harness as h
from benchmarks import runs as r
from benchmarks.harness import MULTI
from benchmarks.runs import Ctx


def _role(proc: psutil.Process, root: int) -> str:
    if proc.pid == root:
        return "supervisor"
    try:  # loops are forked by a zygote, the supervisor's child
        return "zygote" if proc.ppid() == root else f"loop {proc.pid}"
    except psutil.Error:
        return "?"


def _cpu(root: int) -> dict[int, tuple[str, float]]:
    """pid -> (role, user+system CPU seconds) for the tree under ``root``."""
    out: dict[int, tuple[str, float]] = {}
    top = psutil.Process(root)
    for proc in [top, *top.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            out[proc.pid] = (_role(proc, root), t.user + t.system)
            if proc.pid == root:  # the selector thread (the main one) apart from the lanes
                main = sum(th.user_time + th.system_time for th in proc.threads() if th.id == root)
                out[-root] = ("supervisor main thread", main)
        except psutil.Error:
            continue
    return out


def _renice(root: int, nice: int) -> int:
    """Set ``nice`` on every thread of the tree under ``root`` (Linux: nice is per thread); a
    negative one gives the triggerer the CPUs first on a machine others load (needs root)."""
    count = 0
    top = psutil.Process(root)
    for proc in [top, *top.children(recursive=True)]:
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            try:
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
                count += 1
            except OSError:
                pass
    return count


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


_FIRED_AT = re.compile(r"'fired_at': '([^']+)'")


def _phases(logs_dir: Path, due: float) -> dict[str, Any]:
    """From the per-trigger log files (timestamped in the loops): seconds after ``due`` when each
    trigger's sleep ended (its payload's ``fired_at``), its 'Trigger fired event' record was made
    (the event is queued right after) and its 'trigger completed' record; median / p99 / max."""
    seen: dict[str, list[float]] = {"woke": [], "fired_record": [], "completed_record": []}
    for path in logs_dir.rglob("*.log.trigger.*.log"):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("event") == "Trigger fired event":
                seen["fired_record"].append(h.to_epoch(rec["timestamp"]) - due)
                if m := _FIRED_AT.search(rec.get("result", "")):
                    seen["woke"].append(h.to_epoch(m[1]) - due)
            elif rec.get("event") == "trigger completed":
                seen["completed_record"].append(h.to_epoch(rec["timestamp"]) - due)
    return {k: {"median": round(statistics.median(v), 4), "p99": round(_pct(v, 0.99), 4), "max": round(max(v), 4)}
            for k, v in seen.items() if v}


def _around(text: str, due: float, window: float, cap: int = 80) -> list[str]:
    """The supervisor's log lines from ``window`` s before ``due`` to ``window`` s after, each
    prefixed with its time relative to ``due`` (what else it was doing when the burst was due)."""
    return [f"{ts - due:+.3f} {line[:240]}" for ts, line in h.grep_times(text) if abs(ts - due) <= window][:cap]


def _spans(at: list[float], due: float, gap: float = 0.01) -> list[tuple[float, float, int]]:
    """``scheduled_dttm``s (set per task instance while its batch is written) in runs with no gap
    over ``gap`` s: roughly one per persist batch, as (first, last, count), seconds after ``due``."""
    spans: list[list[float]] = []
    for t in at:
        if spans and t - spans[-1][1] <= gap:
            spans[-1][1], spans[-1][2] = t, spans[-1][2] + 1
        else:
            spans.append([t, t, 1])
    return [(round(a - due, 3), round(b - due, 3), int(n)) for a, b, n in spans]


def probe(n: int, bundles: int, out: Path, margin: float, pyspy: Path | None, spy_seconds: float,
          rate: int, nice: int | None = None, tail: float = 0.0, held: int = 0, db: str = "sqlite",
          window: float = 1.5) -> dict[str, Any]:
    ctx = Ctx(out=out, kinds=(MULTI,), quiet_wait=0.0)
    names = [f"lim{i}" for i in range(bundles)]
    cap = str(n + held + 100)
    extra = {"triggerer": {"capacity": cap, "max_trigger_to_select_per_loop": cap}}
    res: dict[str, Any] = {"n": n, "bundles": bundles, "held": held, "db": db}
    with r.running(ctx, "burst", MULTI, names, extra_config=extra, db=db) as run:
        provisional = h.now() + 3600.0
        items = [h.fire_at("burst", names[k % bundles], k, provisional) for k in range(n)]
        others = [h.fire_at("held", names[k % bundles], n + k, provisional + 3600.0) for k in range(held)]
        r.seed(run, items + others)
        due = r.retime(run, items + others, margin)  # the launch is ``margin`` s before the due time
        r.start(run, names, expect_started=items + others)
        r.wait_startup(run, n + held, due - 1.0)
        r.mark_due(run, due)
        root = run.triggerer.pid
        spy = None
        h.sleep_until(due - 0.6)
        if nice is not None:
            res["reniced_threads"] = _renice(root, nice)
        if pyspy is not None:
            pyspy.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen([str(h.BIN / "py-spy"), "record", "--subprocesses", "--pid", str(root), "--format", "raw", "--gil", "--nonblocking",
                                    "-r", str(rate), "-d", str(int(spy_seconds)), "-o", str(pyspy / f"burst{n}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=open(pyspy / f"burst{n}.err", "w"))
        h.sleep_until(due - 0.3)
        before = _cpu(root)
        t_before = h.now()
        # PostgreSQL: every 0.25 s, as ``limit`` polls; with thousands held, the poll's query over every
        # deferred task instance costs the server 14-30 ms, so a 50 ms poll loaded it during the burst.
        r.wait_done(run, items, due, due + 60.0, interval=0.25 if db == "pg" else 0.05)
        res["done_s"] = round(h.now() - due, 3)
        time.sleep(tail)  # CPU spent after the last event is in the DB (log lines delivered later) counts too
        after = _cpu(root)
        t_after = h.now()
        if spy is not None:
            spy.wait()
        per: dict[str, float] = {}
        for pid, (role, sec) in after.items():
            per[role] = per.get(role, 0.0) + sec - before.get(pid, (role, 0.0))[1]
        res["window_s"] = round(t_after - t_before, 3)
        res["cpu_s"] = {k: round(v, 3) for k, v in sorted(per.items())}
        total = sum(v for k, v in per.items() if k != "supervisor main thread")
        res["cpu_s_total"] = round(total, 3)
        res["cpu_s_per_1000"] = round(total * 1000 / n, 3)
        res["loadavg"] = h.loadavg()
    lat = run.result["latency"].get("burst", [])
    res["latency"] = ({"n": len(lat), "median": round(statistics.median(lat), 4), "p99": round(_pct(lat, 0.99), 4),
                       "max": round(max(lat), 4)} if lat else None)
    res["phases"] = _phases(run.home.logs_dir, due)
    res["persist_spans"] = _spans(sorted(x + due for x in lat), due)
    res["startup"] = run.result.get("startup")
    res["supervisor_log"] = _around(run.triggerer.log_text(), due, window)
    res["run_load"] = run.result.get("load", {}).get("run")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--bundles", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-burst"))
    ap.add_argument("--margin", type=float, default=25.0, help="launch -> due, seconds (start-up must fit)")
    ap.add_argument("--pyspy", type=Path, default=None, help="record py-spy raw stacks into this directory")
    ap.add_argument("--spy-seconds", type=int, default=4)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--held", type=int, default=0, help="also hold this many triggers, due an hour later, over the loops")
    ap.add_argument("--tail", type=float, default=0.0, help="seconds after the last event to keep counting CPU")
    ap.add_argument("--db", choices=("sqlite", "pg"), default="sqlite")
    ap.add_argument("--log-window", type=float, default=1.5, help="report the supervisor's log lines this many s around the due time")
    ap.add_argument("--nice", type=int, default=None, help="renice the triggerer's threads before the burst (e.g. -10)")
    a = ap.parse_args()
    for _ in range(a.repeat):
        t0 = time.monotonic()
        res = probe(a.n, a.bundles, a.out, a.margin, a.pyspy, a.spy_seconds, a.rate, a.nice, a.tail, a.held, a.db, a.log_window)
        res["wall_s"] = round(time.monotonic() - t0, 1)
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
