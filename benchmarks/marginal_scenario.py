"""Scenario ``marginal``: what one more team costs in memory — one more venv loop beside an idle
multitrigger tree, against one more stock triggerer per team (Option 3 of ``shared/seeds/``: "simply
run one triggerer per bundle").

- multitrigger: the ``idle`` tree (``bundles`` process loops, each with ``per_bundle`` far-future
  ``FireAtTrigger``s) plus one loop ``m_venv`` in a layered bundle venv (``multitrigger venv create``),
  with as many triggers. A new interpreter means a new zygote, so the venv loop's cost is its zygote
  plus the loop forked from it: the sum of their PSS (the processes whose ``argv[0]`` is the venv's
  python). That sum is an upper bound of what the tree grows by: it includes their share of pages
  (libpython, the parent environment's ``.so`` files) that the rest of the tree already held.
- stock: one ``airflow triggerer`` serving one team's bundle (``m_venv``) with as many triggers:
  its whole tree (the triggerer and its runner child) is what Option 3 adds per team.

Reported: both, their ratio (goal ≤ 0.75), the base tree without the venv pair, and every process.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

from benchmarks import harness as h
from benchmarks import runs as r
from benchmarks.harness import MULTI, STOCK
from benchmarks.runs import Ctx

VENV_BUNDLE = "m_venv"


def _argv0(pid: int) -> str | None:
    try:
        cmd = psutil.Process(pid).cmdline()
    except psutil.Error:
        return None
    return cmd[0] if cmd else None


def _idle_memory(run: r.Run, p: dict[str, Any], venv_python: str | None) -> dict[str, Any]:
    """After ``p["idle"]`` s: the tree's PSS (mean of samples) and the venv pair's, per process."""
    tr = run.triggerer
    time.sleep(p["idle"])
    samples = []
    for _ in range(p["pss_samples"]):
        tree = h.tree_pss(tr.pid)
        for proc in tree["processes"]:
            proc["venv"] = venv_python is not None and _argv0(proc["pid"]) == venv_python
        samples.append(tree)
        time.sleep(1.0)
    mean = lambda values: round(sum(values) / len(values), 1)  # noqa: E731
    venv_mb = [sum(q["pss_kb"] for q in s["processes"] if q["venv"]) / 1024 for s in samples]
    out = {"tree_pss_mb": mean([s["total_mb"] for s in samples]), "processes": samples[-1]["processes"]}
    if venv_python is not None:
        out["venv_pair_pss_mb"] = mean(venv_mb)
        out["venv_pair_processes"] = sum(1 for q in samples[-1]["processes"] if q["venv"])
        out["base_tree_pss_mb"] = round(out["tree_pss_mb"] - out["venv_pair_pss_mb"], 1)
    return out


def marginal(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params("marginal")
    base = [f"m{i}" for i in range(p["bundles"])]
    venv = r.bundle_venv(ctx) if MULTI in ctx.kinds else None

    def one(kind: str) -> dict[str, Any]:
        bundles = [*base, VENV_BUNDLE] if kind == MULTI else [VENV_BUNDLE]  # stock: one team's triggerer
        with r.running(ctx, "marginal", kind, bundles) as run:
            records = r.seed_idle(run, bundles, p["per_bundle"])
            settings = {VENV_BUNDLE: f'venv = "{venv}"'} if kind == MULTI else None
            r.start(run, bundles, record_files=list(records.values()), loop_settings=settings)
            tr = run.triggerer
            want = len(bundles) * p["per_bundle"]
            h.wait_until(lambda: len(run.tail.snapshot("start")) >= want, tr.launched_at + p["start_timeout"],
                         interval=0.05)
            run.result["startup"] = {"running": f"{min(len(run.tail.snapshot('start')), want)}/{want}"}
            run.load.mark("ready", tr.pid)
            venv_python = str(venv / "bin" / "python") if kind == MULTI and venv is not None else None
            run.result["memory"] = _idle_memory(run, p, venv_python)
        return run.result

    scenario = r.scenario(
        ctx, one, "marginal", "7. Marginal memory of one more team",
        f"multitrigger: {p['bundles']} process loops + one venv loop ({VENV_BUNDLE}, its own zygote), "
        f"{p['per_bundle']} far-future FireAtTriggers each: PSS of the venv zygote + loop after {p['idle']:g} s idle; "
        f"stock: one airflow triggerer for that one team's bundle (Option 3), its tree PSS",
        p, [])
    stock = ((scenario["runs"].get(STOCK) or {}).get("memory") or {}).get("tree_pss_mb")
    pair = ((scenario["runs"].get(MULTI) or {}).get("memory") or {}).get("venv_pair_pss_mb")
    scenario["marginal"] = {"venv_pair_pss_mb": pair, "stock_triggerer_pss_mb": stock,
                            "ratio": round(pair / stock, 3) if pair and stock else None, "goal": 0.75}
    return scenario
