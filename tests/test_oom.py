"""
Out-of-memory kills are told apart from ``kill -9`` by the memory cgroup's OOM counter.

The cgroup v1 test is real: a memory cgroup with a limit, multitrigger running in it, a trigger
that really exhausts it, the kernel's OOM killer really killing its loop. cgroup v2 (what most
production hosts run) is not mounted writable here (this machine is v1/hybrid), so v2 counter
parsing is tested over a fake cgroupfs tree — the one place a fake stands in, and why.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from multitrigger import oom
from mt_testsupport.home import FIRE_AT, AirflowHome, DeferSpec, decode_serde, deferring_bundle, iso_in

MEMORY_V1 = Path("/sys/fs/cgroup/memory")


def _fake(tmp_path: Path, cgroup_line: str, counter_rel: str, content: str) -> tuple[Path, Path]:
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "cgroup").write_text(cgroup_line + "\n")
    counter = root / counter_rel
    counter.parent.mkdir(parents=True)
    counter.write_text(content)
    return proc, root


@pytest.mark.parametrize(
    ("line", "counter", "before", "after"),
    [
        ("0::/system.slice/airflow.service/loop-a", "system.slice/airflow.service/loop-a/memory.events",
         "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n", "low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\n"),
        ("4:memory:/airflow/loop-a", "memory/airflow/loop-a/memory.oom_control",
         "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
    ],
    ids=["v2-fake-tree", "v1-fake-tree"],
)
def test_counter_parsing(tmp_path, line, counter, before, after):
    proc, root = _fake(tmp_path, line, counter, before)
    watch = oom.watch(42, root=root, proc=proc)
    assert watch is not None and not watch.fired()
    (root / counter).write_text(after)
    assert watch.fired()
    assert "out of memory" in watch.describe()


def test_no_memory_cgroup_means_no_watch(tmp_path):
    proc, root = _fake(tmp_path, "1:cpu:/x", "cpu/x/cpu.shares", "1024\n")
    assert oom.watch(42, root=root, proc=proc) is None


@pytest.fixture
def memory_cgroup():
    """A real v1 memory cgroup, nested under this process's own, limited to 1.2 GiB."""
    own = next(line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()
               if "memory" in line.split(":")[1].split(","))
    parent = MEMORY_V1 / own.lstrip("/")
    if not (parent / "memory.limit_in_bytes").exists() or not os.access(parent, os.W_OK):
        pytest.skip("needs a writable cgroup v1 memory hierarchy (root on a v1/hybrid host)")
    cg = parent / f"multitrigger-oom-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    (cg / "memory.limit_in_bytes").write_text(str(1200 * 1024 * 1024))
    yield cg
    for pid in (cg / "cgroup.procs").read_text().split():
        try:
            (parent / "cgroup.procs").write_text(pid)
        except OSError:
            pass
    cg.rmdir()


@pytest.mark.timeout(240)
def test_a_loop_killed_by_the_oom_killer_is_reported_out_of_memory(memory_cgroup, tmp_path, start_triggerer):
    home = AirflowHome.create(tmp_path / "home", {"x_oom": deferring_bundle("dag_x", n_tasks=2),
                                                   "team_a": deferring_bundle("dag_a", n_tasks=2)})
    gate = tmp_path / "gate"  # the healthy ones fire once the hog has been failed: they outlived every OOM kill
    hog, healthy, neighbour = home.defer_many([
        DeferSpec("dag_x", "t0", "mt_testsupport.crash_triggers.MemoryHogTrigger", {"after": 1.0}, validate=False),
        DeferSpec("dag_x", "t1", FIRE_AT, {"moment": iso_in(0), "gate": str(gate)}),
        DeferSpec("dag_a", "t0", FIRE_AT, {"moment": iso_in(0), "gate": str(gate)}),
    ])
    config = '[loops.x_oom]\nbundles = ["x_oom"]\n[loops.x_oom.restart]\nbackoff_initial = 0.2\nbackoff_max = 1.0\n'
    enter = ["sh", "-c", f'echo $$ > {memory_cgroup}/cgroup.procs && exec "$@"', "sh"]
    mt = start_triggerer(home, "--skip-serve-logs", config=config, prefix=enter)
    states = home.wait_for_states([hog], "scheduled", timeout=180)
    gate.touch()
    states |= home.wait_for_states([healthy, neighbour], "scheduled", timeout=60)

    reason = "".join(decode_serde(states[hog].next_kwargs)["traceback"])
    assert states[hog].next_method == "__fail__"
    assert "crashed its loop 'x_oom' 3 times: out of memory" in reason, reason
    assert states[healthy].next_method == states[neighbour].next_method == "execute_complete"
    assert int((memory_cgroup / "memory.oom_control").read_text().split("oom_kill ")[1].split()[0]) >= 3
    assert mt.popen.poll() is None  # the supervisor itself was never the OOM killer's pick
