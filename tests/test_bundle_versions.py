"""
Versioned bundles, end to end: a real ``GitDagBundle`` over a local git repository (no network),
real DAG runs pinned to its commits by Airflow's own serialization, a real ``multitrigger run``.

Commit 1's ``mytrig.MyTrigger`` yields ``{"v": 1}``, commit 2's ``{"v": 2}``, commit 3's
``{"v": 3}``. Triggers of runs pinned to commits 1 and 2 run at the same time, each in its own
version's process with its own checkout's code; a third version past the cap
(``max_bundle_versions = 2``) fails its task with the reason; a local bundle's same-named module
in the same loop runs from the loop's own slot, as before. Once the versions have no triggers left
their processes end, and the freed cap lets commit 3 run; a run pinned to a commit the repository
does not have fails its task with the checkout's error.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from mt_testsupport.git_bundles import GitRepo
from mt_testsupport.home import AirflowHome, DeferSpec, decode_serde, deferring_dag_source, iso_in
from tests.conftest import MULTITRIGGER

pytestmark = pytest.mark.timeout(240)

#: The git connection's token: the supervisor has it (``AIRFLOW_CONN_GIT_DEFAULT``, the bundle's
#: ``git_conn_id``); no loop may.
TOKEN = "s3cret-git-token"
CONFIG = """
    [loops.team_g]
    bundles = ["gitb", "loc"]
    max_bundle_versions = 2
    """


def _mytrig(v: object) -> str:
    """``mytrig.MyTrigger`` of one commit: records its start, fires with ``{"v": v}`` once the
    test opens the gate (a file), so every trigger is provably running before any fires."""
    return textwrap.dedent(f'''\
        import asyncio
        import os

        from airflow.triggers.base import TriggerEvent
        from multitrigger.demo.triggers import process_info, utcnow
        from mt_testsupport.triggers import FireAtTrigger

        class MyTrigger(FireAtTrigger):
            async def run(self):
                self._record("start")
                while not os.path.exists(self.payload["gate"]):
                    await asyncio.sleep(0.05)
                self._record("fire")
                yield TriggerEvent({{"fired_at": utcnow().isoformat(), **process_info(), "v": {v!r}, "file": __file__,
                                    "secrets": sorted(k for k, val in os.environ.items()
                                                      if k.startswith("AIRFLOW_CONN_") or "{TOKEN}" in val),
                                    "dotgit": os.path.exists(os.path.join(os.path.dirname(__file__), ".git"))}})
        ''')


def _spec(dag: str, task: str, run_id: str, tmp: Path) -> DeferSpec:
    kwargs = {"moment": iso_in(0), "payload": {"gate": str(tmp / "gate")}, "record_path": str(tmp / "record.txt")}
    return DeferSpec(dag, task, "mytrig.MyTrigger", kwargs, run_id=run_id, validate=False)


def _records(tmp: Path) -> list[tuple[str, str]]:
    """(what, loop) per line the triggers recorded: ``start``/``fire``."""
    path = tmp / "record.txt"
    return [(what, loop) for what, _pid, loop in (line.split() for line in path.read_text().splitlines())] \
        if path.exists() else []


def _traceback(state) -> str:
    return "".join(decode_serde(state.next_kwargs)["traceback"])


def test_each_pinned_version_runs_its_own_code_at_once_and_the_cap_fails_the_next(tmp_path, start_triggerer):
    repo = GitRepo(tmp_path / "repo")
    sha = {1: repo.commit({"dag_g.py": deferring_dag_source("dag_g", 2), "mytrig.py": _mytrig(1)})}
    home = AirflowHome.create(tmp_path / "home", {"loc": {"dag_l.py": deferring_dag_source("dag_l", 1),
                                                          "mytrig.py": _mytrig("local")}},
                              git_bundles={"gitb": repo.bundle_kwargs()})
    refs = {"v1": home.defer_many([_spec("dag_g", "t0", "v1", tmp_path)])[0]}
    sha[2] = repo.commit({"mytrig.py": _mytrig(2)})
    home.serialize(["gitb"])  # what the DAG processor does: new runs are pinned to commit 2
    refs["v2"], refs["loc"] = home.defer_many([_spec("dag_g", "t0", "v2", tmp_path), _spec("dag_l", "t0", "loc", tmp_path)])
    sha[3] = repo.commit({"mytrig.py": _mytrig(3)})
    home.serialize(["gitb"])
    pinned = dict(home.sql("SELECT run_id, bundle_version FROM dag_run"))
    assert pinned == {"v1": sha[1], "v2": sha[2], "loc": None}

    connection = {"conn_type": "git", "host": str(repo.path), "login": "mt", "password": TOKEN}
    mt = start_triggerer(home, "--skip-serve-logs", config=CONFIG,
                         env={"AIRFLOW_CONN_GIT_DEFAULT": json.dumps(connection)})
    loops = {n: f"team_g[gitb@{sha[n][:12]}]" for n in sha}
    home.wait_for(lambda: len(_records(tmp_path)) == 3, timeout=90)
    # All three run at once: commit 1's and 2's in their own processes, the local bundle's in the loop's.
    assert sorted(_records(tmp_path)) == sorted([("start", loops[1]), ("start", loops[2]), ("start", "team_g")])
    # Both versions are in use: a third is past the cap and fails its task, saying why.
    refs["v3"] = home.defer_many([_spec("dag_g", "t0", "v3", tmp_path)])[0]
    v3 = home.wait_for_states([refs["v3"]], "scheduled", timeout=60)[refs["v3"]]
    assert v3.next_method == "__fail__"
    refused = _traceback(v3)
    assert "max_bundle_versions" in refused and sha[3] in refused and "'gitb'" in refused, refused

    (tmp_path / "gate").touch()
    states = home.wait_for_states(list(refs.values()), "scheduled", timeout=60)
    state = {name: states[ref] for name, ref in refs.items()}
    storage = home.path / "bundle-storage" / "gitb" / "versions"
    for n in (1, 2):
        assert state[f"v{n}"].next_method == "execute_complete", _traceback(state[f"v{n}"])
        event = state[f"v{n}"].event
        assert (event["v"], event["loop"]) == (n, loops[n])
        assert event["file"] == str(storage / sha[n] / "mytrig.py")
        # The checkout was made with the supervisor's connection; the loop got none of it.
        assert (event["secrets"], event["dotgit"]) == ([], False)
    assert state["v1"].event["pid"] != state["v2"].event["pid"]
    fired = [dt.datetime.fromisoformat(state[k].event["fired_at"]) for k in ("v1", "v2")]
    assert abs(fired[0] - fired[1]) < dt.timedelta(seconds=5)
    # The unversioned bundle in the same loop: its own same-named module, in the loop's own process.
    assert (state["loc"].event["v"], state["loc"].event["loop"]) == ("local", "team_g")
    assert state["loc"].event["file"] == str(home.bundles["loc"] / "mytrig.py")

    # What `config check` tells the operator about this loop.
    checked = subprocess.run([MULTITRIGGER, "config", "check", "--config", str(home.path / "mt-0.toml")],
                             env=home.env(), capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert ("trigger code: bundle gitb: the version each DAG run is pinned to, in its own process "
            "(at most 2 versions at once)") in checked.stdout
    assert f"trigger code: bundle loc: {home.bundles['loc']}" in checked.stdout

    # No triggers left: both version processes end, which frees the cap: commit 3 runs now, and a
    # run pinned to a commit the repository does not have fails its task with the checkout's error.
    home.wait_for(lambda: mt.text().count("bundle version ended") >= 2, timeout=60)
    missing = "0123456789abcdef" * 2 + "01234567"
    home.dag_run("dag_g", "gone", missing)
    later = dict(zip(("v3", "gone"), home.defer_many([_spec("dag_g", "t1", "v3", tmp_path),
                                                      _spec("dag_g", "t0", "gone", tmp_path)])))
    states = home.wait_for_states(list(later.values()), "scheduled", timeout=60)
    assert states[later["v3"]].next_method == "execute_complete", _traceback(states[later["v3"]])
    assert (states[later["v3"]].event["v"], states[later["v3"]].event["loop"]) == (3, loops[3])
    gone = _traceback(states[later["gone"]])
    assert states[later["gone"]].next_method == "__fail__"
    assert f"cannot check out bundle 'gitb' at version {missing}" in gone and "not found" in gone, gone
    assert mt.popen.poll() is None


# --- the version slots, without processes or git (BundleVersions with an injected checkout) -------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Harness:
    """``BundleVersions`` over real ``LoopSlot``s and a real lane; ``checkout`` is a plain function
    here because what it does (clone, lock) is the end-to-end test's business."""

    def __init__(self, tmp_path: Path, checkout, cap: int = 2) -> None:
        import threading

        from multitrigger.config import DEFAULT_LOOP, LoopConfig, default_config
        from multitrigger.loop.sys_path import PathEntry
        from multitrigger.poison import PoisonPolicy
        from multitrigger.restart import RestartPolicy
        from multitrigger.supervisor.bundle_versions import BundleVersions
        from multitrigger.supervisor.slot import LoopSlot, SlotSinks
        from multitrigger.supervisor.trigger_path import TriggerPaths

        self.clock = _Clock()
        self.failed: dict[int, str] = {}
        self.woken = threading.Event()
        team = LoopConfig("team", frozenset({"gitb", "loc"}), Path("/usr/bin/python3"), None, None, max_bundle_versions=cap)
        loops = {DEFAULT_LOOP: default_config().loops[DEFAULT_LOOP], "team": team}
        paths = TriggerPaths((), {"team": (PathEntry("/pp", "PYTHONPATH", "front"), PathEntry("/loc", "bundle loc", "back")),
                                  DEFAULT_LOOP: ()})

        def make_slot(config: LoopConfig, parent: str) -> LoopSlot:
            noop = lambda *_a: None  # noqa: E731
            return LoopSlot(config=config, argv=[str(config.python)], env={"FROM": parent}, cwd=tmp_path / config.name,
                            policy=RestartPolicy(config.restart, clock=self.clock),
                            poison=PoisonPolicy(config.name, 3, clock=self.clock),
                            sinks=SlotSinks(noop, noop, noop, noop, noop, noop), hang_threshold=30.0,
                            blame_file=tmp_path / "blame", clock=self.clock)

        self.slots: dict[str, LoopSlot] = {}
        self.versions = BundleVersions(loops, self.slots, paths, make_slot=make_slot,
                                       fail=lambda tid, tb: self.failed.__setitem__(tid, "".join(tb)),
                                       forget=lambda _name: None, wake=self.woken.set, clock=self.clock,
                                       checkout=checkout)

    def add(self, trigger_id: int, version: str | None, bundle: str = "gitb"):
        from airflow.executors import workloads
        from multitrigger.routing import Route

        placed = self.versions.slot_for(Route("team", bundle, version))
        if isinstance(placed, str) and placed in self.slots:  # a version slot (the loop's own is not here)
            self.slots[placed].add(workloads.RunTrigger(id=trigger_id, classpath="mytrig.MyTrigger", encrypted_kwargs="{}"))
        return placed

    def settle(self) -> None:
        """Wait for the lane's checkouts, then run their completions (as the selector thread would)."""
        import time

        deadline = time.monotonic() + 10
        while self.versions._lanes and any(not lane.idle for lane in self.versions._lanes.values()):
            self.woken.wait(0.05)
            self.woken.clear()
            self.versions.run_completions()
            assert time.monotonic() < deadline, "checkout never completed"


def _fake_checkout(tmp_path: Path, fail: set[str] = frozenset()):
    from multitrigger.supervisor.bundle_versions import Checkout

    released: list[str] = []

    class Lock:
        def __init__(self, version: str) -> None:
            self.version = version

        def release(self) -> None:
            released.append(self.version)

    def checkout(bundle: str, version: str) -> Checkout:
        if version in fail:
            raise RuntimeError(f"Version {version} not found in the repository")
        return Checkout(tmp_path / bundle / version, Lock(version))

    return checkout, released


def test_versions_get_their_own_slot_and_path_and_the_cap_refuses_one_more(tmp_path: Path) -> None:
    from multitrigger.loop.sys_path import decode
    from multitrigger.routing import Refusal

    checkout, released = _fake_checkout(tmp_path)
    h = _Harness(tmp_path, checkout, cap=2)
    assert h.add(1, None, bundle="loc") == "team"  # unversioned: the loop's own slot, untouched
    assert h.add(2, "a" * 40) == "team[gitb@aaaaaaaaaaaa]"
    assert h.add(3, "a" * 40) == "team[gitb@aaaaaaaaaaaa]"  # same version, same slot
    assert h.add(4, "b" * 40) == "team[gitb@bbbbbbbbbbbb]"
    assert not h.versions.may_start("team[gitb@aaaaaaaaaaaa]")  # not before its checkout is on disk
    # A version slot answers to its loop (its team's secrets, its lost limits); any other name is its own.
    assert h.versions.loop_of("team[gitb@aaaaaaaaaaaa]") == "team" and h.versions.loop_of("team") == "team"
    refusal = h.add(5, "c" * 40)
    assert isinstance(refusal, Refusal) and refusal.loop == "team" and refusal.bundle == "gitb"
    assert "max_bundle_versions" in refusal.reason and "c" * 40 in refusal.reason and "aaaaaaaaaaaa" in refusal.reason
    h.settle()
    slot = h.slots["team[gitb@aaaaaaaaaaaa]"]
    assert h.versions.may_start(slot.name) and slot.config.bundles == {"gitb"} and slot.env["FROM"] == "team"
    entries = decode(slot.env["MULTITRIGGER_SYS_PATH"])
    # The loop's own entries, but of bundle code only this version's checkout (no "bundle loc").
    assert [(e.source, e.path) for e in entries] == [("PYTHONPATH", "/pp"),
                                                     (f"bundle gitb version {'a' * 40}", str(tmp_path / "gitb" / ("a" * 40)))]
    # A version with no triggers left lingers, then ends (no process here: removed at once) and
    # releases its lock; the freed place lets another version in.
    for trigger_id in (2, 3):
        slot.cancel(trigger_id)
    h.versions.tend(h.clock.now)
    h.clock.now += 10
    h.versions.tend(h.clock.now)
    assert "team[gitb@aaaaaaaaaaaa]" not in h.slots and released == ["a" * 40]
    assert h.add(5, "c" * 40) == "team[gitb@cccccccccccc]"


def test_an_idle_version_gives_way_and_a_failed_or_slow_checkout_fails_its_triggers(tmp_path: Path) -> None:
    from multitrigger.supervisor.bundle_versions import CHECKOUT_TIMEOUT

    checkout, released = _fake_checkout(tmp_path, fail={"d" * 40})
    h = _Harness(tmp_path, checkout, cap=1)
    assert h.add(1, "a" * 40) == "team[gitb@aaaaaaaaaaaa]"
    h.settle()
    h.slots["team[gitb@aaaaaaaaaaaa]"].cancel(1)
    # Idle (no trigger, still lingering): it does not count against the cap, and is ended at once.
    assert h.add(2, "d" * 40) == "team[gitb@dddddddddddd]"
    h.versions.tend(h.clock.now)
    assert "team[gitb@aaaaaaaaaaaa]" not in h.slots and released == ["a" * 40]
    h.settle()
    reason = h.failed[2]
    assert reason.startswith(f"cannot check out bundle 'gitb' at version {'d' * 40}")
    assert "not found in the repository" in reason
    assert "team[gitb@dddddddddddd]" not in h.slots  # and the next trigger of it tries again

    # A checkout that never finishes: its triggers fail after CHECKOUT_TIMEOUT; its late result is released.
    import threading

    gate = threading.Event()

    def slow(bundle: str, version: str):
        gate.wait(10)
        return checkout(bundle, version)

    h.versions._checkout = slow
    assert h.add(3, "e" * 40) == "team[gitb@eeeeeeeeeeee]"
    h.clock.now += CHECKOUT_TIMEOUT + 1
    h.versions.tend(h.clock.now)
    assert "did not finish within" in h.failed[3] and "team[gitb@eeeeeeeeeeee]" not in h.slots
    gate.set()
    h.settle()
    assert released == ["a" * 40, "e" * 40]
