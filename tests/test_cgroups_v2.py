"""
cgroup v2, in two halves.

Real: this kernel mounts a cgroup2 hierarchy (``mount -t cgroup2 none DIR``) whose only free
controller is hugetlb (memory, cpu and pids are bound to the v1 hierarchies here). On such a mount
a cgroup stands in for the systemd unit's delegated one: the no-internal-processes rule (enabling a
controller while a process is in the cgroup fails with EBUSY; the move into ``supervisor/`` fixes
it), loop cgroup creation, a forked process placing itself, ``cgroup.kill`` of a stray process in
a new session, ``cgroup.events`` populated, removal.

Fake tree: memory, cpu and pids limits and ``memory.events`` cannot be shown on this host's v2, so
those tests run the same backend over a plain directory holding the files cgroupfs would have
(the backend writes them; the test reads what it wrote, and writes the kernel's side itself).
"""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from multitrigger import oom
from multitrigger.cgroups import CgroupUnavailable, files, open_hierarchy
from multitrigger.cgroups.join import join
from multitrigger.cgroups.v2 import V2Hierarchy
from multitrigger.config import Limits

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cgroup2(tmp_path: Path):
    """A private mount of the cgroup2 hierarchy with hugetlb enabled at its root; unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting cgroup2 needs root")
    mnt = tmp_path / "cg2"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "cgroup2", "none", str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("this kernel cannot mount cgroup2")
    enabled_here = "hugetlb" not in (mnt / "cgroup.subtree_control").read_text().split()
    try:
        if "hugetlb" not in (mnt / "cgroup.controllers").read_text().split():
            pytest.skip("no free cgroup v2 controller (hugetlb) on this host")
        if enabled_here:
            files.write(mnt / "cgroup.subtree_control", "+hugetlb")
        yield mnt
    finally:
        if enabled_here:  # put the host back as it was (EBUSY if someone else uses it meanwhile)
            try:
                files.write(mnt / "cgroup.subtree_control", "-hugetlb")
            except OSError:
                pass
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.fixture
def unit(cgroup2: Path):
    """A cgroup standing in for a Delegate=yes unit, with a 'supervisor' process inside."""
    path = cgroup2 / f"mt-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    stand_in = subprocess.Popen(["sleep", "120"])
    files.write(path / "cgroup.procs", stand_in.pid)
    yield path, stand_in
    stand_in.kill()
    stand_in.wait()
    for child in [c for c in path.iterdir() if c.is_dir()]:
        files.write(child / "cgroup.kill", 1)  # whatever a failed test left inside
        files.wait_for(lambda c=child: files.read_keyed(c / "cgroup.events").get("populated") == "0", 5)
        child.rmdir()
    path.rmdir()


def _poll(check, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    return files.wait_for(check, timeout)


def _place_forked(procs_files: tuple[str, ...], pid_file: Path) -> int:
    """Fork a process that joins the cgroup itself, starts ``sleep`` in a new session, then sleeps."""
    pid = os.fork()
    if pid == 0:
        try:
            join(procs_files)
            os.execv("/bin/sh", ["sh", "-c", f"setsid sleep 600 & echo $! > {pid_file}; exec sleep 600"])
        finally:
            os._exit(1)
    return pid


def test_no_internal_processes_then_a_leaf_then_loops_that_die_together(unit, tmp_path: Path) -> None:
    path, stand_in = unit
    root = path.parent
    with pytest.raises(OSError) as busy:  # the rule itself: a cgroup with processes has no controlled children
        files.write(path / "cgroup.subtree_control", "+hugetlb")
    assert busy.value.errno == errno.EBUSY

    hierarchy = V2Hierarchy(root, frozenset({"hugetlb"}), own="/" + path.name)
    assert files.pids(path / "supervisor" / "cgroup.procs") == {stand_in.pid}  # moved into the leaf
    assert not files.pids(path / "cgroup.procs")
    assert "hugetlb" in (path / "cgroup.subtree_control").read_text().split()

    group = hierarchy.create("team_a")
    assert group.path == path / "loop-team_a" and (group.path / "hugetlb.2MB.max").exists()
    pid_file = tmp_path / "sleep.pid"
    loop = _place_forked(group.join_files, pid_file)
    assert _poll(lambda: pid_file.exists() and pid_file.read_text().strip())
    stray = int(pid_file.read_text())
    assert _poll(lambda: os.getsid(stray) == stray)  # its own session (once setsid ran): no process group reaches it
    assert os.getsid(loop) != stray
    assert group.pids() == {loop, stray}
    assert files.read_keyed(group.path / "cgroup.events")["populated"] == "1"

    assert group.kill_all() == 2
    assert os.waitpid(loop, 0)[1] != 0
    assert files.read_keyed(group.path / "cgroup.events")["populated"] == "0"
    assert not os.path.exists(f"/proc/{stray}") or "Z" in Path(f"/proc/{stray}/stat").read_text().split()[2]
    group.remove()
    assert not group.path.exists()
    assert files.pids(path / "supervisor" / "cgroup.procs") == {stand_in.pid}  # the supervisor untouched


def test_without_cgroup_kill_a_frozen_forker_and_its_strays_all_die(unit, tmp_path: Path) -> None:
    """The fallback for kernels before 5.14 (no ``cgroup.kill``), on the real cgroup2 mount: this
    kernel has ``cgroup.kill``, so the test calls the fallback itself (``freeze_and_kill``)."""
    path, _stand_in = unit
    hierarchy = V2Hierarchy(path.parent, frozenset({"hugetlb"}), own="/" + path.name)
    group = hierarchy.create("forker")
    pid_file = tmp_path / "sleep.pid"
    loop = _place_forked(group.join_files, pid_file)
    assert _poll(lambda: pid_file.exists() and pid_file.read_text().strip())
    stray = int(pid_file.read_text())
    forker = subprocess.Popen(["sh", "-c", "while :; do sleep 600 & done"])  # forks all the time
    files.write(group.path / "cgroup.procs", forker.pid)
    assert _poll(lambda: len(group.pids()) > 20)

    killed = group.freeze_and_kill()
    assert killed > 20  # the forker and what it forked, the loop and its stray in a new session
    assert not group.pids() and files.read_keyed(group.path / "cgroup.events")["populated"] == "0"
    assert (group.path / "cgroup.freeze").read_text().strip() == "0"  # thawed: the cgroup can be reused
    assert os.waitpid(loop, 0)[1] != 0 and forker.wait(5) == -9
    assert not os.path.exists(f"/proc/{stray}") or "Z" in Path(f"/proc/{stray}/stat").read_text().split()[2]
    group.remove()
    assert not group.path.exists()


def test_delegate_subgroup_means_already_in_the_leaf(unit) -> None:
    path, stand_in = unit
    leaf = path / "supervisor"
    leaf.mkdir()
    files.write(leaf / "cgroup.procs", stand_in.pid)  # what DelegateSubgroup=supervisor does for us
    hierarchy = V2Hierarchy(path.parent, frozenset({"hugetlb"}), own=f"/{path.name}/supervisor")
    assert hierarchy.base == path and "hugetlb" in (path / "cgroup.subtree_control").read_text()
    hierarchy.create("b").remove()


# -- fake tree ----------------------------------------------------------------------------------


def _fake_unit(tmp_path: Path, controllers: str = "cpu memory pids") -> tuple[Path, Path]:
    root = tmp_path / "fake-cgroup2"
    unit = root / "system.slice" / "multitrigger.service"
    unit.mkdir(parents=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (unit / "cgroup.controllers").write_text(controllers + "\n")
    (unit / "cgroup.procs").write_text("")
    return root, unit


def test_limits_usage_and_oom_events_over_a_fake_tree(tmp_path: Path) -> None:
    root, unit = _fake_unit(tmp_path)
    hierarchy = open_hierarchy(root, "ignored-on-v2", frozenset({"memory", "cpu", "pids"}),
                               own="/system.slice/multitrigger.service")
    assert hierarchy.version == 2 and not hierarchy.missing
    assert (unit / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    group = hierarchy.create("team_a")
    group.set_limits(Limits(memory=512 * 2**20, memory_high=400 * 2**20, cpu=0.5, pids=256))
    written = {name: (group.path / name).read_text() for name in
               ("memory.max", "memory.high", "memory.oom.group", "cpu.max", "pids.max")}
    assert written == {"memory.max": str(512 * 2**20), "memory.high": str(400 * 2**20), "memory.oom.group": "1",
                       "cpu.max": "50000 100000", "pids.max": "256"}
    group.set_limits(Limits(pids=64))  # lifting the others
    assert (group.path / "memory.max").read_text() == "max" and (group.path / "cpu.max").read_text() == "max 100000"

    # The kernel's side, written by the test: counters a loop's death is judged by.
    (group.path / "memory.events").write_text("low 0\nhigh 4\nmax 9\noom 1\noom_kill 0\noom_group_kill 0\n")
    watch = oom.watch_file(group.oom_counter_file)
    (group.path / "memory.events").write_text("low 0\nhigh 4\nmax 12\noom 2\noom_kill 1\noom_group_kill 1\n")
    (group.path / "memory.current").write_text("1048576\n")
    (group.path / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    (group.path / "pids.current").write_text("7\n")
    (group.path / "pids.events").write_text("max 3\n")
    assert watch.fired()
    usage = group.usage()
    assert (usage.memory_bytes, usage.cpu_seconds, usage.pids, usage.oom_kills, usage.pids_refused) == (1048576, 2.5, 7, 1, 3)


def test_a_unit_without_the_controllers_names_the_fix(tmp_path: Path) -> None:
    root, _unit = _fake_unit(tmp_path, controllers="")
    hierarchy = open_hierarchy(root, "x", frozenset({"memory"}), own="/system.slice/multitrigger.service")
    problem, fix = hierarchy.missing["memory"]
    assert "controller memory is not available" in problem and "Delegate=yes" in fix
    with pytest.raises(CgroupUnavailable, match="root cgroup"):
        open_hierarchy(root, "x", frozenset({"memory"}), own="/")
