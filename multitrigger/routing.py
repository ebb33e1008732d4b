"""
Routing: which bundle a trigger comes from, and which loop runs it — or why none may.

One owner for the whole decision: ``bundles_for`` finds bundles in one batch of queries (run by the
supervisor's DB lane), and ``Router`` turns a (classpath, bundle) into a ``Route``, a ``Refusal``
or ``NotServed``. The bundle → loop rule itself is the config's (``Config.loop_for_bundle``), which
the claim groups, trigger paths and teams share; nothing else checks allow-lists. Each trigger is
routed once. ``asset_watcher_bundle`` is the one SQL definition of an asset watcher's bundle, for
routing and claiming alike.

Checked against the Airflow 3.3.2 schema:

* task-instance trigger: ``task_instance.trigger_id`` → ``task_instance.dag_id`` → ``dag.bundle_name``;
* callback trigger: ``callback.bundle_name``;
* asset-watcher trigger: the bundle of the DAG(s) scheduled on the watched asset (the DAG that
  declares the watcher), stale DAGs (``dag.is_stale``: removed from their bundle, whose references
  Airflow has not cleaned yet) left out; several bundles → ambiguous → ``None``, logged with the
  bundles and counted (``AMBIGUOUS``): such a watcher runs in the default loop, as no team;
* anything else → ``None``, which ``Router`` sends to the default loop (stock behaviour).

A bundle this instance does not serve (``Config.served``) goes to no loop: ``NotServed``.

A task-instance trigger also has the bundle version its DAG run is pinned to
(``dag_run.bundle_version``; ``None`` for unversioned bundles such as ``LocalDagBundle``, or a DAG
with ``disable_bundle_versioning``): ``Router`` keeps it on the ``Route`` when the loop runs bundle
code (``bundle_code``) and the class can come from the bundle (not ``INSTALLED_ONLY``), and
``supervisor.bundle_versions`` runs it in that version's own process.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass

import structlog
from sqlalchemy import ColumnElement, ScalarSelect, Select, and_, case, distinct, func, select
from sqlalchemy.orm import Session

from airflow.models.asset import AssetWatcherModel, DagScheduleAssetReference
from airflow.models.callback import Callback
from airflow.models.dag import DagModel
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from multitrigger.config import Config

log = structlog.get_logger(__name__)


#: Classpaths no bundle can provide: Airflow's own and its providers' triggers (``DateTimeTrigger``,
#: ``TimeDeltaTrigger``, provider sensors' triggers) come from the installed ``airflow`` package,
#: which shadows anything on a bundle root (appended last to ``sys.path``). Such a trigger runs the
#: same code in any version's process, so it stays in its loop's own process: no process per
#: version, no ``max_bundle_versions`` to hit.
INSTALLED_ONLY = ("airflow.",)


@dataclass(frozen=True)
class Route:
    """Run the trigger in ``loop``."""

    loop: str
    bundle: str | None
    version: str | None = None  # run it with this bundle version's code (its own process)


@dataclass(frozen=True)
class Origin:
    """Where a trigger comes from: its bundle and the bundle version its DAG run is pinned to."""

    bundle: str | None
    version: str | None = None


@dataclass(frozen=True)
class NotServed:
    """Run it nowhere here and fail nothing: its bundle is another instance's (``dedicated``, or
    outside ``--bundles``). ``TriggerStore.build`` hands such triggers back."""

    bundle: str | None


@dataclass(frozen=True)
class Refusal:
    """Run it nowhere: its task fails with ``reason``."""

    loop: str
    bundle: str | None
    reason: str


class Router:
    """Bundle → loop (``Config.loop_for_bundle``: unknown → the default loop; a bundle this instance
    does not serve → ``NotServed``), then that loop's allow-list."""

    def __init__(self, config: Config) -> None:
        self._config = config

    def loop_for(self, bundle: str | None) -> str | None:
        return self._config.loop_for_bundle(bundle)

    def route(self, classpath: str, bundle: str | None, version: str | None = None) -> Route | Refusal | NotServed:
        loop = self.loop_for(bundle)
        if loop is None:
            return NotServed(bundle)
        config = self._config.loops[loop]
        if config.allowed_triggers is None or any(_matches(classpath, pattern) for pattern in config.allowed_triggers):
            versioned = (version is not None and bundle is not None and config.bundle_code
                         and not classpath.startswith(INSTALLED_ONLY))
            return Route(loop, bundle, version if versioned else None)
        return Refusal(loop, bundle, f"trigger {classpath} is not in loop {loop!r}'s allowed_triggers (bundle {bundle!r})")


def _matches(classpath: str, pattern: str) -> bool:
    """An allow-list entry: an exact classpath, or a ``prefix.*``."""
    return classpath.startswith(pattern[:-1]) if pattern.endswith(".*") else classpath == pattern


def _watched_by(query: Select) -> Select:
    """*query* over asset watchers joined to the live DAGs scheduled on their assets: the one join
    ``asset_watcher_bundle`` (claiming) and ``bundles_for`` (routing) both read."""
    return (query.select_from(AssetWatcherModel)
            .join(DagScheduleAssetReference, DagScheduleAssetReference.asset_id == AssetWatcherModel.asset_id)
            .join(DagModel, and_(DagModel.dag_id == DagScheduleAssetReference.dag_id, DagModel.is_stale.is_(False))))


def asset_watcher_bundle(trigger_id: ColumnElement[int]) -> ScalarSelect[str | None]:
    """SQL: an asset-watcher trigger's bundle, the one bundle of the DAGs scheduled on the assets it
    watches (the DAG that declares the watcher); NULL when there are none, or several (ambiguous).
    Correlated on *trigger_id*; ``supervisor.claims`` claims by the same expression routing uses."""
    count_one = select(case((func.count(distinct(DagModel.bundle_name)) == 1, func.max(DagModel.bundle_name))))
    return _watched_by(count_one).where(AssetWatcherModel.trigger_id == trigger_id).scalar_subquery()


def _watcher_bundles(ids: Collection[int]) -> Select[tuple[int, str]]:
    """Every (watcher trigger, bundle) pair, over the join ``asset_watcher_bundle`` counts."""
    pairs = select(AssetWatcherModel.trigger_id, DagModel.bundle_name).distinct()
    return _watched_by(pairs).where(AssetWatcherModel.trigger_id.in_(ids))


@dataclass
class Counter:
    value: int = 0


#: Triggers found to come from several bundles, each time one is routed (health:
#: ``multitrigger_triggers_ambiguous_bundle_total``). They run in the default loop, as no team.
AMBIGUOUS = Counter()


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
        _watcher_bundles(ids),
    )
    for query in queries:
        for trigger_id, bundle in session.execute(query):
            if bundle:
                found[trigger_id].add(bundle)
    if ambiguous := {tid: sorted(b) for tid, b in found.items() if len(b) > 1}:
        AMBIGUOUS.value += len(ambiguous)
        log.warning("triggers of several bundles (an asset watched by DAGs of different bundles): they run in the "
                    "default loop, as no team; schedule the asset from one bundle's DAGs to route them",
                    triggers=ambiguous)
    return {tid: (next(iter(found[tid])) if len(found[tid]) == 1 else None) for tid in ids}


def origins_for(trigger_ids: Collection[int], session: Session) -> dict[int, Origin]:
    """``bundles_for``, plus the bundle version of every task-instance trigger's DAG run."""
    ids = list(trigger_ids)
    bundles = bundles_for(ids, session)
    versions = dict(session.execute(
        select(TaskInstance.trigger_id, DagRun.bundle_version)
        .join(DagRun, and_(DagRun.dag_id == TaskInstance.dag_id, DagRun.run_id == TaskInstance.run_id))
        .where(TaskInstance.trigger_id.in_(ids), DagRun.bundle_version.is_not(None))
    ).all()) if ids else {}
    return {tid: Origin(bundle, versions.get(tid) if bundle is not None else None) for tid, bundle in bundles.items()}
