"""
A loop without a cgroup: what it started dies with it (``multitrigger.cgroups.leftovers``), over
real processes and the real /proc. End to end (a real loop's new-session sleep) in test_cgroups_v1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from multitrigger.cgroups import files
from multitrigger.cgroups.leftovers import Leftovers, ProcTable, read_stat

pytestmark = pytest.mark.timeout(30)


def _alive(pid: int) -> bool:
    stat = read_stat(pid)  # one read: a process reaped between two reads is not an error
    return stat is not None and stat.state != "Z"


@pytest.fixture
def loop():
    """A stand-in loop: its own session, with a child in a new session (re-parented once the loop dies)."""
    proc = subprocess.Popen(["sh", "-c", "setsid sleep 300 & sleep 300 & wait"], start_new_session=True)

    def settled() -> bool:  # both children are sleeping, one of them already in its new session
        kids = ProcTable.scan().descendants(proc.pid)
        return (len(kids) == 2 and any(os.getsid(p) == p for p in kids)
                and all(open(f"/proc/{p}/comm").read().strip() == "sleep" for p in kids))

    assert files.wait_for(settled, 5)
    yield proc
    proc.kill()
    proc.wait()


def test_descendants_seen_alive_are_killed_after_the_loop_dies_and_ended_ones_are_forgotten(loop) -> None:
    leftovers = Leftovers(loop.pid)
    leftovers.note(ProcTable.scan())
    assert set(leftovers.seen) == set(ProcTable.scan().descendants(loop.pid))
    new_session = next(p for p in leftovers.seen if os.getsid(p) == p)

    # An ended descendant is forgotten at the next note: ``seen`` holds only live processes.
    same_session = next(p for p in leftovers.seen if p != new_session)
    os.kill(same_session, signal.SIGKILL)
    assert files.wait_for(lambda: not _alive(same_session), 5)
    leftovers.note(ProcTable.scan())
    assert set(leftovers.seen) == {new_session}

    loop.kill()
    loop.wait()
    assert _alive(new_session)  # outside the loop's session and group: only ``seen`` reaches it
    assert leftovers.kill() == [new_session]
    assert files.wait_for(lambda: not _alive(new_session), 5)
    assert leftovers.seen == {}


def test_a_recycled_pid_is_never_hit(loop) -> None:
    leftovers = Leftovers(loop.pid)
    leftovers.note(ProcTable.scan())
    pid = next(p for p in leftovers.seen if os.getsid(p) == p)  # the one only ``seen`` reaches
    leftovers.seen = {pid: leftovers.seen[pid] - 1}  # as if another process had had this pid before
    loop.kill()
    loop.wait()
    assert pid not in leftovers.kill()
    time.sleep(0.1)
    assert _alive(pid)
    os.kill(pid, signal.SIGKILL)


def test_one_scan_serves_every_loop() -> None:
    table = ProcTable.scan()
    me = table.stats[os.getpid()]
    assert me.ppid == os.getppid() and me.session == os.getsid(0)
    assert os.getpid() in table.children[os.getppid()]


def test_without_pidfds_leftovers_are_still_killed(loop, monkeypatch) -> None:
    """Linux < 5.3 has no ``pidfd_open`` (ENOSYS): the start-time check, then a plain kill. Faked
    here because this kernel has pidfds; the processes and the kill are real."""
    import errno

    def no_pidfds(pid: int) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfds)
    leftovers = Leftovers(loop.pid)
    leftovers.note(ProcTable.scan())
    new_session = next(p for p in leftovers.seen if os.getsid(p) == p)
    recycled = {new_session: leftovers.seen[new_session] - 1}
    loop.kill()
    loop.wait()
    saved, leftovers.seen = leftovers.seen, recycled
    # A recycled pid is not hit on this path either. (The loop's same-session sleep may be listed:
    # killpg's SIGKILL may not have ended it yet when the session is scanned, so it is hit again.)
    assert new_session not in leftovers.kill() and _alive(new_session)
    leftovers.seen = saved
    assert new_session in leftovers.kill()
    assert files.wait_for(lambda: not _alive(new_session), 5)
