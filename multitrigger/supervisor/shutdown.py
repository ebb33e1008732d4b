"""
The supervisor's shutdown: stop the loops, persist what they reported, hand their triggers back, exit.

Its own module because it is one sequence with its own concerns (the grace period, a second
signal, handing each loop's triggers back as soon as that loop is gone, the final hand-back),
while ``core`` is the running supervisor. It drives the same ``Supervisor`` (its selector passes,
lanes and outcomes), as ``health.snapshot.build`` reads it.

Exactly once: a trigger goes back only when nothing here runs it any more (its loop's process and
everything it started are gone, ``LoopSlot.reap``) and its outcome is not still being written
(``Outcomes.pending_ids``); with the DB down nothing is handed back, and the other triggerers take
the triggers after the health threshold.
"""

from __future__ import annotations

import math
import signal
from typing import TYPE_CHECKING

import structlog

from multitrigger.supervisor.lanes import Done

if TYPE_CHECKING:
    from multitrigger.supervisor.core import Supervisor

log = structlog.get_logger(__name__)


def shut_down(sup: Supervisor) -> int:
    """Stop loops (triggers cancelled without ``on_kill``), persist, hand triggers back, exit.

    A second signal during the grace period kills every loop at once. Whatever the DB does,
    the supervisor is gone by the end of the grace period (DB steps are on their own thread).
    """
    log.info("shutting down", signal=sup._signals[0] if sup._signals else None)
    sup.notifier.stopping("metadata DB unreachable; exiting" if sup._gave_up else "shutting down")
    if sup.handback is not None:
        sup.handback.stop()
    first = len(sup._signals)
    for slot in sup.slots.values():
        if slot.process is not None:
            slot.process.signal(signal.SIGTERM)
    deadline = sup.clock() + sup.settings.shutdown_grace
    while any(s.process for s in sup.slots.values()):
        forced = len(sup._signals) > first or sup.clock() > deadline
        for name, slot in sup.slots.items():
            if forced and slot.process is not None:
                slot.process.signal(signal.SIGKILL)
            if slot.reap(sup.selector, sup.clock()) is not None:
                slot.start_at = math.inf
                sup.desk.forget(name)
                _hand_back_loop(sup, name)
        sup._service(0.05)
        sup.desk.pump()
        sup._drive_persist_only()
    sup.zygotes.close()
    sup.versions.close()
    sup.cgroups.close()  # kills anything still inside, removes them
    for slot in sup.slots.values():
        slot.relay.flush()
    sup.store.log_files.close_all()
    _finish_db(sup, deadline)
    for lane in (sup.persist_lane, sup.db, sup.beat_lane, sup.desk.lane, sup.uploads):
        lane.close()
    if sup._health_server is not None:
        sup._health_server.stop()
    return 1 if sup._gave_up else 0


def _hand_back_loop(sup: Supervisor, name: str) -> None:
    """A stopped loop's triggers go back at once, not after every loop has stopped: its process
    is gone, and whatever it started (``reap``), so none of them runs here any more. Those
    whose outcome is still being persisted stay ours (``_finish_db``). Skipped while the DB is
    down; the final hand-back, or the others' takeover after the health threshold, follows.
    Its queued log lines are written later (``relay.flush`` once every loop is gone): with
    thousands of triggers that backlog took 20 s here, and the hand-back waited behind it."""
    pending = sup.outcomes.pending_ids()
    ids = [tid for tid, slot in sup.routes.items() if slot == name and tid not in pending]
    if not ids or not sup.db_health.may_try or sup.db_health.down_since is not None:
        return
    sup.db.submit(f"release {name}", lambda: sup.store.release(ids),
                  lambda done: _released(done, name, len(ids)))


def _finish_db(sup: Supervisor, deadline: float) -> None:
    """Persist what is left and hand triggers back, within the grace period; skip if the DB is down."""
    deadline = max(deadline, sup.clock() + 1.0)
    while (sup.clock() < deadline and sup.db_health.down_since is None
           and (sup.outcomes or not sup.db.idle or not sup.persist_lane.idle)):
        sup._drive_persist_only()
        sup._service(0.05)
    if sup.outcomes:
        log.error("metadata DB unreachable at shutdown: outcomes not persisted; their triggers run again elsewhere",
                  count=len(sup.outcomes))
    if sup.db_health.down_since is not None or not (sup.db.idle and sup.persist_lane.idle):
        log.warning("not handing triggers back (DB unreachable); other triggerers take them after the health threshold")
        sup.store.drop_idle_connections()
        return
    keep = sup.outcomes.pending_ids()  # not persisted: not ours to hand on (the DB is down for them)
    released: list[bool] = []
    sup.db.submit("release", lambda: sup.store.release(None, keep=keep),
                  lambda done: released.append(_released(done, None, None)))
    while not released and sup.clock() < deadline:
        sup._service(0.05)
    if released != [True]:
        log.error("could not hand triggers back; other triggerers take them after the health threshold")


def _released(done: Done, loop: str | None, asked: int | None) -> bool:
    """Log a hand-back's outcome; whether it was written."""
    if done.error is not None:
        log.error("could not hand triggers back", loop=loop, error=repr(done.error))
        return False
    log.info("triggers handed back", loop=loop, triggers=done.value, asked=asked)
    return True
