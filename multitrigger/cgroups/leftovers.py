"""
Nothing outlives its loop, for a loop without a cgroup: kill what can still be found.

A loop with limits has a cgroup, and ``kill_all`` takes everything in it. A loop without one is
its own session and process group (``setsid`` in the zygote's child, ``start_new_session`` for an
exec'd loop), so when it ends this kills:

* its process group (``killpg``): children that did not move;
* every process still in its session (``/proc/<pid>/stat`` field 6): children in their own group;
* every descendant seen while the loop was alive (``note``, called every few seconds by the
  supervisor; psutil, identity checked by create time so a recycled pid is never hit): children
  that started a new session (``start_new_session=True``, ``setsid``) and were re-parented to init.

What cannot be found: a process that left the session *and* was started and orphaned between two
``note`` calls (a daemon that double-forks within seconds of the loop's death); and anything in a
new session when the supervisor itself is SIGKILLed (no one is left to look). Give the loop
``[loops.<name>.limits]`` (a cgroup) when that matters.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import psutil

#: The supervisor records a live loop's descendants at most this often.
NOTE_EVERY = 2.0


@dataclass
class Leftovers:
    loop_pid: int
    seen: dict[int, float] = field(default_factory=dict)  # pid → create_time

    def note(self) -> None:
        """Remember the loop's descendants now (cheap: one scan of /proc)."""
        try:
            children = psutil.Process(self.loop_pid).children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            try:
                self.seen.setdefault(child.pid, child.create_time())
            except psutil.Error:
                pass

    def kill(self, proc: Path = Path("/proc")) -> list[int]:
        """SIGKILL the loop's group, its session and every descendant seen; returns their pids."""
        killed: list[int] = []
        try:
            os.killpg(self.loop_pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        targets = dict(self.seen)
        for pid in session_members(self.loop_pid, proc):
            try:
                targets.setdefault(pid, psutil.Process(pid).create_time())
            except psutil.Error:
                pass
        for pid, created in targets.items():
            try:
                process = psutil.Process(pid)
                if abs(process.create_time() - created) < 0.01 and pid != os.getpid():
                    process.kill()
                    killed.append(pid)
            except psutil.Error:
                pass
        self.seen.clear()
        return sorted(killed)


def session_members(sid: int, proc: Path = Path("/proc")) -> list[int]:
    """Pids whose session id is ``sid`` (the loop is its session's leader)."""
    members: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and int(entry.name) != sid:  # fields after comm: state ppid pgrp session
            members.append(int(entry.name))
    return members
