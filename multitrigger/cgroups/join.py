"""
A loop joins its cgroup itself: the first thing it does after the fork, before any user code.

Why the loop and not the supervisor: memory is charged to the cgroup of the process that first
touches a page, and a charge does not move with the process. A loop forked from a zygote that the
supervisor moved afterwards would have charged its first pages (and any trigger that ran meanwhile)
to the zygote. So the supervisor passes the ``cgroup.procs`` files in ``MULTITRIGGER_CGROUP_PROCS``
(``os.pathsep``-separated; one per v1 hierarchy, one on v2) and the loop writes its own pid into
each: the zygote's child at the top of ``Zygote._child``, an exec'd loop in its ``preexec_fn``
(after the fork, before the exec, so the whole new interpreter is charged to the loop).

Standard library only: the zygote imports it before anything else, in any bundle venv.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

ENV_CGROUP_PROCS = "MULTITRIGGER_CGROUP_PROCS"
#: Exit code of a loop that could not join its cgroup (it never ran a trigger outside it).
JOIN_FAILED_EXIT = 3


def procs_files(env: Mapping[str, str]) -> list[str]:
    return [p for p in env.get(ENV_CGROUP_PROCS, "").split(os.pathsep) if p]


def join(files: Sequence[str], pid: int = 0) -> None:
    """Write ``pid`` (default: this process) into each ``cgroup.procs``. Raises ``OSError``."""
    data = str(pid or os.getpid()).encode()
    for path in files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def join_or_exit(files: Sequence[str]) -> None:
    """In a just-forked loop: join, or say why on stderr and exit ``JOIN_FAILED_EXIT``."""
    if not files:
        return
    try:
        join(files)
    except OSError as err:
        try:
            os.write(2, f"multitrigger: loop could not join its cgroup ({err}); not running any trigger\n".encode())
        finally:
            os._exit(JOIN_FAILED_EXIT)
