"""Cheap home workers for tests: :mod:`mt_testsupport._worker` commands forked from a warm fork
server (:mod:`mt_testsupport._zygote`, one per interpreter, started lazily), falling back to the
demo's plain subprocess (:func:`multitrigger.demo.workers.run_worker`).

A test session builds dozens of homes and defers thousands of task instances; each worker would
otherwise import Airflow (~5 s).  ``MULTITRIGGER_SANDBOX_ZYGOTE=0`` turns the fork server off.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from multitrigger.demo.workers import run_worker as run_demo_worker

WORKER_MODULE = "mt_testsupport._worker"


# -------------------------------------------------------------------------------- subprocess glue
def _zygote_enabled() -> bool:
    return os.environ.get("MULTITRIGGER_SANDBOX_ZYGOTE", "1").lower() not in ("0", "false", "no", "off")


class _Zygote:
    """Client for :mod:`mt_testsupport._zygote` (one server per interpreter path, started lazily)."""

    _instances: dict[str, _Zygote] = {}
    _broken: set[str] = set()
    _class_lock = threading.Lock()

    def __init__(self, python: str) -> None:
        self.python = python
        self.owner_pid = os.getpid()
        self.lock = threading.Lock()
        self._buf = b""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
        self.proc = subprocess.Popen(
            [python, "-m", "mt_testsupport._zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=tempfile.gettempdir(),
            bufsize=0,
            start_new_session=True,
        )

    @classmethod
    def get(cls, python: str) -> _Zygote | None:
        if not _zygote_enabled():
            return None
        with cls._class_lock:
            if python in cls._broken:
                return None
            inst = cls._instances.get(python)
            if inst is not None and inst.owner_pid != os.getpid():  # we are a fork of the owner
                cls._instances.clear()
                inst = None
            if inst is None or inst.proc.poll() is not None:
                if inst is not None:  # died once: do not keep paying for restarts
                    cls._broken.add(python)
                    return None
                try:
                    inst = cls._instances[python] = cls(python)
                except OSError:
                    return None
            return inst

    @classmethod
    def shutdown_all(cls) -> None:
        with cls._class_lock:
            for inst in cls._instances.values():
                if inst.owner_pid == os.getpid():
                    inst.close()
            cls._instances.clear()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def _readline(self, deadline: float | None) -> dict[str, Any]:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                raise subprocess.TimeoutExpired("sandbox zygote", wait or 0)
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("sandbox zygote exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, argv: list[str], env: Mapping[str, str], cwd: Path, log: Path, timeout: float) -> int:
        """Run the worker in a forked child; returns its exit code (kills it on timeout)."""
        with self.lock:
            request = {"argv": argv, "env": dict(env), "cwd": str(cwd), "log": str(log)}
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            started = self._readline(time.monotonic() + 600)  # includes the one-time warm-up
            pid = int(started["pid"])
            try:
                return int(self._readline(time.monotonic() + timeout)["rc"])
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # the child we asked the zygote to fork
                self._readline(time.monotonic() + 30)
                raise


atexit.register(_Zygote.shutdown_all)


def prestart_zygote(python: str = sys.executable, *, wait: bool = False) -> bool:
    """Start the fork server early (e.g. from a session fixture) so its ~3-4 s warm-up overlaps
    other work; with ``wait`` block until it is warm.  Returns False if it is disabled/unusable."""
    zyg = _Zygote.get(python)
    if zyg is None:
        return False
    if not wait:
        return True
    try:
        with zyg.lock:
            zyg.proc.stdin.write(b'{"op": "ping"}\n')
            return bool(zyg._readline(time.monotonic() + 600).get("pong"))
    except Exception:
        return False


def run_worker(
    command: str,
    request: Mapping[str, Any],
    *,
    env: Mapping[str, str],
    python: str = sys.executable,
    workdir: Path,
    timeout: float = 600,
) -> Any:
    """Run ``mt_testsupport._worker <command>`` with ``env`` in a fresh process; return its result.

    Forked from the warm fork server of ``python`` when possible, else a plain subprocess.
    """
    def spawn(argv: list[str], env: Mapping[str, str], workdir: Path, log: Path, timeout: float) -> int | None:
        zyg = _Zygote.get(python)
        if zyg is None:
            return None
        try:
            return zyg.run(argv, env, workdir, log, timeout)
        except (EOFError, OSError, ValueError):
            return None  # server died (or refused to warm up): fall back to a plain subprocess

    return run_demo_worker(command, request, env=env, python=python, workdir=workdir, timeout=timeout,
                           module=WORKER_MODULE, spawn=spawn)
