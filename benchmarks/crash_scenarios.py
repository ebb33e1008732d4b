"""The crash scenarios: 4. one loop SIGKILLed, 6. a crash storm (three bundles crashing their loops
repeatedly, one per way a multitrigger loop starts). Stock exits on every kill and is restarted from
outside, as systemd or Kubernetes would; the analysis reads kills and restarts from the triggerer's
log and recovery from the healthy triggers' record files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import harness as h
from benchmarks import runs as r
from benchmarks.harness import MULTI, STOCK, Item
from benchmarks.runs import Ctx, Run

# ------------------------------------------------------------------------------------ 4. crash
def crash(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params("crash")
    crashed = "x_crash"
    others = [f"calm{i}" for i in range(p["others"])]
    bundles = [crashed, *others]

    def one(kind: str) -> dict[str, Any]:
        tr_holder: dict[str, Any] = {"restart_at": None, "restarts": []}
        with r.running(ctx, "crash", kind, bundles) as run:
            n = p["others"] * p["per_bundle"]
            due0 = h.now() + 3600.0  # provisional: see retime
            dues = h.spread(due0, p["window"], n)
            other_records = {b: run.records / f"{b}.rec" for b in others}
            items = [h.fire_at("others", others[i % len(others)], i, d, other_records[others[i % len(others)]])
                     for i, d in enumerate(dues)]
            healthy_records = [run.records / f"{crashed}.t{j}.rec" for j in range(p["crashed_healthy"])]
            healthy = [h.fire_at("crashed_bundle_healthy", crashed, 100 + j, d, healthy_records[j])
                       for j, d in enumerate(h.spread(due0, p["window"], p["crashed_healthy"]))]
            r.seed(run, items + healthy)
            due0 = r.retime(run, items + healthy, ctx.margin(kind, "sqlite", n + p["crashed_healthy"]))
            dues = [i.due for i in items]
            r.start(run, bundles, expect_started=items + healthy,
                   record_files=[*other_records.values(), *healthy_records])

            tick = _outside_restarter(run, p["restart_delay"], tr_holder)
            r.wait_startup(run, len(items) + len(healthy), due0 - 0.2, tick=tick)
            r.mark_due(run, due0)
            # The poison arrives once everything runs: KillLoopTrigger(after) is timed to SIGKILL its loop
            # ``kill_offset`` s into the due window (+ the ~1-2 s it takes to be claimed and started).
            after = max(0.5, due0 + p["kill_offset"] - h.now() - 3.0)
            poison = Item("poison", crashed, 999, h.KILL_LOOP, {"after": round(after, 2)}, None, validate=False)
            r.seed(run, [poison])
            r.wait_done(run, items + healthy, due0, dues[-1] + p["grace"], tick=tick)
            run.result["due0"] = due0
            run.result["poison_after_s"] = round(after, 2)
            run.result["outside_restarts"] = [round(t - run.triggerer.launched_at, 2) for t in tr_holder["restarts"]]
        run.result["crash"] = _crash_analysis(run, crashed, healthy_records, due0)
        return run.result

    return r.scenario(
        ctx, one, "crash", "4. Crash",
        f"bundle {crashed!r} gets a KillLoopTrigger that SIGKILLs its own loop ~{p['kill_offset']:g} s into the due "
        f"window; {p['others'] * p['per_bundle']} FireAtTriggers in {p['others']} OTHER bundles and "
        f"{p['crashed_healthy']} healthy FireAtTriggers in {crashed!r} are due spread over {p['window']:g} s. "
        f"Stock exits when its runner dies: restarted from outside {p['restart_delay']:g} s after it exits",
        p, ["others", "crashed_bundle_healthy"])


def _outside_restarter(run: Run, delay: float, holder: dict[str, Any]) -> Callable[[], None]:
    """A tick for stock: an outside restart (systemd, k8s) ``delay`` s after the triggerer exits."""

    def tick() -> None:
        tr = run.triggerer
        if run.kind != STOCK or tr.poll() is None:
            return
        if holder["restart_at"] is None:
            holder["restart_at"] = tr.exits[-1][0] + delay
        elif h.now() >= holder["restart_at"]:
            tr.start()
            holder["restarts"].append(tr.launches[-1])
            holder["restart_at"] = None

    return tick


def _crash_analysis(run: Run, crashed: str, healthy_records: list[Path], due0: float) -> dict[str, Any]:
    """Kill moments from the triggerer's log; per kill, the time until every healthy trigger of the
    crashed bundle that was still pending runs again (a new ``start`` line in its record file)."""
    tr = run.triggerer
    text = tr.log_text() if tr else ""
    if run.kind == MULTI:
        # Loop exits during our SIGTERM at the end are not crashes.
        shutdown = min([t for t, _ in h.grep_times(text, "shutting down")] or [float("inf")])

        def seen(message: str) -> list[float]:
            return [t for t, _ in h.grep_times(text, message, f"loop={crashed}") if t < shutdown]

        kills, restarts, readies = seen("loop process ended"), seen("loop started"), seen("loop ready")
    else:
        kills = [t for t, _ in h.grep_times(text, "Trigger runner process has died")]
        if not kills:  # no timestamped line: use the moments the process was seen to exit on its own
            kills = [t for t, _, ours in tr.exits if not ours] if tr else []
        restarts = list(tr.launches[1:]) if tr else []
        readies = []
    lines = run.tail.snapshot() if run.tail else []
    per_kill = []
    for k in kills:
        pending_recovered: list[float] = []
        pending = 0
        for rec in healthy_records:
            mine = [(t, w) for t, f, w in lines if f == rec]
            started_before = any(w[0] == "start" and t < k for t, w in mine)
            fired_before = any(w[0] == "fire" and t < k for t, w in mine)
            if started_before and not fired_before:
                pending += 1
                again = [t for t, w in mine if w[0] == "start" and t >= k]
                if again:
                    pending_recovered.append(again[0] - k)
        restart_after = next((r - k for r in restarts if r >= k), None)
        ready_after = next((r - k for r in readies if r >= k), None)
        per_kill.append({
            "at_s_after_due0": round(k - due0, 2),
            "process_restart_s": round(restart_after, 2) if restart_after is not None else None,
            # multitrigger: the restart policy's delay (0 for a first crash, then backoff) is in here
            "process_ready_s": round(ready_after, 3) if ready_after is not None else None,
            "pending_healthy": pending,
            "recovered": len(pending_recovered),
            "kill_to_running_again_s": round(max(pending_recovered), 2) if pending_recovered and
            len(pending_recovered) == pending else None,
            "kill_to_first_running_again_s": round(min(pending_recovered), 2) if pending_recovered else None,
        })
    return {"kills": len(kills), "per_kill": per_kill}


# ------------------------------------------------------------------------------- 6. crash storm
#: The crashing bundles of the storm, one per way a loop (re)starts: forked from the supervisor
#: interpreter's zygote, forked from a bundle venv's zygote, a fresh interpreter per start.
STORM_BUNDLES = ("x_fork", "x_venv", "x_exec")


def storm(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params("storm")
    others = [f"calm{i}" for i in range(p["others"])]
    crashing = list(STORM_BUNDLES)
    bundles = [*crashing, *others]
    settings = {"x_venv": f'venv = "{r.bundle_venv(ctx)}"', "x_exec": 'start_method = "exec"'}

    def one(kind: str) -> dict[str, Any]:
        holder: dict[str, Any] = {"restart_at": None, "restarts": []}
        with r.running(ctx, "storm", kind, bundles) as run:
            n = p["others"] * p["per_bundle"]
            due0 = h.now() + 3600.0  # provisional: see retime
            dues = h.spread(due0, p["window"], n)
            items = [h.fire_at("others", others[i % len(others)], i, d) for i, d in enumerate(dues)]
            healthy: dict[str, list[Item]] = {}
            records: dict[str, list[Path]] = {}
            for c, b in enumerate(crashing):
                records[b] = [run.records / f"{b}.t{j}.rec" for j in range(p["crashed_healthy"])]
                healthy[b] = [h.fire_at(f"{b}_healthy", b, 100 * (c + 1) + j, d, records[b][j])
                              for j, d in enumerate(h.spread(due0 + 1.0, p["window"] - 1.0, p["crashed_healthy"]))]
            every = items + [i for b in crashing for i in healthy[b]]
            r.seed(run, every)
            # multitrigger's x_exec loop starts a fresh interpreter (Airflow imported in ~2-5 s)
            due0 = r.retime(run, every, ctx.margin(kind, "sqlite", len(every), extra=p["exec_startup"] if kind == MULTI else 0.0))
            dues = [i.due for i in items]
            r.start(run, bundles, expect_started=every, record_files=[r for b in crashing for r in records[b]],
                   loop_settings=settings)
            tick = _outside_restarter(run, p["restart_delay"], holder)
            r.wait_startup(run, len(every), due0 - 0.2, tick=tick)
            r.mark_due(run, due0)
            # One KillLoopTrigger per crashing bundle, staggered; it kills its loop ``kill_every`` s after
            # each (re)start, until it is failed as a poison trigger (multitrigger) — or forever (stock).
            h.sleep_until(due0 + p["kill_offset"] - p["kill_every"] - 1.5, tick=tick)
            poison = [Item("poison", b, 999, h.KILL_LOOP, {"after": round(p["kill_every"] + c * p["stagger"], 2)},
                           None, validate=False) for c, b in enumerate(crashing)]
            r.seed(run, poison)
            r.wait_done(run, every, due0, dues[-1] + p["grace"], tick=tick)
            run.result["due0"] = due0
            run.result["outside_restarts"] = [round(t - run.triggerer.launched_at, 2) for t in holder["restarts"]]
        run.result["storm"] = {b: _crash_analysis(run, b, records[b], due0) for b in crashing}
        return run.result

    return r.scenario(
        ctx, one, "storm", "6. Crash storm",
        f"{len(crashing)} bundles crash their loops repeatedly at once: each gets a KillLoopTrigger that SIGKILLs its "
        f"loop {p['kill_every']:g} s (+{p['stagger']:g} s per bundle) after every (re)start, first ~{p['kill_offset']:g} s "
        f"into the window. multitrigger runs the three in loops of three kinds: x_fork (forked from the supervisor "
        f"interpreter's zygote), x_venv (forked from a bundle venv's zygote), x_exec (start_method = \"exec\": a fresh "
        f"interpreter per start). Each has {p['crashed_healthy']} healthy FireAtTriggers; {p['others'] * p['per_bundle']} FireAtTriggers "
        f"in {p['others']} OTHER bundles; all due spread over {p['window']:g} s. Stock: one triggerer, restarted from "
        f"outside {p['restart_delay']:g} s after each exit",
        p, ["others", *(f"{b}_healthy" for b in crashing)])
