"""Workloads are built exactly as the stock triggerer builds them — only faster (batched)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mt_testsupport.home import FIRE_AT, AirflowHome, DeferSpec, deferring_bundle, iso_in

pytestmark = pytest.mark.timeout(180)

COMPARE = r"""
import json
from sqlalchemy import select
from airflow.jobs.job import Job
from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor
from airflow.models.trigger import Trigger
from airflow.utils.session import create_session
from multitrigger.supervisor.store import Claim, TriggerStore, _StockWorkloads

with create_session() as s:
    job = Job(); job.job_type = "TriggererJob"; s.add(job); s.commit(); s.refresh(job); s.expunge(job)
    ids = set(s.scalars(select(Trigger.id)))
stock_built = TriggerRunnerSupervisor.build_trigger_workloads(_StockWorkloads(job), ids)
built, failures = TriggerStore(job, Claim(100, None, None, 30)).build(ids)
assert not failures, failures
ours_built = [w for w, _ in built]
kwargs = {w.id: Trigger._decrypt_kwargs(w.encrypted_kwargs) for w in stock_built}
same_kwargs = all(Trigger._decrypt_kwargs(w.encrypted_kwargs) == kwargs[w.id] for w in ours_built)
stock = {w.id: w.model_dump(mode="json") for w in stock_built}
ours = {w.id: w.model_dump(mode="json") for w in ours_built}
print(json.dumps({"stock": stock, "ours": ours, "same_kwargs": same_kwargs}))
"""


def test_batched_build_equals_stock_build(tmp_path):
    home = AirflowHome.create(tmp_path / "home", {"a": deferring_bundle("dag_a", n_tasks=3), "b": deferring_bundle("dag_b", n_tasks=3)})
    home.defer_many([
        DeferSpec(f"dag_{b}", f"t{t}", FIRE_AT, {"moment": iso_in(3600)}, map_index=m, timeout_seconds=600 if m else None,
                  encrypt_kwargs=bool(m % 2))
        for b in "ab" for t in range(3) for m in range(4)
    ])
    out = subprocess.run([sys.executable, "-c", COMPARE], env=home.env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    stock, ours = result["stock"], result["ours"]
    assert len(stock) == 24 and stock.keys() == ours.keys()
    for tid, workload in stock.items():
        plain = dict(workload, encrypted_kwargs=None)
        assert dict(ours[tid], encrypted_kwargs=None) == plain, tid
        # Only difference: kwargs arrive decrypted (the loop never needs the Fernet key).
        assert ours[tid]["encrypted_kwargs"].startswith("{")
    assert any(not w["encrypted_kwargs"].startswith("{") for w in stock.values())  # some were encrypted
    assert result["same_kwargs"]


CHUNKED = r"""
import json
from airflow.jobs.job import Job
from airflow.utils.session import create_session
from multitrigger.supervisor import store as store_mod
from multitrigger.supervisor.store import Claim, TriggerStore

store_mod.BUILD_CHUNK = 5
with create_session() as s:
    job = Job(); job.job_type = "TriggererJob"; s.add(job); s.commit(); s.refresh(job); s.expunge(job)
store = TriggerStore(job, Claim(100, None, None, 30))
known, passes = set(), []
tick = store.tick(frozenset(known))
while True:
    ids = [w.id for w, _ in tick.built]
    passes.append({"built": len(ids), "backlog": tick.backlog, "held": len(tick.held), "again": len(known & set(ids))})
    known |= set(ids)
    if not tick.backlog:
        break
    tick = store.tick(frozenset(known), claim=False)
print(json.dumps(passes))
"""


def test_a_claim_pass_builds_at_most_a_chunk_and_the_next_passes_build_the_rest(tmp_path):
    home = AirflowHome.create(tmp_path / "home", {"a": deferring_bundle("dag_a", n_tasks=1)})
    home.defer_many([DeferSpec("dag_a", "t0", FIRE_AT, {"moment": iso_in(3600)}, map_index=m) for m in range(12)])
    out = subprocess.run([sys.executable, "-c", CHUNKED], env=home.env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    passes = json.loads(out.stdout.strip().splitlines()[-1])
    assert [p["built"] for p in passes] == [5, 5, 2] and [p["backlog"] for p in passes] == [7, 2, 0]
    assert all(p["held"] == 12 and p["again"] == 0 for p in passes)
