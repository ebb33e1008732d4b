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

Scenario ``limit_held`` (and ``limit_held_pg``): one burst (200) due at one instant while ``held``
(19,000) other triggers are held and running and never fire (``FireAtTrigger``s due a day later),
so every claim pass walks ~19,200 held triggers while the burst is persisted: the case where an
event waited for the claim pass in flight on the one DB lane (issue 13). Stock holds at most
``stock_held_max`` of them (its start-up with 19,000 takes minutes, and each holds an open log
file in its supervisor).

Scenario ``alone`` (and ``alone_pg``): the issue's "200 at once" literally: ``bursts`` bursts of
``n`` (200) each due at one instant, ``gap`` s apart, with nothing else held; both triggerers. Each
burst is its own series (``b1``, ``b2``, ...) so the report shows how much one burst varies.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import harness as h
from benchmarks import runs as r
from benchmarks.harness import MULTI
from benchmarks.runs import Ctx


def _bursts(p: dict[str, Any], kind: str, db: str) -> list[int]:
    """The bursts a triggerer runs: all for multitrigger; for stock up to ``stock_max`` (SQLite) or
    ``stock_max_pg`` (PostgreSQL: its 2000 events, persisted one by one, took 28-146 s measured
    alone on this machine, i.e. most of the 20-minute budget, and would say what the 200 says)."""
    cap = p["stock_max_pg"] if db == "pg" else p["stock_max"]
    return [n for n in p["sizes"] if kind == MULTI or n <= cap]


def _limit(ctx: Ctx, name: str, db: str) -> dict[str, Any]:
    p = ctx.params("limit")
    bundles = [f"lim{i}" for i in range(p["bundles"])]
    cap = str(sum(p["sizes"]) + 100)
    extra = {"triggerer": {"capacity": cap, "max_trigger_to_select_per_loop": cap}}

    def one(kind: str) -> dict[str, Any]:
        sizes = _bursts(p, kind, db)
        with r.running(ctx, name, kind, bundles, extra_config=extra, db=db) as run:
            # Seeded with provisional due times, then moved to ``margin`` s after the launch (retime):
            # start-up (claim, build, start every trigger) predicted from this session's runs.
            provisional = h.now() + 3600.0
            items, k = [], 0
            for j, n in enumerate(sizes):
                for i in range(n):
                    items.append(h.fire_at(f"n{n}", bundles[k % len(bundles)], k, provisional + sum(p["gaps"][:j])))
                    k += 1
            r.seed(run, items)
            due0 = r.retime(run, items, ctx.margin(kind, run.result["db"], len(items)))
            dues = [due0 + sum(p["gaps"][:j]) for j in range(len(sizes))]
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
        f"instant ({', '.join(f'{g:g}' for g in p['gaps'])} s apart); stock runs bursts up to "
        f"{p['stock_max_pg'] if db == 'pg' else p['stock_max']}; "
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
            passes.append({k: fields[k] for k in ("claim_s", "build_s", "claim_cpu_s", "build_cpu_s", "built", "held")
                           if k in fields})
    totals = {f"{k}_total": round(sum(float(x.get(k, 0)) for x in passes), 2)
              for k in ("claim_s", "build_s", "claim_cpu_s", "build_cpu_s")}
    return {"claim_passes": passes, **totals}


def _limit_held(ctx: Ctx, name: str, db: str) -> dict[str, Any]:
    p = ctx.params("limit_held")
    bundles = [f"lim{i}" for i in range(p["bundles"])]
    series = f"n{p['burst']}"

    def one(kind: str) -> dict[str, Any]:
        held_n = p["held"] if kind == MULTI else min(p["held"], p["stock_held_max"])
        total = held_n + p["burst"]
        cap = str(total + 100)
        extra = {"triggerer": {"capacity": cap, "max_trigger_to_select_per_loop": cap}}
        with r.running(ctx, name, kind, bundles, extra_config=extra, db=db) as run:
            provisional = h.now() + 3600.0  # moved to ``margin`` s after the launch (as in _limit)
            held = [h.fire_at("held", bundles[k % len(bundles)], k, provisional + 86400) for k in range(held_n)]
            burst = [h.fire_at(series, bundles[k % len(bundles)], k, provisional) for k in range(held_n, total)]
            t0 = time.monotonic()
            run.home.defer_many([i.spec() for i in held])  # not run.items: they stay deferred, by design
            run.result["seed_held_s"] = round(time.monotonic() - t0, 2)
            r.seed(run, burst)
            due = r.retime(run, burst, ctx.margin(kind, run.result["db"], total))
            r.start(run, bundles, expect_started=held + burst)
            r.wait_startup(run, total, due - 0.2)
            r.mark_due(run, due)
            run.result["startup"].update(_claim_passes(run))
            r.wait_done(run, burst, due, due + p["grace"], interval=0.25)
            run.result["held"] = held_n
            run.result["due"] = {series: due}
        return run.result

    return r.scenario(
        ctx, one, name, f"{p['burst']} due at once while {p['held']} others are held ({db})",
        f"FireAtTriggers over {p['bundles']} bundles: {p['burst']} due at one instant while {p['held']} others "
        f"(stock: at most {p['stock_held_max']}) are held and running, due a day later; [triggerer] capacity and "
        "max_trigger_to_select_per_loop = all of them + 100; latency = scheduled_dttm - due",
        p, [series], db="postgresql" if db == "pg" else "sqlite")


def limit_held(ctx: Ctx) -> dict[str, Any]:
    return _limit_held(ctx, "limit_held", "sqlite")


def limit_held_pg(ctx: Ctx) -> dict[str, Any]:
    return _limit_held(ctx, "limit_held_pg", "pg")


def limit(ctx: Ctx) -> dict[str, Any]:
    return _limit(ctx, "limit", "sqlite")


def limit_pg(ctx: Ctx) -> dict[str, Any]:
    return _limit(ctx, "limit_pg", "pg")


def _alone(ctx: Ctx, name: str, db: str) -> dict[str, Any]:
    p = ctx.params("alone")
    bundles = [f"lim{i}" for i in range(p["bundles"])]
    series = [f"b{j + 1}" for j in range(p["bursts"])]

    def one(kind: str) -> dict[str, Any]:
        with r.running(ctx, name, kind, bundles, db=db) as run:
            provisional = h.now() + 3600.0  # moved to ``margin`` s after the launch (as in _limit)
            items = [h.fire_at(s, bundles[k % len(bundles)], j * p["n"] + k, provisional + j * p["gap"])
                     for j, s in enumerate(series) for k in range(p["n"])]
            r.seed(run, items)
            due0 = r.retime(run, items, ctx.margin(kind, run.result["db"], len(items)))
            r.start(run, bundles, expect_started=items)
            r.wait_startup(run, len(items), due0 - 0.2)
            r.mark_due(run, due0)
            for j, s in enumerate(series):
                burst = [i for i in items if i.series == s]
                due = due0 + j * p["gap"]
                r.wait_done(run, burst, due, due + (p["gap"] - 0.5 if j + 1 < len(series) else p["grace"]),
                            interval=0.25)
            run.result["due"] = {s: due0 + j * p["gap"] for j, s in enumerate(series)}
        return run.result

    return r.scenario(
        ctx, one, name, f"{p['n']} due at once, nothing else held ({db})",
        f"{p['bursts']} bursts of {p['n']} FireAtTriggers over {p['bundles']} bundles, each burst due at one "
        f"instant, {p['gap']:g} s apart, nothing else held; latency = scheduled_dttm - due",
        p, series, db="postgresql" if db == "pg" else "sqlite")


def alone(ctx: Ctx) -> dict[str, Any]:
    return _alone(ctx, "alone", "sqlite")


def alone_pg(ctx: Ctx) -> dict[str, Any]:
    return _alone(ctx, "alone_pg", "pg")
