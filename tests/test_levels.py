"""Isolation levels, capacity shares, users and the served scope: config, ``config check``, ``Scope``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from multitrigger.cli import bundle_lines
from multitrigger.config import load_config
from multitrigger.scope import Bundles, Scope, served_config
from tests.test_config import assert_problem, bundle_venv, problems, write  # noqa: F401 (fixture)

MULTITRIGGER = str(Path(sys.executable).parent / "multitrigger")

ALL_LEVELS = """
    [loops.default]
    capacity = 50
    [loops.s]
    bundles = ["s1", "s2"]
    level = "shared"
    [loops.p]
    bundles = ["p"]
    level = "process"
    capacity = 20
    [loops.v]
    bundles = ["v"]
    venv = "{venv}"
    [loops.d]
    bundles = ["d1", "d2"]
    level = "dedicated"
    capacity = 5
    [loops.c]
    bundles = ["c"]
    [loops.c.limits]
    memory = "512M"
    """


def test_every_level_and_what_it_makes(tmp_path: Path, bundle_venv: Path) -> None:
    config = load_config(write(tmp_path, ALL_LEVELS.format(venv=bundle_venv)))
    assert sorted(config.loops) == ["c", "d", "default", "p", "v"]  # a shared entry is no loop of its own
    assert config.shared == {"s": frozenset({"s1", "s2"})}
    levels = {name: lp.level for name, lp in config.loops.items()}
    assert levels == {"default": "shared", "p": "process", "v": "venv", "d": "dedicated", "c": "cgroup"}
    assert config.loops["p"].capacity == 20 and config.loops["default"].capacity == 50
    assert config.loops["v"].capacity is None


def test_scope_of_an_instance_without_bundles_skips_dedicated_loops(tmp_path: Path, bundle_venv: Path) -> None:
    config = load_config(write(tmp_path, ALL_LEVELS.format(venv=bundle_venv)))
    scope = Scope.of(config)
    assert set(scope.loops) == {"default", "p", "v", "c"}
    for bundle in ("s1", "p", "v", "anything", None):
        assert bundle in scope.served, bundle
    assert "d1" not in scope.served and "d2" not in scope.served
    groups = {g.loop: g for g in scope.groups}
    assert groups["p"].capacity == 20 and "p" in groups["p"].bundles and "v" not in groups["p"].bundles
    # the default loop's share: every bundle nobody lists (shared entries' too) and unknown ones
    assert all(b in groups["default"].bundles for b in ("s1", "anything", None))
    assert not any(b in groups["default"].bundles for b in ("p", "v", "d1"))
    assert "v" in groups[None].bundles and groups[None].capacity is None  # the uncapped rest
    assert not any(b in groups[None].bundles for b in ("p", "s1", None, "d1"))
    served = served_config(config, scope)
    assert sorted(served.loops) == ["c", "default", "p", "v"] and served.served == scope.served
    assert served.loop_for_bundle("d1") is None and served.loop_for_bundle("s1") == served.loop_for_bundle(None) == "default"


def test_one_bundle_to_loop_rule_everywhere_and_unserved_bundles_run_nowhere(tmp_path: Path, bundle_venv: Path) -> None:
    """``Config.loop_for_bundle`` is the rule: the router, the claim groups, the trigger paths and
    ``bundles_of`` agree with it, on the file's config and on each instance's served config; a
    bundle the instance does not serve (dedicated, outside ``--bundles``, or an asset watcher's DAG
    that is another instance's) is ``NotServed`` by the router, never the default loop's."""
    from multitrigger.routing import NotServed, Route, Router
    from multitrigger.supervisor.trigger_path import TriggerPaths

    config = load_config(write(tmp_path, ALL_LEVELS.format(venv=bundle_venv)))
    names = ("s1", "p", "v", "d1", "d2", "c", "other", None)
    roots = {b: tmp_path / "roots" / b for b in names if b}
    for only in (None, ["d1"], ["other"], ["p", "d2"]):
        scope = Scope.of(config, only)
        served = served_config(config, scope)
        router, paths = Router(served), TriggerPaths.compute(served, inherited=[], roots=roots, log_entries=False)
        for bundle in names:
            loop = served.loop_for_bundle(bundle)
            assert (loop is not None) == (bundle in scope.served), (only, bundle, loop)
            assert all((bundle in served.bundles_of(name)) == (name == loop) for name in served.loops), (only, bundle)
            route = router.route("x.Y", bundle)
            assert route == (NotServed(bundle) if loop is None else Route(loop, bundle)), (only, bundle, route)
            with_root = {n for n, entries in paths.loops.items() if any(e.source == f"bundle {bundle}" for e in entries)}
            assert with_root == ({loop} if loop and bundle else set()), (only, bundle, with_root)
            group = [g.loop for g in scope.groups if bundle in g.bundles]
            assert len(group) == (loop is not None), (only, bundle, group)
    # A dedicated bundle's loop on the instance started for it; nothing of it on the others.
    assert served_config(config, Scope.of(config, ["d1"])).loop_for_bundle("d1") == "d"
    assert served_config(config, Scope.of(config)).loop_for_bundle("d1") is None
    assert served_config(config, Scope.of(config, ["d1"])).loop_for_bundle("d2") is None


def test_scope_of_an_instance_started_for_bundles(tmp_path: Path, bundle_venv: Path) -> None:
    config = load_config(write(tmp_path, ALL_LEVELS.format(venv=bundle_venv)))
    scope = Scope.of(config, ["d1"])
    assert scope.loops == ("d",)
    assert "d1" in scope.served and not any(b in scope.served for b in ("d2", "p", "s1", None))
    (group,) = scope.groups
    assert group.loop == "d" and group.capacity == 5 and group.bundles == Bundles(frozenset({"d1"}))
    # a bundle that no loop lists runs in this instance's default loop
    scope = Scope.of(config, ["x"])
    assert scope.loops == ("default",) and "x" in scope.served and None not in scope.served


def test_supervisor_bundles_key_and_the_flag_wins(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[supervisor]\nbundles = ["a"]\n[loops.a]\nbundles = ["a"]\nlevel = "dedicated"\n'))
    assert Scope.of(config).served == Bundles(frozenset({"a"}))
    assert Scope.of(config, ["b"]).served == Bundles(frozenset({"b"}))


@pytest.mark.parametrize("a, b", [
    (Bundles(frozenset("ab")), Bundles(frozenset("bc"))),
    (Bundles(frozenset("ab"), True, True), Bundles(frozenset("bc"))),
    (Bundles(frozenset("ab")), Bundles(frozenset("bc"), True, False)),
    (Bundles(frozenset("ab"), True, False), Bundles(frozenset("bc"), True, True)),
], ids=["finite-finite", "cofinite-finite", "finite-cofinite", "cofinite-cofinite"])
def test_bundle_set_algebra_agrees_with_membership(a: Bundles, b: Bundles) -> None:
    for x in ("a", "b", "c", "d", None):
        assert (x in a & b) == (x in a and x in b)
        assert (x in a | b) == (x in a or x in b)
        assert (x in ~a) == (x not in a)


# --- bad config, one per level ---------------------------------------------------------------


@pytest.mark.parametrize("text, key, fragments", [
    ('[loops.s]\nbundles = ["s"]\nlevel = "shared"\nvenv = "v"\ncapacity = 3\n', "loops.s.capacity",
     ("shared entry runs its bundles in the default loop", "set it on [loops.default]")),
    ('[loops.p]\nbundles = ["p"]\nlevel = "process"\npython = "{python}"\n', "loops.p.python",
     ("runs the supervisor's interpreter", 'set level = "venv"')),
    ('[loops.v]\nbundles = ["v"]\nlevel = "venv"\n', "loops.v.level",
     ("needs an interpreter of its own", 'venv = "/opt/venvs/v"')),
    ('[loops.c]\nbundles = ["c"]\nlevel = "cgroup"\n', "loops.c.level",
     ('level "cgroup" needs limits', "add a [loops.c.limits] table")),
    ('[loops.c]\nbundles = ["c"]\nlevel = "process"\n[loops.c.limits]\npids = 64\n', "loops.c.limits",
     ("level 'process' has no cgroup limits", 'set level = "cgroup"')),
    ('[loops.c]\nbundles = ["c"]\nlevel = "venv"\npython = "{python}"\n[loops.c.limits]\npids = 64\n', "loops.c.limits",
     ("level 'venv' has no cgroup limits", "own venv, plus limits")),
    ('[loops.default]\nlevel = "dedicated"\n', "loops.default.level",
     ("the default loop is the shared loop", 'level = "dedicated"')),
    ('[loops.x]\nbundles = ["x"]\nlevel = "isolated"\n', "loops.x.level",
     ("unknown level 'isolated'", '"shared" or "process" or "venv" or "cgroup" or "dedicated"')),
    ('[loops.x]\nbundles = ["x"]\ncapacity = 0\n', "loops.x.capacity", ("must be >= 1", "an integer >= 1")),
    ('[loops.x]\nbundles = ["x"]\nuser = "no_such_user_mt"\n', "loops.x.user",
     ("user 'no_such_user_mt' does not exist", "useradd --system no_such_user_mt")),
    ('[supervisor]\nbundles = []\n', "supervisor.bundles", ("is empty", "list at least one bundle")),
], ids=["shared", "process", "venv", "cgroup", "process-limits", "venv-limits", "dedicated-default", "unknown-level", "capacity", "user", "served"])
def test_bad_config_for_each_level(tmp_path: Path, text: str, key: str, fragments: tuple[str, ...]) -> None:
    path = write(tmp_path, text.format(python=sys.executable))
    lines = problems(path)
    assert_problem(lines, path, key, *fragments)


def test_shared_entry_reports_every_key_it_cannot_have(tmp_path: Path) -> None:
    path = write(tmp_path, '[loops.s]\nbundles = ["s"]\nlevel = "shared"\nstart_method = "exec"\ncapacity = 3\n')
    lines = problems(path)
    assert_problem(lines, path, "loops.s.start_method", "default loop")
    assert_problem(lines, path, "loops.s.capacity", "default loop")
    assert len(lines) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="a loop user other than our own needs root")
def test_root_may_name_a_user_but_not_root(tmp_path: Path) -> None:
    path = write(tmp_path, '[loops.x]\nbundles = ["x"]\nuser = "nobody"\n')
    assert load_config(path).loops["x"].user == "nobody"
    path = write(tmp_path, '[loops.x]\nbundles = ["x"]\nuser = "root"\n')
    assert_problem(problems(path), path, "loops.x.user", "must not run as root")


def test_config_check_prints_each_bundles_level_and_share(tmp_path: Path, bundle_venv: Path) -> None:
    path = write(tmp_path, ALL_LEVELS.format(venv=bundle_venv))
    env = os.environ | {"AIRFLOW_HOME": str(tmp_path / "home")}
    out = subprocess.run([MULTITRIGGER, "config", "check", "--config", str(path)], env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    expected = [
        "  this instance serves: every bundle but d1, d2",
        "  bundle d1: loop d, level dedicated, capacity share 5; not run here (an instance started with --bundles d1 runs it)",
        "  bundle p: loop p, level process, capacity share 20; runs here",
        "  bundle s1: loop default, level shared, capacity share 50; runs here",
        "  bundle v: loop v, level venv, no capacity share (the instance's --capacity); runs here",
        "  bundle c: loop c, level cgroup, no capacity share (the instance's --capacity); runs here",
        "  bundle (any other): loop default, level shared, capacity share 50; runs here",
    ]
    for line in expected:
        assert line in lines, out.stdout
    assert any(ln.startswith("  loop d: dedicated") and ln.endswith("(not run by this instance)") for ln in lines)
    config = load_config(path)  # what the same command prints with --bundles d1
    assert "bundle d1: loop d, level dedicated, capacity share 5; runs here" in bundle_lines(config, Scope.of(config, ["d1"]))
    assert "bundle p: loop p, level process, capacity share 20; not run here" in bundle_lines(config, Scope.of(config, ["d1"]))

