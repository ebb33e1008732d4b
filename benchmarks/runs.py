"""What every benchmark scenario shares: settings (``PARAMS``), one ``Run`` per triggerer and the
steps of a run — fresh home, seed, launch, wait for start-up, wait for the due time and the
outcomes, stop and read the results from the DB — and ``scenario``, which runs a scenario's
``one(kind)`` for each triggerer.

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
import os
import re
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mt_testsupport.home import AirflowHome, ensure_pg_database, deferring_bundle

from benchmarks import harness as h
from benchmarks.harness import KINDS, MULTI, STOCK, Item, Triggerer

PG_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def pg_database(name: str) -> str:
    """A benchmark database on ``PG_SERVER`` named ``mtbench_<name>``, plus ``$MTBENCH_DB_SUFFIX``
    (so two checkouts' concurrent runs stay off each other's databases); created if missing."""
    return ensure_pg_database(PG_SERVER, f"mtbench_{name}{os.environ.get('MTBENCH_DB_SUFFIX', '')}")

#: Default sizes and timings. ``margin``: seconds from launching the triggerer to the first due
#: time — larger than either triggerer's start-up on a busy 2-core machine, so start-up does not
#: count (each run checks it and reports ``startup.overran_due`` if it did).
PARAMS: dict[str, dict[str, Any]] = {
    "light": {"bundles": 3, "n": 200, "margin": 30.0, "datetime_offset": 10.0, "grace": 40.0},
    "throughput": {"bundles": 4, "n": 2000, "margin": 50.0, "capacity": 5000, "select": 5000, "grace": 120.0},
    "noisy": {"others": 3, "per_bundle": 20, "window": 20.0, "block": 5.0, "every": 5.0, "grace": 40.0},
    "crash": {"others": 3, "per_bundle": 20, "window": 20.0, "crashed_healthy": 10, "kill_offset": 3.0,
              "restart_delay": 2.0, "grace": 60.0},
    "idle": {"bundles": 4, "per_bundle": 3, "idle": 15.0, "start_timeout": 120.0, "pss_samples": 3},
    "marginal": {"bundles": 4, "per_bundle": 3, "idle": 15.0, "start_timeout": 120.0, "pss_samples": 3},
    "storm": {"others": 3, "per_bundle": 20, "window": 30.0, "crashed_healthy": 8, "kill_offset": 3.0,
              "kill_every": 3.0, "stagger": 0.7, "exec_startup": 6.0, "restart_delay": 2.0, "grace": 60.0},
    "limit": {"bundles": 4, "sizes": [200, 2000, 20000], "gaps": [5.0, 12.0], "stock_max": 2000, "stock_max_pg": 200,
              "grace": 60.0},
    "alone": {"bundles": 4, "n": 200, "bursts": 3, "gap": 4.0, "grace": 20.0},
    "limit_held": {"bundles": 4, "held": 19000, "burst": 200, "stock_held_max": 2000, "grace": 30.0},
    "scaleout": {"instances": 4, "bundles": 4, "n": 20000, "health_threshold": 10.0, "stock_health_threshold": 30.0,
                 "heartbeat": 2.0, "claim_cycle": 1.0,
                 "slack": 10.0, "term_timeout": 60.0, "start_timeout": 300.0, "claim_timeout": 180.0},
    "flood": {"others": 2, "per_bundle": 30, "window": 20.0, "flood_window": 8.0, "gap": 3.0, "margin": 30.0, "grace": 60.0,
              "lines": 2, "line_mib": 256, "stdout_line_mib": 32, "stdout_mib": 64},
    "memhog": {"others": 2, "per_bundle": 30, "window": 20.0, "hog_window": 15.0, "gap": 3.0, "margin": 30.0,
               "grace": 40.0, "limit_mib": 512, "target_mib": 1024, "step_mib": 32, "step_s": 0.1, "hold_s": 5.0},
}

QUICK: dict[str, dict[str, Any]] = {  # smoke-test sizes (--quick); numbers are not comparable
    "light": {"n": 30, "margin": 30.0, "datetime_offset": 5.0},
    "throughput": {"n": 200, "margin": 40.0},
    "noisy": {"per_bundle": 5, "window": 8.0},
    "crash": {"per_bundle": 5, "window": 10.0, "crashed_healthy": 4},
    "idle": {"idle": 5.0},
    "marginal": {"idle": 5.0},
    "storm": {"per_bundle": 5, "window": 15.0, "crashed_healthy": 3, "grace": 30.0},
    "limit": {"sizes": [20, 200], "gaps": [5.0], "stock_max": 200, "stock_max_pg": 20, "grace": 20.0},
    "alone": {"n": 30, "bursts": 2},
    "limit_held": {"held": 600, "burst": 50, "stock_held_max": 600, "grace": 15.0},
    "scaleout": {"n": 200},
    "flood": {"per_bundle": 5, "window": 8.0, "flood_window": 4.0, "line_mib": 16, "stdout_line_mib": 4, "stdout_mib": 8},
    "memhog": {"per_bundle": 5, "window": 8.0, "hog_window": 6.0, "limit_mib": 128, "target_mib": 256},
}


#: Start-up guesses before anything was measured in this session: (seconds, seconds per trigger)
#: from launch to every trigger running, per (triggerer, DB). A quiet 2-core machine does better
#: (benchmarks README: idle 2.7-2.9 s, light/noisy/crash 2.7-7 s; limit's 22,200 running in 22.7 s
#: on SQLite; limit_pg's in 26 s on a loaded machine); these leave room for a machine shared with other work.
#: The full run starts with ``idle``, which measures both triggerers' start-up for what follows.
STARTUP_GUESS: dict[tuple[str, str], tuple[float, float]] = {
    ("multitrigger", "sqlite"): (5.0, 0.0012), ("multitrigger", "postgresql"): (5.0, 0.0012),
    ("stock", "sqlite"): (6.0, 0.01), ("stock", "postgresql"): (7.0, 0.016),
}
#: margin = MARGIN_FACTOR x the predicted start-up + MARGIN_SLACK, at least MARGIN_MIN: room for a
#: start-up 1.5 times as slow as the slowest seen (a busier machine) before it overruns the first due.
MARGIN_FACTOR, MARGIN_SLACK, MARGIN_MIN = 1.5, 3.0, 8.0
#: How long stock gets to exit after SIGTERM before its process group is killed: its graceful stop
#: takes up to ~20 s and measures nothing the benchmark reports (multitrigger's is measured, 45 s).
STOCK_STOP_TIMEOUT = 8.0


@dataclass
class Ctx:
    out: Path
    kinds: tuple[str, ...] = KINDS
    keep_db: bool = False
    quick: bool = False
    throughput_db: str = "sqlite"
    quiet_wait: float = 60.0
    say: Callable[[str], None] = print
    #: (triggerer, DB) -> [(triggers, launch -> all running s)] of this session's runs that got there
    startups: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=dict)

    def params(self, name: str) -> dict[str, Any]:
        p = dict(PARAMS[name])
        if self.quick:
            p.update(QUICK.get(name, {}))
        return p

    def predicted_startup(self, kind: str, db: str, n: int) -> float:
        """Launch -> all ``n`` triggers running, predicted from this session's runs: the slowest
        fixed part seen (runs of < 1000 triggers) plus the slowest per-trigger rate seen (runs of
        >= 1000), each falling back to ``STARTUP_GUESS`` until measured."""
        base, rate = STARTUP_GUESS[(kind, db)]
        seen = self.startups.get((kind, db), [])
        small = [s for m, s in seen if m < 1000]
        base = max(small) if small else base
        rates = [(s - base) / m for m, s in seen if m >= 1000]
        rate = max(rates) if rates else rate
        return base + max(rate, 0.0) * n

    def margin(self, kind: str, db: str, n: int, extra: float = 0.0) -> float:
        """Seconds from launch to the first due time for ``n`` triggers (``extra``: a scenario's
        known start-up cost beyond the usual, e.g. an exec'd loop's fresh interpreter)."""
        return max(MARGIN_MIN, MARGIN_FACTOR * (self.predicted_startup(kind, db, n) + extra) + MARGIN_SLACK)

    def learn_startup(self, run: Run) -> None:
        """Remember a run's start-up (``startup.all_running_s`` of ``startup.expected`` triggers);
        one that was not complete by its deadline counts with the time waited (a lower bound)."""
        st = run.result.get("startup") or {}
        if not (n := st.get("expected")) or run.triggerer is None:
            return
        seconds = st.get("all_running_s", h.now() - run.triggerer.launched_at)
        self.startups.setdefault((run.kind, run.result["db"]), []).append((int(n), float(seconds)))


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
        db_url = pg_database(f"{scenario}_{kind}")
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
def running(ctx: Ctx, scenario: str, kind: str, bundles: list[str], extra_config: dict | None = None,
             db: str = "sqlite") -> Iterator[Run]:
    """A fresh ``Run``; on the way out (also on errors) stop everything and read the outcomes."""
    run = _new_run(ctx, scenario, kind, bundles, extra_config, db)
    try:
        yield run
    finally:
        finish(run)


def bundle_venv(ctx: Ctx) -> Path:
    """One layered bundle venv (``multitrigger venv create``) per results directory, shared by the
    scenarios that run a loop in one (storm's ``x_venv``, marginal's ``m_venv``): made once."""
    from multitrigger.venvs import create_bundle_venv

    venv = ctx.out / "bundle-venv"
    if not (venv / "bin" / "python").exists():
        t0 = time.monotonic()
        create_bundle_venv(venv)
        ctx.say(f"bundle venv made in {time.monotonic() - t0:.1f} s: {venv}")
    return venv


def seed(run: Run, items: list[Item]) -> None:
    t0 = time.monotonic()
    run.home.defer_many([i.spec() for i in items])
    run.items.extend(items)
    run.result.setdefault("seed_s", []).append(round(time.monotonic() - t0, 2))


def seed_idle(run: Run, bundles: list[str], per_bundle: int) -> dict[str, Path]:
    """``per_bundle`` FireAtTriggers per bundle due in an hour (they only have to run); map_index
    unique overall for simple bookkeeping. Returns each bundle's record file."""
    far = h.now() + 3600
    records = {b: run.records / f"{b}.rec" for b in bundles}
    items = [h.fire_at("idle", b, j, far, records[b]) for b in bundles for j in range(per_bundle)]
    for k, item in enumerate(items):
        item.map_index = k
    seed(run, items)
    return records


_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{6})?\+00:00")  # what ``harness.iso`` writes


def retime(run: Run, items: list[Item], margin: float) -> float:
    """Move the seeded workload so its first due time is ``margin`` s from now; returns it.

    Seeding takes seconds to minutes (~2.5 ms per trigger on SQLite, more on PostgreSQL), so due
    times fixed before it would need a generous guess of its length. Instead, once seeded and
    before the triggerer is launched, every due moment of ``items`` (FireAtTrigger's ``moment``
    and the ``due`` it echoes in its payload: ISO strings in the trigger row's serde-JSON kwargs)
    is shifted by the same amount in the DB, and in ``items``. The triggerer then reads exactly the
    rows it would have read had they been seeded that way. Every item's row must change (else:
    ``AssertionError``: a trigger class that stores its moment otherwise cannot be retimed).
    """
    assert run.triggerer is None, "retime before the launch only"
    timed = [i for i in items if i.due is not None]
    first = h.now() + margin
    shift = first - min(i.due for i in timed)
    moves = {h.iso(i.due): h.iso(i.due + shift) for i in timed}
    rows = run.home.sql("SELECT id, kwargs FROM trigger")
    changed = [{"id": tid, "kwargs": new} for tid, old in rows
               if isinstance(old, str) and (new := _ISO.sub(lambda m: moves.get(m.group(0), m.group(0)), old)) != old]
    assert len(changed) >= len(timed), f"retimed {len(changed)} trigger rows of {len(timed)} timed items"
    from sqlalchemy import text

    with run.home.engine.begin() as conn:
        conn.execute(text("UPDATE trigger SET kwargs = :kwargs WHERE id = :id"), changed)
    for item in timed:
        item.due += shift
        for key in ("moment", "target_time"):
            if key in item.kwargs:
                item.kwargs[key] = h.iso(item.due)
        if isinstance(item.kwargs.get("payload"), dict) and "due" in item.kwargs["payload"]:
            item.kwargs["payload"]["due"] = h.iso(item.due)
    run.result["margin_s"] = round(margin, 2)
    return first


def start(run: Run, loops: list[str], expect_started: list[Item] | None = None,
           record_files: list[Path] | None = None, loop_settings: dict[str, str] | None = None) -> None:
    if run.result.get("db") == "postgresql":
        run.result["analyze_s"] = h.analyze(run.home)
    if expect_started is not None:
        run.scanner = h.TriggerLogScanner(run.home.logs_dir, {(i.dag_id, i.map_index) for i in expect_started})
        run.scanner.start()
    if record_files:
        run.tail = h.RecordTail(record_files)
        run.tail.start()
    run.triggerer = Triggerer(run.kind, run.home, run.workdir, loops if run.kind == MULTI else (), loop_settings)
    run.triggerer.start()
    run.load.mark("launch", run.triggerer.pid)


def wait_startup(run: Run, n_triggers: int, deadline: float, tick: Callable[[], None] | None = None) -> None:
    """Wait until every trigger is claimed and every expected one runs, at most until ``deadline``."""
    tr, launch = run.triggerer, run.triggerer.launched_at
    claimed_at: list[float] = []

    def ready() -> bool:
        if not claimed_at and h.count_claimed(run.home) >= n_triggers:
            claimed_at.append(h.now())
        return bool(claimed_at) and (run.scanner is None or run.scanner.complete())

    h.wait_until(ready, deadline, interval=0.5, tick=tick)
    st: dict[str, Any] = {"launch_to_first_due_s": None, "expected": n_triggers}
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
    run.ctx.learn_startup(run)


def mark_due(run: Run, first_due: float) -> None:
    st = run.result.setdefault("startup", {})
    st["launch_to_first_due_s"] = round(first_due - run.triggerer.launched_at, 2)
    ok = "all_running_s" in st and st["all_running_s"] < st["launch_to_first_due_s"]
    st["overran_due"] = not ok


def wait_done(run: Run, wait_for: list[Item], first_due: float, deadline: float,
               tick: Callable[[], None] | None = None, interval: float = 1.0) -> bool:
    """Sleep until the first due time, then poll until every item left DEFERRED (or ``deadline``).

    Every poll is kept as ``visible``: (seconds after the first due time, how many had left DEFERRED),
    i.e. when the results became visible to other DB sessions (committed), at ``interval`` resolution.
    A run that waits for several bursts keeps each one's under ``visible_by_series`` (``visible`` is
    the last wait's), and ``all_done`` only if every wait saw all of its items done.
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
    run.result["all_done"] = bool(done) and run.result.get("all_done", True)
    run.result["visible"] = visible
    run.result.setdefault("visible_by_series", {})[",".join(sorted({i.series for i in wait_for}))] = visible
    return bool(done)


class Sampler(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


def offender_beside_calm(run: Run, p: dict[str, Any], offender: str, others: list[str], during: str,
                         during_window: float, sampler: Callable[[int], Sampler],
                         make_offender: Callable[[float], Item], loop_settings: dict[str, str] | None = None,
                         settle: float = 0.0) -> tuple[list[Item], Sampler]:
    """One bundle misbehaves beside healthy ones (flood, memhog): ``p["others"] * p["per_bundle"]``
    FireAtTriggers in ``others`` due over ``p["window"]`` (series ``calm``), as many again over
    ``during_window`` from the offender's start (series ``during``), ``p["gap"]`` s apart. Seeds them,
    starts the triggerer, waits for start-up, starts ``sampler(triggerer pid)``, seeds
    ``make_offender(after)`` (``after``: seconds it should wait once running so that it starts at the
    ``during`` window), waits for every outcome, ``settle`` s more, stops the sampler.
    Returns the ``during`` items and the stopped sampler."""
    n = p["others"] * p["per_bundle"]
    due0 = base(2 * n, p["margin"])
    due1 = due0 + p["window"] + p["gap"]  # the offender starts at due1
    calm = [h.fire_at("calm", others[i % len(others)], i, d) for i, d in enumerate(h.spread(due0, p["window"], n))]
    disturbed = [h.fire_at(during, others[i % len(others)], n + i, d)
                 for i, d in enumerate(h.spread(due1 + 0.2, during_window, n))]
    seed(run, calm + disturbed)
    start(run, [offender, *others], expect_started=calm + disturbed, loop_settings=loop_settings)
    wait_startup(run, 2 * n, due0 - 0.2)
    mark_due(run, due0)
    sampling = sampler(run.triggerer.pid)
    sampling.start()
    # Seeded once everything runs; it is claimed and started ~1-2 s later, then waits ``after``.
    h.sleep_until(due1 - p["gap"])
    item = make_offender(round(max(0.5, due1 - h.now() - 2.0), 2))
    seed(run, [item])
    wait_done(run, calm + disturbed + [item], due0, due1 + during_window + p["grace"])
    time.sleep(settle)
    sampling.stop()
    return disturbed, sampling


def finish(run: Run) -> None:
    """Stop everything, read outcomes from the DB, collect log anomalies, drop the DB file."""
    if run.triggerer is not None:
        with contextlib.suppress(Exception):
            run.load.mark("end", run.triggerer.pid if run.triggerer.running() else None)
        run.result["load"] = {"startup": run.load.window("launch", "ready"),
                              "run": run.load.window("due" if "due" in run.load.marks else "ready", "end")}
        run.result["stop"] = run.triggerer.stop(STOCK_STOP_TIMEOUT if run.kind == STOCK else 45.0)
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


def guard(ctx: Ctx, name: str, kind: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
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


def base(seed_n: int, margin: float) -> float:
    """First due time: seeding takes ~1.5 s + ~1 ms per trigger; the triggerer launches right after."""
    return h.now() + 1.5 + seed_n / 1000.0 + margin


def scenario(ctx: Ctx, one: Callable[[str], dict[str, Any]], name: str, title: str, measures: str, params: dict,
              series: list[str], db: str = "sqlite", **extra: Any) -> dict[str, Any]:
    """Run ``one(kind)`` for each triggerer (a failed run is recorded, not raised) into a scenario dict."""
    runs = {kind: guard(ctx, name, kind, lambda k=kind: one(k)) for kind in ctx.kinds}
    return {"name": name, "title": title, "measures": measures, "db": db, "params": params, "runs": runs,
            "series": series, **extra}
