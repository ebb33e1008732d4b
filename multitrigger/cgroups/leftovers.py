"""
Nothing outlives its loop, for a loop without a cgroup: kill what can still be found.

A loop with limits has a cgroup, and ``kill_all`` takes everything in it. A loop without one is
its own session and process group (``setsid`` in the zygote's child, ``start_new_session`` for an
exec'd loop), so when it ends this kills:

* its process group (``killpg``): children that did not move;
* every process still in its session (``/proc/<pid>/stat`` field 6): children in their own group;
* every descendant seen while the loop was alive (``note``, every ``NOTE_EVERY`` seconds):
  children that started a new session (``start_new_session=True``, ``setsid``) and were
  re-parented to init.

Cost: the supervisor reads ``/proc`` once per ``NOTE_EVERY`` for *all* loops (``ProcTable.scan``:
one ``stat`` read per process on the host, no psutil object per process), and each loop's
``note`` walks that table. ``seen`` keeps only processes that are still alive (a pid gone from the
table, or reused by another process, is forgotten), so it is bounded by the host's live processes,
not by how many a loop ever started.

Identity: a process is its pid *and* its start time (``stat`` field 22, clock ticks since boot), so
a recycled pid is never hit. The kill goes through a pidfd opened before the start time is checked,
so the process checked is the process signalled.

What cannot be found: a process that left the session *and* was started and orphaned between two
``note`` calls (a daemon that double-forks within seconds of the loop's death); and anything in a
new session when the supervisor itself is SIGKILLed (no one is left to look). Give the loop
``[loops.<name>.limits]`` (a cgroup) when that matters.
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

#: The supervisor records the live loops' descendants at most this often (one /proc scan for all).
NOTE_EVERY = 2.0

PROC = Path("/proc")


@dataclass(frozen=True)
class Stat:
    """What ``/proc/<pid>/stat`` says of a process that matters here."""

    state: str  # R, S, D, Z...
    ppid: int
    session: int
    start: int  # clock ticks after boot: with the pid, the process's identity

    @property
    def ended(self) -> bool:
        """A zombie: it has exited, only its parent has not reaped it yet."""
        return self.state == "Z"


def read_stat(pid: int, proc: Path = PROC) -> Stat | None:
    """One ``os.read`` of the file, parsed as bytes: ``ProcTable.scan`` reads one per process on the
    host, on the supervisor's selector thread (~110 processes: 2.3-2.8 ms of CPU with
    ``Path.read_text``, 0.8-1.2 ms so)."""
    try:
        fd = os.open(f"{proc}/{pid}/stat", os.O_RDONLY)
        try:
            data = os.read(fd, 4096)  # one line of well under 1 KB (comm is at most 16 bytes)
        finally:
            os.close(fd)
    except OSError:
        return None
    try:  # after "pid (comm)": state ppid pgrp session ... field 22 (starttime) is index 19
        fields = data.rsplit(b")", 1)[1].split()
        return Stat(state=fields[0].decode(), ppid=int(fields[1]), session=int(fields[3]), start=int(fields[19]))
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class ProcTable:
    """Every process on the host at one moment (one read of each ``/proc/<pid>/stat``)."""

    stats: dict[int, Stat]
    children: dict[int, list[int]]

    @classmethod
    def scan(cls, proc: Path = PROC) -> ProcTable:
        stats: dict[int, Stat] = {}
        children: dict[int, list[int]] = {}
        with os.scandir(proc) as entries:
            pids = [int(entry.name) for entry in entries if entry.name.isdigit()]
        for pid in pids:
            if (stat := read_stat(pid, proc)) is not None:
                stats[pid] = stat
                children.setdefault(stat.ppid, []).append(pid)
        return cls(stats, children)

    def descendants(self, pid: int) -> list[int]:
        found: list[int] = []
        todo = list(self.children.get(pid, ()))
        while todo:
            child = todo.pop()
            found.append(child)
            todo.extend(self.children.get(child, ()))
        return found

    def session_members(self, sid: int) -> list[int]:
        """Pids whose session id is ``sid``, the leader itself excepted."""
        return [pid for pid, stat in self.stats.items() if stat.session == sid and pid != sid]


@dataclass
class Leftovers:
    loop_pid: int
    proc: Path = PROC
    seen: dict[int, int] = field(default_factory=dict)  # pid → start (ticks)

    def note(self, table: ProcTable) -> None:
        """Remember the loop's live descendants in ``table``; forget the seen ones that have ended
        (a zombie not yet reaped has ended: ``_kill`` skips it too)."""
        self.seen = {pid: start for pid, start in self.seen.items()
                     if (stat := table.stats.get(pid)) is not None and stat.start == start and not stat.ended}
        for pid in table.descendants(self.loop_pid):
            if not table.stats[pid].ended:
                self.seen.setdefault(pid, table.stats[pid].start)

    def kill(self) -> list[int]:
        """SIGKILL the loop's group, its session and every descendant seen; returns their pids."""
        try:
            os.killpg(self.loop_pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        table = ProcTable.scan(self.proc)
        targets = dict(self.seen)
        for pid in table.session_members(self.loop_pid):
            targets.setdefault(pid, table.stats[pid].start)
        self.seen.clear()
        return sorted(pid for pid, start in targets.items() if pid != os.getpid() and _kill(pid, start, self.proc))


def _kill(pid: int, start: int, proc: Path) -> bool:
    """SIGKILL ``pid`` if it is still the process that started at ``start``. The check is made
    with a pidfd held, so a recycled pid is never hit; Linux < 5.3 has no pidfds (ENOSYS): there
    the check, then a plain kill (the one race it cannot close)."""
    try:
        fd: int | None = os.pidfd_open(pid)
    except OSError as err:  # gone (ProcessLookupError), or not ours to signal
        if err.errno not in (errno.ENOSYS, errno.EINVAL):
            return False
        fd = None
    try:
        stat = read_stat(pid, proc)  # with a pidfd held: the same process, or a dead fd
        if stat is None or stat.start != start or stat.ended:  # a zombie is dead already
            return False
        if fd is None:
            os.kill(pid, signal.SIGKILL)
        else:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        if fd is not None:
            os.close(fd)
