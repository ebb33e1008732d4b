"""
More running triggers than the supervisor has file descriptors: it keeps running, every trigger's
log file is written, and a trigger deferred afterwards still fires.

Stock keeps one log file open per running trigger (``TriggerLoggingFactory``), so the supervisor
hit ``EMFILE`` and exited at ~17,000 triggers; here a real ``multitrigger run`` gets a soft and
hard ``RLIMIT_NOFILE`` of 256 (``prlimit``, inherited by its loops) and holds 600 real deferred
task instances in two bundles (``multitrigger.supervisor.log_files``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mt_testsupport.home import FIRE_AT, WAIT_FOREVER, AirflowHome, DeferSpec, deferring_bundle, iso_in

pytestmark = pytest.mark.timeout(120)

NOFILE = 256
TRIGGERS = 600
BUNDLES = ("b0", "b1")


def _logs_with_lines(home: AirflowHome) -> dict[str, str]:
    return {str(p): p.read_text(errors="replace") for p in home.logs_dir.rglob("*.trigger.*.log")}


def test_supervisor_holds_more_triggers_than_file_descriptors(tmp_path: Path, start_triggerer) -> None:
    capacity = str(TRIGGERS + 100)
    home = AirflowHome.create(tmp_path / "home", {b: deferring_bundle(f"dag_{b}") for b in BUNDLES},
                              extra_config={"triggerer": {"capacity": capacity, "max_trigger_to_select_per_loop": capacity}})
    home.defer_many([DeferSpec(f"dag_{BUNDLES[i % 2]}", "t0", WAIT_FOREVER, {"marker_path": str(tmp_path / f"m{i}")},
                               map_index=i) for i in range(TRIGGERS)])
    config = "".join(f'[loops.{b}]\nbundles = ["{b}"]\n' for b in BUNDLES)
    mt = start_triggerer(home, config=config, prefix=["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--"])

    def every_log_started():
        assert mt.popen.poll() is None, f"supervisor exited {mt.popen.returncode}:\n{mt.text()[-3000:]}"
        logs = _logs_with_lines(home)
        started = [text for text in logs.values() if "starting" in text]
        return logs if len(started) >= TRIGGERS else None

    logs = home.wait_for(every_log_started, timeout=60, interval=1.0,
                         message=lambda: f"{sum('starting' in t for t in _logs_with_lines(home).values())} logs started")
    assert len(logs) == TRIGGERS  # one file per trigger, each at stock's path (…trigger.<job id>.log)
    fds = len(os.listdir(f"/proc/{mt.popen.pid}/fd"))
    assert fds < NOFILE / 2, f"supervisor holds {fds} fds for {TRIGGERS} triggers"

    (late,) = home.defer_many([DeferSpec(f"dag_{BUNDLES[0]}", "t0", FIRE_AT, {"moment": iso_in(1)}, map_index=TRIGGERS)])
    home.wait_for_states([late], "scheduled", timeout=30)
    assert mt.popen.poll() is None
    text = mt.text()
    assert "Too many open files" not in text and "dropped" not in text, text[-3000:]


def test_a_loop_that_cannot_open_its_files_backs_off_alone(tmp_path: Path, start_triggerer) -> None:
    """A loop's start that fails with an OSError (here its blame file is a directory: the same path
    as EMFILE) is that loop's failed start, retried with backoff; the supervisor and the other
    loop go on."""
    home = AirflowHome.create(tmp_path / "home", {b: deferring_bundle(f"dag_{b}") for b in BUNDLES})
    (home.path / "multitrigger" / "loops" / "b1" / "blame").mkdir(parents=True)
    config = "".join(f'[loops.{b}]\nbundles = ["{b}"]\n' for b in BUNDLES)
    (ref,) = home.defer_many([DeferSpec("dag_b0", "t0", FIRE_AT, {"moment": iso_in(1)})])
    mt = start_triggerer(home, "--skip-serve-logs", config=config)
    home.wait_for_states([ref], "scheduled", timeout=60)
    home.wait_for(lambda: mt.text().count("loop could not start") >= 2, 20, message="b1's start retried")
    assert mt.popen.poll() is None


def test_a_loop_spawn_at_emfile_leaves_no_socket_open() -> None:
    """A loop (re)start that runs out of fds while making its three socketpairs closes the ones it
    made at once, and the exec path closes its own on a failed ``Popen``: the supervisor, short of
    fds, does not leak more on every retry. The errors are kept here, as a caller that reports
    them later does: their tracebacks hold the spawn's frames, so refcounting would not close the
    sockets either."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import gc, os, resource
        from pathlib import Path
        from multitrigger.supervisor.loop_process import LoopProcess
        gc.disable()
        kept = []
        before = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (before + 3, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        for _ in range(3):  # room for one pair and one socket of the next
            try:
                LoopProcess.spawn("x", ["/bin/true"], {}, Path("/"))
            except OSError as err:
                assert err.errno == 24, err
                kept.append(err)
        resource.setrlimit(resource.RLIMIT_NOFILE, (before + 64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        for _ in range(3):  # Popen fails (no such program): the parent ends are closed too
            try:
                LoopProcess.spawn("x", ["/no/such/python"], {}, Path("/"))
            except OSError as err:
                assert err.errno == 2, err
                kept.append(err)
        print(before, len(os.listdir("/proc/self/fd")))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = map(int, out.stdout.split())
    assert after == before, out.stdout
