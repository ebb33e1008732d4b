"""
Zygote-forked loops, with real processes: a real zygote, real forked loops driven through the real
supervisor handshake (``LoopSlot``), real signals, a real bundle venv. No database: the workloads
are built by hand as in ``/tmp/smoke/slot_smoke.py``.

Numbers (fork-to-ready, USS/PSS) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import selectors
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from airflow.executors import workloads
from airflow.jobs.triggerer_job_runner import messages
from multitrigger.config import LoopConfig
from multitrigger.interpreter_probe import loop_bootstrap_args
from multitrigger.poison import PoisonPolicy
from multitrigger.restart import BackoffSettings, RestartPolicy
from multitrigger.supervisor import requests
from multitrigger.supervisor.launch import early_loop_env, loop_env
from multitrigger.supervisor.loop_process import LoopCallbacks, LoopProcess
from multitrigger.supervisor.slot import LoopSlot, SlotSinks
from multitrigger.supervisor.zygote_client import ZYGOTE_DIED, Zygote
from multitrigger.venvs import create_bundle_venv
from mt_testsupport.procs import alive, memory_kb
from mt_testsupport.procs import parent_pid as ppid

PYTHON = Path(sys.executable)
FIRE_AT = "mt_testsupport.triggers.FireAtTrigger"

# Loaded from a loop's cwd ('' is on a ``python -c`` loop's sys.path, forked or exec'd alike).
_PROBE_TRIGGERS = '''\
import os, sys
from airflow.triggers.base import BaseTrigger, TriggerEvent

class ExitCodeTrigger(BaseTrigger):
    def __init__(self, code):
        super().__init__()
        self.code = code
    def serialize(self):
        return ("zygote_probe.ExitCodeTrigger", {"code": self.code})
    async def run(self):
        os._exit(self.code)
        yield

class ModulesTrigger(BaseTrigger):
    """Fires with what the loop imported since the zygote was ready, after a first event."""
    def serialize(self):
        return ("zygote_probe.ModulesTrigger", {})
    async def run(self):
        import asyncio
        await asyncio.sleep(1.0)
        preloaded = getattr(sys.modules["__main__"], "PRELOADED", frozenset())
        yield TriggerEvent({"new": sorted(set(sys.modules) - preloaded), "preloaded": len(preloaded)})

class SettingsTrigger(BaseTrigger):
    """Fires with what Airflow's settings read from the environment at import (in the zygote)."""
    def serialize(self):
        return ("zygote_probe.SettingsTrigger", {})
    async def run(self):
        from airflow import settings
        yield TriggerEvent({"dags_folder": settings.DAGS_FOLDER,
                            "env_dags_folder": os.environ.get("AIRFLOW__CORE__DAGS_FOLDER")})
'''


def _home(root: Path, name: str) -> Path:
    home = root / name
    home.mkdir(parents=True, exist_ok=True)
    (home / "zygote_probe.py").write_text(_PROBE_TRIGGERS)
    return home


def _start_zygote(python: Path, root: Path) -> Zygote:
    home = _home(root, "zygote-home")
    zygote = Zygote.start(python, loop_env(home), home)
    assert zygote.wait_ready(120), zygote.error
    return zygote


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    """One zygote for the project interpreter, shared by the tests that do not kill it."""
    z = _start_zygote(PYTHON, tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


class Harness:
    """A selector plus slots, pumped like ``Supervisor._service`` / ``_reconcile`` do."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sel = selectors.DefaultSelector()
        self.slots: list[LoopSlot] = []
        self.got: list[tuple[str, int, Any]] = []

    def slot(self, name: str, python: Path = PYTHON) -> LoopSlot:
        home = _home(self.root, name)
        slot = LoopSlot(
            config=LoopConfig(name=name, bundles=frozenset(), python=python, venv=None,
                              allowed_triggers=None),
            argv=loop_bootstrap_args(python), env=loop_env(home), cwd=home,
            policy=RestartPolicy(BackoffSettings(), clock=time.monotonic),
            poison=PoisonPolicy(name, threshold=3, clock=time.monotonic),
            sinks=SlotSinks(
                on_event=lambda n, e: self.got.append(("event", e.trigger_id, e.event.payload)),
                on_failure=lambda n, t, tb: self.got.append(("fail", t, "".join(tb or []))),
                on_finished=lambda n, t: self.got.append(("finished", t, None)),
                on_output=lambda n, p, line: print(f"[{n} {p}] {line}"),
                on_log_line=lambda b: None,
                on_request=lambda loop, msg, reply: reply(*requests.answer(msg)),
            ),
            hang_threshold=60, blame_file=home / "blame",
        )
        self.slots.append(slot)
        return slot

    def pump(self, timeout: float = 0.1) -> None:
        for key, mask in self.sel.select(timeout):
            owner, sock, reader = key.data
            if mask & selectors.EVENT_WRITE:
                owner.flush(self.sel)
            if mask & selectors.EVENT_READ:
                owner.service(self.sel, sock, reader)
        now = time.monotonic()
        for slot in self.slots:
            slot.answer_poll(self.sel, now)

    def until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; got {self.got}"
            self.pump()

    def pump_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.pump(0.05)

    def event(self, trigger_id: int) -> Any:
        return next((p for kind, tid, p in self.got if kind == "event" and tid == trigger_id), None)

    def close(self) -> None:
        for slot in self.slots:
            if slot.process is not None:
                slot.process.signal(signal.SIGKILL)
        for slot in self.slots:
            self.until(lambda s=slot: s.process is None or s.process.poll_exit() is not None, 10, "loop exit")
            if slot.process is not None:
                slot.process.close(self.sel)
                slot.process = None


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def start_forked(slot: LoopSlot, zygote: Zygote, sel: selectors.BaseSelector) -> None:
    """Start ``slot`` with its process forked from ``zygote``."""
    slot.zygote = zygote
    slot.start(sel)
    assert slot.process is not None and slot.process.forked


def fire_at(trigger_id: int, seconds: float) -> workloads.RunTrigger:
    moment = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)).isoformat()
    return workloads.RunTrigger(id=trigger_id, classpath=FIRE_AT,
                                encrypted_kwargs=json.dumps({"moment": moment, "payload": None}))


def wait_for(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- tests -------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_forked_loop_runs_a_trigger_through_the_slot(zygote: Zygote, harness: Harness) -> None:
    slot = harness.slot("forked")
    slot.add(fire_at(1, 0.5))
    slot.add(workloads.RunTrigger(id=2, classpath="zygote_probe.ModulesTrigger", encrypted_kwargs="{}"))
    start_forked(slot, zygote, harness.sel)
    pid = slot.process.pid
    assert ppid(pid) == zygote.pid, "a forked loop is the zygote's child"
    harness.until(lambda: harness.event(1) and harness.event(2), 30, "both events")
    fired = harness.event(1)
    assert fired["pid"] == pid and fired["loop"] == "forked"
    assert fired["executable"] == str(PYTHON)
    # Preload coverage: nothing big is imported after the fork (only the triggers' own modules).
    new = harness.event(2)["new"]
    print(f"\nmodules imported after fork ({len(new)}): {new}")
    assert [m for m in new if not m.startswith(("zygote_probe", "mt_testsupport", "multitrigger.demo"))] == []
    # The loop stops on SIGTERM like an exec'd one, and the zygote reports the exit.
    slot.process.signal(signal.SIGTERM)
    harness.until(lambda: slot.process.poll_exit() is not None, 15, "loop exit")
    assert slot.process.poll_exit() == 0


@pytest.mark.timeout(60)
def test_malformed_request_is_rejected_and_the_zygote_keeps_serving(zygote: Zygote, harness: Harness) -> None:
    """A record the zygote cannot decode gets a ``rejected`` reply; it neither dies nor forks."""
    for record, problem in ((b"not json", "not JSON"), (b'{"type": "ready"}', "unexpected message type 'ready'")):
        zygote.sock.send(record)
        wait_for(lambda: (zygote._read_available(), zygote.last_rejection)[1] is not None, 10, "rejection")
        assert problem in zygote.last_rejection and zygote.ready
        zygote.last_rejection = None
    slot = harness.slot("after-garbage")
    slot.add(fire_at(1, 0.2))
    start_forked(slot, zygote, harness.sel)
    harness.until(lambda: harness.event(1) is not None, 30, "event from a loop forked after the garbage")


@pytest.mark.timeout(90)
def test_staged_zygote_imports_airflow_only_under_its_loop_env(harness: Harness, tmp_path: Path) -> None:
    """A prestarted zygote (supervisor.prestart) holds no AIRFLOW__* setting, secret or not, until
    ``configure``; Airflow is imported after it, so import-time settings come from the loop env."""
    home = _home(tmp_path, "staged")
    base = {**os.environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://u:secret@db/x",
            "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "marker-dags")}
    early = early_loop_env(home, base)
    assert not [k for k in early if k.startswith("AIRFLOW__") and k not in
                ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__CORE__LOAD_EXAMPLES")]
    staged = Zygote.start(PYTHON, early, home, staged=True)
    try:
        assert not staged.wait_ready(3.0) and staged.starting and staged.awaiting_env, "waits for its env"
        exec_env = [f"{k}={v}" for k, v in psutil.Process(staged.pid).environ().items()]
        assert exec_env and not [v for v in exec_env if "secret" in v or v.startswith("AIRFLOW__DATABASE")]
        full = loop_env(home, base)
        assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in full
        assert full["AIRFLOW__CORE__DAGS_FOLDER"] == str(tmp_path / "marker-dags")
        staged.configure(full)
        assert staged.wait_ready(120), staged.error
        assert staged.info is not None and staged.info.prewarm_s <= staged.info.configured_after_s <= staged.info.warmup_s
        slot = harness.slot("staged-loop")
        slot.env = {k: v for k, v in slot.env.items() if k != "AIRFLOW__CORE__DAGS_FOLDER"}
        slot.add(workloads.RunTrigger(id=1, classpath="zygote_probe.SettingsTrigger", encrypted_kwargs="{}"))
        start_forked(slot, staged, harness.sel)
        harness.until(lambda: harness.event(1), 30, "settings event")
        # The loop's own env lacks the setting: the value was read when the zygote imported Airflow.
        assert harness.event(1) == {"dags_folder": str(tmp_path / "marker-dags"), "env_dags_folder": None}
        harness.close()
    finally:
        staged.close()


@pytest.mark.timeout(120)
def test_fork_to_ready_time(zygote: Zygote, tmp_path: Path) -> None:
    """Fork → first frame from the loop (its first poll, after the StartTriggerer handshake)."""
    sel = selectors.DefaultSelector()
    home = _home(tmp_path, "timing")
    env = loop_env(home)

    def time_to_first_frame(start: Callable[[], LoopProcess]) -> float:
        first: list[float] = []
        t0 = time.monotonic()
        proc = start()
        proc.register(sel, LoopCallbacks(on_frame=lambda f: first.append(time.monotonic()),
                                         on_output=print, on_log_lines=lambda b: None, on_broken=print))
        proc.respond(sel, 0, messages.StartTriggerer().model_dump())
        deadline = time.monotonic() + 60
        while not first:
            assert time.monotonic() < deadline and proc.poll_exit() is None, "no first frame"
            for key, mask in sel.select(0.05):
                owner, sock, reader = key.data
                if mask & selectors.EVENT_WRITE:
                    owner.flush(sel)
                if mask & selectors.EVENT_READ:
                    owner.service(sel, sock, reader)
        proc.signal(signal.SIGKILL)
        wait_for(lambda: proc.poll_exit() is not None, 10, "exit")
        proc.close(sel)
        return first[0] - t0

    forked = [time_to_first_frame(lambda: LoopProcess.spawn_forked("t", zygote, env, home)) for _ in range(5)]
    cold = time_to_first_frame(lambda: LoopProcess.spawn("t", loop_bootstrap_args(PYTHON), env, home))
    print(f"\nfork-to-ready: median {statistics.median(forked) * 1000:.1f} ms "
          f"(runs {', '.join(f'{t * 1000:.1f}' for t in forked)} ms); cold exec: {cold * 1000:.0f} ms")
    assert statistics.median(forked) < 3.0


@pytest.mark.timeout(60)
def test_exit_reports(zygote: Zygote, harness: Harness) -> None:
    killed = harness.slot("killed")
    start_forked(killed, zygote, harness.sel)
    exits = harness.slot("exits")
    exits.add(workloads.RunTrigger(id=7, classpath="zygote_probe.ExitCodeTrigger", encrypted_kwargs='{"code": 3}'))
    start_forked(exits, zygote, harness.sel)

    killed.process.signal(signal.SIGKILL)
    harness.until(lambda: killed.process.poll_exit() is not None, 10, "SIGKILL report")
    assert killed.process.poll_exit() == -9
    assert killed.process.exit_reason(-9) == "killed by SIGKILL"
    harness.until(lambda: exits.process.poll_exit() is not None, 30, "os._exit(3) report")
    assert exits.process.poll_exit() == 3
    # Through the slot: the death is recorded and a restart is scheduled as for an exec'd loop.
    assert exits.reap(harness.sel, time.monotonic()) == "exited with code 3"
    assert exits.process is None and exits.stats.restarts == 1


@pytest.mark.timeout(120)
def test_zygote_death_takes_its_loops(harness: Harness, tmp_path: Path) -> None:
    own = _start_zygote(PYTHON, tmp_path)
    try:
        slots = [harness.slot(f"orphan{i}") for i in range(2)]
        for slot in slots:
            slot.add(fire_at(1, 3600))
            start_forked(slot, own, harness.sel)
        harness.until(lambda: all(s.last_heard != math.inf for s in slots), 30, "first polls")
        pids = [s.process.pid for s in slots]
        os.kill(own.pid, signal.SIGKILL)
        wait_for(lambda: not any(alive(pid) for pid in pids), 10, "children to die (PDEATHSIG)")
        harness.until(lambda: all(s.process.poll_exit() is not None for s in slots), 10, "reports")
        for slot in slots:
            assert slot.process.poll_exit() == ZYGOTE_DIED
            assert "zygote" in slot.process.exit_reason(ZYGOTE_DIED)
        assert not own.alive and not own.ready
        # A dead zygote never blocks a start: the loop is exec'd cold instead.
        cold = LoopProcess.spawn("cold", loop_bootstrap_args(PYTHON), loop_env(tmp_path), tmp_path, zygote=own)
        assert not cold.forked and ppid(cold.pid) == os.getpid()
        cold.signal(signal.SIGKILL)
        wait_for(lambda: cold.poll_exit() is not None, 10, "cold exit")
        for sock in (cold.requests, cold.output, cold.logs):
            sock.close()
    finally:
        own.close()


@pytest.mark.timeout(300)
def test_zygote_in_a_bundle_venv(harness: Harness, tmp_path: Path) -> None:
    python = create_bundle_venv(tmp_path / "venv")
    own = _start_zygote(python, tmp_path)
    try:
        assert own.info is not None and own.info.python == str(python)
        slot = harness.slot("venv_loop", python=python)
        slot.add(fire_at(1, 0.2))
        start_forked(slot, own, harness.sel)
        harness.until(lambda: harness.event(1) is not None, 30, "event")
        assert harness.event(1)["executable"] == str(python)
        assert ppid(slot.process.pid) == own.pid
    finally:
        harness.close()
        own.close()


@pytest.mark.timeout(120)
def test_memory_of_forked_loops(zygote: Zygote, harness: Harness) -> None:
    slots = [harness.slot(f"mem{i}") for i in range(4)]
    for i, slot in enumerate(slots):
        slot.add(fire_at(i + 1, 0.3))
        slot.add(fire_at(100 + i, 3600))
        start_forked(slot, zygote, harness.sel)
    harness.until(lambda: all(harness.event(i + 1) for i in range(4)), 30, "one event per loop")
    harness.pump_for(1.0)  # let them idle a moment (a GC pass, a status sweep)
    usage = {s.process.pid: memory_kb(s.process.pid) for s in slots}
    zyg = memory_kb(zygote.pid)
    lines = [f"  loop pid {pid}: USS {m['uss'] / 1024:.1f} MB, PSS {m['pss'] / 1024:.1f} MB, "
             f"RSS {m['rss'] / 1024:.1f} MB" for pid, m in usage.items()]
    print("\nforked loops:\n" + "\n".join(lines)
          + f"\n  zygote pid {zygote.pid}: USS {zyg['uss'] / 1024:.1f} MB, PSS {zyg['pss'] / 1024:.1f} MB")
    # What one more forked loop adds (its private pages): ~9-11 MB measured (issue 13), ~18 MB before
    # the zygote did the loops' common set-up and they stopped rebuilding shared decoders.
    for m in usage.values():
        assert m["uss"] < 20 * 1024


@pytest.mark.timeout(120)
def test_supervisor_sigkill_takes_zygote_and_loops(tmp_path: Path) -> None:
    """The PDEATHSIG chain: supervisor → zygote → loop; a SIGKILLed supervisor leaves nothing."""
    home = _home(tmp_path, "chain")
    supervisor = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import sys, time
        from pathlib import Path
        from multitrigger.supervisor.launch import early_loop_env, loop_env
        from multitrigger.supervisor.loop_process import LoopProcess
        from multitrigger.supervisor.zygote_client import Zygote
        home = Path({str(home)!r})
        zygote = Zygote.start(Path(sys.executable), loop_env(home), home)
        assert zygote.wait_ready(100), zygote.error
        loop = LoopProcess.spawn_forked("chained", zygote, loop_env(home), home)
        print("PIDS", zygote.pid, loop.pid, flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        line = ""
        while not line.startswith("PIDS "):  # its logs go to stdout too
            line = supervisor.stdout.readline()
            assert line, "the supervisor stand-in exited"
        zygote_pid, loop_pid = map(int, line.split()[1:])
        assert ppid(loop_pid) == zygote_pid and ppid(zygote_pid) == supervisor.pid
        supervisor.kill()
        supervisor.wait(10)
        wait_for(lambda: not alive(zygote_pid) and not alive(loop_pid), 10, "zygote and loop to die")
    finally:
        supervisor.kill()
        supervisor.wait(10)
