"""
Hand-back hints: "triggers were just handed back, claim now", over PostgreSQL LISTEN/NOTIFY.

Why: a stopping member hands its triggers back (``triggerer_id = NULL``) so that another member
claims them at once, not after ``triggerer_health_check_threshold``. But "at once" is the others'
next claim pass: up to one claim interval later. With the hint, the members that listen claim as
soon as the hand-back commits.

A hint is only a wake-up. The claim pass, on its usual cadence, stays the source of truth: a
member that never hears a hint (SQLite, another driver, its listening connection down or
black-holed, a stock triggerer in the same cluster) claims exactly as it would without this
module, one claim interval later. Nothing is read from the notification but the sender's job id
(a member ignores its own).

- ``notify``: in the hand-back's own transaction (``pg_notify`` is delivered at commit, so a member
  woken by it sees the rows released). PostgreSQL only; on any other database it does nothing.
- ``HandbackListener``: one daemon thread with a connection of its own (detached from Airflow's
  pool, so it holds no pool slot; made with the pool's connect bounds, ``db_bounds``), which
  ``LISTEN``s and waits in ``select`` with a timeout. The selector thread never waits on it: a hint
  sets an ``Event`` and writes the supervisor's wake-up byte (non-blocking). If the connection
  fails it is dropped and made again after a backoff; if it hangs, only this thread waits.

Checked against psycopg2 2.9 (``connection.poll``, ``connection.notifies``) and PostgreSQL 16.
"""

from __future__ import annotations

import json
import select
import threading
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.orm import Session

log = structlog.get_logger(__name__)

#: The notification channel (PostgreSQL identifiers: lower case, no quoting needed).
CHANNEL = "multitrigger_handback"
#: The listener's longest wait in ``select`` before it checks whether it should stop.
WAIT_SECONDS = 0.5
#: After a failed connection, wait this long before the next (doubling up to ``MAX_BACKOFF``).
FIRST_BACKOFF, MAX_BACKOFF = 1.0, 30.0


def notify(session: Session, job_id: int, released: int) -> None:
    """Tell listening members that ``job_id`` handed ``released`` triggers back (PostgreSQL only;
    sent when ``session`` commits)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    payload = json.dumps({"job_id": job_id, "released": released})
    session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})


def sender(payload: str) -> int | None:
    """The job id a notification's payload names (``None``: not one of ours)."""
    try:
        job = json.loads(payload).get("job_id")
    except (ValueError, AttributeError):
        return None
    return job if isinstance(job, int) else None


class HandbackListener:
    """Hears other members' hand-backs; ``take()`` says (once) whether one was heard."""

    def __init__(self, job_id: int, connect: Callable[[], Any], wake: Callable[[], None]) -> None:
        self.job_id = job_id
        self._connect = connect  # a new DBAPI (psycopg2) connection, ours alone
        self._wake = wake
        self._heard = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="multitrigger-handback", daemon=True)

    @classmethod
    def start_for_airflow(cls, job_id: int, wake: Callable[[], None]) -> HandbackListener | None:
        """A started listener on Airflow's metadata DB if it is PostgreSQL through psycopg2, else ``None``."""
        from airflow import settings

        engine = settings.engine
        if engine is None or engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg2":
            return None

        def connect() -> Any:
            proxied = engine.raw_connection()  # the pool's connect arguments and bounds (db_bounds)
            proxied.detach()  # ours now: closing it does not return it to the pool, nor does it hold a slot
            return proxied.dbapi_connection

        listener = cls(job_id, connect, wake)
        listener._thread.start()
        return listener

    def take(self) -> bool:
        """Whether a hand-back was heard since the last call (selector thread; never waits)."""
        if not self._heard.is_set():
            return False
        self._heard.clear()
        return True

    def stop(self) -> None:
        """Ask the thread to end (within ``WAIT_SECONDS``); not waited for: it may be stuck in the DB."""
        self._stop.set()

    def _run(self) -> None:
        backoff = FIRST_BACKOFF
        while not self._stop.is_set():
            conn = None
            try:
                conn = self._connect()
                conn.rollback()  # no transaction open (the pool's pre-ping may have begun one)
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(f"LISTEN {CHANNEL}")
                log.info("listening for other members' hand-backs", channel=CHANNEL)
                backoff = FIRST_BACKOFF
                self._listen(conn)
            except Exception as err:  # noqa: BLE001 - without hints we claim on the cadence; retry later
                log.warning("hand-back hints unavailable; claiming on the claim interval only",
                            error=str(err).splitlines()[0] if str(err) else repr(err), retry_in=backoff)
            finally:
                if conn is not None:
                    _close(conn)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _listen(self, conn: Any) -> None:
        while not self._stop.is_set():
            if select.select([conn], [], [], WAIT_SECONDS)[0]:
                conn.poll()
            heard = False
            while conn.notifies:
                note = conn.notifies.pop(0)
                heard |= sender(note.payload) not in (None, self.job_id)
            if heard:
                self._heard.set()
                self._wake()


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - already broken
        pass
