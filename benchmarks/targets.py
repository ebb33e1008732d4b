"""Issue 13's targets, each marked met or missed from one run's results (what ``benchmarks.run`` writes).

Every full run's table in ``benchmarks/README.md`` was transcribed by hand from the run's JSON;
this makes the verdicts from the same JSON, so each run prints them and ``--report`` prints them
for an earlier one. A target the run did not measure (a subset of scenarios, an error) is left out.
Pure: ``verdicts(doc)`` reads the document only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from benchmarks.harness import MULTI, STOCK
from benchmarks.report import _f

#: The full run's wall time, at most (s).
FULL_RUN_S = 20 * 60.0


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None  # None: reported, no goal


def _scenario(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((sc for sc in doc.get("scenarios", ()) if sc.get("name") == name), None)


def _run(doc: dict[str, Any], name: str, kind: str = MULTI) -> dict[str, Any] | None:
    sc = _scenario(doc, name)
    run = (sc or {}).get("runs", {}).get(kind)
    return run if run and "error" not in run else None


def _p99(doc: dict[str, Any], name: str, series: str) -> float | None:
    run = _run(doc, name)
    return ((run or {}).get("stats") or {}).get(series, {}).get("p99")


def _latency(doc: dict[str, Any]) -> Iterator[Verdict]:
    for name, db in (("alone", "SQLite"), ("alone_pg", "PostgreSQL")):
        p99s = [p for s in ("b1", "b2", "b3") if (p := _p99(doc, name, s)) is not None]
        if p99s:
            met = sum(p <= 0.050 for p in p99s)
            yield Verdict(f"200 at once, p99 <= 50 ms, {db} ({name})",
                          " / ".join(f"{p:.3f}" for p in p99s) + f" ({met} of {len(p99s)} bursts)", met == len(p99s))
    for series, goal, what in (("n200", None, "200 at once with 22,000 held"), ("n2000", 0.250, "2000 at once, p99 <= 250 ms"),
                               ("n20000", 3.0, "20,000 at once, p99 <= 3 s")):
        for name in ("limit", "limit_pg"):
            if (p := _p99(doc, name, series)) is not None:
                yield Verdict(f"{what} ({name})", _f(p, " s"), None if goal is None else p <= goal)
    for name, series in (("noisy", "others"), ("crash", "others"), ("storm", "others")):
        if (p := _p99(doc, name, series)) is not None:
            yield Verdict(f"{name}: the other bundles' p99 <= 50 ms", _f(p, " s"), p <= 0.050)


def _first_kill(per_bundle: dict[str, Any] | None) -> float | None:
    kills = (per_bundle or {}).get("per_kill") or []
    return kills[0].get("kill_to_running_again_s") if kills else None


def _recovery(doc: dict[str, Any]) -> Iterator[Verdict]:
    if (t := _first_kill((_run(doc, "crash") or {}).get("crash"))) is not None:
        yield Verdict("crash -> pending running again <= 100 ms, forked loop (crash)", _f(t, " s"), t <= 0.100)
    storm = (_run(doc, "storm") or {}).get("storm") or {}
    for bundle, goal in (("x_fork", 0.100), ("x_venv", 0.100), ("x_exec", None)):
        if (t := _first_kill(storm.get(bundle))) is not None:
            yield Verdict(f"crash -> pending running again, {bundle[2:]} loop (storm)", _f(t, " s"), None if goal is None else t <= goal)


def _memory_and_startup(doc: dict[str, Any]) -> Iterator[Verdict]:
    idle, stock_idle = _run(doc, "idle"), _run(doc, "idle", STOCK)
    if idle:
        procs = (idle.get("memory") or {}).get("processes") or []
        bundles = (_scenario(doc, "idle") or {}).get("params", {}).get("bundles")
        if bundles and len(procs) == bundles + 2:  # psutil's order: the supervisor, its zygote, the zygote's loops
            loop_mb = sum(p["pss_kb"] for p in procs[2:]) / bundles / 1024
            yield Verdict("one more forked loop <= 40 MB PSS (idle)", f"{loop_mb:.1f} MB", loop_mb <= 40.0)
    if (m := (_scenario(doc, "marginal") or {}).get("marginal")) and m.get("ratio") is not None:
        yield Verdict("one more venv loop <= 0.75x one stock triggerer (marginal)", f"{m['ratio']:.3f}x", m["ratio"] <= m.get("goal", 0.75))
    if idle and stock_idle:
        ours, theirs = (idle.get("memory") or {}).get("tree_pss_mb"), (stock_idle.get("memory") or {}).get("tree_pss_mb")
        if ours and theirs:
            yield Verdict("idle tree of 4 process loops <= 1.5x stock (idle)", f"{ours / theirs:.3f}x", ours / theirs <= 1.5)
        ours, theirs = (idle.get("startup") or {}).get("all_running_s"), (stock_idle.get("startup") or {}).get("all_running_s")
        if ours is not None and theirs is not None:
            yield Verdict("start-up <= stock + 0.5 s (idle)", f"{ours:.2f} s against {theirs:.2f}", ours <= theirs + 0.5)


def _scaleout(doc: dict[str, Any]) -> Iterator[Verdict]:
    for variant, run in ((_scenario(doc, "scaleout") or {}).get("scaleout") or {}).items():
        if "error" in run:
            continue
        if (mm := (run.get("share") or {}).get("max_min")) is not None:
            yield Verdict(f"{variant}: share max/min <= 1.5", f"{mm}", mm <= 1.5)
        for key, what in (("kill9", "kill -9: running elsewhere <= threshold + one claim cycle"),
                          ("sigterm", "SIGTERM: running elsewhere <= one claim cycle after its processes are gone")):
            ev = run.get(key) or {}
            took = ev.get("takeover_s") if key == "kill9" else ev.get("after_exit_s")
            if took is not None and ev.get("goal_s") is not None:
                yield Verdict(f"{variant}: {what}", f"{ev.get('held')}: {took:.2f} s (goal {ev['goal_s']:g})",
                              bool(ev.get("all_running_elsewhere")) and took <= ev["goal_s"])
        if (eo := run.get("exactly_once")) and eo.get("overlaps_over_claim_cycle") is not None:
            yield Verdict(f"{variant}: exactly once", f"{eo.get('runs')} runs, longest overlap {eo.get('max_overlap_s')} s",
                          eo["overlaps_over_claim_cycle"] == 0)


def verdicts(doc: dict[str, Any], full_run: bool = False) -> list[Verdict]:
    """Every target the run measured; ``full_run``: also its wall time against ``FULL_RUN_S``."""
    found = [*_latency(doc), *_recovery(doc), *_memory_and_startup(doc), *_scaleout(doc)]
    if full_run and doc.get("wall_s") is not None:
        found.append(Verdict("full run under 20 minutes", f"{doc['wall_s'] / 60:.1f} min", doc["wall_s"] <= FULL_RUN_S))
    return found


def table(found: list[Verdict]) -> str:
    """The verdicts as aligned text lines (empty: nothing measured)."""
    if not found:
        return ""
    rows = [("issue 13 target", "measured", "met?")] + [
        (v.target, v.measured, "reported" if v.met is None else "met" if v.met else "MISSED") for v in found]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
