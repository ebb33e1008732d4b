"""Scenarios 1-3 and 5: light load, throughput, noisy neighbour, idle memory and start-up; and the
registry of all of them (the crash scenarios are in ``benchmarks.crash_scenarios``, the output flood
in ``benchmarks.flood_scenario``, the memory hog in ``benchmarks.memhog_scenario``). Each runs the same
workload under stock ``airflow triggerer`` and under ``multitrigger run`` (one loop per bundle),
each on a freshly seeded metadata DB; see ``benchmarks.runs`` for the steps they share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks import harness as h
from benchmarks import runs as r
from benchmarks.crash_scenarios import crash, storm
from benchmarks.flood_scenario import flood
from benchmarks.memhog_scenario import memhog
from benchmarks.limit_scenario import alone, alone_pg, limit, limit_held, limit_held_pg, limit_pg
from benchmarks.marginal_scenario import marginal
from benchmarks.scaleout_scenario import scaleout
from benchmarks.harness import Item
from benchmarks.runs import Ctx

# ---------------------------------------------------------------------------- 1. light load
def light(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params("light")
    bundles = [f"light{i}" for i in range(p["bundles"])]

    def one(kind: str) -> dict[str, Any]:
        with r.running(ctx, "light", kind, bundles) as run:
            due = r.base(2 * p["n"], p["margin"])
            items = [h.fire_at("fireat", bundles[i % len(bundles)], i, due) for i in range(p["n"])]
            items += [h.date_time("datetime", bundles[i % len(bundles)], 10_000 + i, due + p["datetime_offset"])
                      for i in range(p["n"])]
            r.seed(run, items)
            r.start(run, bundles, expect_started=items)
            r.wait_startup(run, len(items), due - 0.2)
            r.mark_due(run, due)
            r.wait_done(run, items, due, due + p["datetime_offset"] + p["grace"])
            run.result["due"] = {"fireat": due, "datetime": due + p["datetime_offset"]}
        return run.result

    return r.scenario(
        ctx, one, "light", "1. Light load",
        f"{p['n']} FireAtTriggers over {p['bundles']} bundles all due at one moment (exact sleep), and "
        f"{p['n']} DateTimeTriggers (1 s wake-up steps) all due {p['datetime_offset']:g} s later; "
        "latency = scheduled_dttm - due",
        p, ["fireat", "datetime"])


# ---------------------------------------------------------------------------- 2. throughput
def throughput(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params("throughput")
    bundles = [f"tp{i}" for i in range(p["bundles"])]
    extra = {"triggerer": {"capacity": str(p["capacity"]), "max_trigger_to_select_per_loop": str(p["select"])}}

    def one(kind: str) -> dict[str, Any]:
        with r.running(ctx, "throughput", kind, bundles, extra_config=extra, db=ctx.throughput_db) as run:
            due = r.base(p["n"], p["margin"])
            items = [h.date_time("datetime", bundles[i % len(bundles)], i, due) for i in range(p["n"])]
            r.seed(run, items)
            r.start(run, bundles, expect_started=items)
            r.wait_startup(run, len(items), due - 0.2)
            r.mark_due(run, due)
            r.wait_done(run, items, due, due + p["grace"], interval=0.25)
            run.result["due"] = {"datetime": due}
        lat = sorted(run.result["latency"].get("datetime", []))
        if lat:
            run.result["throughput"] = {
                "persisted": len(lat),
                "first_event_in_db_s": round(lat[0], 3),
                "all_persisted_s": round(lat[-1], 3) if len(lat) == p["n"] else None,
                "events_per_s": round(len(lat) / max(lat[-1] - min(0.0, lat[0]), 1e-3), 1),
            }
            vis = run.result.get("visible", [])
            first_vis = next((t for t, n in vis if n > 0), None)
            all_vis = next((t for t, n in vis if n >= p["n"]), None)
            run.result["throughput"].update(first_event_visible_s=first_vis, all_visible_s=all_vis)
        return run.result

    return r.scenario(
        ctx, one, "throughput", "2. Throughput",
        f"{p['n']} DateTimeTriggers over {p['bundles']} bundles all due at one moment; [triggerer] capacity "
        f"{p['capacity']}, max_trigger_to_select_per_loop {p['select']}; time to the first and the last event in "
        "the DB, latency distribution, and launch -> all claimed / all running",
        p, ["datetime"], db="postgresql" if ctx.throughput_db == "pg" else "sqlite")


# ------------------------------------------------------------------------- 3. noisy neighbour
def noisy(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params("noisy")
    noisy_bundle = "x_noisy"
    others = [f"calm{i}" for i in range(p["others"])]
    bundles = [noisy_bundle, *others]

    def one(kind: str) -> dict[str, Any]:
        with r.running(ctx, "noisy", kind, bundles) as run:
            n = p["others"] * p["per_bundle"]
            dues = h.spread(h.now() + 3600.0, p["window"], n)  # provisional: see retime
            items = [h.fire_at("others", others[i % len(others)], i, d) for i, d in enumerate(dues)]
            block_record = run.records / "blocking.rec"
            blocker = Item("noisy", noisy_bundle, 0, h.BLOCKING,
                           {"block_seconds": p["block"], "every_seconds": p["every"],
                            "record_path": str(block_record)}, None)
            r.seed(run, items + [blocker])
            due0 = r.retime(run, items, ctx.margin(kind, "sqlite", n + 1))
            dues = [i.due for i in items]
            r.start(run, bundles, expect_started=items + [blocker], record_files=[block_record])
            r.wait_startup(run, len(items) + 1, due0 - 0.2)
            r.mark_due(run, due0)
            r.wait_done(run, items, due0, dues[-1] + p["grace"])
            blocks = [(float(w[1]), float(w[2])) for _, _, w in run.tail.snapshot("block")]
            in_block = sum(1 for d in dues if any(s <= d < e for s, e in blocks))
            run.result["noisy"] = {
                "blocks": len(blocks),
                "blocks_overlapping_window": sum(1 for s, e in blocks if e > due0 and s < dues[-1]),
                "blocked_s_in_window": round(sum(max(0.0, min(e, dues[-1]) - max(s, due0)) for s, e in blocks), 1),
                "others_due_inside_a_block": in_block,
            }
        return run.result

    return r.scenario(
        ctx, one, "noisy", "3. Noisy neighbour",
        f"bundle {noisy_bundle!r} runs a BlockingTrigger that blocks its event loop for {p['block']:g} s, then "
        f"leaves it free for {p['every']:g} s, repeatedly; {p['others'] * p['per_bundle']} FireAtTriggers in {p['others']} OTHER bundles due "
        f"spread over {p['window']:g} s; latency of the other bundles only",
        p, ["others"])


# ------------------------------------------------------------------------- 5. idle and start-up
def idle(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params("idle")
    bundles = [f"idle{i}" for i in range(p["bundles"])]

    def one(kind: str) -> dict[str, Any]:
        with r.running(ctx, "idle", kind, bundles) as run:
            records = r.seed_idle(run, bundles, p["per_bundle"])
            r.start(run, bundles, record_files=list(records.values()))
            tr = run.triggerer
            want = len(bundles) * p["per_bundle"]
            h.wait_until(lambda: len(run.tail.snapshot("start")) >= want, tr.launched_at + p["start_timeout"],
                         interval=0.05)
            starts = run.tail.snapshot("start")
            st: dict[str, Any] = {"running": f"{min(len(starts), want)}/{want}", "expected": want}
            if len(starts) >= want:
                st["all_running_s"] = round(starts[want - 1][0] - tr.launched_at, 2)
                st["per_bundle_all_running_s"] = {
                    b: round(max(t for t, f, _ in starts if f == records[b]) - tr.launched_at, 2) for b in bundles}
            run.result["startup"] = st
            ctx.learn_startup(run)  # the scenarios after it derive their margins from it
            run.load.mark("ready", tr.pid)
            time.sleep(p["idle"])
            samples = []
            for _ in range(p["pss_samples"]):
                samples.append(h.tree_pss(tr.pid))
                time.sleep(1.0)
            run.result["memory"] = {
                "tree_pss_mb": round(sum(s["total_mb"] for s in samples) / len(samples), 1),
                "samples_mb": [s["total_mb"] for s in samples],
                "processes": samples[-1]["processes"],
            }
        return run.result

    return r.scenario(
        ctx, one, "idle", "5. Idle memory and start-up",
        f"{p['bundles']} bundles x {p['per_bundle']} far-future FireAtTriggers: launch -> every trigger running "
        f"(record files), then PSS of the whole process tree after {p['idle']:g} s idle",
        p, [])


#: The issue 13 full run (``benchmarks.run`` without ``--scenarios``), in this order: start-up and
#: memory first (idle, marginal: they also teach ``Ctx.margin`` each triggerer's start-up), then
#: noisy neighbour, crash and storm, then 200 at once with nothing else held (``alone``, three bursts),
#: then latency at the limit (bursts of 200, 2000 and 20,000 due
#: at once, each measured with all of them held) on SQLite and PostgreSQL, then scale-out. The
#: other scenarios stay selectable: ``light`` (200 at once alone, and DateTimeTriggers),
#: ``limit_held``/``limit_held_pg`` (what ``limit``'s 200-burst measures, with 19,000 held),
#: ``throughput`` (DateTimeTriggers), ``flood``, ``memhog``.
FULL_RUN = ("idle", "marginal", "noisy", "crash", "storm", "alone", "alone_pg", "limit", "limit_pg", "scaleout")

#: Wall seconds per scenario for both triggerers (stock, then multitrigger) on a quiet 2-core machine,
#: estimated from runs on this one (benchmarks/README.md, "Full run"; scaleout: a guess for 20,000
#: triggers): what ``benchmarks.run`` prints as its estimate.
ESTIMATE_S: dict[str, float] = {
    "idle": 50, "marginal": 70, "noisy": 75, "crash": 90, "storm": 105, "alone": 60, "alone_pg": 70, "limit": 230, "limit_pg": 190,
    "scaleout": 300, "light": 110, "limit_held": 200, "limit_held_pg": 250, "throughput": 250, "flood": 270,
    "memhog": 240,
}

SCENARIOS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "light": light,
    "throughput": throughput,
    "noisy": noisy,
    "crash": crash,
    "idle": idle,
    "marginal": marginal,
    "storm": storm,
    "flood": flood,
    "memhog": memhog,
    "alone": alone,
    "alone_pg": alone_pg,
    "limit": limit,
    "limit_pg": limit_pg,
    "limit_held": limit_held,
    "limit_held_pg": limit_held_pg,
    "scaleout": scaleout,
}
