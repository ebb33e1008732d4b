"""Team-scoped secrets: a loop's connection and variable requests resolve as its team's tasks would.

Checked against Airflow 3.3.2. With ``[core] multi_team`` on, a task's ``GetConnection`` /
``GetVariable`` is answered for its team (``execution_api.security.get_team_name_dep``: task
instance → DAG → bundle → ``dag_bundle_team``), and the metastore and secrets backends return
that team's entries plus global ones (``team_name IS NULL``). The stock triggerer's in-process
client carries no task token, so there the team is always ``None``: triggers get global entries only.

Here the team comes from the loop, which the supervisor knows (a loop cannot claim to be another):

- a loop whose bundles all map to one team resolves as that team (its + global entries);
- any other loop — bundles of several teams, or some with no team — resolves as no team (global
  entries only, as stock), and a warning says why. The loop that runs triggers of unknown bundle
  (the default loop, unless that is not served) is such a loop: an asset watched by DAGs of two
  teams' bundles must not get either team's secrets;
- a request for an entry that exists only for another team gets a refusal, not "not found":
  ``PERMISSION_DENIED`` with a message, which the trigger raises and which fails its task.

The team travels to Airflow's own routes in a request header of the supervisor's in-process client
(loops never reach the API), read by an override of ``get_team_name_dep``
(``multitrigger.supervisor.api_server.team_from_header``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from sqlalchemy import select

from airflow.configuration import conf
from airflow.models.connection import Connection
from airflow.models.dagbundle import DagBundleModel
from airflow.models.team import Team
from airflow.models.variable import Variable
from airflow.utils.session import create_session
from multitrigger.config import Config

log = structlog.get_logger(__name__)

TEAM_HEADER = "X-Multitrigger-Team"
#: How long a loop's team is remembered before ``dag_bundle_team`` is read again (s).
TEAM_TTL = 30.0


class LoopTeams:
    """The team each loop's requests resolve as (``None``: global entries only). On the request lane."""

    def __init__(self, config: Config, ttl: float = TEAM_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._warned: set[tuple[str, str]] = set()

    def team_of(self, loop: str) -> str | None:
        if not conf.getboolean("core", "multi_team"):
            return None
        at, team = self._cache.get(loop, (-float("inf"), None))
        if self.clock() - at < self.ttl:
            return team
        team = self._resolve(loop)
        self._cache[loop] = (self.clock(), team)
        return team

    def _resolve(self, loop: str) -> str | None:
        with create_session() as session:
            mapped = dict(session.execute(select(DagBundleModel.name, Team.name).join(DagBundleModel.teams)).all())
            known = set(session.scalars(select(DagBundleModel.name))) | self.config.loops[loop].bundles
        bundles = {b for b in known if self.config.loop_for_bundle(b) == loop}
        teams = {mapped.get(b) for b in bundles}
        if self.config.loop_for_bundle(None) == loop:
            # It also runs triggers of no known bundle (an asset watched by DAGs of several
            # bundles, or of none): they belong to no team, so neither does the loop.
            teams.add(None)
            bundles.add("(triggers of unknown bundle)")
        if len(teams) == 1 and None not in teams:
            return teams.pop()
        if any(t is not None for t in teams):
            why = ", ".join(sorted(f"{b}: {mapped.get(b) or 'no team'}" for b in bundles))
            if (loop, why) not in self._warned:
                self._warned.add((loop, why))
                log.warning("loop holds bundles of more than one team (or of none): its triggers get global "
                            "connections and variables only; give each team its own loop", loop=loop, bundles=why)
        return None


def refusal(kind: str, key: str, team: str | None) -> str | None:
    """If *key* exists only for other teams, the refusal message; else ``None`` (really absent)."""
    model, column = (Connection, Connection.conn_id) if kind == "connection" else (Variable, Variable.key)
    with create_session() as session:
        owners = set(session.scalars(select(model.team_name).where(column == key)))
    if not owners or None in owners or team in owners:
        return None
    whose = f"team {team!r}" if team else "no team"
    return (f"{kind} {key!r} belongs to another team: this trigger's loop resolves secrets as {whose}, "
            f"which may use only its own team's and global {kind}s")
