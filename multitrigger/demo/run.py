"""
``multitrigger demo``: the embedded default — everything local, nothing to configure.

Builds a real Airflow home on SQLite with three bundles (``team_a`` in its own virtualenv,
``team_b`` in its own process, ``shared`` in the default loop), defers real task instances with
triggers due a few seconds apart, runs ``multitrigger run`` on it, and prints each task as it
resumes: which loop ran its trigger, in which process and interpreter, and how late.
"""

from __future__ import annotations

import datetime as dt
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from multitrigger.demo.home import FIRE_AT, RAISE, AirflowHome, DeferSpec, deferring_bundle, iso_in

BUNDLES = ("team_a", "team_b", "shared")


def _build(root: Path) -> AirflowHome:
    from multitrigger.venvs import create_bundle_venv

    shutil.rmtree(root, ignore_errors=True)
    print(f"building a SQLite Airflow home in {root} …", flush=True)
    home = AirflowHome.create(root / "home", {b: deferring_bundle(f"dag_{b}", n_tasks=4) for b in BUNDLES})
    venv = root / "venvs" / "team_a"
    print(f"creating bundle venv {venv} (layered on {sys.prefix}) …", flush=True)
    create_bundle_venv(venv)
    (home.path / "multitrigger.toml").write_text(
        f'[loops.team_a]\nbundles = ["team_a"]\nvenv = "{venv}"\n\n[loops.team_b]\nbundles = ["team_b"]\n'
    )
    return home


def _defer(home: AirflowHome, start: float) -> list:
    moments = [iso_in(start + 3 * i) for i in range(3)]
    specs = [
        DeferSpec(f"dag_{b}", f"t{i}", FIRE_AT, {"moment": m, "payload": {"due": m}}, encrypt_kwargs=True)
        for b in BUNDLES
        for i, m in enumerate(moments)
    ]
    specs.append(DeferSpec("dag_team_b", "t3", RAISE, {"message": "team_b's broken trigger"}, encrypt_kwargs=True))
    return home.defer_many(specs)


def run_demo(root: Path, seconds: float) -> int:
    home = _build(root.resolve())
    refs = _defer(home, start=15)
    print(f"deferred {len(refs)} task instances; starting `multitrigger run` …\n", flush=True)
    log = home.path / "multitrigger.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "multitrigger"), "run", "--skip-serve-logs"],
            env=home.env(), stdout=fh, stderr=subprocess.STDOUT,
        )
    print(f"{'task':<18} {'loop':<8} {'pid':>7}  {'late (ms)':>9}  interpreter / outcome")
    shown: set = set()
    deadline = time.monotonic() + seconds
    try:
        while len(shown) < len(refs) and time.monotonic() < deadline and proc.poll() is None:
            for ref, state in home.ti_states(refs).items():
                if ref in shown or state.state == "deferred":
                    continue
                shown.add(ref)
                print(_row(ref, state), flush=True)
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    ok = len(shown) == len(refs)
    print(f"\n{len(shown)}/{len(refs)} task instances resumed; multitrigger exited {code}; log: {log}")
    return 0 if ok and code == 0 else 1


def _row(ref, state) -> str:
    name = f"{ref.dag_id}.{ref.task_id}"
    event = state.event
    if state.next_method == "__fail__":
        return f"{name:<18} {'':<8} {'':>7}  {'':>9}  failed alone: trigger raised (its neighbours are unaffected)"
    late = (dt.datetime.fromisoformat(event["fired_at"]) - dt.datetime.fromisoformat(event["due"]))
    return f"{name:<18} {event['loop']:<8} {event['pid']:>7}  {late.total_seconds() * 1000:>9.1f}  {event['executable']}"
