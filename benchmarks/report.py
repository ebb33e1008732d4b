"""Statistics, JSON, PNG plots and the text table for a benchmark run."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from benchmarks.harness import KINDS, MULTI, STOCK

STATS = ("median", "p95", "p99", "max")


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), without needing numpy."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "min": round(min(values), 4),
        "median": round(percentile(values, 50), 4),
        "p95": round(percentile(values, 95), 4),
        "p99": round(percentile(values, 99), 4),
        "max": round(max(values), 4),
    }


def summarize(scenario: dict[str, Any]) -> None:
    """Add ``stats`` per run and series, and ``ratios`` (multitrigger / stock) per series, in place."""
    ratios: dict[str, dict[str, float | None]] = {}
    for kind, run in scenario["runs"].items():
        run["stats"] = {s: stats(run.get("latency", {}).get(s, [])) for s in scenario["series"]}
    stock, multi = scenario["runs"].get(STOCK), scenario["runs"].get(MULTI)
    if stock and multi:
        for s in scenario["series"]:
            a, b = stock["stats"].get(s, {}), multi["stats"].get(s, {})
            ratios[s] = {k: (round(b[k] / a[k], 3) if a.get(k) and b.get(k) is not None and a[k] > 0 else None)
                         for k in STATS}
        if scenario["name"] == "idle":
            ratios["memory"] = _ratio(stock, multi, "memory", "tree_pss_mb")
            ratios["startup"] = _ratio(stock, multi, "startup", "all_running_s")
        if scenario["name"] == "throughput":
            for key in ("first_event_in_db_s", "all_persisted_s"):
                ratios[key] = _ratio(stock, multi, "throughput", key)
            ratios["all_running_s"] = _ratio(stock, multi, "startup", "all_running_s")
    scenario["ratios"] = ratios


def _ratio(stock: dict, multi: dict, section: str, key: str) -> float | None:
    a = (stock.get(section) or {}).get(key)
    b = (multi.get(section) or {}).get(key)
    return round(b / a, 3) if a and b is not None and a > 0 else None


# ------------------------------------------------------------------------------------ output
def write_json(doc: dict[str, Any], out_root: Path, stamp: str) -> tuple[Path, Path]:
    path = out_root / f"{stamp}.json"
    text = json.dumps(doc, indent=1, default=str)
    path.write_text(text)
    latest = out_root / "latest.json"
    latest.write_text(text)
    return path, latest


COLORS = {"calm": "tab:green", "calm_flood": "tab:red", "fireat": "tab:blue", "datetime": "tab:orange", "others": "tab:green", "crashed_bundle_healthy": "tab:red",
          "x_fork_healthy": "tab:red", "x_venv_healthy": "tab:purple", "x_exec_healthy": "tab:brown"}
STYLE = {STOCK: "-", MULTI: "--"}


def plot(scenario: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    if scenario["name"] == "idle":
        kinds = [k for k in KINDS if k in scenario["runs"]]
        mem = [(scenario["runs"][k].get("memory") or {}).get("tree_pss_mb", 0) for k in kinds]
        start = [(scenario["runs"][k].get("startup") or {}).get("all_running_s", 0) or 0 for k in kinds]
        ax2 = ax.twinx()
        xs = range(len(kinds))
        ax.bar([x - 0.2 for x in xs], mem, width=0.4, color="tab:blue", label="tree PSS (MB)")
        ax2.bar([x + 0.2 for x in xs], start, width=0.4, color="tab:orange", label="launch -> all running (s)")
        ax.set_xticks(list(xs), kinds)
        ax.set_ylabel("PSS of process tree, MB")
        ax2.set_ylabel("launch -> every trigger running, s")
        for x, v in zip(xs, mem):
            ax.annotate(f"{v:.0f} MB", (x - 0.2, v), ha="center", va="bottom")
        for x, v in zip(xs, start):
            ax2.annotate(f"{v:.1f} s", (x + 0.2, v), ha="center", va="bottom")
        ax.set_title(scenario["title"])
        ax.set_ylim(0, max(mem + [1]) * 1.25)
        ax2.set_ylim(0, max(start + [1]) * 1.25)
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize=8)
    else:
        drawn = False
        for kind in KINDS:
            run = scenario["runs"].get(kind)
            if not run:
                continue
            for s in scenario["series"]:
                xs = sorted(max(v, 1e-3) for v in run.get("latency", {}).get(s, []))
                if not xs:
                    continue
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                st = run["stats"][s]
                ax.step(xs, ys, where="post", linestyle=STYLE[kind], color=COLORS.get(s, None),
                        label=f"{kind} · {s} (n={st['count']}, p99={st['p99']:.3g}s)")
                drawn = True
        if not drawn:
            plt.close(fig)
            return None
        ax.set_xscale("log")
        ax.set_xlabel("latency: scheduled_dttm - due (s, log scale; values < 1 ms drawn at 1 ms)")
        ax.set_ylabel("fraction of task instances")
        ax.set_ylim(0, 1.02)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{scenario['title']} — latency CDF")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _f(v: Any, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}{unit}" if abs(v) < 10 else f"{v:.1f}{unit}"
    return f"{v}{unit}"


def _short(line: str) -> str:
    """The message of a structlog line: after the level, before the logger name."""
    m = re.search(r"\[(?:warning|error|critical)\s*\]\s*(.*)", line)
    msg = m.group(1) if m else line
    return re.split(r"\s{2,}| \[[\w.]+\]", msg)[0][:70]


def _kill_bits(cr: dict[str, Any], what: str, limit: int) -> list[str]:
    bits = []
    for i, k in enumerate(cr.get("per_kill", [])[:limit]):
        if k["process_restart_s"] is None and not k["pending_healthy"]:
            bits.append(f"kill {i + 1} at due0{k['at_s_after_due0']:+.1f}s (nothing pending; the run "
                        f"ended before the restart)")
            continue
        bits.append(f"kill {i + 1} at due0{k['at_s_after_due0']:+.1f}s: process back "
                    f"{_f(k['process_restart_s'], 's')}, {k['recovered']}/{k['pending_healthy']} healthy "
                    f"triggers of {what} running again after {_f(k['kill_to_running_again_s'], 's')}")
    if not cr.get("kills"):
        bits.append("no kill seen")
    return bits


def flood_summary(run: dict[str, Any]) -> str:
    """The flood run: its duration, p99 with vs without it, supervisor memory, markers."""
    fl, st = run.get("flood") or {}, run.get("stats") or {}
    calm, flooded = (st.get("calm") or {}).get("p99"), (st.get("calm_flood") or {}).get("p99")
    delta = f"{(flooded - calm) * 1000:+.0f} ms" if calm is not None and flooded is not None else "n/a"
    done = (run.get("states") or {}).get("flood", {})
    return (f"flood ran {_f(fl.get('start_to_done_s'), 's')} ({fl.get('dues_inside_flood')} calm_flood dues inside it), "
            f"p99 with flood - without {delta}; supervisor RSS {_f(fl.get('rss_before_mb'), ' MB')} before, "
            f"peak +{_f(fl.get('rss_growth_mb'), ' MB')}; flooding trigger {done}; cut-line markers: "
            f"{fl.get('cut_lines_in_trigger_log')} in its trigger log ({_f((fl.get('trigger_log_bytes') or 0) / 2**20, ' MiB')}), "
            f"{fl.get('cut_lines_in_triggerer_log')} in the triggerer log; {fl.get('drop_markers')} drop markers "
            f"({_f((fl.get('dropped_bytes') or 0) / 2**20, ' MiB')} dropped)")


def memhog_summary(run: dict[str, Any]) -> str:
    """The memory hog: tree PSS idle / peak (vs limit + idle), OOM kills, how the hog ended."""
    mh = run.get("memhog") or {}
    limit = f"limit {mh['limit_mib']} MiB, peak under limit + idle: {mh.get('peak_under_limit_plus_idle')}" \
        if mh.get("limit_mib") else "no limit"
    return (f"tree PSS idle {_f(mh.get('tree_pss_idle_mb'), ' MB')}, peak {_f(mh.get('tree_pss_peak_mb'), ' MB')} "
            f"(+{_f(mh.get('tree_pss_growth_mb'), ' MB')}); {limit}; hog started {mh.get('hog_starts')}x, "
            f"reached its target: {mh.get('hog_reached_target')}, OOM kills reported: {mh.get('oom_kills_reported')}, "
            f"its task {(run.get('states') or {}).get('hog_trigger', {})}")


def storm_summary(cr: dict[str, Any]) -> str:
    """One crashing bundle of the storm: kills, and kill → its pending healthy triggers running again."""
    kills = cr.get("per_kill", [])
    if not kills:
        return "no kill seen"
    again = [k["kill_to_running_again_s"] for k in kills if k.get("kill_to_running_again_s") is not None]
    ready = [k["process_ready_s"] for k in kills if k.get("process_ready_s") is not None]
    first = kills[0]
    text = (f"{len(kills)} kills; first kill -> loop ready {_f(first.get('process_ready_s'), 's')}, "
            f"pending healthy running again {_f(first.get('kill_to_running_again_s'), 's')}")
    if again:
        text += f"; over all kills running again median {_f(percentile(again, 50), 's')} max {_f(max(again), 's')}"
    if ready:
        text += f" (loop ready median {_f(percentile(ready, 50), 's')}, incl. restart backoff)"
    return text


def table(doc: dict[str, Any]) -> str:
    rows: list[list[str]] = [["scenario / series", "triggerer", "count", "median", "p95", "p99", "max",
                              "mt/stock median", "mt/stock p99"]]
    notes: list[str] = []
    for sc in doc["scenarios"]:
        for s in sc["series"]:
            for kind in KINDS:
                run = sc["runs"].get(kind)
                if run is None:
                    continue
                if "error" in run:
                    rows.append([f"{sc['name']} / {s}", kind, "ERROR", "", "", "", "", "", ""])
                    continue
                st = run["stats"].get(s, {})
                r = sc.get("ratios", {}).get(s, {}) if kind == MULTI else {}
                rows.append([f"{sc['name']} / {s}", kind, str(st.get("count", 0)), _f(st.get("median")),
                             _f(st.get("p95")), _f(st.get("p99")), _f(st.get("max")),
                             _f(r.get("median"), "x") if r.get("median") is not None else "",
                             _f(r.get("p99"), "x") if r.get("p99") is not None else ""])
        for kind in KINDS:
            run = sc["runs"].get(kind)
            if not run or "error" in run:
                continue
            st = run.get("startup") or {}
            bits = []
            if sc["name"] == "throughput":
                tp = run.get("throughput") or {}
                bits.append(f"first event in DB {_f(tp.get('first_event_in_db_s'), 's')}, "
                            f"all {sc['params']['n']} persisted {_f(tp.get('all_persisted_s'), 's')} after due "
                            f"(scheduled_dttm; committed/visible to a poller: first "
                            f"{_f(tp.get('first_event_visible_s'), 's')}, all {_f(tp.get('all_visible_s'), 's')})")
                bits.append(f"launch->all claimed {_f(st.get('all_claimed_s'), 's')}, "
                            f"->all running {_f(st.get('all_running_s'), 's')}")
            if sc["name"] == "crash":
                bits += _kill_bits(run.get("crash") or {}, "the crashed bundle", limit=3)
            if sc["name"] == "storm":
                for series, counts in sorted((run.get("states") or {}).items()):
                    total = sum(counts.values())
                    if series == "poison":
                        bits.append(f"the 3 KillLoopTriggers' task instances end {counts}")
                    elif counts.get("scheduled", 0) < total:
                        bits.append(f"{series}: only {counts.get('scheduled', 0)}/{total} resumed ({counts})")
                storms = sorted((run.get("storm") or {}).items())
                if kind == STOCK and storms:  # one process: every kill is every bundle's
                    bits.append(f"whole triggerer: {storm_summary(storms[0][1])}")
                else:
                    bits += [f"{bundle}: {storm_summary(cr)}" for bundle, cr in storms]
            if sc["name"] == "flood":
                bits.append(flood_summary(run))
            if sc["name"] == "memhog":
                bits.append(memhog_summary(run))
            if sc["name"] == "noisy":
                nz = run.get("noisy") or {}
                bits.append(f"{nz.get('blocks_overlapping_window')} blocks of the noisy loop overlapped the due window, "
                            f"{nz.get('others_due_inside_a_block')} of the others were due inside one")
            if sc["name"] == "marginal":
                mem = run.get("memory") or {}
                bits.append(f"tree PSS {_f(mem.get('tree_pss_mb'), ' MB')} ({len(mem.get('processes', []))} processes)")
                if "venv_pair_pss_mb" in mem:
                    bits.append(f"venv zygote + loop ({mem.get('venv_pair_processes')} processes) "
                                f"{_f(mem.get('venv_pair_pss_mb'), ' MB')}, the rest {_f(mem.get('base_tree_pss_mb'), ' MB')}")
            if sc["name"] == "idle":
                mem = run.get("memory") or {}
                bits.append(f"tree PSS {_f(mem.get('tree_pss_mb'), ' MB')} "
                            f"({len(mem.get('processes', []))} processes), "
                            f"launch->all running {_f(st.get('all_running_s'), 's')}")
            if st.get("overran_due"):
                bits.append(f"WARNING start-up overran the first due time (all running "
                            f"{_f(st.get('all_running_s'), 's')}, due at {_f(st.get('launch_to_first_due_s'), 's')})")
            an = run.get("anomalies") or {}
            if an.get("lines"):
                top = "; ".join(f"{g['count']}x {_short(g['example'])}" for g in an.get("groups", [])[:3])
                bits.append(f"log: {an['lines']} warning/error lines ({top})")
            foreign = max(((run.get("load") or {}).get(w) or {}).get("foreign_cpus", 0) for w in ("startup", "run"))
            if foreign >= 0.5:
                bits.append(f"NOTE other processes used up to {foreign:.1f} CPUs during this run")
            if run.get("all_done") is False:
                bits.append("WARNING not every task left DEFERRED before the deadline")
            if bits:
                notes.append(f"  {sc['name']:<10} {kind:<12} " + "; ".join(bits))
        if sc["name"] == "scaleout":
            notes += scaleout_lines(sc)
        if sc["name"] == "marginal" and (m := sc.get("marginal")):
            notes.append(f"  {'marginal':<10} one more venv loop {_f(m.get('venv_pair_pss_mb'), ' MB')} vs one more "
                         f"stock triggerer {_f(m.get('stock_triggerer_pss_mb'), ' MB')}: {m.get('ratio')}x "
                         f"(goal <= {m.get('goal')}x)")
        if sc["name"] in ("idle", "throughput"):
            r = sc.get("ratios", {})
            extra = {k: v for k, v in r.items() if k not in sc["series"] and v is not None}
            if extra:
                notes.append(f"  {sc['name']:<10} ratio mt/stock: " + ", ".join(f"{k} {v}x" for k, v in extra.items()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + ([""] + notes if notes else []))


def scaleout_lines(sc: dict[str, Any]) -> list[str]:
    """One line per scale-out run: shares, takeovers against their goals, exactly once."""
    out = []
    for variant, run in (sc.get("scaleout") or {}).items():
        if "error" in run:
            out.append(f"  scaleout   {variant:<12} ERROR {run['error']}")
            continue
        share = run.get("share") or {}
        bits = [f"share {share.get('held')} max/min {share.get('max_min')} (goal <= 1.5)"]
        for key in ("kill9", "sigterm"):
            ev = run.get(key) or {}
            bits.append(f"{ev.get('signal')} member{ev.get('member')} ({ev.get('held')} held): all running elsewhere "
                        f"after {_f(ev.get('takeover_s'), 's')} (goal {_f(ev.get('goal_s'), 's')}"
                        f"{'' if key == 'kill9' else ' after exit'}; after its processes were gone "
                        f"{_f(ev.get('after_exit_s'), 's')})")
        eo = run.get("exactly_once") or {}
        bits.append(f"exactly once: {eo.get('runs')} runs of {eo.get('triggers')} triggers, longest overlap "
                    f"{eo.get('max_overlap_s')} s, {eo.get('overlaps_over_claim_cycle')} over one claim cycle")
        out.append(f"  scaleout   {variant:<12} " + "; ".join(bits))
    return out
