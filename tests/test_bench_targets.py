"""``benchmarks.targets`` marks issue 13's targets from a run's results document: each against its
goal, what the run did not measure left out. The document here has the shape ``benchmarks.run``
writes (the keys its scenarios fill), with values chosen on both sides of each goal."""

from __future__ import annotations

from benchmarks import targets


def _run(**stats: float) -> dict:
    return {"stats": {series: {"p99": p99} for series, p99 in stats.items()}}


def _doc() -> dict:
    kill = lambda t: {"per_kill": [{"kill_to_running_again_s": t}, {"kill_to_running_again_s": 9.0}]}  # noqa: E731
    loop = {"pss_kb": 30 * 1024, "cmd": "loop"}
    return {
        "wall_s": 1300.0,
        "scenarios": [
            {"name": "idle", "params": {"bundles": 2}, "runs": {
                "stock": {"memory": {"tree_pss_mb": 100.0}, "startup": {"all_running_s": 2.0}},
                "multitrigger": {"memory": {"tree_pss_mb": 140.0, "processes": [{"pss_kb": 1}, {"pss_kb": 2}, loop, loop]},
                                 "startup": {"all_running_s": 2.6}}}},
            {"name": "marginal", "marginal": {"ratio": 0.7, "goal": 0.75}, "runs": {}},
            {"name": "alone", "runs": {"multitrigger": _run(b1=0.04, b2=0.05, b3=0.06)}},
            {"name": "limit", "runs": {"multitrigger": _run(n200=0.03, n2000=0.25, n20000=3.5)}},
            {"name": "limit_pg", "runs": {"multitrigger": {"error": "boom"}}},
            {"name": "crash", "runs": {"multitrigger": {**_run(others=0.01), "crash": kill(0.1)}}},
            {"name": "storm", "runs": {"multitrigger": {**_run(others=0.07), "storm": {
                "x_fork": kill(0.05), "x_venv": kill(0.2), "x_exec": kill(1.5)}}}},
            {"name": "scaleout", "scaleout": {
                "mt4": {"share": {"max_min": 1.5},
                        "kill9": {"held": 5, "takeover_s": 10.0, "goal_s": 11.0, "all_running_elsewhere": True},
                        "sigterm": {"held": 6, "after_exit_s": 0.9, "goal_s": 1.0, "all_running_elsewhere": False},
                        "exactly_once": {"runs": 12, "max_overlap_s": 0.0, "overlaps_over_claim_cycle": 0}},
                "mt4+stock": {"error": "member did not start"}}},
        ],
    }


def test_each_target_is_marked_against_its_goal() -> None:
    found = {v.target: v for v in targets.verdicts(_doc(), full_run=True)}
    met = {name: v.met for name, v in found.items()}
    assert met == {
        "200 at once, p99 <= 50 ms, SQLite (alone)": False,  # 2 of 3 bursts
        "200 at once with 22,000 held (limit)": None,
        "2000 at once, p99 <= 250 ms (limit)": True,  # the goal itself is met
        "20,000 at once, p99 <= 3 s (limit)": False,
        "crash: the other bundles' p99 <= 50 ms": True,
        "storm: the other bundles' p99 <= 50 ms": False,
        "crash -> pending running again <= 100 ms, forked loop (crash)": True,  # the first kill, not the later ones
        "crash -> pending running again, fork loop (storm)": True,
        "crash -> pending running again, venv loop (storm)": False,
        "crash -> pending running again, exec loop (storm)": None,
        "one more forked loop <= 40 MB PSS (idle)": True,
        "one more venv loop <= 0.75x one stock triggerer (marginal)": True,
        "idle tree of 4 process loops <= 1.5x stock (idle)": True,
        "start-up <= stock + 0.5 s (idle)": False,
        "mt4: share max/min <= 1.5": True,
        "mt4: kill -9: running elsewhere <= threshold + one claim cycle": True,
        "mt4: SIGTERM: running elsewhere <= one claim cycle after its processes are gone": False,  # not all ran again
        "mt4: exactly once": True,
        "full run under 20 minutes": False,
    }
    assert found["200 at once, p99 <= 50 ms, SQLite (alone)"].measured == "0.040 / 0.050 / 0.060 (2 of 3 bursts)"
    assert found["one more forked loop <= 40 MB PSS (idle)"].measured == "30.0 MB"


def test_what_the_run_did_not_measure_is_left_out() -> None:
    assert targets.verdicts({"scenarios": []}) == []
    only_idle = {"scenarios": [_doc()["scenarios"][0]], "wall_s": 60.0}
    names = [v.target for v in targets.verdicts(only_idle)]
    assert names == ["one more forked loop <= 40 MB PSS (idle)", "idle tree of 4 process loops <= 1.5x stock (idle)",
                     "start-up <= stock + 0.5 s (idle)"]  # no wall-time verdict unless it was the full run
    text = targets.table(targets.verdicts(only_idle)).splitlines()
    assert text[0].split() == ["issue", "13", "target", "measured", "met?"] and text[-1].endswith("MISSED")
    assert targets.table([]) == ""
