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
