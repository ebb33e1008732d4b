"""
Which bundle a trigger comes from, decided once per trigger, in one batch of queries.

Checked against the Airflow 3.3.2 schema:

* task-instance trigger: ``task_instance.trigger_id`` → ``task_instance.dag_id`` → ``dag.bundle_name``;
* callback trigger: ``callback.bundle_name``;
* asset-watcher trigger: the bundle of the DAG(s) scheduled on the watched asset (the DAG that
  declares the watcher); several bundles → ambiguous → ``None``;
* anything else → ``None``. ``Config.loop_for_bundle(None)`` is the default loop (stock behaviour).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session

from airflow.models.asset import AssetWatcherModel, DagScheduleAssetReference
from airflow.models.callback import Callback
from airflow.models.dag import DagModel
from airflow.models.taskinstance import TaskInstance


def bundles_for(trigger_ids: Collection[int], session: Session) -> dict[int, str | None]:
    """Map every id in ``trigger_ids`` to its bundle name, or ``None`` when unknown/ambiguous."""
    ids = list(trigger_ids)
    found: dict[int, set[str]] = defaultdict(set)
    if not ids:
        return {}
    queries = (
        select(TaskInstance.trigger_id, DagModel.bundle_name)
        .join(DagModel, DagModel.dag_id == TaskInstance.dag_id)
        .where(TaskInstance.trigger_id.in_(ids)),
        select(Callback.trigger_id, Callback.bundle_name).where(Callback.trigger_id.in_(ids)),
        select(AssetWatcherModel.trigger_id, DagModel.bundle_name)
        .join(DagScheduleAssetReference, DagScheduleAssetReference.asset_id == AssetWatcherModel.asset_id)
        .join(DagModel, DagModel.dag_id == DagScheduleAssetReference.dag_id)
        .where(AssetWatcherModel.trigger_id.in_(ids)),
    )
    for query in queries:
        for trigger_id, bundle in session.execute(query):
            if bundle:
                found[trigger_id].add(bundle)
    return {tid: (next(iter(found[tid])) if len(found[tid]) == 1 else None) for tid in ids}
