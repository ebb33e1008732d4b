"""
A metadata-DB partition that refuses nothing: PostgreSQL behind a real TCP proxy that accepts and
holds connections but relays nothing (``TcpProxy.blackhole``), for longer than the loops' hang
threshold, with real deferred triggers due before, during and after it.

The supervisor must do no worse than stock: no loop killed, no trigger blamed, nothing lost, every
task resumed exactly once after the partition, the heartbeat back, the outage named within
seconds, and a SIGTERM during a partition still honoured within the shutdown grace.
"""

from __future__ import annotations

import datetime as dt
import re
import signal
import time
from pathlib import Path

import pytest

from mt_testsupport.home import FIRE_AT, AirflowHome, DeferSpec, deferring_bundle
from tests.conftest import pg_url
from tests.tcp_proxy import TcpProxy
from tests.test_supervisor_faults import fired, loop_pids

pytestmark = pytest.mark.timeout(300)
HANG_THRESHOLD = 6.0  # [triggerer] runner_health_check_threshold: the partition lasts longer
DB_TIMEOUT = 2.0
PARTITION = 15.0
SHUTDOWN_GRACE = 10.0  # the supervisor's default


@pytest.fixture
def pg_home(tmp_path: Path) -> AirflowHome:
    url = pg_url("multitrigger_partition")
    bundles = {"team_a": deferring_bundle("dag_a", n_tasks=3), "shared": deferring_bundle("dag_s", n_tasks=3)}
    return AirflowHome.create(tmp_path / "home", bundles, db_url=url)


def _at(moment: float) -> str:
    """A wall-clock ISO time for a ``time.monotonic()`` moment."""
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=moment - time.monotonic())).isoformat()


def _heartbeat(home: AirflowHome, job_id: int) -> dt.datetime:
    (value,) = home.sql("SELECT latest_heartbeat FROM job WHERE id = :id", {"id": job_id})[0]
    return value


def test_a_black_holed_db_kills_no_loop_blames_no_trigger_and_loses_nothing(pg_home, start_triggerer, tmp_path):
    home = pg_home
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    via_proxy = home.db_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    config = f'[loops.team_a]\nbundles = ["team_a"]\n[supervisor]\ndb_timeout = {DB_TIMEOUT}\n'
    mt = start_triggerer(home, "--skip-serve-logs", config=config, env={
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": via_proxy,
        "AIRFLOW__TRIGGERER__RUNNER_HEALTH_CHECK_THRESHOLD": str(HANG_THRESHOLD),
    })
    home.wait_for(lambda: "multitrigger supervisor starting" in mt.text(), 90, message="supervisor start")
    (job_id,) = [r[0] for r in home.sql("SELECT id FROM job WHERE job_type = 'TriggererJob'")]

    # Due times: two before the partition, two during it (in each loop), two after it.
    base = time.monotonic() + 12  # deferring and claiming take a few seconds on 2 busy cores
    cut_at, heal_at = base + 4, base + 4 + PARTITION
    due = {"before": base, "during": cut_at + 6, "after": heal_at + 4}
    records = {(w, d): tmp_path / f"{w}-{d}" for w in due for d in ("dag_a", "dag_s")}
    tasks = {"before": "t0", "during": "t1", "after": "t2"}
    refs = home.defer_many([
        DeferSpec(d, tasks[w], FIRE_AT, {"moment": _at(due[w]), "record_path": str(rec)})
        for (w, d), rec in records.items()
    ])
    assert time.monotonic() < base - 2, "deferring took too long for the timeline"
    home.wait_for(lambda: all(r.exists() and "start" in r.read_text() for r in records.values()), base - time.monotonic(), message="every trigger started in its loop")
    home.wait_for(lambda: {"team_a", "default"} <= set(re.findall(r"loop ready .*?loop=(\S+)", mt.text())), 10, message="both loops ready")
    pids_before = loop_pids(mt.text())
    home.wait_for(lambda: all(s.state == "scheduled" for s in home.ti_states(refs[:2]).values()), cut_at - time.monotonic(), message="the 'before' triggers persisted")
    time.sleep(max(0.0, cut_at - time.monotonic()))

    # The partition, longer than the hang threshold.
    heartbeat_at_cut = _heartbeat(home, job_id)
    proxy.blackhole()
    cut = time.monotonic()
    home.wait_for(lambda: "metadata DB unreachable" in mt.text(), 30, message="the outage named in the log")
    named = time.monotonic()
    assert named - cut < DB_TIMEOUT + 5, f"outage named {named - cut:.1f}s after it began"
    home.wait_for(lambda: all(fired(records[("during", d)]) == 1 for d in ("dag_a", "dag_s")), heal_at - time.monotonic(), message="the 'during' triggers fired in their loops")
    assert {s.state for s in home.ti_states(refs[2:4]).values()} == {"deferred"}  # not persisted yet
    time.sleep(max(0.0, heal_at - time.monotonic()))
    assert time.monotonic() - cut > HANG_THRESHOLD + 5
    proxy.heal()

    # After it: everything persisted exactly once, the heartbeat back, no loop touched.
    states = home.wait_for_states(refs, "scheduled", timeout=60)
    assert all(s.next_method == "execute_complete" for s in states.values())
    assert all(fired(rec) == 1 for rec in records.values()), {k: rec.read_text() for k, rec in records.items()}
    home.wait_for(lambda: _heartbeat(home, job_id) > heartbeat_at_cut, 30, message="heartbeat after the partition")
    text = mt.text()
    assert loop_pids(text) == pids_before and all(len(p) == 1 for p in pids_before.values())
    assert "killing loop" not in text and "blamed" not in text and "loop process ended" not in text
    assert "metadata DB reachable again" in text

    # A second partition; SIGTERM during it still stops the supervisor within its grace.
    proxy.blackhole()
    home.wait_for(lambda: text.count("metadata DB unreachable") < mt.text().count("metadata DB unreachable"), 30, message="the second outage named")
    t0 = time.monotonic()
    mt.popen.send_signal(signal.SIGTERM)
    code = mt.popen.wait(SHUTDOWN_GRACE + 10)
    stopped = time.monotonic() - t0
    proxy.heal()
    assert stopped < SHUTDOWN_GRACE + 2, f"stopped {stopped:.1f}s after SIGTERM"
    assert "shutting down" in mt.text()
    assert code is not None


def test_a_stalled_supervisor_kills_no_loop_for_its_own_deafness(tmp_path, start_triggerer):
    """SIGSTOP the supervisor (swapped out, frozen) past the hang threshold: its loops kept running
    and kept writing; after SIGCONT none is judged hung, and what fired meanwhile is persisted."""
    home = AirflowHome.create(tmp_path / "home", {"team_a": deferring_bundle("dag_a", n_tasks=2)})
    mt = start_triggerer(home, "--skip-serve-logs", config='[loops.team_a]\nbundles = ["team_a"]\n',
                         env={"AIRFLOW__TRIGGERER__RUNNER_HEALTH_CHECK_THRESHOLD": str(HANG_THRESHOLD)})
    home.wait_for(lambda: "multitrigger supervisor starting" in mt.text(), 90, message="supervisor start")
    stop_at = time.monotonic() + 8
    record = tmp_path / "during-stop"
    (ref,) = home.defer_many([DeferSpec("dag_a", "t0", FIRE_AT, {"moment": _at(stop_at + 3), "record_path": str(record)})])
    home.wait_for(lambda: record.exists() and "start" in record.read_text(), max(1.0, stop_at - time.monotonic()), message="the trigger started")
    time.sleep(max(0.0, stop_at - time.monotonic()))
    mt.popen.send_signal(signal.SIGSTOP)
    home.wait_for(lambda: fired(record) == 1, 10, message="the trigger fired while the supervisor was stopped")
    time.sleep(max(0.0, stop_at + HANG_THRESHOLD + 4 - time.monotonic()))
    mt.popen.send_signal(signal.SIGCONT)
    states = home.wait_for_states([ref], "scheduled", timeout=30)
    assert states[ref].next_method == "execute_complete"
    time.sleep(2)  # a few passes after the stall, in which a wrongly judged loop would be killed
    text = mt.text()
    assert len(loop_pids(text)["team_a"]) == 1 and "loop ready" in text
    assert "killing loop" not in text and "loop process ended" not in text
