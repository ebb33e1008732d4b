"""
The core, end to end, on a real SQLite metadata DB: real bundles, real deferred task instances,
real `multitrigger run` processes, real bundle virtualenvs.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

from mt_testsupport.home import (
    FIRE_AT, IMPORT_VERSION, RAISE, WAIT_FOREVER, AirflowHome, DeferSpec, decode_serde, deferring_bundle, iso_in,
)
from multitrigger.venvs import create_bundle_venv
from tests.pkgs import write_package

pytestmark = pytest.mark.timeout(240)


_OWN_TRIGGER = textwrap.dedent('''\
    from mt_testsupport.triggers import ImportVersionTrigger

    class OwnTrigger(ImportVersionTrigger):
        """A trigger class that exists only where confpkg is installed."""
    ''')


def _package(root: Path, version: str) -> Path:
    """A tiny local package, ``confpkg``, at ``version``, with a trigger only it can import."""
    return write_package(root, "confpkg", version, [], modules={"triggers": _OWN_TRIGGER})


@pytest.fixture(scope="module")
def venvs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two bundle venvs layered on the project env, holding conflicting confpkg versions."""
    root = tmp_path_factory.mktemp("venvs")
    return {
        name: create_bundle_venv(root / name, requirements=[str(_package(root, version))], build_isolation=False).parent.parent
        for name, version in (("team_a", "1.0"), ("team_b", "2.0"))
    }


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> AirflowHome:
    bundles = {
        "team_a": deferring_bundle("dag_a", n_tasks=4),
        "team_b": deferring_bundle("dag_b", n_tasks=4),
        "shared": deferring_bundle("dag_s", n_tasks=4),
    }
    return AirflowHome.create(tmp_path_factory.mktemp("core") / "home", bundles)


def _config(venvs: dict[str, Path]) -> str:
    return f"""
        [loops.team_a]
        bundles = ["team_a"]
        venv = "{venvs['team_a']}"

        [loops.team_b]
        bundles = ["team_b"]
        venv = "{venvs['team_b']}"
        start_method = "exec"
        """


def _fields(line: str) -> dict[str, str]:
    """``key=value`` pairs of a structlog console line."""
    return dict(re.findall(r"(\w+)=(\S+)", line))


def test_each_bundle_runs_in_its_own_process_and_interpreter_with_its_own_packages(home, venvs, start_triggerer):
    moment = iso_in(0)  # what is asserted is where they ran, not when
    specs = [
        DeferSpec("dag_a", "t0", IMPORT_VERSION, {"module": "confpkg"}, run_id="iso", encrypt_kwargs=True),
        DeferSpec("dag_b", "t0", IMPORT_VERSION, {"module": "confpkg"}, run_id="iso", encrypt_kwargs=True),
        DeferSpec("dag_a", "t1", FIRE_AT, {"moment": moment}, run_id="iso", encrypt_kwargs=True),
        DeferSpec("dag_b", "t1", FIRE_AT, {"moment": moment}, run_id="iso", encrypt_kwargs=True),
        DeferSpec("dag_s", "t1", FIRE_AT, {"moment": moment}, run_id="iso", encrypt_kwargs=True),
    ]
    refs = home.defer_many(specs)
    mt = start_triggerer(home, "--skip-serve-logs", config=_config(venvs))
    states = home.wait_for_states(refs, "scheduled", timeout=90)
    events = {(r.dag_id, r.task_id): states[r].event for r in refs}

    # Conflicting versions of one package, one per bundle venv, loaded at the same time.
    assert events["dag_a", "t0"]["version"] == "1.0"
    assert events["dag_b", "t0"]["version"] == "2.0"
    # One process per bundle, each with its configured interpreter.
    fired = {dag: events[dag, "t1"] for dag in ("dag_a", "dag_b", "dag_s")}
    assert len({e["pid"] for e in fired.values()}) == 3
    assert fired["dag_a"]["executable"] == str(venvs["team_a"] / "bin" / "python")
    assert fired["dag_b"]["executable"] == str(venvs["team_b"] / "bin" / "python")
    assert fired["dag_s"]["executable"] == sys.executable
    assert {dag: e["loop"] for dag, e in fired.items()} == {"dag_a": "team_a", "dag_b": "team_b", "dag_s": "default"}
    assert events["dag_a", "t0"]["pid"] == fired["dag_a"]["pid"]
    # The task instances resume with the event payload (the stock resume path).
    assert all(states[r].next_method == "execute_complete" for r in refs)
    routed = [_fields(line) for line in mt.text().splitlines() if "triggers routed" in line]
    assert {f["loop"] for f in routed} == {"team_a", "team_b", "default"}, routed
    # team_a and default are forked from their interpreters' zygotes; team_b (start_method = "exec")
    # is a fresh interpreter, and its venv gets no zygote since no fork loop uses that interpreter.
    started = {m["loop"]: m["forked"] for m in (_fields(line) for line in mt.text().splitlines()
                                                 if "loop started" in line)}
    assert started == {"team_a": "True", "team_b": "False", "default": "True"}
    zygotes = {f["python"]: f for f in (_fields(line) for line in mt.text().splitlines() if "zygote ready" in line)}
    assert sorted(zygotes) == sorted([sys.executable, str(venvs["team_a"] / "bin" / "python")])
    # Both were started before the supervisor imported Airflow (supervisor.prestart): staged.
    assert all(float(z["prewarm_s"]) <= float(z["configured_after_s"]) for z in zygotes.values())


def test_failures_fail_only_their_own_task(home, venvs, start_triggerer, tmp_path):
    marker = tmp_path / "on_kill.txt"
    gate = tmp_path / "gate"  # the healthy neighbour fires once the failures are in
    raising, missing, healthy, waiting = home.defer_many([
        DeferSpec("dag_a", "t2", RAISE, {"message": "boom from team_a"}, run_id="fail"),
        # confpkg.triggers exists only in bundle venvs: in the default loop it cannot be imported.
        DeferSpec("dag_s", "t2", "confpkg.triggers.OwnTrigger", {"module": "confpkg"}, run_id="fail", validate=False),
        DeferSpec("dag_s", "t3", FIRE_AT, {"moment": iso_in(0), "gate": str(gate)}, run_id="fail"),
        DeferSpec("dag_b", "t2", WAIT_FOREVER, {"marker_path": str(marker)}, run_id="fail"),
    ])
    start_triggerer(home, "--skip-serve-logs", config=_config(venvs))
    states = home.wait_for_states([raising, missing], "scheduled", timeout=90)
    gate.touch()
    states |= home.wait_for_states([healthy], "scheduled", timeout=30)

    assert states[raising].next_method == "__fail__"
    assert "boom from team_a" in "".join(decode_serde(states[raising].next_kwargs)["traceback"])
    assert states[missing].next_method == "__fail__"
    assert "No module named 'confpkg'" in "".join(decode_serde(states[missing].next_kwargs)["traceback"])
    # The same loop's healthy neighbour still fired.
    assert states[healthy].next_method == "execute_complete"
    assert states[healthy].event["loop"] == "default"

    # Clearing a deferred task cancels its trigger in its loop and calls on_kill, then cleanup.
    # (Once it runs: team_b's exec'd loop imports Airflow first, and may still be starting.)
    assert home.ti_state(waiting).state == "deferred"
    waiting_logs = home.logs_dir / "dag_id=dag_b" / "run_id=fail" / "task_id=t2"
    home.wait_for(lambda: any("starting" in p.read_text(errors="replace") for p in waiting_logs.glob("*.trigger.*.log")),
                  timeout=60)
    home.clear_ti(waiting)
    home.wait_for(lambda: marker.exists() and "cleanup" in marker.read_text(), timeout=30)
    assert marker.read_text().split() == ["on_kill", "cleanup"]
