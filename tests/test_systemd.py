"""
systemd integration, for real: notifications on a real ``NOTIFY_SOCKET`` opened by the test (a bound
``AF_UNIX`` datagram socket, as systemd's), from ``sd_notify`` and from a real ``multitrigger run``
supervisor; and the shipped unit through this machine's ``systemd-analyze verify`` (systemd 252).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mt_testsupport.datagrams import Datagrams
from mt_testsupport.home import WAIT_FOREVER, AirflowHome, DeferSpec, deferring_bundle
from multitrigger.supervisor.sd_notify import Notifier, notify, watchdog_interval

pytestmark = pytest.mark.timeout(180)
UNIT_DIR = Path(__file__).resolve().parent.parent / "systemd"
CONFIG = '[loops.team_a]\nbundles = ["team_a"]\n'


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_notify_sends_one_datagram_to_a_path_or_abstract_socket(tmp_path, kind):
    address = str(tmp_path / "notify") if kind == "path" else f"@mt-test-{os.getpid()}-{kind}"
    listener = Datagrams.unix(address)
    try:
        assert notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": address})
        assert listener.receive(1.0) == ["READY=1\nSTATUS=up"]
    finally:
        listener.close()


def test_notify_is_a_no_op_when_unset_and_never_raises(tmp_path):
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "@" + "x" * 200}) is False  # too long for sun_path
    notifier = Notifier({})
    notifier.tick(0.0, lambda: (True, "ignored"))  # nothing to send to: no error, nothing asked
    assert not notifier.ready


def test_watchdog_interval_is_half_of_watchdog_usec_and_honours_watchdog_pid():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "garbage"}) is None


@pytest.fixture
def home(tmp_path: Path) -> AirflowHome:
    bundles = {"team_a": deferring_bundle("dag_a", n_tasks=2), "shared": deferring_bundle("dag_s", n_tasks=2)}
    return AirflowHome.create(tmp_path / "home", bundles)


def test_supervisor_sends_ready_status_watchdog_which_stops_when_wedged_and_stopping(home, start_triggerer, tmp_path):
    # One trigger per bundle: the default loop (lazy) is wanted once it is routed "shared"'s trigger.
    home.defer_many([DeferSpec("dag_a", "t0", WAIT_FOREVER, {"marker_path": str(tmp_path / "m_a")}),
                     DeferSpec("dag_s", "t0", WAIT_FOREVER, {"marker_path": str(tmp_path / "m_s")})])
    address = f"@mt-test-{os.getpid()}-supervisor"
    listener = Datagrams.unix(address)
    try:
        mt = start_triggerer(home, "--skip-serve-logs", config=CONFIG,
                             env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
        listener.wait_for(r"^READY=1$", timeout=120)
        # READY=1 only once both wanted loops had sent their first frame (logged as "loop ready").
        assert {"team_a", "default"} <= set(re.findall(r"loop ready .*?loop=(\S+)", mt.text())), mt.text()[-3000:]
        listener.wait_for(r"^STATUS=2 loops running, 0 starting, 0 restarting; 2 triggers; DB ok$", timeout=30)
        statuses = [m for _, m in listener.messages if m.startswith("STATUS=")]
        assert len(statuses) == len(set(statuses)), statuses  # sent on change only

        # Periodic watchdog: every WATCHDOG_USEC/2 = 1 s (the selector wakes for it).
        listener.receive(4.0)
        pings = [t for t, m in listener.messages if m == "WATCHDOG=1" and t > time.monotonic() - 4.0]
        assert len(pings) >= 3, listener.messages[-10:]
        # What systemd needs: no gap reaches WATCHDOG_USEC (2 s); slack for this shared 2-core machine.
        assert max(b - a for a, b in zip(pings, pings[1:])) < 2.0, pings

        # A wedged main loop (stopped: it cannot run its selector pass) sends no WATCHDOG=1.
        os.kill(mt.popen.pid, signal.SIGSTOP)
        try:
            listener.receive(0.3)  # a datagram sent just before the stop
            assert "WATCHDOG=1" not in listener.receive(3.5)
        finally:
            os.kill(mt.popen.pid, signal.SIGCONT)
        assert "WATCHDOG=1" in listener.receive(2.0)  # healthy again: pings resume

        # Loop processes (user code) do not inherit NOTIFY_SOCKET or the watchdog variables.
        loop_pids = [int(p) for p in re.findall(r"loop started .*?pid=(\d+)", mt.text())]
        assert loop_pids
        for pid in loop_pids:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not [v for v in environ if v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_"))], pid

        mt.popen.send_signal(signal.SIGTERM)
        assert listener.wait_for(r"^STOPPING=1", timeout=30) == "STOPPING=1\nSTATUS=shutting down"
        assert mt.popen.wait(60) == 0
        assert sum(m == "READY=1" for _, m in listener.messages) == 1
    finally:
        listener.close()


def _verify(unit_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", str(unit_dir / "multitrigger.service")],
                          capture_output=True, text=True, timeout=60)


def test_shipped_unit_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:  # fail, not skip: the check must not silently vanish
        pytest.fail("systemd-analyze (Debian package systemd) is needed for this test")
    # verify checks that ExecStart's binary exists and is executable; /opt/airflow/venv is the
    # documented install path, absent on this machine, so a temp copy points it at an existing one.
    # Nothing else of the unit is changed.
    text = (UNIT_DIR / "multitrigger.service").read_text()
    assert "ExecStart=/opt/airflow/venv/bin/multitrigger run" in text
    (tmp_path / "multitrigger.service").write_text(text.replace("/opt/airflow/venv/bin/multitrigger", "/bin/true"))
    result = _verify(tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    for key in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30", "KillMode=mixed", "Restart=on-failure",
                "EnvironmentFile=", "Delegate=yes"):
        assert re.search(rf"^{re.escape(key)}", text, re.M), key

    # The drop-in holds only keys newer than 252: this systemd reports them as unknown, nothing else.
    shutil.copytree(UNIT_DIR / "multitrigger.service.d", tmp_path / "multitrigger.service.d")
    result = _verify(tmp_path)
    assert result.returncode == 0, result.stderr
    complaints = [line for line in result.stderr.splitlines() if line.strip()]
    assert complaints and all("Unknown key 'DelegateSubgroup'" in line for line in complaints), complaints

    # The example environment file sets what the unit reads.
    env = dict(line.split("=", 1) for line in (UNIT_DIR / "multitrigger.env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert {"AIRFLOW_HOME", "MULTITRIGGER_CONFIG"} <= set(env) and "${MULTITRIGGER_CONFIG}" in text
