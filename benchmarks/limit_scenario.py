"""Scenario ``limit`` (and ``limit_pg``): latency at the limit with exact-time triggers (issue 13).

One run per triggerer and metadata DB. Every burst is seeded up front as ``FireAtTrigger``s (one
exact ``asyncio.sleep`` to its moment, so no wake-up step hides what the triggerer costs), all of a
burst due at one instant: ``sizes`` (200, 2000, 20,000) bursts ``gaps`` apart, smallest first, so
each burst is persisted before the next is due. ``[triggerer] capacity`` and
``max_trigger_to_select_per_loop`` are raised to hold them all.

Latency = ``scheduled_dttm - due`` per task instance (from the DB). Stock runs the bursts up to
``stock_max`` only: its per-event persistence (two eager SELECTs and a flush per event) would
take minutes for 20,000 and the run has a 20-minute budget; its rate on 2000 bounds it.

Start-up is split: launch -> every trigger claimed (DB: ``triggerer_id`` set) -> built (the
supervisor's ``claim pass`` log line, multitrigger only) -> every trigger running (its
per-trigger log's first ``starting`` line).
"""

from __future__ import annotations

from typing import Any

from benchmarks import harness as h
from benchmarks import runs as r
from benchmarks.harness import MULTI
from benchmarks.runs import Ctx


def _bursts(p: dict[str, Any], kind: str) -> list[int]:
    return [n for n in p["sizes"] if kind == MULTI or n <= p["stock_max"]]


def _limit(ctx: Ctx, name: str, db: str) -> dict[str, Any]:
    p = ctx.params("limit")
    bundles = [f"lim{i}" for i in range(p["bundles"])]
    cap = str(sum(p["sizes"]) + 100)
    extra = {"triggerer": {"capacity": cap, "max_trigger_to_select_per_loop": cap}}

    def one(kind: str) -> dict[str, Any]:
        sizes = _bursts(p, kind)
        with r.running(ctx, name, kind, bundles, extra_config=extra, db=db) as run:
            # Seeding takes ~2.5 ms per trigger on SQLite, more on PostgreSQL (base assumes 1 ms);
            # start-up (claim, build, start every trigger) ~2-6 ms per trigger on a loaded 2-core machine.
            slow = 2 if db == "pg" else 1
            due0 = r.base(3 * slow * sum(sizes), p["margin"] + slow * p["margin_per_trigger"] * sum(sizes))
            dues, items, k = [], [], 0
            for j, n in enumerate(sizes):
                due = due0 + sum(p["gaps"][:j])
                dues.append(due)
                for i in range(n):
                    items.append(h.fire_at(f"n{n}", bundles[k % len(bundles)], k, due))
                    k += 1
            r.seed(run, items)
            r.start(run, bundles, expect_started=items)
            r.wait_startup(run, len(items), due0 - 0.2)
            r.mark_due(run, due0)
            run.result["startup"].update(_claim_passes(run))
            for j, n in enumerate(sizes):
                burst = [i for i in items if i.series == f"n{n}"]
                last = dues[j + 1] - 0.5 if j + 1 < len(sizes) else dues[j] + p["grace"]
                r.wait_done(run, burst, dues[j], last, interval=0.25)
            run.result["due"] = {f"n{n}": d for n, d in zip(sizes, dues)}
        return run.result

    series = [f"n{n}" for n in p["sizes"]]
    return r.scenario(
        ctx, one, name, f"Latency at the limit ({db})",
        f"FireAtTriggers over {p['bundles']} bundles, bursts of {', '.join(map(str, p['sizes']))} each due at one "
        f"instant ({', '.join(f'{g:g}' for g in p['gaps'])} s apart); stock runs bursts up to {p['stock_max']}; "
        f"[triggerer] capacity and max_trigger_to_select_per_loop {cap}; latency = scheduled_dttm - due",
        p, series, db="postgresql" if db == "pg" else "sqlite")


def _claim_passes(run: r.Run) -> dict[str, Any]:
    """multitrigger's ``claim pass`` log lines: how long claiming and building took, per pass."""
    if run.kind != MULTI:
        return {}
    passes = []
    for _ts, line in h.grep_times(run.triggerer.log_text(), "claim pass"):
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        if int(fields.get("built", "0")) > 0:
            passes.append({k: fields[k] for k in ("claim_s", "build_s", "built", "held") if k in fields})
    return {"claim_passes": passes,
            "claim_s_total": round(sum(float(x.get("claim_s", 0)) for x in passes), 2),
            "build_s_total": round(sum(float(x.get("build_s", 0)) for x in passes), 2)}


def limit(ctx: Ctx) -> dict[str, Any]:
    return _limit(ctx, "limit", "sqlite")


def limit_pg(ctx: Ctx) -> dict[str, Any]:
    return _limit(ctx, "limit_pg", "pg")
