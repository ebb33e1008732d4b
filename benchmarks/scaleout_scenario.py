"""Scenario ``scaleout``: several triggerers share one trigger table on PostgreSQL (issue 13).

Airflow's own HA is the distributed engine: every member claims with ``Trigger.assign_unassigned``
(row locks, capacity, ``max_trigger_to_select_per_loop``) and takes over the triggers of a member
whose heartbeat is older than ``triggerer_health_check_threshold``. Two runs, each on a fresh
PostgreSQL database:

* ``mt4``: 4 ``multitrigger run`` instances;
* ``mt4+stock``: the same 4 and a stock ``airflow triggerer`` as the fifth member.

Both runs share one database, seeded once with ``n`` far-future ``FireAtTrigger``s (record files,
one line per start / cancel, tagged with the trigger's task instance): seeding 20,000 task
instances takes ~1 min here, the same work twice would be most of the scenario's time. Until every
member of a run has registered its job, the triggers are held by a placeholder triggerer job (a
``job`` row of the harness, heartbeat in the future); then they are all unassigned in one
transaction (what seeding them at that instant would do) and the members claim them in turns; wait
until every one runs: the **share** is what each member holds then (goal: max/min <= 1.5). Before
the second run the record files of the first are moved aside and the triggers held again. Then **kill -9** one multitrigger supervisor (its loops die with it: parent-death
signal) and wait until every trigger it held has started elsewhere (goal: within
``triggerer_health_check_threshold`` + one claim cycle); then **SIGTERM** another and wait the same
way (goal: one claim cycle after it exited and handed its triggers back). **Exactly once**: per
trigger, the intervals it ran (``start`` .. its ``cancel`` line, or the death of its process) must
not overlap for longer than one claim cycle. A sampler counts ``trigger.triggerer_id`` per member
every 0.5 s for the timeline plot.

``triggerer_health_check_threshold`` is shortened to 10 s in ``mt4`` (the time budget); ``mt4+stock``
runs with stock's default 30 s: stock builds each claim's new triggers (1667 at 20,000) in its own
loop before it heartbeats, and on this machine that took longer than 10 s, so the others took its
triggers while it still ran them (Airflow's HA has no fencing).

``max_trigger_to_select_per_loop`` is ``n / 12``: small enough that members starting together
claim in turns (fair shares), large enough that 3 survivors take a quarter back in one cycle.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import threading
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import psutil
from mt_testsupport.home import AirflowHome, deferring_bundle
from mt_testsupport.procs import process_tree

from benchmarks import harness as h
from benchmarks.harness import MULTI, STOCK, Triggerer
from benchmarks.runs import Ctx, pg_database

_JOB = re.compile(r"multitrigger supervisor starting.*job_id=(\d+)")


def scaleout(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params("scaleout")
    runs: dict[str, Any] = {}
    seeded = _seed(ctx, p)
    ctx.say(f"[scaleout] seeded {p['n']} in {seeded.seed_s} s")
    for variant, members in (("mt4", [MULTI] * p["instances"]), ("mt4+stock", [MULTI] * p["instances"] + [STOCK])):
        if STOCK in members and STOCK not in ctx.kinds:
            continue
        ctx.say(f"[scaleout] {variant}: start")
        t0 = time.monotonic()
        try:
            runs[variant] = _one(ctx, p, variant, members, seeded)
        except Exception as err:  # one broken run must not lose the other
            import traceback
            runs[variant] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        runs[variant]["wall_s"] = round(time.monotonic() - t0, 1)
        ctx.say(f"[scaleout] {variant}: done in {runs[variant]['wall_s']} s")
    seeded.home.close()
    sc = {"name": "scaleout", "title": "Scale-out on PostgreSQL", "seed_s": seeded.seed_s,
          "measures": f"{p['n']} FireAtTriggers shared by {p['instances']} multitrigger instances (and a stock "
                      "triggerer as fifth member); share, kill -9 / SIGTERM takeover, exactly once",
          "db": "postgresql", "params": p, "runs": {}, "series": [], "scaleout": runs}
    with contextlib.suppress(Exception):
        sc["plot_timeline"] = str(plot_timeline(sc, ctx.out / "scaleout_timeline.png"))
    return sc


class _Sampler(threading.Thread):
    """Triggers held per triggerer job, every ``interval`` s, from the DB."""

    def __init__(self, home: AirflowHome, interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="held-sampler")
        self.home, self.interval = home, interval
        self.samples: list[tuple[float, dict[int, int]]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            with contextlib.suppress(Exception):
                rows = self.home.sql("SELECT triggerer_id, count(*) FROM trigger WHERE triggerer_id IS NOT NULL "
                                     "GROUP BY triggerer_id")
                self.samples.append((h.now(), {int(j): int(c) for j, c in rows}))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(5)


@dataclass
class _Seeded:
    home: AirflowHome
    bundles: list[str]
    records: dict[str, Path]
    seed_s: float
    runs: int = 0  # runs started on it so far


def _seed(ctx: Ctx, p: dict[str, Any]) -> _Seeded:
    """One home and database for both runs, with its ``n`` triggers seeded and held (``_hold``)."""
    workdir = ctx.out / "scaleout"
    workdir.mkdir(parents=True, exist_ok=True)
    bundles = [f"so{i}" for i in range(p["bundles"])]
    select = max(1, math.ceil(p["n"] / 12))
    extra = {"triggerer": {"capacity": str(p["n"]), "max_trigger_to_select_per_loop": str(select),
                           "triggerer_health_check_threshold": str(p["health_threshold"]),
                           "job_heartbeat_sec": str(p["heartbeat"])}}
    home = AirflowHome.create(workdir / "home", {b: deferring_bundle(h.dag_for(b)) for b in bundles},
                              db_url=pg_database("scaleout"), extra_config=extra)
    records = {b: workdir / f"{b}.rec" for b in bundles}
    for f in records.values():
        f.unlink(missing_ok=True)
    items = []
    for k in range(p["n"]):
        b = bundles[k % len(bundles)]
        item = h.fire_at("scaleout", b, k, h.now() + 86400, records[b])
        item.kwargs["record_tag"] = str(k)
        items.append(item)
    t_seed = h.now()
    home.defer_many([i.spec() for i in items])  # no member runs yet: nobody claims them before _hold
    return _Seeded(home, bundles, records, round(h.now() - t_seed, 1))


def _set_threshold(home: AirflowHome, seconds: float) -> None:
    """``[triggerer] triggerer_health_check_threshold`` for the members started next (every member
    of a run judges the others by the same value)."""
    text = home.config_path.read_text()
    home.config_path.write_text(re.sub(r"(?m)^triggerer_health_check_threshold = .*$",
                                       f"triggerer_health_check_threshold = {seconds}", text))


def _hold(home: AirflowHome) -> int:
    """Every trigger to a new placeholder triggerer job, alive (heartbeat a day ahead) until ``_hand_out``."""
    (job,), = home.sql("INSERT INTO job (job_type, state, start_date, latest_heartbeat, hostname) VALUES "
                       "('TriggererJob', 'running', now(), now() + interval '1 day', 'scaleout-harness') RETURNING id")
    home.sql("UPDATE trigger SET triggerer_id = :j", {"j": job})
    return int(job)


def _hand_out(home: AirflowHome, job: int) -> None:
    """All triggers unassigned at one instant (one transaction), the placeholder job ended."""
    home.sql("WITH t AS (UPDATE trigger SET triggerer_id = NULL WHERE triggerer_id = :j RETURNING 1) "
             "UPDATE job SET end_date = now(), state = 'success' WHERE id = :j", {"j": job})


def _one(ctx: Ctx, p: dict[str, Any], variant: str, members: list[str], seeded: _Seeded) -> dict[str, Any]:
    workdir = ctx.out / "scaleout" / variant.replace("+", "_")
    workdir.mkdir(parents=True, exist_ok=True)
    home, bundles, records = seeded.home, seeded.bundles, seeded.records
    for f in records.values():  # the previous run's, moved aside (every process of it has stopped)
        if f.exists():
            f.rename(f.with_name(f"{f.name}.run{seeded.runs}"))
    seeded.runs += 1
    threshold = p["stock_health_threshold"] if STOCK in members else p["health_threshold"]
    _set_threshold(home, threshold)
    placeholder = _hold(home)
    select = max(1, math.ceil(p["n"] / 12))
    res: dict[str, Any] = {"members": members, "select_per_loop": select, "workdir": str(workdir),
                           "health_threshold": threshold, "analyze_s": h.analyze(home)}
    trs: list[Triggerer] = []
    tail = h.RecordTail(list(records.values()))
    sampler = _Sampler(home)
    jobs: dict[int, int] = {}
    try:
        for i, kind in enumerate(members):
            wd = workdir / f"{kind}{i}"
            wd.mkdir(exist_ok=True)
            trs.append(Triggerer(kind, home, wd, bundles if kind == MULTI else ()))
        earlier = {int(r[0]) for r in home.sql("SELECT id FROM job")}  # the placeholder, the last run's (one killed)
        for tr in trs:
            tr.start()
        jobs = _wait_jobs(home, trs, time.time() + p["start_timeout"], ignore=earlier)
        res["jobs"] = {str(j): i for j, i in jobs.items()}
        tail.start()
        sampler.start()
        t_seed = h.now()
        _hand_out(home, placeholder)
        all_started = h.wait_until(lambda: len(_started_tags(tail)) >= p["n"], h.now() + p["claim_timeout"], 0.25)
        res["all_running_s_after_seed"] = round(h.now() - t_seed, 1) if all_started else None
        time.sleep(2 * p["heartbeat"])
        held = _held(home, jobs)
        res["share"] = {"held": held, "max_min": round(max(held.values()) / max(1, min(held.values())), 2)
                        if held else None}
        claim_cycle = p["claim_cycle"]
        # kill -9 the first multitrigger instance's supervisor
        res["kill9"] = _takeover(home, tail, trs, jobs, 0, signal.SIGKILL,
                                 threshold + p["heartbeat"] + claim_cycle + p["slack"])
        res["kill9"]["goal_s"] = threshold + claim_cycle
        # SIGTERM the second
        res["sigterm"] = _takeover(home, tail, trs, jobs, 1, signal.SIGTERM, p["term_timeout"])
        res["sigterm"]["goal_s"] = claim_cycle
        time.sleep(1.0)
        res["exactly_once"] = _overlaps(tail, res, claim_cycle)
        res["held_end"] = _held(home, jobs)
    finally:
        sampler.stop()
        res["stops"] = [tr.stop(timeout=30) if tr.popen and tr.popen.poll() is None else {"stopped": False} for tr in trs]
        tail.stop()
        res["timeline"] = [(round(t, 2), {str(jobs_i): n for jobs_i, n in s.items() if jobs_i in jobs})
                           for t, s in sampler.samples]
        res["anomalies"] = {f"{tr.kind}{i}": h.log_anomalies(tr.log_text(), limit=4) for i, tr in enumerate(trs)}
    return res


def _wait_jobs(home: AirflowHome, trs: list[Triggerer], deadline: float, ignore: set[int]) -> dict[int, int]:
    """Job id -> member index, once every member has a live job (multitrigger logs its job id)."""
    def found() -> dict[int, int] | None:
        rows = home.sql("SELECT id FROM job WHERE job_type = 'TriggererJob' AND end_date IS NULL")
        ids = {int(r[0]) for r in rows} - ignore
        if len(ids) < len(trs):
            return None
        jobs: dict[int, int] = {}
        for i, tr in enumerate(trs):
            if tr.kind == MULTI:
                m = _JOB.search(tr.log_text())
                if not m:
                    return None
                jobs[int(m.group(1))] = i
        rest = sorted(ids - set(jobs))
        for i, tr in enumerate(trs):
            if tr.kind == STOCK and rest:
                jobs[rest.pop(0)] = i
        return jobs if len(jobs) == len(trs) else None

    jobs = h.wait_until(found, deadline, 0.5)
    if not jobs:
        raise RuntimeError("not every triggerer registered its job in time")
    return jobs


def _held(home: AirflowHome, jobs: dict[int, int]) -> dict[str, int]:
    rows = home.sql("SELECT triggerer_id, count(*) FROM trigger WHERE triggerer_id IS NOT NULL GROUP BY triggerer_id")
    out = {f"member{i}": 0 for i in sorted(jobs.values())}
    for j, c in rows:
        if int(j) in jobs:
            out[f"member{jobs[int(j)]}"] = int(c)
    return out


def _held_tags(home: AirflowHome, job: int) -> set[str]:
    rows = home.sql("SELECT ti.map_index FROM task_instance ti JOIN trigger t ON ti.trigger_id = t.id "
                    "WHERE t.triggerer_id = :j", {"j": job})
    return {str(r[0]) for r in rows}


def _started_tags(tail: h.RecordTail, after: float = 0.0) -> dict[str, float]:
    out: dict[str, float] = {}
    for t, _f, words in tail.snapshot("start"):
        if len(words) >= 4 and t >= after:
            out.setdefault(words[3], t)
    return out


def _takeover(home: AirflowHome, tail: h.RecordTail, trs: list[Triggerer], jobs: dict[int, int], member: int,
              signum: int, timeout: float) -> dict[str, Any]:
    """Signal ``member``'s supervisor; how long until every trigger it held ran elsewhere."""
    job = next(j for j, i in jobs.items() if i == member)
    tags = _held_tags(home, job)
    tr = trs[member]
    pids = process_tree(tr.pid)
    t_sig = h.now()
    os.kill(tr.pid, signum)
    gone_at = h.wait_until(lambda: None if any(_alive(pid) for pid in pids) else h.now(), t_sig + timeout, 0.05)
    with contextlib.suppress(Exception):
        tr.popen.wait(5)
    exited = h.now() if tr.popen.poll() is not None else None

    def restarted() -> bool:
        return tags <= set(_started_tags(tail, t_sig))

    done = h.wait_until(restarted, t_sig + timeout, 0.1)
    again = _started_tags(tail, t_sig)
    last = max((again[t] for t in tags if t in again), default=None)
    out = {"member": member, "signal": signal.Signals(signum).name, "held": len(tags),
           "processes_gone_s": round(gone_at - t_sig, 2) if gone_at else None,
           "all_running_elsewhere": bool(done), "ran_again": sum(1 for t in tags if t in again),
           "takeover_s": round(last - t_sig, 2) if last and done else None,
           "at": t_sig, "pids": sorted(pids), "gone_at": gone_at}
    if exited and last and done:
        out["after_exit_s"] = round(last - (gone_at or exited), 2)
    return out


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _overlaps(tail: h.RecordTail, res: dict[str, Any], claim_cycle: float) -> dict[str, Any]:
    """Per trigger: the intervals it ran in each process; the longest overlap of two of them."""
    death = {}
    for key in ("kill9", "sigterm"):
        ev = res.get(key) or {}
        for pid in ev.get("pids", []):
            death[pid] = ev.get("gone_at") or h.now()
    runs: dict[str, list[list[float]]] = {}
    open_: dict[tuple[str, int], list[float]] = {}
    for t, _f, words in tail.snapshot():
        if len(words) < 4:
            continue
        what, pid, tag = words[0], int(words[1]), words[3]
        if what == "start":
            iv = [t, math.inf, pid]
            open_[(tag, pid)] = iv
            runs.setdefault(tag, []).append(iv)
        elif what == "cancel" and (tag, pid) in open_:
            open_.pop((tag, pid))[1] = t
    for (tag, pid), iv in open_.items():
        iv[1] = death.get(pid, math.inf)
    worst, over = 0.0, 0
    starts = [len(v) for v in runs.values()]
    for ivs in runs.values():
        for a in range(len(ivs)):
            for b in range(a + 1, len(ivs)):
                ov = min(ivs[a][1], ivs[b][1]) - max(ivs[a][0], ivs[b][0])
                if ov > 0:
                    worst = max(worst, ov)
                    over += ov > claim_cycle
    return {"triggers": len(runs), "runs": sum(starts), "max_runs_per_trigger": max(starts, default=0),
            "max_overlap_s": round(worst, 3) if worst != math.inf else "inf", "overlaps_over_claim_cycle": over}


def plot_timeline(sc: dict[str, Any], path: Path) -> Path | None:
    """Triggers held per member over time, one panel per run; kill -9 and SIGTERM marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {k: v for k, v in sc["scaleout"].items() if v.get("timeline")}
    if not runs:
        return None
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 3.6 * len(runs)), squeeze=False)
    for ax, (variant, run) in zip(axes[:, 0], runs.items()):
        t0 = run["timeline"][0][0]
        jobs = {int(j): i for j, i in run["jobs"].items()}
        for job, member in sorted(jobs.items(), key=lambda x: x[1]):
            xs = [t - t0 for t, _ in run["timeline"]]
            ys = [s.get(str(job), 0) for _, s in run["timeline"]]
            ax.step(xs, ys, where="post", label=f"member{member} ({run['members'][member]})")
        for key, color in (("kill9", "red"), ("sigterm", "orange")):
            ev = run.get(key) or {}
            if ev.get("at"):
                ax.axvline(ev["at"] - t0, color=color, linestyle=":", label=f"{ev['signal']} member{ev['member']}")
        ax.set_title(f"{variant}: triggers held per member")
        ax.set_xlabel("seconds since the first sample")
        ax.set_ylabel("triggers held")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
