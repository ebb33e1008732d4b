"""Run the triggerer benchmarks: stock ``airflow triggerer`` vs ``multitrigger run``.

    .venv/bin/python -m benchmarks.run [--scenarios idle,crash,...] [--out benchmarks/results]

Without --scenarios: the issue 13 full run (FULL_RUN in benchmarks/scenarios.py).

See benchmarks/README.md for what each scenario measures and how to read the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import report, targets
from benchmarks.harness import KINDS
from benchmarks.runs import Ctx
from benchmarks.scenarios import ESTIMATE_S, FULL_RUN, SCENARIOS

ROOT = Path(__file__).resolve().parent.parent


def _git_head() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except Exception:
        return None


def cpu_probe(rounds: int = 3, n: int = 2_000_000) -> float:
    """Seconds for a fixed pure-Python loop on one core, the median of ``rounds``: how fast this
    machine is today. Absolute targets move with it (the same code gave a 2000-burst p99 of 0.35 s
    on one day and 0.83 s on another, with stock 8.6 s and 18.8 s); compare runs of different days
    by it, and results within a run by the ratios to stock."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        total = 0
        for i in range(n):
            total += i & 7
        times.append(time.perf_counter() - t0)
    return round(sorted(times)[rounds // 2], 3)


def _git_dirty() -> bool | None:
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout
        return bool(out.strip())
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(FULL_RUN),
                        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: the issue 13 full run, "
                             f"{','.join(FULL_RUN)})")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results directory")
    parser.add_argument("--triggerers", default=",".join(KINDS), help="stock,multitrigger (default: both, in that order)")
    parser.add_argument("--throughput-db", choices=("sqlite", "pg"), default="sqlite",
                        help="metadata DB of the throughput scenario: SQLite file (default) or a dedicated "
                             "PostgreSQL database on 127.0.0.1:5432 (mtbench_throughput_<triggerer>)")
    parser.add_argument("--keep-db", action="store_true", help="keep each run's airflow.db (default: deleted)")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="before each run wait up to this many seconds for other processes to leave the CPUs "
                             "alone (0: do not wait); what was seen is recorded per run")
    parser.add_argument("--quick", action="store_true", help="tiny workloads, for checking the harness only")
    parser.add_argument("--report", metavar="JSON",
                        help="do not run anything: re-print the table and redraw the plots of a results JSON")
    args = parser.parse_args(argv)
    if args.report:
        return _report_only(Path(args.report))

    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    kinds = tuple(k.strip() for k in args.triggerers.split(",") if k.strip())
    if unknown or not names or any(k not in KINDS for k in kinds):
        parser.error(f"unknown scenario(s) {unknown} or triggerer(s) {kinds}")

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_root = Path(args.out).resolve()
    out = out_root / stamp
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    def say(msg: str) -> None:
        print(f"{time.monotonic() - t_start:7.1f}s  {msg}", flush=True)

    ctx = Ctx(out=out, kinds=kinds, keep_db=args.keep_db, quick=args.quick, throughput_db=args.throughput_db,
              quiet_wait=args.quiet_wait, say=say)
    say(f"results -> {out}")
    estimate = sum(ESTIMATE_S.get(n, 120) * (0.5 if len(kinds) == 1 else 1.0) for n in names) * (0.5 if args.quick else 1.0)
    say(f"scenarios {','.join(names)}: estimated {estimate / 60:.1f} min on a quiet 2-core machine"
        f"{' (--quick: a rough guess)' if args.quick else ''}")
    from mt_testsupport.home import airflow_version, prestart_zygote

    prestart_zygote(wait=True)  # the sandbox's warm fork server for seeding; not part of any measurement
    probe_start = cpu_probe()
    say(f"machine speed: {probe_start:.3f} s for the fixed CPU probe (lower is faster; see benchmarks/README.md)")
    doc: dict[str, Any] = {
        "timestamp": stamp,
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.run", *(argv or sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "cpu_probe_s": {"start": probe_start}},
        "airflow": airflow_version(),
        "git_head": _git_head(),
        "git_dirty": _git_dirty(),
        "quick": args.quick,
        "results_dir": str(out),
        "scenarios": [],
    }
    for name in names:
        say(f"== scenario {name}")
        sc = SCENARIOS[name](ctx)
        report.summarize(sc)
        try:
            png = report.plot(sc, out / f"{name}.png")
            sc["plot"] = str(png) if png else None
        except Exception as err:  # a plotting problem must not lose the numbers
            sc["plot_error"] = f"{type(err).__name__}: {err}"
        doc["scenarios"].append(sc)
        report.write_json(doc, out_root, stamp)  # after every scenario: partial results survive an abort
    doc["wall_s"] = round(time.monotonic() - t_start, 1)
    doc["machine"]["cpu_probe_s"]["end"] = cpu_probe()  # the machine's speed can change during a run
    path, latest = report.write_json(doc, out_root, stamp)
    print()
    print(report.table(doc))
    print()
    _print_targets(doc)
    probe = doc["machine"]["cpu_probe_s"]
    print(f"machine speed (fixed CPU probe): {probe['start']:.3f} s at the start, {probe['end']:.3f} s at the end")
    print(f"JSON: {path} (also {latest}); plots and logs: {out}; total {doc['wall_s']} s")
    return 0


def _report_only(path: Path) -> int:
    doc = json.loads(path.read_text())
    out = Path(doc["results_dir"])
    for sc in doc["scenarios"]:
        report.summarize(sc)
        if out.is_dir():
            png = report.plot(sc, out / f"{sc['name']}.png")
            sc["plot"] = str(png) if png else None
    print(report.table(doc))
    print()
    _print_targets(doc)
    print(f"plots: {out}")
    return 0


def _print_targets(doc: dict[str, Any]) -> None:
    """Issue 13's targets this run measured, met or missed (``benchmarks.targets``); not for ``--quick``."""
    if doc.get("quick"):
        return
    full = [sc["name"] for sc in doc["scenarios"]] == list(FULL_RUN)
    if text := targets.table(targets.verdicts(doc, full_run=full)):
        print(text)
        print()


if __name__ == "__main__":
    sys.exit(main())
