"""
Stock-Airflow semantics that multitrigger must keep, on a real SQLite home with Airflow's own code:
trigger timeouts (scheduler side: ``SchedulerJobRunner.check_trigger_timeouts``), routing of
triggerer callbacks by ``callback.bundle_name``, and of asset watchers by the bundle of the DAGs
scheduled on their asset.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import time

import pytest

from mt_testsupport.home import FIRE_AT_EVENT, WAIT_FOREVER, AirflowHome, DeferSpec, decode_serde, deferring_bundle, iso_in

pytestmark = pytest.mark.timeout(180)


def loop_pids(log: str) -> dict[str, list[int]]:
    pids: dict[str, list[int]] = {}
    for loop, pid in re.findall(r"loop started .*?loop=(\S+) pid=(\d+)", log):
        pids.setdefault(loop, []).append(int(pid))
    return pids


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> AirflowHome:
    bundles = {"team_b": deferring_bundle("dag_b", n_tasks=2), "shared": deferring_bundle("dag_s", n_tasks=2)}
    return AirflowHome.create(tmp_path_factory.mktemp("semantics") / "home", bundles)


def test_trigger_timeout_fails_the_task_and_cancels_the_trigger_without_on_kill(home, start_triggerer, tmp_path):
    marker = tmp_path / "marker.txt"
    t_defer = time.monotonic()
    (ref,) = home.defer_many([
        DeferSpec("dag_b", "t0", WAIT_FOREVER, {"marker_path": str(marker)}, run_id="timeout", timeout_seconds=4),
    ])
    mt = start_triggerer(home, "--skip-serve-logs")

    def trigger_log():
        found = [p for p in home.logs_dir.rglob("*.trigger.*.log") if "starting" in p.read_text(errors="replace")]
        return found[0] if found else None

    log_path = home.wait_for(trigger_log, timeout=45, message=lambda: mt.text()[-3000:])
    assert home.ti_state(ref).state == "deferred"
    assert not marker.exists()
    # Let the 4 s trigger_timeout pass (plus a margin), then run the scheduler's own timeout check.
    time.sleep(max(0.0, t_defer + 5.5 - time.monotonic()))
    home.check_trigger_timeouts()

    state = home.ti_state(ref)
    assert state.state == "scheduled"
    assert state.next_method == "__fail__"
    assert state.trigger_id is None
    assert decode_serde(state.next_kwargs) == {"error": "Trigger timeout"}, state.next_kwargs

    # The triggerer sees the trigger orphaned (clean_unused deletes the row) and cancels it in its
    # loop; stock run_trigger re-raises without on_kill because the timeout has passed.
    home.wait_for(lambda: marker.exists() and "cleanup" in marker.read_text(), timeout=30,
                  message=lambda: mt.text()[-3000:])
    home.wait_for(lambda: ref.trigger_id not in {r.id for r in home.trigger_rows()}, timeout=30)
    # Stock run_trigger awaits on_kill (if it calls it at all) in its except branch, before the
    # finally that awaits cleanup: with "cleanup" written, on_kill's moment has passed.
    assert marker.read_text().split() == ["cleanup"]
    assert "Trigger cancelled due to timeout" in log_path.read_text(errors="replace")
    assert mt.popen.poll() is None
    pids = loop_pids(mt.text())
    assert pids and all(len(p) == 1 for p in pids.values()), pids


def test_callback_triggers_are_routed_by_callback_bundle_name(home):
    made = home.add_triggerer_callback("team_b")
    assert made["type"] == "triggerer"
    trigger_id = int(made["trigger_id"])
    assert home.sql("SELECT bundle_name, trigger_id FROM callback WHERE trigger_id = :t", {"t": trigger_id}) == [
        ("team_b", trigger_id)
    ]
    # A trigger row nothing points at (no TI, callback or asset watcher).
    home.sql("INSERT INTO trigger (classpath, kwargs, created_date) VALUES ('x.Y', '{}', CURRENT_TIMESTAMP)")
    lone = int(home.sql("SELECT max(id) FROM trigger")[0][0])
    assert lone != trigger_id

    code = textwrap.dedent(f"""
        import json
        from airflow.utils.session import create_session
        from multitrigger.routing import bundles_for
        with create_session() as session:
            print(json.dumps(bundles_for([{trigger_id}, {lone}], session)))
        """)
    proc = subprocess.run([home.python, "-c", code], env=home.env(), cwd=home.path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    assert result == {trigger_id: "team_b", lone: None}


def test_an_asset_watcher_of_two_bundles_is_ambiguous_and_a_stale_dag_does_not_count(home):
    """A watcher whose asset is scheduled by DAGs of two bundles has no bundle (default loop, no
    team), and is logged and counted; once the other bundle's DAG is stale (removed from its
    bundle, its reference not yet cleaned by Airflow) it is the declaring bundle's again. The
    claim-side SQL expression (``asset_watcher_bundle``) agrees with routing in both cases."""
    watcher = home.add_asset_watcher("watching_amb", "asset_amb", FIRE_AT_EVENT, {"moment": iso_in(3600)}, bundle="team_b")
    (asset_id,) = home.sql("SELECT asset_id FROM asset_watcher WHERE trigger_id = :t", {"t": watcher})[0]
    home.sql("INSERT INTO dag_schedule_asset_reference (asset_id, dag_id, created_at, updated_at) "
             "VALUES (:a, 'dag_s', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)", {"a": asset_id})
    code = textwrap.dedent(f"""
        import json
        from sqlalchemy import select
        from airflow.models.trigger import Trigger
        from airflow.utils.session import create_session
        from multitrigger import routing
        with create_session() as session:
            routed = routing.bundles_for([{watcher}], session)[{watcher}]
            claimed = session.scalar(select(routing.asset_watcher_bundle(Trigger.id)).where(Trigger.id == {watcher}))
        print(json.dumps([routed, claimed, routing.AMBIGUOUS.value]))
        """)

    def route() -> tuple[list, str]:
        proc = subprocess.run([home.python, "-c", code], env=home.env(), cwd=home.path, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout + proc.stderr

    try:
        got, out = route()
        assert got == [None, None, 1], got
        assert "triggers of several bundles" in out and "'shared', 'team_b'" in out, out[-2000:]
        home.sql("UPDATE dag SET is_stale = :s WHERE dag_id = 'dag_s'", {"s": True})
        got, out = route()
        assert got == ["team_b", "team_b", 0], got
    finally:
        home.sql("UPDATE dag SET is_stale = :s WHERE dag_id = 'dag_s'", {"s": False})
        home.sql("DELETE FROM dag_schedule_asset_reference WHERE dag_id = 'dag_s'")
