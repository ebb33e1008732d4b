"""Scenario 7, ``flood``: one trigger floods its output beside healthy bundles (issue 8, part 2).

One run per triggerer, two windows of healthy ``FireAtTrigger``s in the same run: the first with
nothing else happening (series ``calm``), the second while bundle ``x_flood``'s ``FloodTrigger``
(``mt_testsupport.crash_triggers``) logs 2 x 256 MiB lines, prints a 32 MiB stdout line and
64 MiB of 1000-byte stdout lines (series ``calm_flood``). Reported beside the latencies: the
flood's own start/end (its record file), how many ``calm_flood`` dues fell inside it, the
supervisor's peak RSS growth over its peak before the flood (psutil, every 20 ms; for stock the
``airflow triggerer`` process, i.e. its supervisor, not the runner child), whether the flooding
trigger itself completed, and the cut / drop markers found in the logs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mt_testsupport.procs import RssSampler

from benchmarks import runs as r
from benchmarks.harness import Item
from benchmarks.runs import Ctx

FLOOD = "mt_testsupport.crash_triggers.FloodTrigger"
_CUT = re.compile(r"\[multitrigger: (\d+) bytes cut from this line of (\d+); limit (\d+)\]")
_DROP = re.compile(r"(\d+) bytes \(\d+ lines\) of log output dropped: loop (\S+) over its log budget")


def flood(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params("flood")
    flooder, others = "x_flood", [f"calm{i}" for i in range(p["others"])]
    bundles = [flooder, *others]
    n = p["others"] * p["per_bundle"]  # per window

    def one(kind: str) -> dict[str, Any]:
        with r.running(ctx, "flood", kind, bundles) as run:
            record = run.records / "flood.rec"

            def offender(after: float) -> Item:
                kwargs = {"after": after, "record_path": str(record),
                          "lines": p["lines"], "line_bytes": p["line_mib"] << 20,
                          "stdout_line_bytes": p["stdout_line_mib"] << 20, "stdout_bytes": p["stdout_mib"] << 20}
                return Item("flood", flooder, 999, FLOOD, kwargs, None, validate=False)

            flooded, sampler = r.offender_beside_calm(run, p, flooder, others, "calm_flood", p["flood_window"],
                                                      RssSampler, offender)
            run.result["flood"] = _analysis(run.triggerer.log_text(), run.home.logs_dir, record, sampler,
                                            [i.due for i in flooded])
        return run.result

    return r.scenario(
        ctx, one, "flood", "7. Output flood",
        f"bundle {flooder!r} runs a FloodTrigger: {p['lines']} log lines of {p['line_mib']} MiB, one "
        f"{p['stdout_line_mib']} MiB stdout line, {p['stdout_mib']} MiB of 1000-byte stdout lines. "
        f"{n} FireAtTriggers in {p['others']} OTHER bundles due over {p['window']:g} s before it (calm) and {n} "
        f"more over {p['flood_window']:g} s from its start (calm_flood); supervisor peak RSS growth over its pre-flood peak",
        p, ["calm", "calm_flood"])


def _analysis(log_text: str, logs_dir: Path, record: Path, sampler: RssSampler, dues: list[float]) -> dict[str, Any]:
    marks = {w: float(t) for w, t in (ln.split() for ln in record.read_text().splitlines())} if record.exists() else {}
    start, done = marks.get("start"), marks.get("done")
    before = sampler.peak(until=start) if start else None
    peak = sampler.peak(since=start) if start else None
    flood_logs = [f for f in logs_dir.rglob("*.trigger.*.log") if "dag_id=dag_x_flood" in str(f)]
    trigger_log = b"".join(f.read_bytes() for f in flood_logs).decode(errors="replace")  # stock's: ~512 MiB
    return {
        "start_to_done_s": round(done - start, 2) if start and done else None,
        "dues_inside_flood": sum(1 for d in dues if start and d >= start and (done is None or d <= done)),
        "rss_before_mb": round(before / 2**20, 1) if before else None,
        "rss_peak_mb": round(peak / 2**20, 1) if peak else None,
        "rss_growth_mb": round((peak - before) / 2**20, 1) if before and peak else None,
        "cut_lines_in_trigger_log": len(_CUT.findall(trigger_log)),
        "trigger_log_bytes": len(trigger_log),
        "cut_lines_in_triggerer_log": len(_CUT.findall(log_text)),
        "drop_markers": len(_DROP.findall(log_text)),
        "dropped_bytes": sum(int(b) for b, _ in _DROP.findall(log_text)),
    }
