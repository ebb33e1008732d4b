"""The five benchmark scenarios. Each runs the same workload under stock ``airflow triggerer`` and
under ``multitrigger run`` (one loop per bundle), each on a freshly seeded metadata DB.

A scenario function returns a JSON-able dict::

    {"name", "title", "measures", "db", "params",
     "runs": {"stock": RUN, "multitrigger": RUN},
     "series": {...}}            # which latency series the scenario reports (in report order)

and RUN holds ``latency`` (per series: the raw latencies in seconds), ``startup`` (launch → all
claimed / all running), scenario extras, ``anomalies`` (grouped warning/error lines of the
triggerer's own log), and where its logs are.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multitrigger.sandbox.home import AirflowHome, ensure_pg_database, deferring_bundle

from benchmarks import harness as h
from benchmarks.harness import KINDS, MULTI, STOCK, Item, Triggerer

PG_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"

#: Default sizes and timings. ``margin``: seconds from launching the triggerer to the first due
#: time — larger than either triggerer's start-up on a busy 2-core machine, so start-up does not
#: count (each run checks it and reports ``startup.overran_due`` if it did).
PARAMS: dict[str, dict[str, Any]] = {
    "light": {"bundles": 3, "n": 200, "margin": 30.0, "datetime_offset": 10.0, "grace": 40.0},
    "throughput": {"bundles": 4, "n": 2000, "margin": 50.0, "capacity": 5000, "select": 5000, "grace": 120.0},
    "noisy": {"others": 3, "per_bundle": 20, "window": 20.0, "block": 5.0, "every": 5.0, "margin": 30.0,
              "grace": 40.0},
    "crash": {"others": 3, "per_bundle": 20, "window": 20.0, "crashed_healthy": 10, "kill_offset": 3.0,
              "margin": 30.0, "restart_delay": 2.0, "grace": 60.0},
    "idle": {"bundles": 4, "per_bundle": 3, "idle": 15.0, "start_timeout": 120.0, "pss_samples": 3},
    "storm": {"others": 3, "per_bundle": 20, "window": 30.0, "crashed_healthy": 8, "kill_offset": 3.0,
              "kill_every": 3.0, "stagger": 0.7, "margin": 40.0, "restart_delay": 2.0, "grace": 60.0},
}

QUICK: dict[str, dict[str, Any]] = {  # smoke-test sizes (--quick); numbers are not comparable
    "light": {"n": 30, "margin": 30.0, "datetime_offset": 5.0},
    "throughput": {"n": 200, "margin": 40.0},
    "noisy": {"per_bundle": 5, "window": 8.0, "margin": 30.0},
    "crash": {"per_bundle": 5, "window": 10.0, "crashed_healthy": 4, "margin": 30.0},
    "idle": {"idle": 5.0},
    "storm": {"per_bundle": 5, "window": 15.0, "crashed_healthy": 3, "grace": 30.0},
}


@dataclass
class Ctx:
    out: Path
    kinds: tuple[str, ...] = KINDS
    keep_db: bool = False
    quick: bool = False
    throughput_db: str = "sqlite"
    quiet_wait: float = 60.0
    say: Callable[[str], None] = print

    def params(self, name: str) -> dict[str, Any]:
        p = dict(PARAMS[name])
        if self.quick:
            p.update(QUICK.get(name, {}))
        return p


@dataclass
class Run:
    """One triggerer run of one scenario: home, workload, triggerer and trackers."""

    ctx: Ctx
    scenario: str
    kind: str
    workdir: Path
    home: AirflowHome
    items: list[Item] = field(default_factory=list)
    triggerer: Triggerer | None = None
    tail: h.RecordTail | None = None
    scanner: h.TriggerLogScanner | None = None
    load: h.LoadProbe = field(default_factory=h.LoadProbe)
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def records(self) -> Path:
        p = self.workdir / "records"
        p.mkdir(exist_ok=True)
        return p


# --------------------------------------------------------------------------------- plumbing
def _new_run(ctx: Ctx, scenario: str, kind: str, bundles: list[str], extra_config: dict | None = None,
             db: str = "sqlite") -> Run:
    workdir = ctx.out / scenario / kind
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    db_url = None
    if db == "pg":
        db_url = ensure_pg_database(PG_SERVER, f"mtbench_{scenario}_{kind}")
    t0 = time.monotonic()
    home = AirflowHome.create(workdir / "home", {b: deferring_bundle(h.dag_for(b)) for b in bundles},
                              db_url=db_url, extra_config=extra_config or {})
    # Seeding and launching follow at once: make sure other work on the machine is not eating the CPUs.
    quiet = h.wait_quiet(ctx.quiet_wait, say=ctx.say) if ctx.quiet_wait > 0 else None
    run = Run(ctx, scenario, kind, workdir, home)
    run.result = {"db": "postgresql" if db == "pg" else "sqlite", "home_create_s": round(time.monotonic() - t0, 1),
                  "workdir": str(workdir), "quiet_check": quiet}
    return run


@contextlib.contextmanager
def _running(ctx: Ctx, scenario: str, kind: str, bundles: list[str], extra_config: dict | None = None,
             db: str = "sqlite") -> Iterator[Run]:
    """A fresh ``Run``; on the way out (also on errors) stop everything and read the outcomes."""
    run = _new_run(ctx, scenario, kind, bundles, extra_config, db)
    try:
        yield run
    finally:
        _finish(run)


def _seed(run: Run, items: list[Item]) -> None:
    t0 = time.monotonic()
    run.home.defer_many([i.spec() for i in items])
    run.items.extend(items)
    run.result.setdefault("seed_s", []).append(round(time.monotonic() - t0, 2))


def _start(run: Run, loops: list[str], expect_started: list[Item] | None = None,
           record_files: list[Path] | None = None, loop_settings: dict[str, str] | None = None) -> None:
    if expect_started is not None:
        run.scanner = h.TriggerLogScanner(run.home.logs_dir, {(i.dag_id, i.map_index) for i in expect_started})
        run.scanner.start()
    if record_files:
        run.tail = h.RecordTail(record_files)
        run.tail.start()
    run.triggerer = Triggerer(run.kind, run.home, run.workdir, loops if run.kind == MULTI else (), loop_settings)
    run.triggerer.start()
    run.load.mark("launch", run.triggerer.pid)


def _wait_startup(run: Run, n_triggers: int, deadline: float, tick: Callable[[], None] | None = None) -> None:
    """Wait until every trigger is claimed and every expected one runs, at most until ``deadline``."""
    tr, launch = run.triggerer, run.triggerer.launched_at
    claimed_at: list[float] = []

    def ready() -> bool:
        if not claimed_at and h.count_claimed(run.home) >= n_triggers:
            claimed_at.append(h.now())
        return bool(claimed_at) and (run.scanner is None or run.scanner.complete())

    h.wait_until(ready, deadline, interval=0.5, tick=tick)
    st: dict[str, Any] = {"launch_to_first_due_s": None}
    if claimed_at:
        st["all_claimed_s"] = round(claimed_at[0] - launch, 2)
    if run.scanner is not None:
        started = dict(run.scanner.started)
        st["running"] = f"{len(started)}/{len(run.scanner.expected)}"
        if started:
            st["first_running_s"] = round(min(started.values()) - launch, 2)
        if run.scanner.complete():
            st["all_running_s"] = round(max(started.values()) - launch, 2)
    st["exited_during_startup"] = tr.poll() is not None
    run.result["startup"] = st
    run.load.mark("ready", tr.pid)


def _mark_due(run: Run, first_due: float) -> None:
    st = run.result.setdefault("startup", {})
    st["launch_to_first_due_s"] = round(first_due - run.triggerer.launched_at, 2)
    ok = "all_running_s" in st and st["all_running_s"] < st["launch_to_first_due_s"]
    st["overran_due"] = not ok


def _wait_done(run: Run, wait_for: list[Item], first_due: float, deadline: float,
               tick: Callable[[], None] | None = None, interval: float = 1.0) -> bool:
    """Sleep until the first due time, then poll until every item left DEFERRED (or ``deadline``).

    Every poll is kept as ``visible``: (seconds after the first due time, how many had left DEFERRED),
    i.e. when the results became visible to other DB sessions (committed), at ``interval`` resolution.
    """
    h.sleep_until(first_due, tick=tick)
    run.load.mark("due", run.triggerer.pid if run.triggerer.running() else None)
    dags = {i.dag_id for i in wait_for}
    idx = {i.map_index for i in wait_for}
    visible: list[tuple[float, int]] = []

    def check() -> bool:
        left = h.count_deferred(run.home, dags, idx)
        visible.append((round(h.now() - first_due, 3), len(idx) - left))
        return left == 0

    done = h.wait_until(check, deadline, interval=interval, tick=tick)
    run.result["all_done"] = bool(done)
    run.result["visible"] = visible
    return bool(done)


def _finish(run: Run) -> None:
    """Stop everything, read outcomes from the DB, collect log anomalies, drop the DB file."""
    if run.triggerer is not None:
        with contextlib.suppress(Exception):
            run.load.mark("end", run.triggerer.pid if run.triggerer.running() else None)
        run.result["load"] = {"startup": run.load.window("launch", "ready"),
                              "run": run.load.window("due" if "due" in run.load.marks else "ready", "end")}
        run.result["stop"] = run.triggerer.stop()
        run.result["exits"] = [{"at": round(t - run.triggerer.launched_at, 2), "rc": rc, "by_benchmark": ours}
                               for t, rc, ours in run.triggerer.exits]
        run.result["logs"] = [str(p) for p in run.triggerer.logs]
        run.result["anomalies"] = h.log_anomalies(run.triggerer.log_text())
    for thread in (run.tail, run.scanner):
        if thread is not None:
            thread.stop()
    outcomes = h.db_outcomes(run.home, run.items)
    latency: dict[str, list[float]] = {}
    states: dict[str, dict[str, int]] = {}
    mismatched = 0
    for o in outcomes:
        key = "failed" if o.get("failed") else str(o["state"])
        states.setdefault(o["series"], {}).setdefault(key, 0)
        states[o["series"]][key] += 1
        if "latency" in o:
            latency.setdefault(o["series"], []).append(round(o["latency"], 4))
        if o.get("due_db") is not None and o.get("due_planned") is not None and abs(o["due_db"] - o["due_planned"]) > 1e-3:
            mismatched += 1
    run.result["latency"] = latency
    run.result["states"] = states
    run.result["due_mismatch"] = mismatched  # DB payload vs planned due; must be 0
    # Per-item rows only where something is off (still deferred, failed, no latency): the latencies are above.
    run.result["unusual_outcomes"] = [o for o in outcomes if o.get("state") != "scheduled" or "latency" not in o]
    run.result["trigger_log_levels"] = h.count_trigger_log_levels(run.home.logs_dir)
    run.home.close()
    if not run.ctx.keep_db:
        for f in run.home.path.glob("airflow.db*"):
            f.unlink(missing_ok=True)


def _guard(ctx: Ctx, name: str, kind: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    ctx.say(f"[{name}] {kind}: start")
    t0 = time.monotonic()
    try:
        res = body()
    except Exception as err:  # one broken run must not lose the others
        ctx.say(f"[{name}] {kind}: FAILED {type(err).__name__}: {err}")
        res = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    res["wall_s"] = round(time.monotonic() - t0, 1)
    ctx.say(f"[{name}] {kind}: done in {res['wall_s']} s")
    return res


def _base(seed_n: int, margin: float) -> float:
    """First due time: seeding takes ~1.5 s + ~1 ms per trigger; the triggerer launches right after."""
    return h.now() + 1.5 + seed_n / 1000.0 + margin


def _scenario(ctx: Ctx, one: Callable[[str], dict[str, Any]], name: str, title: str, measures: str, params: dict,
              series: list[str], db: str = "sqlite", **extra: Any) -> dict[str, Any]:
    """Run ``one(kind)`` for each triggerer (a failed run is recorded, not raised) into a scenario dict."""
    runs = {kind: _guard(ctx, name, kind, lambda k=kind: one(k)) for kind in ctx.kinds}
    return {"name": name, "title": title, "measures": measures, "db": db, "params": params, "runs": runs,
            "series": series, **extra}


# ---------------------------------------------------------------------------- 1. light load
def light(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params("light")
    bundles = [f"light{i}" for i in range(p["bundles"])]

    def one(kind: str) -> dict[str, Any]:
        with _running(ctx, "light", kind, bundles) as run:
            due = _base(2 * p["n"], p["margin"])
            items = [h.fire_at("fireat", bundles[i % len(bundles)], i, due) for i in range(p["n"])]
            items += [h.date_time("datetime", bundles[i % len(bundles)], 10_000 + i, due + p["datetime_offset"])
                      for i in range(p["n"])]
            _seed(run, items)
            _start(run, bundles, expect_started=items)
            _wait_startup(run, len(items), due - 0.2)
            _mark_due(run, due)
            _wait_done(run, items, due, due + p["datetime_offset"] + p["grace"])
            run.result["due"] = {"fireat": due, "datetime": due + p["datetime_offset"]}
        return run.result

    return _scenario(
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
        with _running(ctx, "throughput", kind, bundles, extra_config=extra, db=ctx.throughput_db) as run:
            due = _base(p["n"], p["margin"])
            items = [h.date_time("datetime", bundles[i % len(bundles)], i, due) for i in range(p["n"])]
            _seed(run, items)
            _start(run, bundles, expect_started=items)
            _wait_startup(run, len(items), due - 0.2)
            _mark_due(run, due)
            _wait_done(run, items, due, due + p["grace"], interval=0.25)
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

    return _scenario(
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
        with _running(ctx, "noisy", kind, bundles) as run:
            n = p["others"] * p["per_bundle"]
            due0 = _base(n + 1, p["margin"])
            dues = h.spread(due0, p["window"], n)
            items = [h.fire_at("others", others[i % len(others)], i, d) for i, d in enumerate(dues)]
            block_record = run.records / "blocking.rec"
            blocker = Item("noisy", noisy_bundle, 0, h.BLOCKING,
                           {"block_seconds": p["block"], "every_seconds": p["every"],
                            "record_path": str(block_record)}, None)
            _seed(run, items + [blocker])
            _start(run, bundles, expect_started=items + [blocker], record_files=[block_record])
            _wait_startup(run, len(items) + 1, due0 - 0.2)
            _mark_due(run, due0)
            _wait_done(run, items, due0, dues[-1] + p["grace"])
            blocks = [(float(w[1]), float(w[2])) for _, _, w in run.tail.snapshot("block")]
            in_block = sum(1 for d in dues if any(s <= d < e for s, e in blocks))
            run.result["noisy"] = {
                "blocks": len(blocks),
                "blocks_overlapping_window": sum(1 for s, e in blocks if e > due0 and s < dues[-1]),
                "blocked_s_in_window": round(sum(max(0.0, min(e, dues[-1]) - max(s, due0)) for s, e in blocks), 1),
                "others_due_inside_a_block": in_block,
            }
        return run.result

    return _scenario(
        ctx, one, "noisy", "3. Noisy neighbour",
        f"bundle {noisy_bundle!r} runs a BlockingTrigger that blocks its event loop for {p['block']:g} s, then "
        f"leaves it free for {p['every']:g} s, repeatedly; {p['others'] * p['per_bundle']} FireAtTriggers in {p['others']} OTHER bundles due "
        f"spread over {p['window']:g} s; latency of the other bundles only",
        p, ["others"])


# ------------------------------------------------------------------------------------ 4. crash
def crash(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params("crash")
    crashed = "x_crash"
    others = [f"calm{i}" for i in range(p["others"])]
    bundles = [crashed, *others]

    def one(kind: str) -> dict[str, Any]:
        tr_holder: dict[str, Any] = {"restart_at": None, "restarts": []}
        with _running(ctx, "crash", kind, bundles) as run:
            n = p["others"] * p["per_bundle"]
            due0 = _base(n + p["crashed_healthy"], p["margin"])
            dues = h.spread(due0, p["window"], n)
            other_records = {b: run.records / f"{b}.rec" for b in others}
            items = [h.fire_at("others", others[i % len(others)], i, d, other_records[others[i % len(others)]])
                     for i, d in enumerate(dues)]
            healthy_records = [run.records / f"{crashed}.t{j}.rec" for j in range(p["crashed_healthy"])]
            healthy = [h.fire_at("crashed_bundle_healthy", crashed, 100 + j, d, healthy_records[j])
                       for j, d in enumerate(h.spread(due0, p["window"], p["crashed_healthy"]))]
            _seed(run, items + healthy)
            _start(run, bundles, expect_started=items + healthy,
                   record_files=[*other_records.values(), *healthy_records])

            tick = _outside_restarter(run, p["restart_delay"], tr_holder)
            _wait_startup(run, len(items) + len(healthy), due0 - 0.2, tick=tick)
            _mark_due(run, due0)
            # The poison arrives once everything runs: KillLoopTrigger(after) is timed to SIGKILL its loop
            # ``kill_offset`` s into the due window (+ the ~1-2 s it takes to be claimed and started).
            after = max(0.5, due0 + p["kill_offset"] - h.now() - 3.0)
            poison = Item("poison", crashed, 999, h.KILL_LOOP, {"after": round(after, 2)}, None, validate=False)
            _seed(run, [poison])
            _wait_done(run, items + healthy, due0, dues[-1] + p["grace"], tick=tick)
            run.result["due0"] = due0
            run.result["poison_after_s"] = round(after, 2)
            run.result["outside_restarts"] = [round(t - run.triggerer.launched_at, 2) for t in tr_holder["restarts"]]
        run.result["crash"] = _crash_analysis(run, crashed, healthy_records, due0)
        return run.result

    return _scenario(
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
        kills = [t for t, _ in h.grep_times(text, "loop process ended", f"loop={crashed}") if t < shutdown]
        restarts = [t for t, _ in h.grep_times(text, "loop started", f"loop={crashed}") if t < shutdown]
        readies = [t for t, _ in h.grep_times(text, "loop ready", f"loop={crashed}") if t < shutdown]
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
        restart_after = [r - k for r in restarts if r >= k]
        ready_after = [r - k for r in readies if r >= k]
        per_kill.append({
            "at_s_after_due0": round(k - due0, 2),
            "process_restart_s": round(restart_after[0], 2) if restart_after else None,
            # multitrigger: the restart policy's delay (0 for a first crash, then backoff) is in here
            "process_ready_s": round(ready_after[0], 3) if ready_after else None,
            "pending_healthy": pending,
            "recovered": len(pending_recovered),
            "kill_to_running_again_s": round(max(pending_recovered), 2) if pending_recovered and
            len(pending_recovered) == pending else None,
            "kill_to_first_running_again_s": round(min(pending_recovered), 2) if pending_recovered else None,
        })
    return {"kills": len(kills), "per_kill": per_kill}


# ------------------------------------------------------------------------- 5. idle and start-up
def idle(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params("idle")
    bundles = [f"idle{i}" for i in range(p["bundles"])]

    def one(kind: str) -> dict[str, Any]:
        with _running(ctx, "idle", kind, bundles) as run:
            far = h.now() + 3600
            records = {b: run.records / f"{b}.rec" for b in bundles}
            items = [h.fire_at("idle", b, j, far, records[b]) for b in bundles for j in range(p["per_bundle"])]
            # map_index must be unique per DAG only; make them unique overall for simple bookkeeping
            for k, item in enumerate(items):
                item.map_index = k
            _seed(run, items)
            _start(run, bundles, record_files=list(records.values()))
            tr = run.triggerer
            want = len(items)
            h.wait_until(lambda: len(run.tail.snapshot("start")) >= want, tr.launched_at + p["start_timeout"],
                         interval=0.05)
            starts = run.tail.snapshot("start")
            st: dict[str, Any] = {"running": f"{min(len(starts), want)}/{want}"}
            if len(starts) >= want:
                st["all_running_s"] = round(starts[want - 1][0] - tr.launched_at, 2)
                st["per_bundle_all_running_s"] = {
                    b: round(max(t for t, f, _ in starts if f == records[b]) - tr.launched_at, 2) for b in bundles}
            run.result["startup"] = st
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

    return _scenario(
        ctx, one, "idle", "5. Idle memory and start-up",
        f"{p['bundles']} bundles x {p['per_bundle']} far-future FireAtTriggers: launch -> every trigger running "
        f"(record files), then PSS of the whole process tree after {p['idle']:g} s idle",
        p, [])


# ------------------------------------------------------------------------------- 6. crash storm
#: The crashing bundles of the storm, one per way a loop (re)starts, with their loop settings.
STORM_KINDS = {"x_fork": "", "x_venv": None, "x_exec": 'start_method = "exec"'}


def _storm_venv(ctx: Ctx) -> Path:
    """A layered bundle venv (``multitrigger venv create``) for the ``x_venv`` loop, made once."""
    from multitrigger.venvs import create_bundle_venv

    venv = ctx.out / "storm" / "bundle-venv"
    if not (venv / "bin" / "python").exists():
        create_bundle_venv(venv)
    return venv


def storm(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params("storm")
    others = [f"calm{i}" for i in range(p["others"])]
    crashing = list(STORM_KINDS)
    bundles = [*crashing, *others]
    settings = {b: v for b, v in STORM_KINDS.items() if v}
    settings["x_venv"] = f'venv = "{_storm_venv(ctx)}"'

    def one(kind: str) -> dict[str, Any]:
        holder: dict[str, Any] = {"restart_at": None, "restarts": []}
        with _running(ctx, "storm", kind, bundles) as run:
            n = p["others"] * p["per_bundle"]
            due0 = _base(n + len(crashing) * p["crashed_healthy"], p["margin"])
            dues = h.spread(due0, p["window"], n)
            items = [h.fire_at("others", others[i % len(others)], i, d) for i, d in enumerate(dues)]
            healthy: dict[str, list[Item]] = {}
            records: dict[str, list[Path]] = {}
            for c, b in enumerate(crashing):
                records[b] = [run.records / f"{b}.t{j}.rec" for j in range(p["crashed_healthy"])]
                healthy[b] = [h.fire_at(f"{b}_healthy", b, 100 * (c + 1) + j, d, records[b][j])
                              for j, d in enumerate(h.spread(due0 + 1.0, p["window"] - 1.0, p["crashed_healthy"]))]
            every = items + [i for b in crashing for i in healthy[b]]
            _seed(run, every)
            _start(run, bundles, expect_started=every, record_files=[r for b in crashing for r in records[b]],
                   loop_settings=settings)
            tick = _outside_restarter(run, p["restart_delay"], holder)
            _wait_startup(run, len(every), due0 - 0.2, tick=tick)
            _mark_due(run, due0)
            # One KillLoopTrigger per crashing bundle, staggered; it kills its loop ``kill_every`` s after
            # each (re)start, until it is failed as a poison trigger (multitrigger) — or forever (stock).
            h.sleep_until(due0 + p["kill_offset"] - p["kill_every"] - 1.5, tick=tick)
            poison = [Item("poison", b, 999, h.KILL_LOOP, {"after": round(p["kill_every"] + c * p["stagger"], 2)},
                           None, validate=False) for c, b in enumerate(crashing)]
            _seed(run, poison)
            _wait_done(run, every, due0, dues[-1] + p["grace"], tick=tick)
            run.result["due0"] = due0
            run.result["outside_restarts"] = [round(t - run.triggerer.launched_at, 2) for t in holder["restarts"]]
        run.result["storm"] = {b: _crash_analysis(run, b, records[b], due0) for b in crashing}
        return run.result

    return _scenario(
        ctx, one, "storm", "6. Crash storm",
        f"{len(crashing)} bundles crash their loops repeatedly at once: each gets a KillLoopTrigger that SIGKILLs its "
        f"loop {p['kill_every']:g} s (+{p['stagger']:g} s per bundle) after every (re)start, first ~{p['kill_offset']:g} s "
        f"into the window. multitrigger runs the three in loops of three kinds: x_fork (forked from the supervisor "
        f"interpreter's zygote), x_venv (forked from a bundle venv's zygote), x_exec (start_method = \"exec\": a fresh "
        f"interpreter per start). Each has {p['crashed_healthy']} healthy FireAtTriggers; {p['others'] * p['per_bundle']} FireAtTriggers "
        f"in {p['others']} OTHER bundles; all due spread over {p['window']:g} s. Stock: one triggerer, restarted from "
        f"outside {p['restart_delay']:g} s after each exit",
        p, ["others", *(f"{b}_healthy" for b in crashing)])


SCENARIOS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "light": light,
    "throughput": throughput,
    "noisy": noisy,
    "crash": crash,
    "idle": idle,
    "storm": storm,
}
