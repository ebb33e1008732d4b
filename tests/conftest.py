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


#: At teardown a stock triggerer gets this long after SIGTERM, then its process group is killed:
#: its graceful stop often takes 10-20 s and proves nothing there (tests that care call ``stop``).
STOCK_TEARDOWN_GRACE = 3.0


class Triggerer:
    """A running `multitrigger run` (or stock `airflow triggerer`) process with its log file.
    A stock one leads a process group of its own (with its runner child)."""

    def __init__(self, popen: subprocess.Popen, log: Path, stock: bool = False) -> None:
        self.popen = popen
        self.log = log
        self.stock = stock

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.wait(10)

    def kill(self) -> None:
        """SIGKILL it; a stock triggerer with its whole group (its runner child would outlive it)."""
        try:
            if self.stock:
                os.killpg(self.popen.pid, signal.SIGKILL)
            else:
                self.popen.kill()
        except ProcessLookupError:
            pass


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
            popen = subprocess.Popen(cmd, env=home.env(env), stdout=fh, stderr=subprocess.STDOUT, cwd=home.path,
                                     start_new_session=stock)
        started.append(proc := Triggerer(popen, log, stock=stock))
        return proc

    yield start
    for proc in started:
        proc.stop(STOCK_TEARDOWN_GRACE if proc.stock else 30)
        if proc.stock:  # the runner child, if the main process went first
            proc.kill()


#: Test files by how long they take in the suite (the sum of their tests' junit times, three runs
#: on 2 cores, Dec 2026: db_partition 83 s, supervisor_faults 73, workloads 72, venvs 71...),
#: longest first. ``scripts/test.sh`` runs ``-n 3 --dist loadfile --no-loadscope-reorder``: each
#: worker takes the next file when it is done, so a long file at the end of the queue leaves the
#: other workers idle while it finishes. xdist's default order (files with the most tests first)
#: puts exactly these few-test end-to-end files last. Unlisted files (a few seconds each) follow,
#: in collection order.
SLOWEST_FIRST = (
    "test_db_partition.py", "test_supervisor_faults.py", "test_workloads.py", "test_venvs.py", "test_persist.py",
    "test_sandbox.py", "test_team_secrets.py", "test_tenancy_postgres.py", "test_sdk_and_routing.py", "test_core.py",
    "test_inline_log.py", "test_cli.py", "test_trigger_code.py", "test_crash_containment.py", "test_semantics.py",
    "test_ha_postgres.py", "test_health.py", "test_cgroups_v1.py", "test_bundle_versions.py", "test_fd_limit.py",
    "test_output_flood.py", "test_persist_lane.py", "test_handback_postgres.py", "test_unused_imports.py",
    "test_loop_user.py", "test_zygote.py", "test_zygote_pool.py", "test_systemd.py", "test_oom.py",
    "test_cgroups_config.py", "test_otel_metrics.py", "test_persist_warmup.py", "test_config.py",
    "test_trigger_logs.py", "test_levels.py", "test_held.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept
