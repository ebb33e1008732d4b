"""The sandbox itself: real Airflow homes, real serialization, real deferred task instances.

PostgreSQL: the test uses a dedicated database ``multitrigger_sandbox[_<xdist worker>]`` created on
the server of ``MULTITRIGGER_TEST_PG_URL`` (default: the shared ``test`` database on
127.0.0.1:5432, user postgres) -- ``AirflowHome.create(db_url=...)`` drops and re-creates Airflow's
tables in the database it is given, so it must not be pointed at a database other tests use.
If the database cannot be created, the test falls back to resetting ``test`` itself.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mt_testsupport.home import (
    FIRE_AT,
    FIRE_AT_EVENT,
    RAISE,
    WAIT_FOREVER,
    AirflowHome,
    DeferSpec,
    TaskRef,
    airflow_version,
    asset_watcher_dag_source,
    broken_dag_source,
    decode_serde,
    deferring_bundle,
    deferring_dag_source,
    ensure_template_db,
    iso_in,
    prestart_zygote,
    template_db_path,
)
from mt_testsupport.rows import StateReader
from tests.conftest import pg_url


BUNDLES = {
    "alpha": deferring_bundle("alpha_1", "alpha_2", n_tasks=3),
    "beta": deferring_bundle("beta_1", n_tasks=2),
    "gamma": {"gamma_1.py": deferring_dag_source("gamma_1", 4), "broken.py": broken_dag_source("nope")},
}
EXPECTED_BUNDLES = {"alpha_1": "alpha", "alpha_2": "alpha", "beta_1": "beta", "gamma_1": "gamma"}


def _timing(name: str, seconds: float) -> None:
    print(f"\n[sandbox timing] {name}: {seconds:.2f}s", flush=True)


@pytest.fixture(scope="module")
def warm() -> None:
    """Template DB built and fork server warm, so the tests below measure the fast path."""
    t0 = time.monotonic()
    ensure_template_db()
    prestart_zygote(wait=True)
    _timing("template + fork server warm-up (first use on this machine/process)", time.monotonic() - t0)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, warm) -> AirflowHome:
    home = AirflowHome.create(tmp_path_factory.mktemp("sandbox") / "home", BUNDLES)
    _timing("AirflowHome.create (SQLite, warm template, 3 bundles)", home.timings["create"])
    yield home
    home.close()


# ------------------------------------------------------------------------------------ pure helpers
def test_dag_sources_are_valid_python():
    ast.parse(deferring_dag_source("x", 5))
    ast.parse(asset_watcher_dag_source("w", "asset", FIRE_AT_EVENT, {"moment": "2030-01-01T00:00:00+00:00"}))
    assert set(deferring_bundle("a", "b")) == {"a.py", "b.py"}
    with pytest.raises(ValueError):
        deferring_dag_source("bad id; rm -rf", 1)


def test_decode_serde():
    raw = {
        "event": {
            "a": [1, {"__classname__": "builtins.tuple", "__version__": 1, "__data__": [1, 2]}],
            "when": {
                "__classname__": "datetime.datetime",
                "__version__": 2,
                "__data__": {"timestamp": 0.0, "tz": None},
            },
        }
    }
    decoded = decode_serde(raw)
    assert decoded["event"]["a"] == [1, (1, 2)]
    assert decoded["event"]["when"].timestamp() == 0.0


def test_wait_for_raises_a_failed_assertion_at_once_and_polls_through_other_errors():
    reader = StateReader()
    calls: list[float] = []

    def failing_check() -> bool:
        calls.append(time.monotonic())
        assert 1 + 1 == 3, "the check itself failed"
        return True

    started = time.monotonic()
    with pytest.raises(AssertionError, match="the check itself failed"):
        reader.wait_for(failing_check, timeout=30, interval=0.01)
    assert len(calls) == 1 and time.monotonic() - started < 5  # not the 30 s timeout

    flaky = iter([RuntimeError("database is locked"), RuntimeError("database is locked"), None])

    def busy_then_ok() -> str:
        exc = next(flaky)
        if exc is not None:
            raise exc
        return "ok"

    assert reader.wait_for(busy_then_ok, timeout=30, interval=0.01) == "ok"
    with pytest.raises(TimeoutError) as timed_out:
        reader.wait_for(lambda: 1 / 0, timeout=0.1, interval=0.01)
    assert isinstance(timed_out.value.__cause__, ZeroDivisionError)


def test_template_db_is_per_airflow_version():
    path = template_db_path()
    assert airflow_version() in path.name and path.suffix == ".db"


def test_home_module_does_not_import_airflow():
    code = "import sys, multitrigger.demo.home, mt_testsupport.home; assert 'airflow' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------ SQLite home
def test_home_layout_config_and_env(home: AirflowHome, monkeypatch: pytest.MonkeyPatch):
    cfg = home.config_path.read_text()
    assert "load_examples = False" in cfg and "executor = LocalExecutor" in cfg
    bundle_list = next(line for line in cfg.splitlines() if line.startswith("dag_bundle_config_list"))
    entries = json.loads(bundle_list.split("=", 1)[1])
    assert {e["name"]: e["kwargs"]["path"] for e in entries} == {
        name: str(home.path / "bundles" / name) for name in BUNDLES
    }
    assert all(e["classpath"] == "airflow.dag_processing.bundles.local.LocalDagBundle" for e in entries)
    assert (home.path / "bundles" / "beta" / "beta_1.py").exists()

    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "True")
    monkeypatch.setenv("_AIRFLOW_PATCH_GEVENT", "1")
    monkeypatch.setenv("AIRFLOW_HOME", "/nonexistent")
    env = home.env()
    assert env["AIRFLOW_HOME"] == str(home.path)
    assert env["AIRFLOW_CONFIG"] == str(home.config_path)
    assert not [k for k in env if k.startswith(("AIRFLOW", "_AIRFLOW")) and k not in ("AIRFLOW_HOME", "AIRFLOW_CONFIG")]


def test_every_dag_is_serialized_with_its_bundle(home: AirflowHome):
    assert home.dags == EXPECTED_BUNDLES
    assert home.dag_bundles() == EXPECTED_BUNDLES
    versions = dict(home.sql("SELECT dag_id, count(*) FROM dag_version GROUP BY dag_id"))
    serialized = dict(home.sql("SELECT dag_id, count(*) FROM serialized_dag GROUP BY dag_id"))
    assert set(versions) == set(serialized) == set(EXPECTED_BUNDLES)
    assert home.sql("SELECT bundle_name FROM dag_version WHERE dag_id = 'beta_1'") == [("beta",)]
    # The broken file is recorded as an import error of its bundle, not silently dropped.
    assert list(home.import_errors) == ["gamma:broken.py"]
    assert {name for (name,) in home.sql("SELECT name FROM dag_bundle")} == set(BUNDLES)


def test_defer_creates_real_deferred_task_instances(home: AirflowHome):
    refs = home.defer_many(
        [
            DeferSpec("alpha_1", "t0", FIRE_AT, {"moment": iso_in(3600), "payload": {"k": "v"}}, timeout_seconds=600),
            DeferSpec("beta_1", "t1", FIRE_AT, {"moment": iso_in(3600)}),
            DeferSpec("gamma_1", "t2", FIRE_AT, {"moment": iso_in(3600)}, encrypt_kwargs=True),
        ]
    )
    single = home.defer("alpha_2", "t0", FIRE_AT, {"moment": iso_in(3600)}, run_id="manual__single")
    refs.append(single)
    assert single.run_id == "manual__single" and refs[0].run_id == "manual__sandbox"

    states = home.ti_states(refs)
    state, next_kwargs, trigger_id = states[refs[0]]  # the documented 3-tuple
    assert (state, next_kwargs, trigger_id) == ("deferred", {}, refs[0].trigger_id)
    assert {s.state for s in states.values()} == {"deferred"}
    assert all(s.next_method == "execute_complete" and s.next_kwargs == {} for s in states.values())
    assert [states[r].trigger_id for r in refs] == [r.trigger_id for r in refs]

    rows = {row.id: row for row in home.trigger_rows()}
    for ref in refs:
        assert rows[ref.trigger_id].classpath == FIRE_AT
        assert rows[ref.trigger_id].triggerer_id is None

    # What the stock triggerer relies on: dag_version_id on the TI, a running manual run.
    for ref in refs:
        [(dag_version_id, try_number, timeout)] = home.sql(
            "SELECT dag_version_id, try_number, trigger_timeout FROM task_instance "
            "WHERE dag_id = :d AND run_id = :r AND task_id = :t AND map_index = -1",
            {"d": ref.dag_id, "r": ref.run_id, "t": ref.task_id},
        )
        assert dag_version_id is not None and try_number == 1
        assert (timeout is not None) == (ref.task_id == "t0" and ref.dag_id == "alpha_1")
        assert home.sql(
            "SELECT run_type, state FROM dag_run WHERE dag_id = :d AND run_id = :r", {"d": ref.dag_id, "r": ref.run_id}
        ) == [("manual", "running")]
    # Trigger kwargs: stored like the execution API stores them (plain serde JSON) unless encrypted.
    kwargs = dict(home.sql("SELECT id, kwargs FROM trigger"))
    assert json.loads(kwargs[refs[0].trigger_id])["payload"] == {"k": "v"}
    assert not kwargs[refs[2].trigger_id].startswith("{")  # Fernet token

    with pytest.raises(Exception, match="already deferred"):
        home.defer("alpha_1", "t0", FIRE_AT, {"moment": iso_in(3600)})


def test_defer_many_batch_and_clear(home: AirflowHome):
    t0 = time.monotonic()
    specs = [
        DeferSpec("beta_1", "t0", FIRE_AT, {"moment": iso_in(3600)}, run_id="manual__batch", map_index=i)
        for i in range(200)
    ]
    refs = home.defer_many(specs)
    _timing("defer_many(200)", time.monotonic() - t0)
    assert len({r.trigger_id for r in refs}) == 200
    assert {s.state for s in home.ti_states(refs).values()} == {"deferred"}

    cleared = home.clear_ti(refs[0])
    # UI "Clear" + the scheduler step that follows it: the TI is SCHEDULED again with a new id and
    # no next_method; once the triggerer runs Trigger.clean_unused its trigger is gone.
    assert cleared["state"] == "scheduled" and cleared["ti_id"] != refs[0].ti_id
    state = home.ti_state(refs[0])
    assert state.state == "scheduled" and state.next_method is None
    assert home.ti_state(refs[1]).state == "deferred"




def test_postgres_home(tmp_path: Path, warm):
    url = pg_url("multitrigger_sandbox")
    home = AirflowHome.create(tmp_path / "pg-home", {"p1": deferring_bundle("pg_a"), "p2": deferring_bundle("pg_b")}, url)
    _timing("AirflowHome.create (PostgreSQL: reset + migrate + serialize)", home.timings["create"])
    try:
        assert home.dag_bundles() == {"pg_a": "p1", "pg_b": "p2"}
        refs = home.defer_many(
            [
                DeferSpec("pg_a", "t0", FIRE_AT, {"moment": iso_in(3600)}),
                DeferSpec("pg_b", "t0", FIRE_AT, {"moment": iso_in(3600)}, encrypt_kwargs=True),
            ]
        )
        assert {s.state for s in home.ti_states(refs).values()} == {"deferred"}
        assert [row.triggerer_id for row in home.trigger_rows()] == [None, None]  # both rows, unclaimed
        # A second create on the same database starts from scratch.
        again = AirflowHome.create(tmp_path / "pg-home-2", {"p3": deferring_bundle("pg_c")}, url)
        assert again.dag_bundles() == {"pg_c": "p3"}
        assert again.trigger_rows() == []
        again.close()
    finally:
        home.close()


# ------------------------------------------------------------------------------------ trigger classes
def test_trigger_classes_in_a_real_airflow_process(home: AirflowHome, tmp_path: Path):
    """Run the sandbox triggers directly (in a subprocess with the home's env, never in pytest)."""
    marker = tmp_path / "marker.txt"
    script = textwrap.dedent(
        f"""
        import asyncio, datetime as dt, json, sys
        from multitrigger.demo.triggers import RaiseTrigger
        from mt_testsupport.triggers import (
            FireAtTrigger, WaitForeverTrigger, ImportVersionTrigger, FireAtEventTrigger)

        async def first(trigger):
            async for event in trigger.run():
                return event.payload

        async def main():
            out = {{}}
            moment = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=0.5)
            t = FireAtTrigger(moment=moment.isoformat(), payload={{"x": 1}})
            assert t.serialize() == ("mt_testsupport.triggers.FireAtTrigger",
                                     {{"moment": moment.isoformat(), "payload": {{"x": 1}}}})
            out["fire"] = await first(t)
            out["late"] = (dt.datetime.fromisoformat(out["fire"]["fired_at"]) - moment).total_seconds()
            try:
                await first(RaiseTrigger("kaboom"))
            except RuntimeError as exc:
                out["raised"] = str(exc)
            w = WaitForeverTrigger({str(marker)!r})
            task = asyncio.ensure_future(first(w))
            await asyncio.sleep(0.2)
            out["still_waiting"] = not task.done()
            task.cancel()
            await w.on_kill()
            await w.cleanup()
            out["version"] = await first(ImportVersionTrigger("sqlalchemy"))
            out["event_trigger"] = FireAtEventTrigger(moment=moment.isoformat()).serialize()[0]
            print("RESULT " + json.dumps(out))

        asyncio.run(main())
        """
    )
    proc = subprocess.run(
        [home.python, "-c", script],
        env=home.env({"MULTITRIGGER_LOOP": "probe"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert out["fire"]["x"] == 1 and out["fire"]["loop"] == "probe" and out["fire"]["executable"] == home.python
    assert 0 <= out["late"] < 0.25  # one sleep until the moment, not 1-second steps
    assert out["raised"] == "kaboom"
    assert out["still_waiting"] is True
    assert marker.read_text().split() == ["on_kill", "cleanup"]
    import sqlalchemy

    assert out["version"]["version"] == sqlalchemy.__version__ and out["version"]["loop"] == "probe"
    assert out["event_trigger"] == FIRE_AT_EVENT


# ------------------------------------------------------------------------------------ stock triggerer
def _stop(proc: subprocess.Popen, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


@pytest.mark.timeout(120)
def test_slow_stock_airflow_triggerer_accepts_sandbox_deferrals(tmp_path: Path, warm):
    """End to end with stock ``airflow triggerer``: fire, fail, clear -> on_kill, asset watcher."""
    home = AirflowHome.create(tmp_path / "home", {"b1": deferring_bundle("e2e", n_tasks=4)})
    marker = tmp_path / "on_kill.txt"
    fire = home.defer_many(
        [DeferSpec("e2e", f"t{i}", FIRE_AT, {"moment": iso_in(3), "payload": {"i": i}}) for i in range(2)]
    )
    failing = home.defer("e2e", "t2", RAISE, {"message": "boom"}, encrypt_kwargs=True)
    waiting = home.defer("e2e", "t3", WAIT_FOREVER, {"marker_path": str(marker)})
    watcher_trigger = home.add_asset_watcher("watch", "sandbox_asset", FIRE_AT_EVENT, {"moment": iso_in(3)})

    started = time.monotonic()
    proc = home.popen_airflow("triggerer", "--skip-serve-logs")
    log = home.logs_dir / "triggerer.out"
    try:
        states = home.wait_for_states([*fire, failing], "scheduled", timeout=30)
        _timing("stock triggerer: start -> both FireAtTriggers resumed their TIs", time.monotonic() - started)
        for i, ref in enumerate(fire):
            event = states[ref].event
            assert states[ref].next_method == "execute_complete" and states[ref].trigger_id is None
            assert event["i"] == i and event["pid"] != os.getpid() and event["loop"] is None
        assert states[failing].next_method == "__fail__"
        assert "boom" in "".join(decode_serde(states[failing].next_kwargs)["traceback"])

        # The asset watcher fired through Airflow's own asset-event path.
        home.wait_for(lambda: home.sql("SELECT count(*) FROM asset_event")[0][0] >= 1, timeout=20)
        assert watcher_trigger in {row.id for row in home.trigger_rows()}

        # Clear the waiting task: the triggerer cancels its trigger as a user action -> on_kill, cleanup.
        home.wait_for(
            lambda: any(r.id == waiting.trigger_id and r.triggerer_id for r in home.trigger_rows()), timeout=20
        )
        home.clear_ti(waiting)
        home.wait_for(lambda: marker.exists() and "cleanup" in marker.read_text(), timeout=30)
        assert marker.read_text().split() == ["on_kill", "cleanup"]
        home.wait_for(lambda: waiting.trigger_id not in {r.id for r in home.trigger_rows()}, timeout=20)
    except BaseException:
        print(log.read_text(errors="replace")[-5000:] if log.exists() else "(no triggerer log)")
        raise
    finally:
        t_stop = time.monotonic()
        rc = _stop(proc)
        _timing("stock triggerer SIGTERM -> exit", time.monotonic() - t_stop)
        home.close()
    assert rc == 0


def test_taskref_is_hashable_and_keyed_by_identity():
    a = TaskRef("d", "r", "t", -1, ti_id="x", trigger_id=1)
    b = TaskRef("d", "r", "t", -1, ti_id="y", trigger_id=2)
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
