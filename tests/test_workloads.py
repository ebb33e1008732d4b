"""Workloads are built exactly as the stock triggerer builds them — only faster (batched)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mt_testsupport.home import FIRE_AT, FIRE_AT_EVENT, AirflowHome, DeferSpec, deferring_bundle, iso_in
from tests.conftest import pg_url

pytestmark = pytest.mark.timeout(180)

COMPARE = r"""
import json
from sqlalchemy import select
from airflow.jobs.job import Job
from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor
from airflow.models.trigger import Trigger
from airflow.utils.session import create_session
from multitrigger.supervisor import row_build
from multitrigger.supervisor.store import Claim, TriggerStore, _StockWorkloads

left_for_stock = []
_build = row_build.RowBuild.build
def counting_build(self, ids, session):
    built, rest = _build(self, ids, session)
    left_for_stock.extend(rest)
    return built, rest
row_build.RowBuild.build = counting_build

with create_session() as s:
    job = Job(); job.job_type = "TriggererJob"; s.add(job); s.commit(); s.refresh(job); s.expunge(job)
    ids = set(s.scalars(select(Trigger.id)))
stock_side = _StockWorkloads(job)
stock_built = TriggerRunnerSupervisor.build_trigger_workloads(stock_side, ids)
store = TriggerStore(job, Claim(100, None, None, 30))
built, failures = store.build(ids)
assert not failures, failures
ours_built = [w for w, _ in built]
kwargs = {w.id: Trigger._decrypt_kwargs(w.encrypted_kwargs) for w in stock_built}
same_kwargs = all(Trigger._decrypt_kwargs(w.encrypted_kwargs) == kwargs[w.id] for w in ours_built)
stock = {w.id: w.model_dump(mode="json") for w in stock_built}
ours = {w.id: w.model_dump(mode="json") for w in ours_built}
def logs(cache):
    return {tid: [f.log_path, f.ti.model_dump(mode="json")] for tid, f in cache.items()}
print(json.dumps({"stock": stock, "ours": ours, "same_kwargs": same_kwargs, "left_for_stock": sorted(left_for_stock),
                  "stock_logs": logs(stock_side.logger_cache), "ours_logs": logs(store.logger_cache)}))
"""

#: A task that starts from its trigger (its workload carries the DAG and DAG run data).
START_FROM_TRIGGER_DAG = """
import datetime
from airflow.sdk import DAG, BaseOperator
from airflow.triggers.base import StartTriggerArgs

class StartsInTriggerer(BaseOperator):
    start_trigger_args = StartTriggerArgs(trigger_cls="multitrigger.demo.triggers.FireAtTrigger",
                                          trigger_kwargs={"moment": "2030-01-01T00:00:00+00:00"},
                                          next_method="execute_complete")
    start_from_trigger = True

    def execute_complete(self, context, event=None):
        return event

with DAG(dag_id="dag_s", schedule=None, start_date=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)):
    StartsInTriggerer(task_id="s0")
"""


def _compare(home: AirflowHome, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", COMPARE], env={**home.env(), **env}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _assert_same(result: dict, n: int) -> None:
    stock, ours = result["stock"], result["ours"]
    assert len(stock) == n and stock.keys() == ours.keys()
    for tid, workload in stock.items():
        plain = dict(workload, encrypted_kwargs=None)
        assert dict(ours[tid], encrypted_kwargs=None) == plain, tid
        # Only difference: kwargs arrive decrypted (the loop never needs the Fernet key).
        assert ours[tid]["encrypted_kwargs"].startswith("{")
    assert result["same_kwargs"]
    # The same per-trigger log files (path and task instance) for every trigger stock logs for.
    assert result["ours_logs"] == result["stock_logs"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def mixed_home(request, tmp_path_factory):
    """Plain deferred tasks (some kwargs encrypted, some with timeouts), a task that starts from its
    trigger, a task no longer in its DAG, an asset watcher and a triggerer callback; on SQLite and
    on PostgreSQL (scale-out's database: its column types come back as the row build reads them)."""
    url = pg_url("mt_workloads") if request.param == "postgresql" else None
    home = AirflowHome.create(tmp_path_factory.mktemp("mixed") / "home",
                              {"a": {**deferring_bundle("dag_a", n_tasks=3), "dag_s.py": START_FROM_TRIGGER_DAG},
                               "b": deferring_bundle("dag_b", n_tasks=3)},
                              extra_config={"core": {"min_serialized_dag_update_interval": "0"}},  # re-serialize at once
                              db_url=url)
    refs = home.defer_many([
        DeferSpec(f"dag_{b}", f"t{t}", FIRE_AT, {"moment": iso_in(3600)}, map_index=m, timeout_seconds=600 if m else None,
                  encrypt_kwargs=bool(m % 2))
        for b in "ab" for t in range(3) for m in range(4)
    ] + [DeferSpec("dag_s", "s0", FIRE_AT, {"moment": iso_in(3600)}, map_index=m) for m in range(2)])
    # dag_b's latest version has no t2 any more: its deferred t2 instances resolve to a DAG without their task.
    home.write_dag_file("b", "dag_b.py", deferring_bundle("dag_b", n_tasks=2)["dag_b.py"])
    watcher = home.add_asset_watcher("dag_w", "asset_w", FIRE_AT_EVENT, {"moment": iso_in(3600)}, bundle="a")
    callback = home.add_triggerer_callback("a")["trigger_id"]
    special = {r.trigger_id for r in refs if r.dag_id == "dag_s" or (r.dag_id == "dag_b" and r.task_id == "t2")}
    return home, special | {watcher, callback}


def test_batched_build_equals_stock_build(mixed_home):
    home, special = mixed_home
    result = _compare(home)
    _assert_same(result, 24 + 2 + 2)
    stock = result["stock"]
    assert any(not w["encrypted_kwargs"].startswith("{") for w in stock.values())  # some were encrypted
    assert sum(1 for w in stock.values() if w.get("dag_data")) == 2  # the start_from_trigger ones
    assert sum(1 for w in stock.values() if w.get("watched_assets")) == 1
    # Row-built: every plain task-instance trigger; stock's code: exactly the special ones.
    assert set(result["left_for_stock"]) == special


def test_a_log_template_that_reads_beyond_the_row_is_rendered_by_stock(mixed_home):
    """``ti.logical_date`` is not a column of the row: those triggers take stock's path, same result."""
    home, special = mixed_home
    template = "{{ ti.dag_id }}/{{ ti.logical_date }}/{{ ti.task_id }}/{{ ti.map_index }}/{{ try_number|default(ti.try_number) }}.log"
    result = _compare(home, AIRFLOW__LOGGING__LOG_FILENAME_TEMPLATE=template)
    _assert_same(result, 24 + 2 + 2)
    assert len(result["left_for_stock"]) == 28  # every trigger


CHUNKED = r"""
import json
from sqlalchemy import text
from airflow.jobs.job import Job
from airflow.utils.session import create_session
from multitrigger.supervisor import store as store_mod
from multitrigger.supervisor.store import Claim, TriggerStore

store_mod.BUILD_CHUNK = 5
with create_session() as s:
    job = Job(); job.job_type = "TriggererJob"; s.add(job); s.commit(); s.refresh(job); s.expunge(job)
    peer = Job(); peer.job_type = "TriggererJob"; s.add(peer); s.commit(); s.refresh(peer); s.expunge(peer)
store = TriggerStore(job, Claim(100, None, None, 30))
known, passes = set(), []
tick = store.tick(frozenset(known))
while True:
    ids = [w.id for w, _ in tick.built]
    passes.append({"built": len(ids), "backlog": tick.backlog, "held": len(tick.held), "again": len(known & set(ids)),
                   "more": tick.more})
    known |= set(ids)
    if not tick.backlog:
        break
    if len(passes) == 1:  # a peer takes two of the unbuilt ones (say our heartbeat had lapsed)
        taken = sorted(tick.held - known)[:2]
        with create_session() as s:
            s.execute(text(f"UPDATE trigger SET triggerer_id = {peer.id} WHERE id IN ({taken[0]}, {taken[1]})"))
    tick = store.tick(frozenset(known), claim=False)
ran_taken = sorted(known & set(taken))
print(json.dumps({"passes": passes, "ran_taken": ran_taken}))
"""


def test_a_claim_pass_builds_at_most_a_chunk_and_the_next_passes_build_the_rest(tmp_path):
    """Build passes take the held set of the last claim pass and check only their chunk: what a
    peer took in between is not built (nor run) here, and leaves the held set."""
    home = AirflowHome.create(tmp_path / "home", {"a": deferring_bundle("dag_a", n_tasks=1)})
    home.defer_many([DeferSpec("dag_a", "t0", FIRE_AT, {"moment": iso_in(3600)}, map_index=m) for m in range(12)])
    out = subprocess.run([sys.executable, "-c", CHUNKED], env=home.env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    passes = result["passes"]
    # The two taken were the next chunk's first: it builds the other 3.
    assert [p["built"] for p in passes] == [5, 3, 2] and [p["backlog"] for p in passes] == [7, 2, 0], passes
    assert [p["held"] for p in passes] == [12, 10, 10] and all(p["again"] == 0 for p in passes)
    assert result["ran_taken"] == []
    # The one claim took all 12 with max_trigger_to_select_per_loop at its default (50): nothing
    # more to claim, so no hurry to claim again.
    assert not any(p["more"] for p in passes)


SATURATED = r"""
import json
from airflow.jobs.job import Job
from airflow.utils.session import create_session
from multitrigger.supervisor.store import Claim, TriggerStore

with create_session() as s:
    job = Job(); job.job_type = "TriggererJob"; s.add(job); s.commit(); s.refresh(job); s.expunge(job)
store = TriggerStore(job, Claim(100, None, None, 30))
known, passes = set(), []
for _ in range(3):
    tick = store.tick(frozenset(known))
    known |= {w.id for w, _ in tick.built}
    passes.append([len(tick.held), tick.more])
print(json.dumps(passes))
"""


def test_a_claim_that_stops_at_max_trigger_to_select_per_loop_says_more_may_be_claimable(tmp_path):
    """``Tick.more``: the supervisor claims again at once (when alone) only while claims stop at the
    per-query limit; once one takes less, the held rest is built without claiming again."""
    home = AirflowHome.create(tmp_path / "home", {"a": deferring_bundle("dag_a", n_tasks=1)},
                              extra_config={"triggerer": {"max_trigger_to_select_per_loop": "5"}})
    home.defer_many([DeferSpec("dag_a", "t0", FIRE_AT, {"moment": iso_in(3600)}, map_index=m) for m in range(12)])
    out = subprocess.run([sys.executable, "-c", SATURATED], env=home.env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[5, True], [10, True], [12, False]]


@pytest.mark.parametrize("template", [
    "dag_id={{ ti.dag_id }}/run_id={{ ti.run_id }}/task_id={{ ti.task_id }}/"
    "{% if ti.map_index >= 0 %}map_index={{ ti.map_index }}/{% endif %}attempt={{ try_number|default(ti.try_number) }}.log",
    "{% for i in range(2) %}{{ ti.task_id }}{{ i }}/{% endfor %}{{ joiner('-')() }}{{ ti.try_number }}.log",  # globals
    "{dag_id}/{task_id}/{try_number}.log",  # str.format spelling: reads ti.logical_date
], ids=["default", "globals", "format"])
def test_the_row_log_path_renderer_renders_what_stock_renders(template, monkeypatch):
    from airflow.utils import helpers
    from multitrigger.supervisor.row_build import NeedsOrm, RowTI, log_path_renderer

    monkeypatch.setattr(helpers.conf, "get", lambda *a, **k: template)
    render = helpers.log_filename_template_renderer.__wrapped__()  # uncached: this template
    ti = RowTI({"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": 3, "try_number": 2})
    fast = log_path_renderer(render)
    if "{{" not in template:
        with pytest.raises(NeedsOrm):
            fast(ti)
        return
    assert fast(ti) == render(ti=ti)
