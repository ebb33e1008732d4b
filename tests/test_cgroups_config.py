"""``[loops.<name>.limits]``: units, ranges and the rules across its keys, checked at load time."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

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
