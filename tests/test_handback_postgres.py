"""
Hand-back at SIGTERM on a real PostgreSQL trigger table (``multitrigger.supervisor.handback``).

A member that stops hands each loop's triggers back as soon as that loop's process is gone, and
notifies the other members, which claim them at once (and again, while passes find more) instead
of on their next claim interval. Exactly once: a trigger starts on the heir only after it was
cancelled on the stopping member (its record file says so, in order).

PostgreSQL: a dedicated database ``multitrigger_handback[_<suffix>]`` on 127.0.0.1:5432.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from mt_testsupport.home import FIRE_AT, AirflowHome, DeferSpec, deferring_bundle, iso_in
from mt_testsupport.procs import alive, process_tree
from multitrigger.supervisor import handback
from tests.conftest import pg_url

pytestmark = pytest.mark.timeout(240)

N_TASKS = 15
MAP_INDEXES = (0, 1)  # 15 x 2 = 30 triggers
PER_PASS = 8  # max_trigger_to_select_per_loop: the heir needs 4 passes for 30
HEALTH_CHECK_THRESHOLD = 120  # a takeover within seconds is the hand-back, never a stale heartbeat
MT_CONFIG = """
    [loops.hb]
    bundles = ["hb"]
    """
ARGS = ("--skip-serve-logs",)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> AirflowHome:
    extra = {"triggerer": {"triggerer_health_check_threshold": str(HEALTH_CHECK_THRESHOLD), "job_heartbeat_sec": "1",
                           "max_trigger_to_select_per_loop": str(PER_PASS)}}
    home = AirflowHome.create(tmp_path_factory.mktemp("handback") / "home",
                              {"hb": deferring_bundle("dag_hb", n_tasks=N_TASKS)},
                              db_url=pg_url("multitrigger_handback"), extra_config=extra)
    yield home
    home.close()


def _dsn(url: str) -> str:
    return re.sub(r"^postgresql(\+\w+)?://", "postgresql://", url)


def test_listener_hears_other_members_hand_backs_and_not_its_own(home: AirflowHome):
    engine = create_engine(home.db_url)
    woken = threading.Event()
    listener = handback.HandbackListener(41, lambda: psycopg2.connect(_dsn(home.db_url)), woken.set)
    listener._thread.start()
    try:
        deadline = time.monotonic() + 30  # LISTEN is issued on the listener's thread: retry until it hears
        while not listener.take() and time.monotonic() < deadline:
            with Session(engine) as session:
                handback.notify(session, 7, 3)
                session.commit()
            woken.wait(0.5)
        assert woken.is_set(), "no hint heard from another job's hand-back"
        assert not listener.take()  # taken once
        woken.clear()
        with Session(engine) as session:  # our own hand-back, and a foreign payload: no hint
            handback.notify(session, 41, 3)
            session.execute(handback.text("SELECT pg_notify(:c, 'not json')"), {"c": handback.CHANNEL})
            session.commit()
        assert not woken.wait(1.5)
        assert not listener.take()
    finally:
        listener.stop()
        engine.dispose()
    listener._thread.join(5)
    assert not listener._thread.is_alive()


def test_listener_that_cannot_connect_blocks_nothing_and_retries():
    attempts: list[float] = []
    gate = threading.Event()

    def connect():
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            gate.wait(2)  # a connect that hangs: only the listener's thread waits
        raise psycopg2.OperationalError("connection refused")

    listener = handback.HandbackListener(1, connect, lambda: None)
    t0 = time.monotonic()
    listener._thread.start()
    assert not listener.take() and time.monotonic() - t0 < 0.1  # the caller never waits on the DB
    deadline = time.monotonic() + 10
    while len(attempts) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(attempts) >= 2, "the listener did not retry after a failed connection"
    listener.stop()
    listener._thread.join(5)
    assert not listener._thread.is_alive()


def _records(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    return [(w[0], int(w[1])) for w in (line.split() for line in path.read_text().splitlines()) if len(w) >= 2]


def _job_id(text: str) -> int | None:
    m = re.search(r"multitrigger supervisor starting.*?job_id=(\d+)", text)
    return int(m.group(1)) if m else None


def test_sigterm_hands_triggers_to_the_other_member_at_once_and_none_runs_twice(
    home: AirflowHome, start_triggerer, tmp_path: Path
):
    a = start_triggerer(home, *ARGS, config=MT_CONFIG, name="a")
    job_a = home.wait_for(lambda: _job_id(a.text()), timeout=90, message=lambda: a.text()[-3000:])
    moment = iso_in(3600)
    specs, record_of = [], {}
    for task in range(N_TASKS):
        for map_index in MAP_INDEXES:
            record = tmp_path / f"t{task}.{map_index}.rec"
            record_of[(f"t{task}", map_index)] = record
            specs.append(DeferSpec("dag_hb", f"t{task}", FIRE_AT,
                                   {"moment": moment, "record_path": str(record), "record_tag": f"t{task}.{map_index}"},
                                   run_id="hb", map_index=map_index))
    records = [record_of[(r.task_id, r.map_index)] for r in home.defer_many(specs)]
    assert len(records) == 30
    home.wait_for(lambda: all(_records(r) for r in records) and all(row.triggerer_id == job_a for row in home.trigger_rows()),
                  timeout=90, message=lambda: a.text()[-3000:])
    a_pids = process_tree(a.popen.pid)

    b = start_triggerer(home, *ARGS, config=MT_CONFIG, name="b")
    # A live bystander that serves another bundle: b is never alone (alone, it would claim its
    # backlog every 50 ms anyway), so only the hint makes it claim more than once per interval.
    c = start_triggerer(home, *ARGS, "--bundles", "elsewhere", name="c")
    home.wait_for(lambda: "listening for other members' hand-backs" in b.text() and _job_id(b.text()) and _job_id(c.text()),
                  timeout=90, message=lambda: b.text()[-3000:] + "\n--- c ---\n" + c.text()[-3000:])
    time.sleep(2)  # b and c are past their start-up claims (they got nothing: a holds all, alive)
    assert all(row.triggerer_id == job_a for row in home.trigger_rows())

    t_sig = time.monotonic()
    a.popen.terminate()
    home.wait_for(lambda: all(any(pid not in a_pids for what, pid in _records(r) if what == "start") for r in records),
                  timeout=30, interval=0.02, message=lambda: f"{a.text()[-3000:]}\n--- b ---\n{b.text()[-3000:]}")
    t_all = time.monotonic() - t_sig
    assert a.popen.wait(30) == 0
    a_log, b_log = a.text(), b.text()
    handed = [int(n) for n in re.findall(r"triggers handed back .*?loop=hb .*?triggers=(\d+)", a_log)]
    print(f"\n[handback] 30 triggers running on b {t_all:.2f}s after SIGTERM to a; a handed back {handed} "
          f"when its loop was gone", flush=True)
    assert handed == [30], a_log[-3000:]
    assert "hand-back heard" in b_log, b_log[-3000:]
    # 4 passes at the claim interval alone would take >= 3 s after the hand-back.
    assert t_all < 3.0, (t_all, b_log[-3000:])
    for r in records:  # exactly once: started on a, cancelled on a, then started on b; nothing else
        got = _records(r)
        assert [w for w, _ in got] == ["start", "cancel", "start"], (r.name, got)
        assert got[0][1] == got[1][1] in a_pids and got[2][1] not in a_pids, (r.name, got)
    assert not any(alive(pid) for pid in a_pids)
    assert c.popen.poll() is None and "hand-back heard" in c.text()  # c heard it too, and claimed nothing
    assert not any(row.triggerer_id == _job_id(c.text()) for row in home.trigger_rows())
