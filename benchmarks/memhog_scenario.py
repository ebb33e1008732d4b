"""Scenario 8, ``memhog``: one trigger grows to 1 GiB beside healthy bundles (issue 10).

Bundle ``x_hog`` runs a ``MemoryGrowTrigger`` (``mt_testsupport.cgroup_triggers``: touches 32 MiB
every 0.1 s up to ``target_mib``, holds it, fires). multitrigger gives loop ``x_hog``
``[loops.x_hog.limits] memory = "512M"``; stock has nothing to give it. Two windows of healthy
``FireAtTrigger``s in two other bundles: ``calm`` before the hog starts, ``hog`` while it grows
(and, under multitrigger, is OOM-killed, restarted and finally failed as poison).

Reported beside the latencies: the PSS of the triggerer's whole process tree (``harness.tree_pss``
every 0.25 s): its idle level before the hog, its peak after; the hog's loop starts and OOM kills
(multitrigger's log), whether it got to ``target_mib``, and how its task instance ended.
"""

from __future__ import annotations

import re
import statistics
import threading
from typing import Any

from benchmarks import harness as h
from benchmarks import runs as r
from benchmarks.harness import MULTI, Item
from benchmarks.runs import Ctx

GROW = "mt_testsupport.cgroup_triggers.MemoryGrowTrigger"


class _TreePss(threading.Thread):
    def __init__(self, root: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.root, self.interval, self.samples = root, interval, []  # (epoch, MB)
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.samples.append((h.now(), h.tree_pss(self.root)["total_mb"]))
            self._stop_evt.wait(self.interval)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(10)


def memhog(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params("memhog")
    hog, others = "x_hog", [f"calm{i}" for i in range(p["others"])]
    bundles = [hog, *others]
    n = p["others"] * p["per_bundle"]
    limits = {hog: f'[loops.{hog}.limits]\nmemory = "{p["limit_mib"]}M"\n[loops.{hog}.restart]\nbackoff_initial = 0.5\n'}

    def one(kind: str) -> dict[str, Any]:
        with r.running(ctx, "memhog", kind, bundles) as run:
            record = run.records / "hog.rec"

            def offender(after: float) -> Item:
                kwargs = {"record_path": str(record), "target_mib": p["target_mib"], "step_mib": p["step_mib"],
                          "step_s": p["step_s"], "hold_s": p["hold_s"], "after": after}
                return Item("hog_trigger", hog, 999, GROW, kwargs, None, validate=False)

            _, sampler = r.offender_beside_calm(run, p, hog, others, "hog", p["hog_window"], _TreePss, offender,
                                                loop_settings=limits, settle=1.0)
            run.result["memhog"] = _analysis(kind, run.triggerer.log_text(), record, sampler.samples, p)
        return run.result

    return r.scenario(
        ctx, one, "memhog", "8. Memory hog",
        f"bundle {hog!r} runs a MemoryGrowTrigger up to {p['target_mib']} MiB; multitrigger limits its loop to "
        f"memory = \"{p['limit_mib']}M\" (stock: no limit). {n} FireAtTriggers in {p['others']} OTHER bundles due "
        f"over {p['window']:g} s before it (calm) and {n} over {p['hog_window']:g} s from its start (hog); "
        "PSS of the whole process tree", p, ["calm", "hog"])


def _analysis(kind: str, log_text: str, record: Any, samples: list[tuple[float, float]], p: dict) -> dict[str, Any]:
    marks = [ln.split() for ln in record.read_text().splitlines()] if record.exists() else []
    starts = [float(t) for w, t in marks if w == "start"]
    first = starts[0] if starts else None
    idle = [mb for t, mb in samples if first is None or t < first]
    after = [mb for t, mb in samples if first is not None and t >= first]
    idle_mb = round(statistics.median(idle), 1) if idle else None
    peak_mb = max(after, default=None)
    oom = re.findall(rf"loop process ended .*loop={'x_hog'}\b.*reason='out of memory", log_text) if kind == MULTI else []
    return {
        "limit_mib": p["limit_mib"] if kind == MULTI else None,
        "tree_pss_idle_mb": idle_mb,
        "tree_pss_peak_mb": peak_mb,
        "tree_pss_growth_mb": round(peak_mb - idle_mb, 1) if peak_mb is not None and idle_mb is not None else None,
        "peak_under_limit_plus_idle": (peak_mb < p["limit_mib"] * 1.048576 + idle_mb)
        if kind == MULTI and peak_mb is not None and idle_mb is not None else None,
        "hog_starts": len(starts),
        "hog_reached_target": any(w == "full" for w, _ in marks),
        "oom_kills_reported": len(oom),
        "poison_failed": "failing poison trigger" in log_text and "out of memory" in log_text,
    }
