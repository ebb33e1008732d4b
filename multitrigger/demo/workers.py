"""How a demo home runs Airflow code: one :mod:`multitrigger.demo._worker` command in a fresh
process with the home's environment, so the calling process never imports Airflow (whose
configuration is process-global) and can build several homes.

The request and result travel as JSON files in the home's ``.sandbox`` directory; a failed
command raises :class:`HomeError` with its error, traceback and log tail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # directory containing the ``multitrigger`` package
WORKER_MODULE = "multitrigger.demo._worker"

#: Runs ``argv`` (command, request file, result file) with ``env`` in ``workdir``, output to
#: ``log``; returns the exit code, or None if it could not (then a plain subprocess is used).
Spawn = Callable[[list[str], Mapping[str, str], Path, Path, float], "int | None"]


class HomeError(RuntimeError):
    """A home's worker subprocess failed; the message carries its error, traceback and log tail."""


def run_worker(
    command: str,
    request: Mapping[str, Any],
    *,
    env: Mapping[str, str],
    python: str = sys.executable,
    workdir: Path,
    timeout: float = 600,
    module: str = WORKER_MODULE,
    spawn: Spawn | None = None,
) -> Any:
    """Run ``python -m <module> <command>`` with ``env`` in a fresh process; return its result.

    ``spawn``, when given, is tried first (the test support forks workers from a warm server).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    token = f"{command}-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
    req_path = workdir / f"{token}.request.json"
    res_path = workdir / f"{token}.result.json"
    log_path = workdir / f"{token}.log"
    req_path.write_text(json.dumps(request, default=str))
    argv = [command, str(req_path), str(res_path)]
    try:
        rc = spawn(argv, env, workdir, log_path, timeout) if spawn is not None else None
        if rc is None:
            with open(log_path, "ab") as log_fh:
                rc = subprocess.run(
                    [python, "-m", module, *argv],
                    env=dict(env),
                    cwd=str(workdir),
                    stdin=subprocess.DEVNULL,
                    stdout=log_fh,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                ).returncode
        log_tail = log_path.read_text(errors="replace")[-6000:] if log_path.exists() else ""
        if not res_path.exists():
            raise HomeError(f"home worker {command!r} died (rc={rc}):\n{log_tail}")
        result = json.loads(res_path.read_text())
        if not result["ok"]:
            raise HomeError(
                f"home worker {command!r} failed: {result['error']}\n{result['traceback']}\n--- log ---\n{log_tail}"
            )
        log_path.unlink(missing_ok=True)
        return result["result"]
    finally:
        req_path.unlink(missing_ok=True)
        res_path.unlink(missing_ok=True)
