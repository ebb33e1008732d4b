"""The claim pass's held ids (``supervisor.held``: stock's query, aggregated in one row) are exactly
stock ``Trigger.ids_for_triggerer``'s, for every filter it applies (Airflow 3.3.2): triggerer id,
``--queues`` or none, a team or none, with ``[core] multi_team`` on and off."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import pg_url
from mt_testsupport.home import AirflowHome, deferring_bundle

pytestmark = pytest.mark.timeout(180)

COMPARE = r"""
import itertools, json
from sqlalchemy import delete
from airflow.models.trigger import Trigger
from airflow.utils.session import create_session
from airflow.configuration import conf
from airflow.models.team import Team
from multitrigger.supervisor import held

# every combination of holder, queue and team, three rows each (ids in whatever order they come)
with create_session() as s:
    s.execute(delete(Trigger))
    s.add_all([Team(name="team_a"), Team(name="team_b")])  # trigger.team_name is a foreign key
    s.flush()
    for holder, queue, team, _ in itertools.product((7, 8, None), (None, "q1", "q2"), (None, "team_a", "team_b"), range(3)):
        t = Trigger(classpath="mt_testsupport.triggers.FireAtTrigger", kwargs={}, queue=queue)
        t.triggerer_id, t.team_name = holder, team
        s.add(t)
cases = []
for multi_team in ("False", "True"):
    conf.set("core", "multi_team", multi_team)
    for holder, queues, team in itertools.product((7, 8, 9), (None, {"q1"}, {"q1", "q2"}), (None, "team_a")):
        stock = sorted(Trigger.ids_for_triggerer(holder, queues=queues, team_name=team))
        with create_session() as s:
            ours = sorted(held.held_ids(s, holder, queues=queues, team_name=team))
        recorded = held.stock_query(holder, queues, team) is not None
        cases.append({"case": [multi_team, holder, sorted(queues or []), team], "stock": stock, "ours": ours, "recorded": recorded})
with create_session() as s:
    s.execute(delete(Trigger))
with create_session() as s:
    empty = held.held_ids(s, 7)
print(json.dumps({"cases": cases, "empty": sorted(empty)}))
"""


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_held_ids_are_stocks_for_every_filter(tmp_path, db):
    url = pg_url("mt_held") if db == "postgresql" else None
    home = AirflowHome.create(tmp_path / "home", {"a": deferring_bundle("dag_a")}, db_url=url)
    out = subprocess.run([sys.executable, "-c", COMPARE], env=home.env(), capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(res["cases"]) == 36
    for case in res["cases"]:
        assert case["recorded"], case  # the aggregated path ran, not the fallback to stock's own call
        assert case["ours"] == case["stock"], case
    assert sum(1 for c in res["cases"] if c["stock"]) >= 12  # the filters select something, and not always all
    assert len({tuple(c["stock"]) for c in res["cases"]}) >= 6
    assert res["empty"] == []
