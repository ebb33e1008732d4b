"""A loop's Unix user: the loop process drops to it before any user code runs. Stdlib only.

``user = "team_a"`` on a loop (the supervisor runs as root): the supervisor gives the loop's private
home to that user (``own_home``: owner, mode 0700, so other loops' users cannot read it) and names
the user in ``MULTITRIGGER_LOOP_USER``. The loop process — exec'd, or forked from its interpreter's
zygote, which stays root because zygotes are shared by every loop of an interpreter — calls
``drop`` first thing in ``multitrigger.loop.__main__.main``: supplementary groups, then group,
then user (``setgroups`` / ``setgid`` / ``setuid``: the order that leaves no root group behind),
and checks that root cannot be regained. What it inherited stays open (its sockets, the blame
file it maps later is its own); what it opens afterwards is checked against the user.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

ENV_USER = "MULTITRIGGER_LOOP_USER"


def own_home(home: Path, user: str, files: tuple[Path, ...] = ()) -> None:
    """Supervisor side (root): *home* and *files* belong to *user*, and *home* is private (0700)."""
    entry = pwd.getpwnam(user)
    for path in (home, *files):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(home, 0o700)


def drop(environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """Loop side: become ``MULTITRIGGER_LOOP_USER`` if set (no-op otherwise). Raises if it cannot."""
    name = environ.get(ENV_USER)
    if not name:
        return
    entry = pwd.getpwnam(name)
    if os.geteuid() != entry.pw_uid:
        os.setgroups(os.getgrouplist(name, entry.pw_gid))
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - would mean the drop did not happen
        raise RuntimeError(f"loop could still become root after dropping to {name!r}")
    environ.update(USER=name, LOGNAME=name, HOME=environ.get("AIRFLOW_HOME", entry.pw_dir))


def first_barrier(path: Path, user: str, need: int = os.X_OK) -> Path | None:
    """The first directory on the way to *path* that *user* may not search, or *path* itself if the
    user lacks *need* on it; ``None`` if the user reaches it. From mode bits and ownership (root's
    ``os.access`` answers for root, not for the loop's user); ACLs are not read."""
    entry = pwd.getpwnam(user)
    groups = set(os.getgrouplist(user, entry.pw_gid))
    resolved = Path(os.path.realpath(path))
    for step, bits in [(p, os.X_OK) for p in reversed(resolved.parents)] + [(resolved, need)]:
        try:
            st = os.stat(step)
        except OSError:
            return step
        shift = 6 if st.st_uid == entry.pw_uid else 3 if st.st_gid in groups else 0
        if ((st.st_mode >> shift) & bits) != bits:
            return step
    return None
