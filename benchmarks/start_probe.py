"""Start-up of ``N`` triggers at once through multitrigger: CPU seconds per process (issue 13).

A profiling driver, not a scenario: ``N`` ``FireAtTrigger``s due far later, over ``--bundles``
loops, seeded before the launch, SQLite. It waits until every trigger runs (its "trigger ...
starting" record) and reports, per process of the triggerer's tree (supervisor, zygote, loops),
the CPU seconds spent from launch until then, per 1000 triggers, and the supervisor's ``claim
pass`` lines summed (claim/build wall and CPU). ``--pyspy DIR`` records the tree over start-up.

    .venv/bin/python -m benchmarks.start_probe -n 8000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks import burst_probe as bp
from benchmarks import harness as h
from benchmarks import runs as r
from benchmarks.harness import MULTI
from benchmarks.runs import Ctx

_PASS = re.compile(r"claim pass.*")
_FIELDS = ("built", "claim_s", "build_s", "claim_cpu_s", "build_cpu_s")


def _claim_passes(log: Path) -> dict[str, float]:
    """The ``claim pass`` lines of the supervisor's log, their numeric fields summed."""
    out = {k: 0.0 for k in _FIELDS}
    out["passes"] = 0
    for line in log.read_text(errors="replace").splitlines():
        if "claim pass" not in line:
            continue
        out["passes"] += 1
        for k in _FIELDS:
            if m := re.search(rf"\b{k}[=\"': ]+([0-9.]+)", line):
                out[k] += float(m[1])
    return {k: round(v, 3) for k, v in out.items()}


def probe(n: int, bundles: int, per_pass: int, out: Path, pyspy: Path | None, spy_seconds: float, rate: int) -> dict[str, Any]:
    ctx = Ctx(out=out, kinds=(MULTI,), quiet_wait=0.0)
    names = [f"lim{i}" for i in range(bundles)]
    cap = str(n + 100)
    extra = {"triggerer": {"capacity": cap, "max_trigger_to_select_per_loop": str(per_pass)}}
    res: dict[str, Any] = {"n": n, "bundles": bundles}
    with r.running(ctx, "start", MULTI, names, extra_config=extra) as run:
        due = r.base(3 * n, 600.0)
        items = [h.fire_at("start", names[k % bundles], k, due) for k in range(n)]
        r.seed(run, items)
        r.start(run, names, expect_started=items)
        root = run.triggerer.pid
        spy = None
        if pyspy is not None:
            pyspy.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen([str(h.BIN / "py-spy"), "record", "--subprocesses", "--pid", str(root), "--format", "raw",
                                    "--nonblocking", "-r", str(rate), "-d", str(int(spy_seconds)),
                                    "-o", str(pyspy / f"start{n}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=open(pyspy / f"start{n}.err", "w"))
        r.wait_startup(run, n, h.now() + 300.0)
        after = bp._cpu(root)
        if spy is not None:
            spy.wait()
        per: dict[str, float] = {}
        for _pid, (role, sec) in after.items():
            role = "loop" if role.startswith("loop") else role
            per[role] = per.get(role, 0.0) + sec
        res["cpu_s"] = {k: round(v, 3) for k, v in sorted(per.items())}
        res["loop_cpu_per_1000"] = round(per.get("loop", 0.0) * 1000 / n, 3)
        res["startup"] = run.result.get("startup")
        res["claim_passes"] = _claim_passes(run.triggerer.logs[0])
        res["loadavg"] = h.loadavg()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=8000)
    ap.add_argument("--bundles", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-start"))
    ap.add_argument("--pyspy", type=Path, default=None)
    ap.add_argument("--spy-seconds", type=int, default=15)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--per-pass", type=int, default=2000, help="max_trigger_to_select_per_loop")
    a = ap.parse_args()
    for _ in range(a.repeat):
        t0 = time.monotonic()
        res = probe(a.n, a.bundles, a.per_pass, a.out, a.pyspy, a.spy_seconds, a.rate)
        res["wall_s"] = round(time.monotonic() - t0, 1)
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
