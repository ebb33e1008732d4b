"""
An event is persisted while the claim pass is stuck behind a lock (its own DB lane and connection).

Real PostgreSQL: another session holds ``LOCK TABLE trigger IN EXCLUSIVE MODE`` (plain reads pass,
row locks and writes wait), so every claim pass waits in ``clean_unused``'s locking select. A
``FireAtTrigger`` due meanwhile must still be written at once: persisting touches task instances,
not trigger rows. With one DB lane the event waited for the blocked pass (until the lock went).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from mt_testsupport.home import FIRE_AT, AirflowHome, DeferSpec, deferring_bundle, iso_in
from tests.conftest import pg_url
from tests.test_supervisor_faults import fired

pytestmark = pytest.mark.timeout(150)

WAITING_ON_TRIGGER = ("SELECT count(*) FROM pg_locks WHERE relation = 'trigger'::regclass AND NOT granted "
                      "AND pid <> pg_backend_pid()")


def test_an_event_is_persisted_while_the_claim_pass_waits_for_a_lock(tmp_path: Path, start_triggerer) -> None:
    home = AirflowHome.create(tmp_path / "home", {"team_a": deferring_bundle("dag_a", n_tasks=1)},
                              db_url=pg_url("multitrigger_persist_lane"))
    mt = start_triggerer(home, "--skip-serve-logs", config='[loops.team_a]\nbundles = ["team_a"]\n')
    home.wait_for(lambda: "multitrigger supervisor starting" in mt.text(), 90, message="supervisor start")
    record = tmp_path / "record"
    # 20 s: the loop's own start-up (after "supervisor starting") plus claim and start, with room for a
    # loaded machine; the lock must be taken after the trigger is claimed and before it fires.
    due, moment = time.monotonic() + 20, iso_in(20)
    (ref,) = home.defer_many([DeferSpec("dag_a", "t0", FIRE_AT, {"moment": moment, "record_path": str(record)})])
    home.wait_for(lambda: record.exists() and "start" in record.read_text(), 30, message="the trigger started")
    assert time.monotonic() < due - 6, "start-up took too long for the timeline"
    time.sleep(due - 6 - time.monotonic())  # hold the lock ~6 s: longer looks like a DB outage

    locker = create_engine(home.db_url).connect()
    try:
        locker.execute(text("LOCK TABLE trigger IN EXCLUSIVE MODE"))
        home.wait_for(lambda: home.sql(WAITING_ON_TRIGGER)[0][0] > 0, 5, interval=0.1,
                      message="a claim pass waiting for the trigger table")
        home.wait_for(lambda: fired(record) == 1, due + 5 - time.monotonic(), message="the trigger fired")
        home.wait_for(lambda: home.ti_state(ref).state == "scheduled", 3, interval=0.1,
                      message="the event persisted while the claim pass waits")
        assert home.sql(WAITING_ON_TRIGGER)[0][0] > 0, "the claim pass was not blocked the whole time"
    finally:
        locker.rollback()
        locker.close()
    assert mt.popen.poll() is None and "metadata DB unreachable" not in mt.text()
