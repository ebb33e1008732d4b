"""
Zygote ownership: ``supervisor.zygote_pool.ZygotePool`` with real zygote processes (restart after a
death, none after an import failure, adoption of a prestarted staged zygote), and the modules the
pre-Airflow start-up path (``supervisor.prestart``) may import.
"""

from __future__ import annotations

import math
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from multitrigger import paths
from multitrigger.config import Config, load_config
from multitrigger.supervisor import prestart
from multitrigger.supervisor.zygote_pool import ZygotePool, zygote_home, zygote_interpreters


def test_prestart_imports_neither_cli_nor_airflow() -> None:
    """``cli`` imports ``prestart``; ``prestart`` runs before Airflow is imported and must not
    import ``cli`` back (the old cycle) nor anything that imports Airflow."""
    code = textwrap.dedent("""\
        import sys
        import multitrigger.supervisor.prestart
        print(sorted(m for m in sys.modules if m == "multitrigger.cli" or m.split(".")[0] == "airflow"))
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize(("value", "expected"), [
    (None, Path.home() / "airflow"),
    ("~/af", Path.home() / "af"),
    ("$MT_TEST_ROOT/home", Path("/srv/mt/home")),
])
def test_airflow_home_is_expanded_like_airflow(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: Path) -> None:
    monkeypatch.setenv("MT_TEST_ROOT", "/srv/mt")
    if value is None:
        monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW_HOME", value)
    from airflow.configuration import get_airflow_home

    assert paths.airflow_home() == expected == Path(get_airflow_home())
    assert paths.default_config_path() == expected / "multitrigger.toml"
    assert paths.state_dir() == expected / "multitrigger"


# -- ZygotePool with real zygote processes -------------------------------------------------------

PYTHON = Path(sys.executable)
#: An interpreter without Airflow: its zygote's imports fail (it reports ``failed`` and exits 1).
BARE_PYTHON = Path(sys._base_executable)  # type: ignore[attr-defined]


def _config(tmp_path: Path, body: str) -> Config:
    path = tmp_path / "multitrigger.toml"
    path.write_text(textwrap.dedent(body))
    return load_config(path, must_exist=True)


def _pump(sel: selectors.BaseSelector, done: Callable[[], bool], timeout: float, what: str) -> None:
    """Serve the selector as ``Supervisor._service`` does until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        for key, _mask in sel.select(0.1):
            owner, sock, reader = key.data
            owner.service(sel, sock, reader)


@pytest.fixture
def sel() -> Iterator[selectors.BaseSelector]:
    s = selectors.DefaultSelector()
    yield s
    s.close()


@pytest.fixture
def pools() -> Iterator[list[ZygotePool]]:
    made: list[ZygotePool] = []
    yield made
    for pool in made:
        pool.close()


def test_only_interpreters_of_fork_loops_get_a_zygote(tmp_path: Path, sel, pools) -> None:
    config = _config(tmp_path, f"""\
        [loops.team_a]
        bundles = ["team_a"]
        python = "{BARE_PYTHON}"
        start_method = "exec"
        [loops.team_b]
        bundles = ["team_b"]
        """)
    assert zygote_interpreters(config) == [PYTHON]  # default and team_b share one; team_a execs
    pool = ZygotePool(config, tmp_path / "state", sel)
    pools.append(pool)
    assert pool.for_loop(config.loops["team_b"]) is None  # nothing started yet: exec
    pool.start()
    assert list(pool.zygotes) == [PYTHON]
    zygote = pool.zygotes[PYTHON]
    assert pool.for_loop(config.loops["team_b"]) is zygote is pool.for_loop(config.loops["default"])
    assert pool.for_loop(config.loops["team_a"]) is None


@pytest.mark.timeout(120)
def test_dead_zygote_is_replaced_after_the_delay(tmp_path: Path, sel, pools) -> None:
    config = _config(tmp_path, "")
    loop = config.loops["default"]
    pool = ZygotePool(config, tmp_path / "state", sel, startup_wait=60.0, restart_delay=5.0)
    pools.append(pool)
    pool.start()
    first = pool.for_loop(loop)
    assert first is not None and first.starting
    # First start: wait for the importing zygote, bounded; the selector wakes at the bound at latest.
    now = time.monotonic()
    assert pool.waiting(loop, first_start=True, now=now)
    assert not pool.waiting(loop, first_start=False, now=now), "a restart never waits"
    assert not pool.waiting(loop, first_start=True, now=now + 61), "the wait is bounded"
    assert now < pool.next_deadline(now) <= now + 60
    _pump(sel, lambda: first.ready, 90, "first zygote ready")  # registered: its report came through sel
    assert not pool.waiting(loop, first_start=True, now=time.monotonic())

    os.kill(first.pid, signal.SIGKILL)
    _pump(sel, lambda: not first.alive, 10, "the death to be seen")
    died = time.monotonic()
    pool.tend(died)
    assert pool.for_loop(loop) is first and pool.next_deadline(died) == died + 5.0
    pool.tend(died + 4.9)
    assert pool.for_loop(loop) is first, "replaced before the delay"
    pool.tend(died + 5.0)
    second = pool.for_loop(loop)
    assert second is not None and second is not first and second.pid != first.pid
    assert pool.next_deadline(died + 5.0) > died + 5.0, "the replacement is no longer due"
    assert pool.next_deadline(died + 61) == math.inf  # past the start-up wait: its ready wakes sel
    assert not pool.waiting(loop, first_start=True, now=died + 61)
    _pump(sel, lambda: second.ready, 90, "replacement ready")
    assert second.info is not None and second.info.prewarm_s is None  # started normally, not staged


@pytest.mark.timeout(60)
def test_zygote_whose_imports_failed_is_never_replaced(tmp_path: Path, sel, pools) -> None:
    config = _config(tmp_path, f"""\
        [loops.bare]
        bundles = ["bare"]
        python = "{BARE_PYTHON}"
        """)
    loop = config.loops["bare"]
    pool = ZygotePool(config, tmp_path / "state", sel, restart_delay=0.0)
    pools.append(pool)
    pool.start()
    broken = pool.for_loop(loop)
    assert broken is not None
    _pump(sel, lambda: not broken.alive, 30, "the zygote to fail and exit")
    # It said why before exiting: the protocol needs nothing but the stdlib.
    assert broken.error is not None and "No module named 'airflow'" in broken.error
    assert broken.popen.wait(10) == 1
    assert not pool.waiting(loop, first_start=True, now=time.monotonic()), "a failed zygote is not waited for"
    later = time.monotonic() + 3600
    pool.tend(later)
    pool.tend(later + 3600)
    assert pool.for_loop(loop) is broken and not broken.ready  # loops are exec'd
    assert pool.next_deadline(later) == math.inf


@pytest.mark.timeout(120)
def test_prestarted_staged_zygote_is_adopted(tmp_path: Path, sel, pools) -> None:
    config = _config(tmp_path, "")
    state = tmp_path / "state"
    prestart.prestart(config, state)
    taken = prestart.take_prestarted()
    assert prestart.take_prestarted() == {}, "handed over once"
    staged = taken[PYTHON]
    assert staged.awaiting_env and staged.alive
    pool = ZygotePool(config, state, sel)
    pools.append(pool)
    pool.start(taken)
    adopted = pool.for_loop(config.loops["default"])
    assert adopted is staged and not adopted.awaiting_env  # configured with the loop environment
    _pump(sel, lambda: adopted.ready, 90, "adopted zygote ready")
    info = adopted.info
    assert info is not None and info.prewarm_s is not None and info.configured_after_s is not None
    # Airflow was imported under the environment the pool sent: its private AIRFLOW_HOME.
    assert Path(psutil.Process(adopted.pid).cwd()).resolve() == zygote_home(state, PYTHON).resolve()


@pytest.mark.timeout(120)
def test_prestarted_zygote_that_died_is_replaced_at_adoption(tmp_path: Path, sel, pools) -> None:
    config = _config(tmp_path, "")
    state = tmp_path / "state"
    prestart.prestart(config, state)
    taken = prestart.take_prestarted()
    staged = taken[PYTHON]
    staged.popen.kill()
    staged.popen.wait(10)
    pool = ZygotePool(config, state, sel)
    pools.append(pool)
    pool.start(taken)
    fresh = pool.for_loop(config.loops["default"])
    assert fresh is not None and fresh is not staged and not fresh.awaiting_env
    _pump(sel, lambda: fresh.ready, 90, "fresh zygote ready")
    assert fresh.info is not None and fresh.info.prewarm_s is None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("same_env", [True, False], ids=["same-env-adopted", "other-env-replaced"])
def test_zygote_configured_early_is_adopted_only_with_the_pools_environment(tmp_path: Path, sel, pools,
                                                                              same_env: bool) -> None:
    """``cli.main`` configures prestarted zygotes as soon as Airflow is imported; the pool keeps one
    only if Airflow was imported under exactly the environment the pool would send."""
    config = _config(tmp_path, "")
    state = tmp_path / "state"
    home = zygote_home(state, PYTHON)
    prestart.prestart(config, state)
    prestart.configure_prestarted()
    taken = prestart.take_prestarted()
    early = taken[PYTHON]
    assert not early.awaiting_env and early.configured_env == prestart.zygote_env(home)

    def env_for(h: Path) -> dict[str, str]:
        return prestart.zygote_env(h) | ({} if same_env else {"AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG"})

    pool = ZygotePool(config, state, sel, env_for=env_for)
    pools.append(pool)
    pool.start(taken)
    kept = pool.for_loop(config.loops["default"])
    assert kept is not None and (kept is early) is same_env
    if not same_env:
        assert early.popen.poll() is not None, "the early-configured zygote is closed"
    _pump(sel, lambda: kept.ready, 90, "zygote ready")
