"""
Kill everything in a cgroup without ``cgroup.kill``: freeze, SIGKILL every pid, thaw, repeat.

Both backends use it: v1 always (``freezer.state``), v2 on kernels before 5.14, which have no
``cgroup.kill`` (``cgroup.freeze``, Linux >= 5.2). Freezing first means nothing in the cgroup forks
while its pid list is read and signalled; a SIGKILLed frozen task dies when thawed (v1) or at once
(v2: the v2 freezer lets fatal signals through). A pass that leaves processes (a fork between two
reads on a host without a freezer) is followed by another, until the cgroup is empty or ``timeout``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from multitrigger.cgroups import files

#: How long one pass waits for its killed processes to leave the cgroup before the next pass (s).
PASS_WAIT = 0.5


def kill_until_empty(pids: Callable[[], set[int]], freeze: Callable[[], None] | None,
                     thaw: Callable[[], None] | None, timeout: float) -> int:
    """Freeze, SIGKILL each of ``pids()``, thaw; again until ``pids()`` is empty. Returns how many were killed."""
    killed: set[int] = set()

    def one_pass() -> bool:
        if freeze is not None:
            freeze()
        try:
            for pid in pids() - {os.getpid()}:
                if sigkill(pid):
                    killed.add(pid)
        finally:
            if thaw is not None:
                thaw()
        return files.wait_for(lambda: not pids(), PASS_WAIT)

    files.wait_for(one_pass, timeout, step=0.0)
    return len(killed)


def sigkill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
