"""The persist lane's warm-up (``persist.warm_up``, run first on the lane at start-up) writes
nothing, and the lane's session persists as before after it (Airflow 3.3.2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import pg_url
from mt_testsupport.home import FIRE_AT, AirflowHome, DeferSpec, deferring_bundle, iso_in

pytestmark = pytest.mark.timeout(240)

PROBE = r"""
import json, threading
from sqlalchemy import text
from airflow.triggers.base import TriggerEvent
from airflow.utils.session import create_session
from multitrigger.supervisor import persist

def snapshot():
    with create_session() as s:
        return {t: sorted([repr(bytes(v) if isinstance(v, memoryview) else v) for v in r]  # bytea: a memoryview
                          for r in s.execute(text(f"SELECT * FROM {t}")))
                for t in ("task_instance", "trigger", "dag_run")}

out = {}
def lane():  # one thread, as the persist lane: its session is the thread's
    before = snapshot()
    with create_session() as s:
        persist.warm_up(s)
    after = snapshot()
    out["unchanged"] = after == before
    with create_session() as s:
        tid = s.execute(text("SELECT min(id) FROM trigger")).scalar()
        out["paths"] = dict(persist.submit_batch([(tid, TriggerEvent({"x": 1}))], s))
    with create_session() as s:
        out["state"] = s.execute(text("SELECT state FROM task_instance WHERE trigger_id IS NULL AND map_index = 0")).scalar()
t = threading.Thread(target=lane)
t.start()
t.join()
print(json.dumps(out))
"""


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_warm_up_writes_nothing_and_the_lane_persists_after_it(tmp_path, db):
    url = pg_url("mt_persist_warmup") if db == "postgresql" else None
    home = AirflowHome.create(tmp_path / "home", {"a": deferring_bundle("dag_a")}, db_url=url)
    home.defer_many([DeferSpec("dag_a", "t0", FIRE_AT, {"moment": iso_in(3600)}, map_index=m) for m in range(3)])
    out = subprocess.run([sys.executable, "-c", PROBE], env=home.env(), capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["unchanged"] is True
    assert res["paths"] == {"bulk": 1, "entity": 0, "stock": 0}
    assert res["state"] == "scheduled"
