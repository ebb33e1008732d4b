"""Reading and writing cgroupfs files (both backends). Every write is one value, one ``write``."""

from __future__ import annotations

import os
import time
from pathlib import Path


def write(path: Path, value: str | int) -> None:
    """Write ``value`` to a cgroup file. Creates it only in a fake tree (a plain directory)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def read_int(path: Path) -> int | None:
    text = read(path)
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


def read_keyed(path: Path) -> dict[str, str]:
    """``key value`` lines (memory.events, cpu.stat, memory.oom_control, pids.events...)."""
    out: dict[str, str] = {}
    for line in (read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        out[key] = value.strip()
    return out


def keyed_int(path: Path, key: str) -> int | None:
    try:
        return int(read_keyed(path)[key])
    except (KeyError, ValueError):
        return None


def pids(procs: Path) -> set[int]:
    return {int(p) for p in (read(procs) or "").split() if p.isdigit()}


def wait_for(check, timeout: float, step: float = 0.01) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``check()`` until true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
        step = min(step * 2, 0.1)
    return True


def cgroups_of(pid: int | str = "self", proc: Path = Path("/proc")) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as {controller: path}: the v2 line (``0::/path``) under ``""``, a v1
    line (``4:cpu,cpuacct:/path``) under each of its controllers, named ones as ``name=x``; {} if
    unreadable. The one parser of that file (cgroup backends, OOM watch, health)."""
    out: dict[str, str] = {}
    for line in (read(proc / str(pid) / "cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            out[controller] = path
    return out


def writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)
