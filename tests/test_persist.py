"""The bulk event persistence (``multitrigger.supervisor.persist``) writes exactly what stock
``Trigger.submit_event`` writes, on the same inputs (Airflow 3.3.2).

Two identical copies of a workload (DAGs ``dag_a`` and ``dag_b``, same tasks, same ``next_kwargs``,
same oddities) get the same events: copy A through stock ``Trigger.submit_event``, one call per
event, copy B through ``persist.submit_batch`` in one go, or in a step that takes the later events
while it runs (as the persist lane's step takes those that arrive meanwhile). Every column of every task instance must
then be the same (timestamps: set in both or in neither), and so must what the events wrote
elsewhere (XComs, callback requests, asset events).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import pg_url
from mt_testsupport.home import FIRE_AT, FIRE_AT_EVENT, AirflowHome, DeferSpec, deferring_bundle, iso_in

pytestmark = pytest.mark.timeout(240)

N = 12  # task instances per copy (map_index 0..11)

COMPARE = r"""
import datetime, json, re, sys
from sqlalchemy import select, text
from airflow.models.taskinstance import TaskInstance
from airflow.models.trigger import Trigger
from airflow.triggers.base import TaskSuccessEvent, TriggerEvent
from airflow.utils.session import create_session
from multitrigger.supervisor import persist

N, asset_triggers = int(sys.argv[1]), json.loads(sys.argv[2])

class Unserializable:  # serde cannot encode it: stock fails the task instance (__fail__)
    def __repr__(self):
        return "Unserializable()"

when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
EVENTS = {  # map_index -> events for its trigger (same objects for both copies)
    0: [TriggerEvent({"x": 1, "nested": {"y": [1, 2]}})],
    1: [TriggerEvent(when)],                       # a datetime payload (serde-encoded)
    2: [TriggerEvent(None)],
    3: [TriggerEvent({"x": 3})],                   # its stored next_kwargs do not decode
    5: [TriggerEvent({"x": 5})],                   # two task instances wait on this trigger (4 and 5)
    6: [TriggerEvent({"x": 6})],                   # its task instance is no longer deferred
    7: [TriggerEvent(Unserializable())],           # payload serde cannot encode
    8: [TaskSuccessEvent(xcoms={"k": "v"})],       # task-end event: callbacks, XComs
    9: [TriggerEvent({"first": 1}), TriggerEvent({"second": 2})],  # two events in one batch
    10: [TriggerEvent({"x": 10})],
}

def tis(dag):
    with create_session() as s:
        rows = s.execute(select(TaskInstance.__table__).where(TaskInstance.dag_id == dag)).mappings().all()
        return {r["map_index"]: dict(r) for r in rows}

def prepare(dag):
    with create_session() as s:
        by_map = {r.map_index: r for r in s.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag))}
        by_map[3].next_kwargs = {"__type": "nosuchtype", "__var": 1}  # a dict that neither decoder reads
        by_map[4].trigger_id = by_map[5].trigger_id
        by_map[6].state = "scheduled"
        return {m: ti.trigger_id for m, ti in by_map.items()}

triggers = {dag: prepare(dag) for dag in ("dag_a", "dag_b")}
entries = {dag: [(triggers[dag][m], e) for m, evs in EVENTS.items() for e in evs] for dag in triggers}
for dag in triggers:  # asset watcher triggers: stock path in both
    entries[dag].append((asset_triggers[dag], TriggerEvent({"asset": dag})))
before = {dag: tis(dag) for dag in triggers}

with create_session() as s:  # copy A: stock, one submit_event per event
    for trigger_id, event in entries["dag_a"]:
        Trigger.submit_event(trigger_id=trigger_id, event=event, session=s)
mode = sys.argv[3]
with create_session() as s:  # copy B: the bulk path, one batch
    batch = list(entries["dag_b"])
    if mode == "one":
        paths = persist.submit_batch(batch, s)
    else:  # the step takes later events while it runs (``more``), as ``Outcomes.absorb`` hands them over
        first, size = (2, 2) if mode == "rounds" else (9, 3)  # rounds: 4 of 2, then the cap: 2 left
        step, rest = batch[:first], batch[first:]

        def more(known):
            taken = []
            while rest and len(taken) < size and rest[0][0] not in known:
                taken.append(rest.pop(0))
            return taken

        paths = persist.submit_batch(step, s, more)
        assert step == batch[: len(step)], "the step's entries: what it took, in order"
        if mode == "stop":  # the second event of a trigger already in the step waits for the next one
            assert rest and rest[0] == batch[len(step)] and rest[0][0] == step[-1][0], rest
        if rest:
            paths.update(persist.submit_batch(rest, s))

after = {dag: tis(dag) for dag in triggers}
with create_session() as s:
    xcoms = {dag: sorted(s.execute(text("SELECT map_index, key, value FROM xcom WHERE dag_id = :d"), {"d": dag}).fetchall()) for dag in triggers}
    callbacks = {dag: s.execute(text("SELECT count(*) FROM callback WHERE CAST(data AS TEXT) LIKE :p"), {"p": f'%"{dag}"%'}).scalar() for dag in triggers}
    assets = {dag: s.execute(text("SELECT count(*) FROM asset_event WHERE CAST(extra AS TEXT) LIKE :p"), {"p": f'%{dag}%'}).scalar() for dag in triggers}
    # The stamps as stored (their text, digits masked): the same format, not only the same value read back.
    stored = {dag: {m: [re.sub(r"[0-9]+", "d", str(v)) for v in vs] for m, *vs in s.execute(text(
        "SELECT map_index, CAST(updated_at AS TEXT), CAST(scheduled_dttm AS TEXT), CAST(next_kwargs AS TEXT) "
        "FROM task_instance WHERE dag_id = :d"), {"d": dag})} for dag in triggers}

def plain(v):
    return v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else repr(v)

out = {"before": {d: {m: {k: plain(v) for k, v in r.items()} for m, r in rows.items()} for d, rows in before.items()},
       "after": {d: {m: {k: plain(v) for k, v in r.items()} for m, r in rows.items()} for d, rows in after.items()},
       "xcoms": {d: [list(map(plain, x)) for x in v] for d, v in xcoms.items()}, "callbacks": callbacks, "assets": assets,
       "paths": dict(paths), "stored": stored}
print(json.dumps(out, default=repr))
"""

#: Differ between the copies by construction (ids, DAG, its version) or by time (stamps).
_OWN = {"id", "dag_id", "dag_version_id", "trigger_id", "context_carrier"}  # carrier: a per-run trace id
_STAMPS = {"updated_at", "scheduled_dttm", "end_date", "duration"}


@pytest.mark.parametrize(("db", "mode"), [("sqlite", "one"), ("postgresql", "one"), ("sqlite", "rounds"),
                                          ("sqlite", "stop")])
def test_bulk_persist_writes_what_stock_submit_event_writes(tmp_path, db, mode):
    """``mode``: the batch in one go; or a step of 2 that takes more while it runs (2 at a time:
    ``persist.submit_batch``'s ``more``, up to its ``ABSORB_ROUNDS``; the last 2 are the next step's); or a step of 9 whose next event is for a trigger it has, so
    it takes nothing and that event is the next step's."""
    url = pg_url("mt_persist") if db == "postgresql" else None  # the bulk UPDATE differs per dialect
    home = AirflowHome.create(tmp_path / "home", {"a": deferring_bundle("dag_a"), "b": deferring_bundle("dag_b")},
                              db_url=url)
    home.defer_many([
        DeferSpec(dag, "t0", FIRE_AT, {"moment": iso_in(3600)}, map_index=m,
                  next_kwargs={"stored": m, "when": "2026-01-01T00:00:00+00:00"} if m % 2 else None)
        for dag in ("dag_a", "dag_b") for m in range(N)
    ])
    assets = {dag: home.add_asset_watcher(f"watch_{dag}", f"asset_{dag}", FIRE_AT_EVENT, {"moment": iso_in(3600)})
              for dag in ("dag_a", "dag_b")}
    out = subprocess.run([sys.executable, "-c", COMPARE, str(N), json.dumps(assets), mode], env=home.env(),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    stock, ours = res["after"]["dag_a"], res["after"]["dag_b"]
    assert stock.keys() == ours.keys() and len(stock) == N + 1  # and the unmapped TI of the run
    for m in stock:
        s, o = stock[m], ours[m]
        assert {k: v for k, v in s.items() if k not in _OWN | _STAMPS} == {k: v for k, v in o.items() if k not in _OWN | _STAMPS}, m
        assert (s["trigger_id"] is None) == (o["trigger_id"] is None), m
        for k in _STAMPS:
            assert (s[k] is None) == (o[k] is None), (m, k)
            changed_s = s[k] != res["before"]["dag_a"][m][k]
            assert changed_s == (o[k] != res["before"]["dag_b"][m][k]), (m, k)
    assert res["stored"]["dag_a"] == res["stored"]["dag_b"]
    # The cases did what they are there for (so the equality above covers them):
    assert stock["0"]["state"] == "scheduled" and stock["0"]["next_kwargs"]["event"] == {"x": 1, "nested": {"y": [1, 2]}}
    assert stock["3"]["next_method"] == "__fail__" and "could not be decoded" in stock["3"]["next_kwargs"]["error"]
    assert stock["4"]["state"] == stock["5"]["state"] == "scheduled"
    assert stock["6"]["trigger_id"] is not None  # not deferred: untouched
    assert stock["7"]["next_method"] == "__fail__" and "could not be serialized" in stock["7"]["next_kwargs"]["error"]
    assert stock["8"]["state"] == "success"
    assert stock["9"]["next_kwargs"]["event"] == {"first": 1}  # the second event found nothing waiting
    assert stock["11"]["state"] == "deferred"  # no event
    assert res["xcoms"]["dag_a"] == res["xcoms"]["dag_b"] and res["xcoms"]["dag_a"]
    assert res["callbacks"]["dag_a"] == res["callbacks"]["dag_b"]
    assert res["assets"]["dag_a"] == res["assets"]["dag_b"] == 1
    # Map indexes 0-5, 7 and 10 took the bulk UPDATE, the task-end event its entity, the batch's
    # repeated trigger and the asset watcher stock submit_event.
    if mode != "stop":
        assert res["paths"] == {"bulk": 8, "entity": 1, "stock": 3}
    else:  # the repeated trigger's events in two steps: the first took the bulk path, the second found nothing
        assert res["paths"] == {"bulk": 9, "entity": 1, "stock": 1}
