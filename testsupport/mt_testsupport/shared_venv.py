"""A virtualenv every Unix user can run: the project's exact packages on a world-readable CPython.

Why: a loop exec'd as another user (``user =``, ``start_method = "exec"``) must read its
interpreter and every package it imports. The project venv's base interpreter lives under
``/root`` (pyenv, 0700) on the test machine, so its loops cannot be exec'd as another user; Debian's
``/usr/bin/python3.11`` can. A layered bundle venv (``multitrigger venv create``) needs the parent's
own CPython, so this is a standalone venv instead, with the pins of ``sys.executable``'s environment
(``uv pip freeze``): the same Airflow, task SDK and providers, multitrigger and mt_testsupport
editable from the checkout. uv installs them from its cache (``--offline`` first: ~3 s warm; online
only if the cache lacks a wheel).

Built once per (interpreter, pins) under ``/var/tmp/mt-shared-venvs/<hash>`` (directories 0755,
files 0644: uv's defaults under a 022 umask), behind a file lock so parallel test workers share it;
a ``.complete`` marker is written last, so a half-built venv is rebuilt, never used.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from multitrigger.interpreter_probe import clean_env
from multitrigger.venvs import _find_uv

ROOT = Path("/var/tmp/mt-shared-venvs")
SYSTEM_PYTHON = Path("/usr/bin/python3.11")
#: Installed by ``python -m venv`` / pip themselves, so not in uv's cache, and not needed by a loop.
_NOT_PINNED = ("pip", "uv")


def shared_venv(python: Path = SYSTEM_PYTHON, root: Path = ROOT) -> Path:
    """The interpreter of a venv of *python* holding this environment's packages (built if missing)."""
    uv = _find_uv(Path(sys.executable))
    if uv is None:
        raise RuntimeError("no uv next to the project interpreter: run scripts/setup.sh")
    freeze = _run([uv, "pip", "freeze", "--python", sys.executable]).splitlines()
    pins = [line for line in freeze if line and not line.startswith("-e ") and line.split("==")[0] not in _NOT_PINNED]
    editables = [line.split(" ", 1)[1].removeprefix("file://") for line in freeze if line.startswith("-e ")]
    key = hashlib.sha256("\n".join([str(python.resolve()), *freeze]).encode()).hexdigest()[:16]
    _own_dir(root)
    venv = root / key
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            _build(uv, python, venv, pins, editables)
    return venv / "bin" / "python"


def _own_dir(root: Path) -> None:
    """*root* exists, is ours and 0755 (``/var/tmp`` is writable by everyone: refuse anyone else's)."""
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    if root.stat().st_uid != os.geteuid():
        raise RuntimeError(f"{root} belongs to another user; remove it")
    root.chmod(0o755)


def _build(uv: str, python: Path, venv: Path, pins: list[str], editables: list[str]) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    _run([uv, "venv", "--quiet", "--python", str(python), str(venv)])
    requirements = venv / "pins.txt"
    requirements.write_text("".join(f"{p}\n" for p in pins))
    install = [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "--no-deps"]
    for args in (["-r", str(requirements)], [a for path in editables for a in ("-e", path)]):
        try:
            _run([*install, "--offline", *args])
        except RuntimeError:  # a wheel uv's cache does not hold: fetch it
            _run([*install, *args])
    (venv / ".complete").write_text("")


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout
