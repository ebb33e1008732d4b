"""Persisting N events into a real seeded Airflow DB, alone: the persist lane's cost (issue 13).

A profiling driver, not a scenario. It seeds ``--held`` deferred task instances (4 DAGs, real
``trigger`` rows, ``FireAtTrigger``, half with stored ``next_kwargs``) into a fresh home, then, in a
child process with that home's configuration, persists one ``FireAtTrigger``-like event for ``-n``
of them ``--reps`` times, each time in a transaction that is rolled back (so every rep persists the
same rows): ``persist.submit_batch`` (the bulk path), or with ``--stock`` stock
``Trigger.submit_event`` per event. It prints the lane thread's CPU seconds (``thread_time``: on a
loaded machine that, not wall time, compares across runs) and wall seconds per rep; ``--profile F``
writes a cProfile of the reps to ``F``. The commit (one per step) is not included.

    .venv/bin/python -m benchmarks.persist_probe -n 2000 --held 20000
    .venv/bin/python -m benchmarks.persist_probe -n 2000 --db pg            # mtbench_persist_probe$MTBENCH_DB_SUFFIX
    .venv/bin/python -m benchmarks.persist_probe -n 200 --stock --reps 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import runs as r
from mt_testsupport.home import FIRE_AT, AirflowHome, DeferSpec, deferring_bundle, iso_in

CHILD = r"""
import cProfile, datetime, json, sys, time
from sqlalchemy import select
from airflow.models.taskinstance import TaskInstance
from airflow.models.trigger import Trigger
from airflow.triggers.base import TriggerEvent
from airflow.utils.session import create_session
from multitrigger.supervisor import persist

n, reps, stock, profile = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
with create_session() as s:
    tids = list(s.scalars(select(TaskInstance.trigger_id).where(TaskInstance.state == "deferred").limit(n)))
entries = [(t, TriggerEvent({"fired_at": datetime.datetime.now(datetime.timezone.utc).isoformat(), "pid": 1,
                             "executable": sys.executable, "loop": "b0"})) for t in tids]

def once():
    with create_session() as s:
        c0, w0 = time.thread_time(), time.perf_counter()
        if stock:
            for trigger_id, event in entries:
                Trigger.submit_event(trigger_id=trigger_id, event=event, session=s)
        else:
            persist.submit_batch(entries, s)
        s.flush()
        spent = (time.thread_time() - c0, time.perf_counter() - w0)
        s.rollback()
    return spent

once()  # the process's first persist (first session, compilations) is not what is measured
prof = cProfile.Profile() if profile else None
runs = []
for _ in range(reps):
    if prof: prof.enable()
    runs.append(once())
    if prof: prof.disable()
if prof:
    prof.dump_stats(profile)
print(json.dumps({"events": len(entries), "cpu_s": [round(c, 4) for c, _ in runs], "wall_s": [round(w, 4) for _, w in runs]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=2000, help="events per rep")
    ap.add_argument("--held", type=int, default=None, help="deferred task instances seeded (default: n)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--db", choices=("sqlite", "pg"), default="sqlite")
    ap.add_argument("--stock", action="store_true", help="stock Trigger.submit_event per event instead")
    ap.add_argument("--profile", type=Path, default=None, help="write a cProfile of the reps here")
    ap.add_argument("--home", type=Path, default=None, help="where the home goes (default: a temporary folder)")
    a = ap.parse_args()
    held = max(a.held or a.n, a.n)
    url = r.pg_database("persist_probe") if a.db == "pg" else None
    path = a.home or Path(tempfile.mkdtemp(prefix="persist-probe-"))
    home = AirflowHome.create(path / "home", {f"b{i}": deferring_bundle(f"dag_{i}", n_tasks=1) for i in range(4)}, db_url=url)
    home.defer_many([DeferSpec(f"dag_{i % 4}", "t0", FIRE_AT, {"moment": iso_in(3600)}, map_index=i // 4,
                               next_kwargs={"stored": i} if i % 2 else None) for i in range(held)])
    out = subprocess.run([sys.executable, "-c", CHILD, str(a.n), str(a.reps), "1" if a.stock else "0", str(a.profile or "")],
                         env=home.env(), capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        sys.exit(out.stderr)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    best = min(res["cpu_s"])
    res.update({"db": a.db, "held": held, "path": "stock" if a.stock else "bulk",
                "cpu_ms_per_event_best": round(best * 1000 / max(1, res["events"]), 4)})
    print(json.dumps(res))


if __name__ == "__main__":
    main()
