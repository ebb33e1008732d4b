"""Bundle-aware claiming: Airflow's ``Trigger.assign_unassigned``, restricted to what we serve.

Checked against Airflow 3.3.2 (``airflow/models/trigger.py``: ``assign_unassigned``,
``get_sorted_triggers``). The same HA semantics, in one transaction per pass:

- the instance's ``capacity`` less what it holds; at most ``[triggerer]
  max_trigger_to_select_per_loop`` per query, so HA peers interleave;
- candidates are unassigned triggers or those of a triggerer whose heartbeat is older than
  ``triggerer_health_check_threshold`` (takeover), locked with ``FOR NO KEY UPDATE OF trigger SKIP
  LOCKED`` (only the trigger rows: never the scheduler's task-instance or DAG rows);
- callbacks first (by priority weight), then task instances (by priority weight), then asset
  watchers, oldest first; the stock ``--queues`` and ``--team-name`` filters.

Where it differs, deliberately:

- only triggers of bundles this instance serves (``multitrigger.scope``), so a dedicated bundle's
  triggers stay unassigned unless an instance started for it runs, and a dead peer's triggers are
  taken over only by an instance that serves their bundles. A trigger's bundle is the one routing
  gives it: task instance → DAG → ``dag.bundle_name``; callback → ``callback.bundle_name``; asset
  watcher → the one bundle of the DAGs scheduled on its assets (``routing.asset_watcher_bundle``;
  none or several: unknown, the default loop's);
- per-loop capacity shares: a loop with ``capacity = N`` gets at most N minus what it holds;
- stock's callback query takes callback triggers whatever their ``triggerer_id`` (even a live
  peer's); here callbacks are claimed like every other trigger, unassigned or from a dead peer.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import ColumnElement, Select, and_, false, func, or_, select, true, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import coalesce

from airflow._shared.timezones import timezone  # what airflow.models.trigger uses (3.3.2)
from airflow.configuration import conf
from airflow.jobs.job import Job
from airflow.models.callback import Callback
from airflow.models.dag import DagModel
from airflow.models.taskinstance import TaskInstance
from airflow.models.trigger import Trigger
from airflow.utils.sqlalchemy import with_row_locks
from multitrigger.bundles import Bundles
from multitrigger.routing import asset_watcher_bundle
from multitrigger.scope import ClaimGroup, Scope

log = structlog.get_logger(__name__)

_TI_BUNDLE = DagModel.bundle_name
_CB_BUNDLE = Callback.bundle_name


@dataclass(frozen=True)
class Claim:
    """Stock ``--capacity``, ``--queues``, ``--team-name`` and the liveness threshold."""

    capacity: int
    queues: set[str] | None
    team_name: str | None
    health_check_threshold: float


def in_bundles(column: ColumnElement, bundles: Bundles) -> ColumnElement[bool]:
    """SQL for ``column`` (a bundle name, NULL when unknown) being in *bundles*."""
    if bundles.complement:
        named = column.notin_(bundles.names) if bundles.names else true()
        named = and_(column.is_not(None), named)
    else:
        named = column.in_(bundles.names) if bundles.names else false()
    return or_(named, column.is_(None)) if bundles.unknown else named


class Claimer:
    """Claims for one job under one ``Scope``; remembers which shares were full, to log changes."""

    def __init__(self, job_id: int, filters: Claim, scope: Scope,
                 per_query: int | None = None, clock: Callable[[], datetime.datetime] = timezone.utcnow) -> None:
        self.job_id = job_id
        self.filters = filters
        self.scope = scope
        self.per_query = per_query if per_query is not None else conf.getint(
            "triggerer", "max_trigger_to_select_per_loop", fallback=50)
        self.clock = clock
        self._full: set[str] = set()
        #: The last pass stopped at ``per_query`` somewhere: more may be waiting to be claimed.
        self.saturated = False

    def claim(self, session: Session) -> int:
        """Assign what we may to us (commits); return how many were claimed."""
        held = self.held_by_group(session)
        room = self.filters.capacity - sum(held.values())
        claimed: list[int] = []
        self.saturated = False
        for group in self.scope.groups:
            share = room - len(claimed)
            if group.capacity is not None:
                share = min(share, group.capacity - held.get(group.loop, 0))
            got = self._candidates(session, group.bundles, share) if share > 0 else []
            claimed += got
            if group.capacity is not None:  # after this pass's claim: a share filled at once is noted too
                self._note_share(group, held.get(group.loop, 0) + len(got))
        if claimed:
            session.execute(update(Trigger).where(Trigger.id.in_(claimed)).values(triggerer_id=self.job_id)
                            .execution_options(synchronize_session=False))
        session.commit()
        return len(claimed)

    def held_by_group(self, session: Session) -> dict[str | None, int]:
        """How many triggers we hold, per claim group (loop name; ``None``: the uncapped rest).

        Without a capacity share only the total matters: one count, not the per-bundle breakdown."""
        if all(g.capacity is None for g in self.scope.groups):
            return {None: session.scalar(select(func.count(Trigger.id)).where(Trigger.triggerer_id == self.job_id)) or 0}
        counts: dict[str | None, int] = {}
        for bundle, n in self._held_bundles(session):
            group = next((g.loop for g in self.scope.groups if bundle in g.bundles), None)
            counts[group] = counts.get(group, 0) + n
        return counts

    def _held_bundles(self, session: Session) -> list[tuple[str | None, int]]:
        ours = Trigger.triggerer_id == self.job_id
        by_ti = (select(_TI_BUNDLE, func.count(Trigger.id)).join(TaskInstance, TaskInstance.trigger_id == Trigger.id)
                 .outerjoin(DagModel, DagModel.dag_id == TaskInstance.dag_id).where(ours).group_by(_TI_BUNDLE))
        by_cb = (select(_CB_BUNDLE, func.count(Trigger.id)).join(Callback, Callback.trigger_id == Trigger.id)
                 .where(ours).group_by(_CB_BUNDLE))
        watched = select(asset_watcher_bundle(Trigger.id).label("bundle")).where(ours, Trigger.assets.any()).subquery()
        by_aw = select(watched.c.bundle, func.count()).group_by(watched.c.bundle)
        rows = [tuple(r) for q in (by_ti, by_cb, by_aw) for r in session.execute(q)]
        total = session.scalar(select(func.count(Trigger.id)).where(ours)) or 0
        rows.append((None, total - sum(n for _, n in rows)))  # orphans: unknown
        return rows  # type: ignore[return-value]

    def _candidates(self, session: Session, bundles: Bundles, limit: int) -> list[int]:
        alive = select(Job.id).where(
            Job.end_date.is_(None), Job.job_type == "TriggererJob",
            Job.latest_heartbeat > self.clock() - datetime.timedelta(seconds=self.filters.health_check_threshold))
        claimable = or_(Trigger.triggerer_id.is_(None), Trigger.triggerer_id.not_in(alive))
        queries = [
            select(Trigger.id).join(Callback, Callback.trigger_id == Trigger.id)
            .where(claimable, in_bundles(_CB_BUNDLE, bundles))
            .order_by(Callback.priority_weight.desc(), Trigger.created_date),
            select(Trigger.id).join(TaskInstance, TaskInstance.trigger_id == Trigger.id)
            .outerjoin(DagModel, DagModel.dag_id == TaskInstance.dag_id)
            .where(claimable, in_bundles(_TI_BUNDLE, bundles))
            .order_by(coalesce(TaskInstance.priority_weight, 0).desc(), Trigger.created_date),
            select(Trigger.id)  # asset watchers: by the bundle routing gives them (NULL: unknown)
            .where(claimable, Trigger.assets.any(), in_bundles(asset_watcher_bundle(Trigger.id), bundles))
            .order_by(Trigger.created_date),
        ]
        found: list[int] = []
        for query in queries:
            take = min(limit - len(found), self.per_query)
            if take <= 0:
                break
            query = self._stock_filters(query).limit(take)
            got = list(session.scalars(with_row_locks(query, session, skip_locked=True, of=Trigger)))
            self.saturated |= take == self.per_query and len(got) == take
            found += got
        return found

    def _stock_filters(self, query: Select) -> Select:
        """``--queues`` and ``--team-name`` exactly as ``Trigger.get_sorted_triggers`` applies them."""
        f = self.filters
        query = query.where(Trigger.queue.in_(f.queues)) if f.queues else query.where(Trigger.queue.is_(None))
        if conf.getboolean("core", "multi_team"):
            query = query.where(Trigger.team_name == f.team_name) if f.team_name else query.where(Trigger.team_name.is_(None))
        return query

    def _note_share(self, group: ClaimGroup, held: int) -> None:
        assert group.loop is not None and group.capacity is not None
        full = held >= group.capacity
        if full and group.loop not in self._full:
            log.info("loop at its capacity share; its other triggers stay unassigned",
                     loop=group.loop, held=held, capacity=group.capacity)
            self._full.add(group.loop)
        elif not full and group.loop in self._full:
            log.info("loop below its capacity share again", loop=group.loop, held=held, capacity=group.capacity)
            self._full.discard(group.loop)
