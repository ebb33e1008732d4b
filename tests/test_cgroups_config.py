"""``[loops.<name>.limits]``: units, ranges and the rules across its keys, checked at load time."""

from __future__ import annotations

import json
import textwrap
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from multitrigger.config import ConfigError, Limits, load_config


def _load(tmp_path: Path, limits: str):
    path = tmp_path / "multitrigger.toml"
    path.write_text(textwrap.dedent('[loops.team_a]\nbundles = ["team_a"]\n[loops.team_a.limits]\n') + textwrap.dedent(limits))
    return load_config(path)


def test_limits_parse_units_and_default_to_none(tmp_path: Path) -> None:
    config = _load(tmp_path, 'memory = "512M"\nmemory_high = "400MiB"\ncpu = 0.5\npids = 256\n')
    limits = config.loops["team_a"].limits
    assert limits == Limits(memory=512 * 2**20, memory_high=400 * 2**20, cpu=0.5, pids=256)
    assert limits.controllers == {"memory", "cpu", "pids"}
    assert config.loops["default"].limits is None
    assert _load(tmp_path, 'memory = "1.5G"\ncpu = 2\n').loops["team_a"].limits.memory == 3 * 2**29
    assert _load(tmp_path, "memory = 33554432\n").loops["team_a"].limits.memory == 32 * 2**20
    with pytest.raises(Exception):
        limits.memory = 1  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(("text", "key", "expected"), [
    ('memory = "512X"\n', "memory", "is not a size"),
    ('memory = "1M"\n', "memory", "below the minimum of 16M"),
    ("memory = true\n", "memory", "must be a size, not boolean"),
    ('memory = "64M"\nmemory_high = "128M"\n', "limits", "memory_high (134217728 bytes) is above memory"),
    ("cpu = 0.001\n", "cpu", "must be >= 0.01"),
    ('cpu = "1"\n', "cpu", "must be a number, not string"),
    ("pids = 2\n", "pids", "must be >= 8"),
    ("pids = 1.5\n", "pids", "must be an integer, not float"),
    ("best_effort = true\n", "limits", "sets no limit"),
    ("memroy = 1\n", "memroy", "unknown key"),
], ids=["unit", "tiny", "bool", "high-above-max", "cpu-range", "cpu-string", "pids-range", "pids-float", "empty", "typo"])
def test_bad_limits_name_the_key_and_the_fix(tmp_path: Path, text: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    line = str(err.value)
    assert f"multitrigger.toml: loops.team_a.limits{'' if key == 'limits' else '.' + key}: " in line
    assert expected in line and " — " in line, line


# -- limits this host cannot apply ------------------------------------------------------------------
# "No writable cgroups" is simulated by pointing [supervisor] cgroup_root at a directory that does
# not exist: the tests run as root, which writes through any file mode, so a read-only cgroupfs
# would need a mount of its own; a missing one is what a container without /sys/fs/cgroup sees.

from multitrigger.cgroups.loops import LoopCgroups  # noqa: E402
from mt_testsupport.home import FIRE_AT, AirflowHome, DeferSpec, deferring_bundle, iso_in  # noqa: E402


def test_a_limit_on_a_host_without_cgroups_stops_start_up_with_the_fix(tmp_path: Path) -> None:
    config = _load(tmp_path, 'memory = "64M"\npids = 64\n')
    with pytest.raises(ConfigError) as err:
        LoopCgroups.open(config, tmp_path / "no-cgroupfs", "x")
    lines = str(err.value).splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{tmp_path}/multitrigger.toml: loops.team_a.limits.memory: no cgroup filesystem at ")
    assert "set [supervisor] cgroup_root" in lines[0] and "or set best_effort = true" in lines[0]
    assert "loops.team_a.limits.pids: " in lines[1]


def test_a_unit_without_delegation_names_delegate_yes(tmp_path: Path) -> None:
    root = tmp_path / "fake-cgroup2"  # a v2 tree whose unit cgroup got no controllers (see test_cgroups_v2)
    unit = root / "system.slice" / "mt.service"
    unit.mkdir(parents=True)
    for d in (root, unit):
        (d / "cgroup.controllers").write_text("\n")
    (unit / "cgroup.procs").write_text("")
    config = _load(tmp_path, 'memory = "64M"\n')
    with pytest.raises(ConfigError, match=r"loops\.team_a\.limits\.memory: cgroup v2 controller memory is not "
                                          r"available .* — add Delegate=yes"):
        LoopCgroups.open(config, root, "x", own="/system.slice/mt.service")


def test_best_effort_starts_without_the_limits_and_says_so(tmp_path: Path) -> None:
    config = _load(tmp_path, 'memory = "64M"\nbest_effort = true\n')
    groups = LoopCgroups.open(config, tmp_path / "no-cgroupfs", "x")
    assert groups.get("team_a") is None
    assert groups.lost["team_a"] == [f"memory: no cgroup filesystem at {tmp_path / 'no-cgroupfs'}"]


@pytest.mark.timeout(180)
def test_multitrigger_run_refuses_then_best_effort_runs_and_warns(tmp_path: Path, start_triggerer) -> None:
    home = AirflowHome.create(tmp_path / "home", {"team_a": deferring_bundle("dag_a", n_tasks=1)})
    base = (f'[supervisor]\ncgroup_root = "{tmp_path}/no-cgroupfs"\n[loops.team_a]\nbundles = ["team_a"]\n'
            '[loops.team_a.limits]\nmemory = "64M"\n')
    refused = start_triggerer(home, "--skip-serve-logs", config=base)
    assert refused.popen.wait(120) == 2
    assert "loops.team_a.limits.memory: no cgroup filesystem at" in refused.text()
    assert "or set best_effort = true" in refused.text()

    (ref,) = home.defer_many([DeferSpec("dag_a", "t0", FIRE_AT, {"moment": iso_in(1)})])
    runs = start_triggerer(home, "--skip-serve-logs", "--health-port", "0", config=base + "best_effort = true\n")
    assert home.wait_for_states([ref], "scheduled", timeout=120)[ref].next_method == "execute_complete"
    assert "LOOP RUNS WITHOUT ITS LIMITS (best_effort = true)" in runs.text()
    # ... and later in health: /loops names what the loop runs without, /metrics says 0 applied.
    url = json.loads((home.path / "multitrigger" / "health.json").read_text())["url"]
    (loop,) = [l for l in json.loads(urllib.request.urlopen(url + "/loops", timeout=10).read())["loops"] if l["name"] == "team_a"]
    assert loop["limits_not_applied"] == [f"memory: no cgroup filesystem at {tmp_path}/no-cgroupfs"]
    metrics = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    (applied,) = [s for f in text_string_to_metric_families(metrics) for s in f.samples
                  if s.name == "multitrigger_loop_limits_applied" and s.labels["loop"] == "team_a"]
    assert applied.value == 0
    assert runs.stop() == 0
