"""
Bound every metadata-DB wait of the supervisor: connect, statement, lock, and a dead TCP path.

Why: a database reached through a path that silently drops packets does not refuse anything; a
query just never returns. Stock Airflow sets no bound by default, so such a call hangs for the
kernel's TCP retransmission time (~15 min). The supervisor runs its DB steps off the selector
thread (``multitrigger.supervisor.lanes``), so a hang no longer freezes loops, but an unbounded
step would still stall every claim, persist and heartbeat behind it and hide the outage. With these
bounds a partition becomes an ``OperationalError`` ("metadata DB unreachable") within
``db_timeout`` seconds, and the supervisor's retry, backoff and ``db_retry_limit`` apply.

How: a SQLAlchemy ``do_connect`` listener on Airflow's engines (the extension point Airflow 3.3.2's
``settings.create_metadata_engine`` docstring names) adds driver connect parameters. Anything the
operator set in ``[database] sql_alchemy_connect_args`` wins: we only ``setdefault``.

* PostgreSQL (psycopg2, libpq keywords): ``connect_timeout``; ``keepalives*`` (an idle connection
  waiting for a reply is probed and dropped); ``tcp_user_timeout`` (unacknowledged data — a query
  sent into a black hole — fails after it); ``statement_timeout`` and ``lock_timeout`` (server-side).
* PostgreSQL (asyncpg): ``timeout`` (connect) and ``command_timeout``.
* MySQL (mysqlclient / pymysql): ``connect_timeout``, ``read_timeout``, ``write_timeout``.
* SQLite: ``timeout`` (how long a statement waits for a lock held by another connection).
"""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import event
from sqlalchemy.engine import Engine

log = structlog.get_logger(__name__)


def connect_params(dialect: str, driver: str, timeout: float) -> dict[str, Any]:
    """Driver connect parameters that bound every wait to about ``timeout`` seconds."""
    seconds = max(1, int(round(timeout)))
    millis = max(1000, int(timeout * 1000))
    if dialect == "postgresql" and driver == "asyncpg":
        return {"timeout": seconds, "command_timeout": seconds}
    if dialect == "postgresql":
        probe = max(1, seconds // 3)
        return {
            "connect_timeout": seconds,
            "keepalives": 1,
            "keepalives_idle": probe,
            "keepalives_interval": probe,
            "keepalives_count": 3,
            "tcp_user_timeout": millis,
            "options": f"-c statement_timeout={millis} -c lock_timeout={millis}",
        }
    if dialect == "mysql":
        return {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}
    if dialect == "sqlite":
        return {"timeout": float(timeout)}
    return {}


def _merge(cparams: dict[str, Any], bounds: dict[str, Any]) -> None:
    """Add ``bounds`` to a connection's parameters; whatever the operator set already wins."""
    for key, value in bounds.items():
        if key == "options" and "options" in cparams:  # libpq "-c name=value" list: add what is missing
            theirs = cparams["options"]
            ours = [opt for opt in value.split() if opt != "-c" and opt.split("=")[0] not in theirs]
            cparams["options"] = " ".join([theirs, *(f"-c {opt}" for opt in ours)])
        else:
            cparams.setdefault(key, value)


def bound_engine(engine: Engine, timeout: float) -> dict[str, Any]:
    """Bound every new connection of ``engine``; drop pooled ones made without the bounds."""
    bounds = connect_params(engine.dialect.name, engine.dialect.driver, timeout)
    if not bounds:
        log.warning("no DB wait bounds known for this driver", dialect=engine.dialect.name, driver=engine.dialect.driver)
        return bounds

    @event.listens_for(engine, "do_connect")
    def _bounded(dialect, conn_rec, cargs, cparams):  # type: ignore[no-untyped-def]
        _merge(cparams, bounds)

    engine.dispose()
    return bounds


def bound_airflow_engines(timeout: float) -> None:
    """Apply ``bound_engine`` to Airflow's sync engine and, if configured, its async one."""
    from airflow import settings

    if settings.engine is not None:
        bounds = bound_engine(settings.engine, timeout)
        log.info("metadata DB waits bounded", timeout=timeout, params=sorted(bounds))
    if getattr(settings, "async_engine", None) is not None:
        bound_engine(settings.async_engine.sync_engine, timeout)
