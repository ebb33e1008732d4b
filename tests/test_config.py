"""Config loading and validation, including the real interpreter handshake (probe=True)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
from pydantic import ValidationError

import multitrigger
from multitrigger.routing import Refusal, Route, Router
from multitrigger.config import (
    DEFAULT_LOOP,
    Config,
    ConfigError,
    RestartSettings,
    SupervisorSettings,
    load_config,
)
from multitrigger.interpreter_probe import (
    bootstrap_code,
    clean_env,
    loop_bootstrap_args,
    probe,
    source_root,
)
from multitrigger.venvs import create_bundle_venv


@pytest.fixture(scope="session")
def bundle_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real layered venv (no extra packages: creating it takes ~0.2 s)."""
    venv = tmp_path_factory.mktemp("bundle") / "team_a"
    create_bundle_venv(venv)
    return venv


@pytest.fixture(scope="session")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv of the same CPython without Airflow (not layered)."""
    venv = tmp_path_factory.mktemp("plain") / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "multitrigger.toml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path, text: str | None = None) -> list[str]:
    if text is not None:
        write(path.parent, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return str(err.value).splitlines()


def assert_problem(lines: list[str], path: Path, key: str, *fragments: str) -> None:
    """One line reads ``<file>: <key>: <problem> — <fix>`` and contains *fragments*."""
    prefix = f"{path}: {key}: "
    matching = [ln for ln in lines if ln.startswith(prefix)]
    assert matching, f"no problem for {key!r} in:\n" + "\n".join(lines)
    assert any(" — " in ln and all(f in ln for f in fragments) for ln in matching), matching


# --- defaults and the happy path ---------------------------------------------------------


def test_default_config_without_file(tmp_path: Path) -> None:
    for config in (load_config(None), load_config(tmp_path / "absent.toml")):
        assert config.source is None
        assert list(config.loops) == [DEFAULT_LOOP]
        loop = config.loops[DEFAULT_LOOP]
        assert loop.python == Path(sys.executable) and loop.venv is None
        assert loop.level == "shared" and loop.allowed_triggers is None
        assert loop.restart == RestartSettings()
        assert config.supervisor == SupervisorSettings()
        router = Router(config)
        assert router.loop_for("anything") == router.loop_for(None) == DEFAULT_LOOP


def test_empty_file_is_the_default_config(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert load_config(path).source == path and list(load_config(path).loops) == [DEFAULT_LOOP]


def test_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as err:
        load_config(path, must_exist=True)
    assert_problem(str(err.value).splitlines(), path, "(file)", "file not found", "create it")


def test_full_config(tmp_path: Path, bundle_venv: Path) -> None:
    path = write(tmp_path, f"""
        [loops.default]
        [loops.team_a]
        bundles = ["team_a", "team_a_extra"]
        venv = "{bundle_venv}"
        allowed_triggers = ["airflow.providers.standard.triggers.temporal.DateTimeTrigger", "acme.*"]
        [loops.team_a.restart]
        backoff_initial = 1
        poison_threshold = 5
        [loops."team-b.v2"]
        bundles = ["team_b"]
        python = "{sys.executable}"
        """)
    config = load_config(path)
    assert list(config.loops) == ["default", "team_a", "team-b.v2"]
    a = config.loops["team_a"]
    assert a.bundles == frozenset({"team_a", "team_a_extra"})
    assert a.venv == bundle_venv and a.python == bundle_venv / "bin" / "python"
    assert a.level == "venv"
    assert a.restart == RestartSettings(backoff_initial=1.0, poison_threshold=5)
    assert isinstance(a.restart.backoff_initial, float)
    # python = the supervisor's own interpreter: nothing differs but the process
    assert config.loops["team-b.v2"].python == Path(sys.executable)
    assert config.loops["team-b.v2"].level == "process"
    router = Router(config)
    assert router.loop_for("team_a_extra") == "team_a"
    assert router.loop_for("team_b") == "team-b.v2"
    assert router.loop_for("other") == "default"
    with pytest.raises(TypeError):
        config.loops["x"] = a  # type: ignore[index]
    with pytest.raises(AttributeError):
        a.level = "process"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.supervisor.db_timeout = 1.0  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        a.restart.jitter = 0.5  # type: ignore[misc]


def test_router_routes_by_bundle_then_allow_list(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [loops.t]
        bundles = ["t"]
        allowed_triggers = ["pkg.mod.Exact", "acme.triggers.*"]
        """)
    router = Router(load_config(path))
    assert router.route("pkg.mod.Exact", "t") == Route("t", "t")
    assert router.route("acme.triggers.http.HttpTrigger", "t") == Route("t", "t")
    for refused in ("pkg.mod.ExactOther", "acme.triggersx.T", "acme.triggers"):
        verdict = router.route(refused, "t")
        assert isinstance(verdict, Refusal) and verdict.loop == "t"
        assert verdict.reason == f"trigger {refused} is not in loop 't'\'s allowed_triggers (bundle 't')"
    # The default loop (unknown bundles, no bundle) has no allow-list here: everything runs.
    assert router.route("anything.At.all", "other") == Route("default", "other")
    assert router.route("anything.At.all", None) == Route("default", None)
    # A bundle version stays on the route of a loop that runs bundle code (bundle_versions runs it).
    assert router.route("pkg.mod.Exact", "t", "abc123") == Route("t", "t", "abc123")
    assert router.route("x.Y", None, "abc123") == Route("default", None)
    # Airflow's own (and providers') triggers are installed code, whatever the version: the loop's process.
    assert router.route("airflow.providers.standard.triggers.temporal.DateTimeTrigger", "other", "abc123") == \
        Route("default", "other")


def test_bundle_code_false_runs_no_versions_and_the_cap_is_per_loop(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [loops.a]
        bundles = ["a"]
        bundle_code = false
        [loops.b]
        bundles = ["b"]
        max_bundle_versions = 2
        """)
    config = load_config(path)
    assert Router(config).route("x.Y", "a", "abc123") == Route("a", "a")
    assert (config.loops["a"].max_bundle_versions, config.loops["b"].max_bundle_versions) == (4, 2)


def test_relative_venv_is_relative_to_the_config_file(tmp_path: Path) -> None:
    create_bundle_venv(tmp_path / "venvs" / "a")
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", '[loops.a]\nbundles = ["a"]\nvenv = "../venvs/a"\n')
    assert load_config(path).loops["a"].python == tmp_path / "venvs" / "a" / "bin" / "python"


def test_config_requires_default_loop() -> None:
    with pytest.raises(ValueError, match="default"):
        Config(source=None, loops={})


# --- every validation error ------------------------------------------------------------------


def test_bad_toml_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '[loops.a]\nbundles = ["a"\nvenv = 1\n')
    assert_problem(problems(path), path, "line 3, column 1", "invalid TOML", "fix the syntax")


def test_unknown_keys_name_key_and_allowed_ones(tmp_path: Path) -> None:
    path = write(tmp_path, """
        colour = "red"
        [loops.a]
        bundles = ["a"]
        venvv = "/opt/x"
        [loops.a.restart]
        backof_max = 3
        """)
    lines = problems(path)
    assert_problem(lines, path, "colour", "unknown key", "use one of: loops")
    assert_problem(lines, path, "loops.a.venvv", "unknown key", "bundles, venv, python, allowed_triggers")
    assert_problem(lines, path, "loops.a.restart.backof_max", "unknown key", "backoff_max")
    assert len(lines) == 3  # every problem at once, one per line


def test_bundle_in_two_loops_names_both(tmp_path: Path) -> None:
    path = write(tmp_path, '[loops.a]\nbundles = ["x", "y"]\n[loops.b]\nbundles = ["y"]\n')
    assert_problem(problems(path), path, "loops.b.bundles", "'y'", "'a'", "'b'", "exactly one loop")


@pytest.mark.parametrize("text, key, fragment", [
    ('[loops.a]\nbundles = []\n', "loops.a.bundles", "is empty"),
    ('[loops.a]\nvenv = "/x"\n', "loops.a.bundles", "missing"),
    ('[loops.a]\nbundles = "a"\n', "loops.a.bundles", "array of non-empty strings"),
    ('[loops.a]\nbundles = ["a", "a"]\n', "loops.a.bundles", "listed twice"),
    ('[loops.default]\nbundles = ["a"]\n', "loops.default.bundles", "takes no bundle list"),
    ('loops = 3\n', "loops", "must be a table"),
    ('[loops]\na = 1\n', "loops.a", "must be a table"),
    ('[loops.a]\nbundles = ["a"]\nvenv = 5\n', "loops.a.venv", "non-empty string"),
    ('[loops.a]\nbundles = ["a"]\nallowed_triggers = []\n', "loops.a.allowed_triggers", "is empty"),
    ('[loops.a]\nbundles = ["a"]\nallowed_triggers = ["a b"]\n', "loops.a.allowed_triggers[0]",
     "not a classpath"),
    ('[loops.a]\nbundles = ["a"]\nrestart = 1\n', "loops.a.restart", "must be a table"),
    ('[loops.a.restart]\njitter = "x"\n[loops.a]\n', "loops.a.restart.jitter", "a number"),
    ('[loops.a]\nbundles = ["a"]\n[loops.a.restart]\npoison_threshold = true\n',
     "loops.a.restart.poison_threshold", "an integer"),
    ('[loops.a]\nbundles = ["a"]\n[loops.a.restart]\njitter = 1.5\n', "loops.a.restart.jitter",
     "between 0 and 1"),
    ('[loops.a]\nbundles = ["a"]\n[loops.a.restart]\nbackoff_initial = 5\nbackoff_max = 1\n',
     "loops.a.restart.backoff_max", ">= backoff_initial"),
    ('[loops.a]\nbundles = ["a"]\nmax_bundle_versions = 0\n', "loops.a.max_bundle_versions", ">= 1"),
    ('[loops.a]\nbundles = ["a"]\nmax_bundle_versions = true\n', "loops.a.max_bundle_versions", "an integer"),
])
def test_invalid_values(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path = write(tmp_path, text)
    assert_problem(problems(path), path, key, fragment)


@pytest.mark.parametrize("name", ["bad name", "-dash", ".dot", "x" * 64, "ünï"])
def test_bad_loop_name(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f'[loops."{name}"]\nbundles = ["a"]\n')
    assert_problem(problems(path), path, f"loops.{name}", "invalid loop name", "letters, digits")


def test_missing_venv_dir(tmp_path: Path) -> None:
    path = write(tmp_path, '[loops.a]\nbundles = ["a"]\nvenv = "/nonexistent/venv"\n')
    assert_problem(problems(path), path, "loops.a.venv", "/nonexistent/venv does not exist",
                   "create_bundle_venv")


def test_venv_without_python(tmp_path: Path) -> None:
    (tmp_path / "empty_venv").mkdir()
    path = write(tmp_path, '[loops.a]\nbundles = ["a"]\nvenv = "empty_venv"\n')
    assert_problem(problems(path), path, "loops.a.venv", "bin/python does not exist", "recreate")


def test_non_executable_python(tmp_path: Path) -> None:
    (tmp_path / "v" / "bin").mkdir(parents=True)
    (tmp_path / "v" / "bin" / "python").write_text("#!/bin/sh\n")
    (tmp_path / "v" / "bin" / "python").chmod(0o644)
    (tmp_path / "py").write_text("")
    (tmp_path / "py").chmod(0o644)
    path = write(tmp_path, '[loops.a]\nbundles = ["a"]\nvenv = "v"\n'
                           '[loops.b]\nbundles = ["b"]\npython = "./py"\n')
    lines = problems(path)
    assert_problem(lines, path, "loops.a.venv", "is not executable", "chmod +x")
    assert_problem(lines, path, "loops.b.python", "is not executable", "chmod +x")


def test_venv_and_python_together(tmp_path: Path, bundle_venv: Path) -> None:
    path = write(tmp_path, f'[loops.a]\nbundles = ["a"]\nvenv = "{bundle_venv}"\n'
                           f'python = "{sys.executable}"\n')
    assert_problem(problems(path), path, "loops.a.python", "both set", "keep one")


@pytest.mark.parametrize("value", ['"venv"', '"process"', '"cgroup"', '"dedicated"', '"shared"', "2"])
def test_isolation_is_rejected_with_what_decides_the_level(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f'[loops.a]\nbundles = ["a"]\nisolation = {value}\n[loops.default]\nisolation = {value}\n')
    lines = problems(path)
    for key in ("loops.a.isolation", "loops.default.isolation"):
        assert_problem(lines, path, key, "no longer a setting", "rename it to level", '"dedicated"',
                       'venv/python set runs that interpreter ("venv")', 'supervisor\'s ("process")')
    assert len(lines) == 2


def test_level_follows_the_interpreter(tmp_path: Path, bundle_venv: Path) -> None:
    path = write(tmp_path, f'[loops.default]\nvenv = "{bundle_venv}"\n[loops.b]\nbundles = ["b"]\n'
                           f'[loops.c]\nbundles = ["c"]\nvenv = "{bundle_venv}"\n')
    config = load_config(path)
    assert config.loops["default"].level == "shared" and config.loops["default"].own_interpreter
    assert config.loops["b"].level == "process" and config.loops["c"].level == "venv"


def test_relative_python_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(sys.executable)
    path = write(tmp_path / "etc", '[loops.a]\nbundles = ["a"]\npython = "../bin/python"\n')
    loop = load_config(path).loops["a"]
    assert loop.python == tmp_path / "bin" / "python" and loop.level == "venv"


@pytest.mark.parametrize("text, key, fragment", [
    ('[loops.a]\nbundles = ["a"]\n[loops.a.restart]\nbackoff_initial = "1"\n',
     "loops.a.restart.backoff_initial", "must be a number, not string"),
    ('[loops.a]\nbundles = ["a"]\n[loops.a.restart]\npoison_threshold = 2.0\n',
     "loops.a.restart.poison_threshold", "must be an integer, not float"),
    ('[loops.a]\nbundles = ["a"]\n[loops.a.restart]\nstable_after = true\n',
     "loops.a.restart.stable_after", "must be a number, not boolean"),
    ('[loops.a]\nbundles = ["a", 2]\n', "loops.a.bundles[1]", "must be a string, not integer"),
    ('[loops.a]\nbundles = [""]\n', "loops.a.bundles[0]", "must not be empty"),
    ('[loops.a]\nbundles = ["a"]\nstart_method = 1\n', "loops.a.start_method", "unknown start method 1"),
    ('[supervisor]\ndb_retry_limit = "120"\n', "supervisor.db_retry_limit", "must be a number, not string"),
    ('[supervisor]\nmax_log_line_bytes = true\n', "supervisor.max_log_line_bytes", "an integer, not boolean"),
])
def test_types_are_strict(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path = write(tmp_path, text)
    assert_problem(problems(path), path, key, fragment)


def test_supervisor_settings_defaults_and_values(tmp_path: Path) -> None:
    assert SupervisorSettings() == load_config(write(tmp_path, "")).supervisor
    defaults = SupervisorSettings()
    assert (defaults.db_retry_limit, defaults.db_timeout, defaults.request_timeout) == (120.0, 10.0, 30.0)
    assert (defaults.max_log_line_bytes, defaults.log_bytes_per_second, defaults.log_buffer_bytes) == (
        1024 * 1024, 8 * 1024 * 1024, 16 * 1024 * 1024)
    path = write(tmp_path, """
        [supervisor]
        db_retry_limit = 5
        db_timeout = 2.5
        request_timeout = 7
        max_log_line_bytes = 4096
        log_bytes_per_second = 1024
        log_buffer_bytes = 4096
        """)
    s = load_config(path).supervisor
    assert (s.db_retry_limit, s.db_timeout, s.request_timeout) == (5.0, 2.5, 7.0)
    assert all(isinstance(v, float) for v in (s.db_retry_limit, s.db_timeout, s.request_timeout))
    assert (s.max_log_line_bytes, s.log_bytes_per_second, s.log_buffer_bytes) == (4096, 1024, 4096)


@pytest.mark.parametrize("text, key, fragments", [
    ("db_retry_limit = 0", "supervisor.db_retry_limit", ("must be > 0", "default 120.0")),
    ("db_timeout = -1", "supervisor.db_timeout", ("must be > 0", "default 10.0")),
    ("request_timeout = 0.0", "supervisor.request_timeout", ("must be > 0", "default 30.0")),
    ("max_log_line_bytes = 1023", "supervisor.max_log_line_bytes", (">= 1024", "default 1048576")),
    ("log_bytes_per_second = 100", "supervisor.log_bytes_per_second", (">= 1024",)),
    ("log_bytes_per_second = 1e7", "supervisor.log_bytes_per_second", ("an integer, not float",)),
    ("log_buffer_bytes = 2048", "supervisor.log_buffer_bytes", (">= max_log_line_bytes (1048576)",)),
    ("max_log_line_bytes = 8192\nlog_buffer_bytes = 4096", "supervisor.log_buffer_bytes",
     (">= max_log_line_bytes (8192)", "lower max_log_line_bytes")),
    ("db_retry = 5", "supervisor.db_retry", ("unknown key", "db_retry_limit, db_timeout, request_timeout")),
])
def test_invalid_supervisor_settings(tmp_path: Path, text: str, key: str, fragments: tuple[str, ...]) -> None:
    path = write(tmp_path, f"[supervisor]\n{text}\n")
    lines = problems(path)
    assert_problem(lines, path, key, *fragments)
    assert len(lines) == 1


def test_every_problem_at_once_including_rules_across_keys(tmp_path: Path) -> None:
    """A loop that fails the schema still gets the cross-key rules checked in the same run."""
    path = write(tmp_path, f"""
        [supervisor]
        db_timeout = "10"
        [loops.a]
        bundles = ["x"]
        [loops.b]
        bundles = ["x"]
        venv = "no/such/venv"
        python = "{sys.executable}"
        colour = "red"
        [loops.b.restart]
        backoff_initial = 50
        [loops.c]
        python = "./missing-python"
        """)
    lines = problems(path)
    assert_problem(lines, path, "supervisor.db_timeout", "must be a number")
    assert_problem(lines, path, "loops.b.bundles", "'x' is in both loops 'a' and 'b'")
    assert_problem(lines, path, "loops.b.venv", f"{tmp_path}/no/such/venv does not exist")
    assert_problem(lines, path, "loops.b.python", "both set")
    assert_problem(lines, path, "loops.b.colour", "unknown key")
    assert_problem(lines, path, "loops.b.restart.backoff_max", ">= backoff_initial (50.0), got 30.0")
    assert_problem(lines, path, "loops.c.python", f"interpreter {tmp_path}/missing-python does not exist")
    assert_problem(lines, path, "loops.c.bundles", "missing")
    assert len(lines) == 8


def test_settings_objects_validate_in_code_too() -> None:
    with pytest.raises(ValidationError):
        RestartSettings(jitter=2.0)
    with pytest.raises(ValidationError):
        SupervisorSettings(db_timeout="1")  # type: ignore[arg-type]
    assert RestartSettings(backoff_initial=1) == RestartSettings(backoff_initial=1.0)


# --- the real interpreter handshake ----------------------------------------------------------


@pytest.mark.timeout(300)
def test_probe_passes_for_a_layered_bundle_venv(tmp_path: Path, bundle_venv: Path) -> None:
    path = write(tmp_path, f'[loops.default]\n[loops.a]\nbundles = ["a"]\nvenv = "{bundle_venv}"\n')
    config = load_config(path, probe=True)
    assert config.loops["a"].python == bundle_venv / "bin" / "python"
    result = probe(bundle_venv / "bin" / "python")
    assert result.error is None and result.multitrigger_importable
    assert result.airflow_version == importlib.metadata.version("apache-airflow-core")
    assert result.task_sdk_version == importlib.metadata.version("apache-airflow-task-sdk")
    assert result.multitrigger_location == multitrigger.__file__


@pytest.mark.timeout(300)
def test_probe_fails_for_a_venv_without_airflow(tmp_path: Path, plain_venv: Path) -> None:
    path = write(tmp_path, f'[loops.a]\nbundles = ["a"]\nvenv = "{plain_venv}"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, probe=True)
    lines = str(err.value).splitlines()
    assert_problem(lines, path, "loops.a.venv", "apache-airflow-core is not installed",
                   "create_bundle_venv")
    assert_problem(lines, path, "loops.a.venv", "apache-airflow-task-sdk is not installed")
    assert len(lines) == 2  # the default loop (the supervisor's interpreter) passes
    # multitrigger itself is importable there through the appended source directory
    result = probe(plain_venv / "bin" / "python", import_check=False)
    assert result.multitrigger_importable and result.airflow_version is None


def test_probe_of_a_missing_interpreter(tmp_path: Path) -> None:
    result = probe(tmp_path / "nope")
    assert result.error and "does not exist" in result.error


def test_bootstrap_appends_the_source_dir(plain_venv: Path, tmp_path: Path) -> None:
    args = loop_bootstrap_args(plain_venv / "bin" / "python")
    assert args[:2] == [str(plain_venv / "bin" / "python"), "-c"]
    assert args[2] == bootstrap_code("multitrigger.loop")
    # run a module through the same bootstrap and let it report sys.path as __main__
    (tmp_path / "show_path.py").write_text(
        "import json, sys, multitrigger\n"
        "print(json.dumps([__name__, sys.path, multitrigger.__file__]))\n")
    env = {**clean_env(tmp_path), "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([args[0], "-c", bootstrap_code("show_path")], capture_output=True,
                         text=True, check=True, env=env).stdout
    name, path, mt_file = json.loads(out)
    assert name == "__main__"
    assert path[-1] == str(source_root())  # appended: the venv's own packages come first
    assert path.index(str(plain_venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
                          / "site-packages")) < len(path) - 1
    assert mt_file == multitrigger.__file__


def test_start_method(tmp_path: Path) -> None:
    path = write(tmp_path, '[loops.a]\nbundles = ["a"]\nstart_method = "exec"\n[loops.b]\nbundles = ["b"]\n')
    config = load_config(path)
    assert config.loops["a"].start_method == "exec" and config.loops["b"].start_method == "fork"
    assert_problem(problems(path, '[loops.a]\nbundles = ["a"]\nstart_method = "spawn"\n'), path,
                   "loops.a.start_method", "unknown start method 'spawn'", '"fork"', '"exec"')


# --- where loops find trigger code (python_path, python_path_mode, bundle_code) --------------


def test_python_path_keys_resolve_against_the_file_and_default_to_extend(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", """
        [loops.a]
        bundles = ["a"]
        python_path = ["../lib", "/"]
        [loops.b]
        bundles = ["b"]
        python_path_mode = "replace"
        bundle_code = false
        """)
    loops = load_config(path).loops
    assert loops["a"].python_path == (tmp_path / "lib", Path("/"))
    assert (loops["a"].python_path_mode, loops["a"].bundle_code) == ("extend", True)
    assert (loops["b"].python_path, loops["b"].python_path_mode, loops["b"].bundle_code) == ((), "replace", False)
    assert loops[DEFAULT_LOOP].bundle_code and loops[DEFAULT_LOOP].python_path == ()


@pytest.mark.parametrize(("text", "key", "fragments"), [
    ('python_path = ["missing"]', "loops.a.python_path[0]", ("missing does not exist", "create the directory")),
    ('python_path = "/tmp"', "loops.a.python_path", ("array",)),
    ("python_path = [1]", "loops.a.python_path[0]", ("non-empty string",)),
    ('python_path_mode = "prepend"', "loops.a.python_path_mode", ('"extend"', '"replace"')),
    ('bundle_code = "no"', "loops.a.bundle_code", ("true or false",)),
    ("bundle_code = 0", "loops.a.bundle_code", ("true or false",)),
], ids=["missing-dir", "not-a-list", "not-a-string", "bad-mode", "string-bool", "int-bool"])
def test_python_path_keys_are_validated(tmp_path: Path, text: str, key: str, fragments: tuple[str, ...]) -> None:
    path = tmp_path / "multitrigger.toml"
    lines = problems(path, f'[loops.a]\nbundles = ["a"]\n{text}\n')
    assert_problem(lines, path, key, *fragments)
