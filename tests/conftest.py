"""Shared fixtures: real Airflow homes, real bundle venvs, real `multitrigger run` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mt_testsupport.home import AirflowHome

MULTITRIGGER = str(Path(sys.executable).parent / "multitrigger")
#: The PostgreSQL server the HA and outage tests use (this machine's, trust auth).
PG_SERVER_URL = os.environ.get("MULTITRIGGER_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def pg_url(name: str) -> str:
    """A PostgreSQL database of the test's own on ``PG_SERVER_URL`` (created if missing).

    It fails rather than skips when the server is down: the HA tests must not silently vanish.
    """
    from mt_testsupport.home import ensure_pg_database

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    # MULTITRIGGER_TEST_DB_SUFFIX keeps two checkouts' concurrent runs off each other's databases.
    suffix = os.environ.get("MULTITRIGGER_TEST_DB_SUFFIX", "") + (f"_{worker}" if worker else "")
    try:
        return ensure_pg_database(PG_SERVER_URL, name + suffix)
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {PG_SERVER_URL} is needed for this test and is not usable: {exc}")


class Triggerer:
    """A running `multitrigger run` (or stock `airflow triggerer`) process with its log file."""

    def __init__(self, popen: subprocess.Popen, log: Path) -> None:
        self.popen = popen
        self.log = log

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait(10)


@pytest.fixture
def start_triggerer() -> Iterator[Callable[..., Triggerer]]:
    """Start triggerer processes against a home; every one is stopped at teardown."""
    started: list[Triggerer] = []

    def start(
        home: AirflowHome, *args: str, config: str | None = None, stock: bool = False, name: str = "mt",
        env: dict[str, str] | None = None, prefix: list[str] | None = None,
    ) -> Triggerer:
        log = home.path / f"{name}-{len(started)}.log"
        if stock:
            cmd = [str(Path(sys.executable).parent / "airflow"), "triggerer", *args]
        else:
            cmd = [MULTITRIGGER, "run", *args]
            if config is not None:
                cfg = home.path / f"{name}-{len(started)}.toml"
                cfg.write_text(textwrap.dedent(config))
                cmd += ["--config", str(cfg)]
        cmd = [*(prefix or []), *cmd]
        with log.open("wb") as fh:
            popen = subprocess.Popen(cmd, env=home.env(env), stdout=fh, stderr=subprocess.STDOUT, cwd=home.path)
        started.append(proc := Triggerer(popen, log))
        return proc

    yield start
    for proc in started:
        proc.stop()


#: Test files by how long they take alone (``--durations``, ``-n 0``, a busy 2-core machine, Dec 2026),
#: longest first. ``scripts/test.sh`` runs ``-n 2 --dist loadfile --no-loadscope-reorder``: each
#: worker takes the next file when it is done, so a long file at the end of the queue leaves the
#: other core idle while it finishes. xdist's default order (files with the most tests first) puts
#: exactly these few-test end-to-end files last. Unlisted files follow, in collection order.
SLOWEST_FIRST = (
    "test_supervisor_faults.py", "test_db_partition.py", "test_bundle_versions.py", "test_venvs.py", "test_cli.py",
    "test_tenancy_postgres.py", "test_trigger_code.py", "test_ha_postgres.py", "test_sandbox.py", "test_core.py",
    "test_health.py", "test_team_secrets.py", "test_zygote.py", "test_crash_containment.py", "test_cgroups_v1.py",
    "test_loop_user.py", "test_sdk_and_routing.py", "test_semantics.py", "test_oom.py", "test_output_flood.py",
    "test_systemd.py", "test_fd_limit.py", "test_persist_lane.py", "test_trigger_logs.py", "test_persist.py", "test_workloads.py",
    "test_cgroups_config.py", "test_zygote_pool.py", "test_otel_metrics.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept
