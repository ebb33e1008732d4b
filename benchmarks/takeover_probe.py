"""One member taking over handed-back triggers, with CPU seconds per process (issue 13, SIGTERM).

A profiling driver, not a scenario. One ``multitrigger run`` instance (``--bundles`` loops) holds
``--held`` far-future ``FireAtTrigger``s; ``-n`` more are held by a placeholder triggerer job of the
harness (alive). Then, in one transaction, they are handed back as a stopping member hands its
triggers back (``triggerer_id = NULL``, its job ended, the ``pg_notify`` hint on PostgreSQL), and the
instance takes them over, ``max_trigger_to_select_per_loop`` (``--per-query``) at a time. This is the
survivor's side of the scale-out scenario's SIGTERM, without the stopping member on the same cores.

Reported: hand-back -> every one of the ``n`` started (record files: ``start`` lines), median / p99 /
max; each claim pass the log shows (claim and build seconds); the CPU seconds per process of the
tree (supervisor, its main thread, zygote, each loop) over that window. ``--pyspy DIR`` records the
tree with py-spy.

    .venv/bin/python -m benchmarks.takeover_probe -n 3334 --held 6667 --db pg
    .venv/bin/python -m benchmarks.takeover_probe -n 3334 --held 6667 --db pg --pyspy /tmp/takeover-spy
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks import harness as h
from benchmarks import runs as r
from benchmarks.burst_probe import _cpu, _pct
from benchmarks.harness import MULTI
from benchmarks.runs import Ctx

_FAR = 86400.0


def _items(bundles: list[str], records: dict[str, Path], series: str, first: int, count: int) -> list[h.Item]:
    items = []
    for k in range(first, first + count):
        b = bundles[k % len(bundles)]
        item = h.fire_at(series, b, k, h.now() + _FAR, records[b])
        item.kwargs["record_tag"] = str(k)
        items.append(item)
    return items


def _hold(run: r.Run, first: int) -> int:
    """The triggers of task instances from map index ``first`` on, to a placeholder job (alive)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    home = run.home
    home.sql("INSERT INTO job (job_type, state, start_date, latest_heartbeat, hostname) VALUES "
             "('TriggererJob', 'running', :now, :beat, 'takeover-probe')",
             {"now": now, "beat": now + datetime.timedelta(days=1)})
    (job,), = home.sql("SELECT max(id) FROM job WHERE hostname = 'takeover-probe'")
    home.sql("UPDATE trigger SET triggerer_id = :j WHERE id IN (SELECT trigger_id FROM task_instance "
             "WHERE map_index >= :first AND trigger_id IS NOT NULL)", {"j": job, "first": first})
    return int(job)


def _hand_back(run: r.Run, job: int) -> None:
    """What a stopping member's hand-back does: rows unassigned, its job ended, the hint (PG)."""
    from sqlalchemy import text

    from multitrigger.supervisor.handback import CHANNEL

    with run.home.engine.begin() as conn:
        conn.execute(text("UPDATE trigger SET triggerer_id = NULL WHERE triggerer_id = :j"), {"j": job})
        conn.execute(text("UPDATE job SET end_date = :now, state = 'success' WHERE id = :j"),
                     {"j": job, "now": datetime.datetime.now(datetime.timezone.utc)})
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": json.dumps({"job_id": job, "released": 1})})


def _claim_passes(log_text: str, after: float) -> list[dict[str, Any]]:
    out = []
    for line in log_text.splitlines():
        if "hand-back heard" in line and (t := h.log_line_epoch(line)) is not None and t >= after - 0.5:
            out.append({"at_s": round(t - after, 3), "heard": True})
        if "claim pass" not in line or (t := h.log_line_epoch(line)) is None or t < after:
            continue
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w and not w.startswith("loc="))
        out.append({"at_s": round(t - after, 3), **{k: fields[k] for k in ("built", "claim_s", "build_s", "build_cpu_s")
                                                     if k in fields}})
    return out


def probe(n: int, held: int, bundles: int, per_query: int, db: str, out: Path, pyspy: Path | None,
          spy_seconds: float, rate: int) -> dict[str, Any]:
    ctx = Ctx(out=out, kinds=(MULTI,), quiet_wait=0.0)
    names = [f"tk{i}" for i in range(bundles)]
    extra = {"triggerer": {"capacity": str(n + held + 100), "max_trigger_to_select_per_loop": str(per_query)}}
    res: dict[str, Any] = {"n": n, "held": held, "bundles": bundles, "per_query": per_query, "db": db}
    with r.running(ctx, "takeover", MULTI, names, extra_config=extra, db=db) as run:
        records = {b: run.records / f"{b}.rec" for b in names}
        old = _items(names, records, "held", 0, held)
        new = _items(names, records, "new", held, n)
        r.seed(run, old + new)
        job = _hold(run, held)
        r.start(run, names, record_files=list(records.values()))
        tail = run.tail
        assert tail is not None
        r.wait_startup(run, held + n, h.now() + 120 + 0.01 * held)  # claimed: ours and the placeholder's
        h.wait_until(lambda: len(tail.snapshot("start")) >= held, h.now() + 120, 0.25)
        time.sleep(3.0)  # the start-up's log lines delivered, the collector settled
        root = run.triggerer.pid
        spies: list[subprocess.Popen] = []
        if pyspy is not None:
            pyspy.mkdir(parents=True, exist_ok=True)
            spies = [subprocess.Popen([str(h.BIN / "py-spy"), "record", "--pid", str(pid), "--format", "raw",
                                       "--nonblocking", "-r", str(rate), "-d", str(int(spy_seconds)),
                                       "-o", str(pyspy / f"takeover{n}.{role.replace(' ', '_')}.{pid}.txt")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for pid, (role, _) in _cpu(root).items() if pid > 0 and role != "zygote"]
            time.sleep(1.0)  # every py-spy attached
        before = _cpu(root)
        t_call = h.now()
        _hand_back(run, job)
        t_out = h.now()  # committed: what the others can see from now on
        res["hand_back_s"] = round(t_out - t_call, 3)
        tags = {str(i.map_index) for i in new}

        def started() -> dict[str, float]:
            return {w[3]: t for t, _f, w in tail.snapshot("start") if t >= t_call and len(w) >= 4 and w[3] in tags}

        done = h.wait_until(lambda: len(started()) >= n, t_out + 60.0, 0.05)
        after = _cpu(root)
        for spy in spies:
            spy.wait()
        at = sorted(t - t_out for t in started().values())
        res["all_started"] = bool(done)
        res["started_s"] = ({"n": len(at), "median": round(statistics.median(at), 3), "p99": round(_pct(at, 0.99), 3),
                             "max": round(max(at), 3)} if at else None)
        per: dict[str, float] = {}
        for pid, (role, sec) in after.items():
            role = "loop" if role.startswith("loop") else role
            per[role] = per.get(role, 0.0) + sec - before.get(pid, (role, 0.0))[1]
        res["cpu_s"] = {k: round(v, 3) for k, v in sorted(per.items())}
        res["cpu_ms_per_trigger"] = round(1000 * sum(v for k, v in per.items() if k != "supervisor main thread") / n, 3)
        res["claim_passes"] = _claim_passes(run.triggerer.log_text(), t_out)
        res["loadavg"] = h.loadavg()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=3334)
    ap.add_argument("--held", type=int, default=6667)
    ap.add_argument("--bundles", type=int, default=4)
    ap.add_argument("--per-query", type=int, default=1667, help="[triggerer] max_trigger_to_select_per_loop")
    ap.add_argument("--db", choices=("sqlite", "pg"), default="pg")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-takeover"))
    ap.add_argument("--pyspy", type=Path, default=None, help="record py-spy raw stacks into this directory")
    ap.add_argument("--spy-seconds", type=int, default=4)
    ap.add_argument("--rate", type=int, default=200)
    a = ap.parse_args()
    t0 = time.monotonic()
    res = probe(a.n, a.held, a.bundles, a.per_query, a.db, a.out, a.pyspy, a.spy_seconds, a.rate)
    res["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
