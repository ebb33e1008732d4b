"""The multitrigger configuration: one typed, immutable object, validated once.

Everything downstream (supervisor, loops, CLI) trusts a :class:`Config`, so
all checking happens here, at load time, and every problem is reported in one
go: an operator fixing a file should not have to rerun once per mistake. Each
problem line reads ``<file>: <key>: <problem> — <fix>``.

Format (``$AIRFLOW_HOME/multitrigger.toml``; every table optional)::

    [loops.team_a]                  # [loops.default] takes every unlisted bundle
    bundles = ["team_a"]            # required for non-default loops
    venv = "/opt/venvs/team_a"      # or python = "..."; isolation "process"|"venv"
    allowed_triggers = ["pkg.triggers.*"]
    start_method = "fork"           # or "exec": a fresh interpreter per (re)start
    [loops.team_a.restart]          # backoff_*, jitter, stable_after, poison_threshold

Relative ``venv``/``python`` paths are relative to the file's directory, so a
config keeps working whatever the supervisor's working directory is.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (pyproject allows it): the same parser, backported
    import tomli as tomllib

from multitrigger import interpreter_probe
from multitrigger.restart import BackoffSettings

__all__ = [
    "DEFAULT_LOOP", "Config", "ConfigError", "LoopConfig", "Problem", "RestartSettings",
    "SupervisorSettings", "default_config", "load_config",
]

DEFAULT_LOOP = "default"
_T = TypeVar("_T")
#: Loop names become process and cgroup names.
LOOP_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
ISOLATIONS = ("process", "venv")
_LOOP_KEYS = ("bundles", "venv", "python", "isolation", "allowed_triggers", "start_method", "restart")
#: "fork": forked from its interpreter's warm zygote (~20 ms, shares memory); "exec": a fresh
#: interpreter every start (seconds; no zygote for an interpreter only "exec" loops use).
START_METHODS = ("fork", "exec")
_CLASSPATH_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(\.\*)?$")
_ISOLATION_FIX = 'use isolation = "venv" (own process and interpreter) or "process" (own process)'


@dataclass(frozen=True)
class RestartSettings(BackoffSettings):
    """How a crashed loop is restarted: the restart policy's backoff (``restart.BackoffSettings``:
    backoff_initial, backoff_max, backoff_multiplier, jitter, stable_after) plus poison handling."""

    poison_threshold: int = 3  # crashes blamed on one trigger before it is failed


@dataclass(frozen=True)
class SupervisorSettings:
    """Supervisor-wide settings that Airflow's own ``[triggerer]`` section has no key for."""

    db_retry_limit: float = 120.0  # seconds the metadata DB may stay unreachable before exiting 1


@dataclass(frozen=True)
class LoopConfig:
    """One event loop (one child process) and the bundles it runs."""

    name: str
    bundles: frozenset[str]
    python: Path  # for a venv: <venv>/bin/python, deliberately not symlink-resolved
    venv: Path | None
    isolation: str
    allowed_triggers: tuple[str, ...] | None  # None: every trigger is allowed
    restart: RestartSettings = RestartSettings()
    start_method: str = "fork"  # one of START_METHODS

    def allows(self, classpath: str) -> bool:
        """Whether *classpath* matches the allow-list (exact, or ``prefix.*``)."""
        if self.allowed_triggers is None:
            return True
        return any(
            classpath.startswith(p[:-1]) if p.endswith(".*") else classpath == p
            for p in self.allowed_triggers
        )


@dataclass(frozen=True)
class Config:
    """All loops; ``loops`` always has ``"default"``, which takes unlisted bundles."""

    source: Path | None
    loops: Mapping[str, LoopConfig]
    supervisor: SupervisorSettings = SupervisorSettings()
    _by_bundle: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if DEFAULT_LOOP not in self.loops:
            raise ValueError(f"Config.loops must contain {DEFAULT_LOOP!r}")
        object.__setattr__(self, "loops", MappingProxyType(dict(self.loops)))
        index = {b: name for name, loop in self.loops.items() for b in loop.bundles}
        object.__setattr__(self, "_by_bundle", MappingProxyType(index))

    def loop_for_bundle(self, bundle: str | None) -> str:
        """The loop that runs *bundle*; unknown or None bundles go to "default"."""
        return self._by_bundle.get(bundle, DEFAULT_LOOP) if bundle is not None else DEFAULT_LOOP


@dataclass(frozen=True)
class Problem:
    key: str  # e.g. "loops.team_a.venv"
    problem: str
    fix: str


class ConfigError(Exception):
    """Every problem found in one configuration, one per line."""

    def __init__(self, source: Path | None, problems: list[Problem]) -> None:
        self.source = source
        self.problems = list(problems)
        where = str(source) if source is not None else "(built-in default config)"
        super().__init__("\n".join(f"{where}: {p.key}: {p.problem} — {p.fix}" for p in self.problems))


def _default_loop() -> LoopConfig:
    return LoopConfig(DEFAULT_LOOP, frozenset(), Path(sys.executable), None, "process", None)


def default_config() -> Config:
    """One default loop running every bundle in the supervisor's interpreter."""
    return Config(source=None, loops={DEFAULT_LOOP: _default_loop()})


def load_config(path: Path | None, *, must_exist: bool = False, probe: bool = False) -> Config:
    """Load and validate *path*; with ``probe=True`` also handshake every interpreter."""
    if path is None:
        config = default_config()
    else:
        path = Path(path).expanduser().absolute()
        if not path.exists():
            if must_exist:
                raise ConfigError(path, [Problem("(file)", "file not found",
                                                 "create it, or pass the path of an existing file")])
            config = default_config()
        else:
            config = _Parser(path).parse(_read_toml(path))
    if probe:
        _probe_all(config)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        key = f"line {m[1]}, column {m[2]}" if m else "(syntax)"
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc)) or str(exc)
        raise ConfigError(path, [Problem(key, f"invalid TOML: {msg}",
                                         f"fix the syntax at {key} (see https://toml.io)")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [Problem("(file)", f"cannot read: {exc}",
                                         "make it a readable UTF-8 file")]) from None


def _type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    return names.get(type(value), type(value).__name__)


class _Parser:
    """Collects problems instead of stopping at the first one."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def add(self, key: str, problem: str, fix: str) -> None:
        self.problems.append(Problem(key, problem, fix))

    def unknown(self, prefix: str, table: dict[str, Any], allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                self.add(f"{prefix}{key}", "unknown key",
                         f"remove it or use one of: {', '.join(allowed)}")

    def parse(self, data: dict[str, Any]) -> Config:
        self.unknown("", data, ("loops", "supervisor"))
        supervisor = self.numbers("supervisor", data.get("supervisor", {}), SupervisorSettings)
        if supervisor.db_retry_limit <= 0:
            self.add("supervisor.db_retry_limit", f"must be > 0, got {supervisor.db_retry_limit}", "change the value")
        raw_loops = data.get("loops", {})
        if not isinstance(raw_loops, dict):
            self.add("loops", f"must be a table, not {_type(raw_loops)}", "write [loops.<name>] sections")
            raw_loops = {}
        loops: dict[str, LoopConfig] = {DEFAULT_LOOP: _default_loop()}
        owner: dict[str, str] = {}
        for name, table in raw_loops.items():
            loop, bundles = self.loop(name, table)
            if loop is not None:
                loops[name] = loop
            for bundle in sorted(bundles):
                if bundle in owner:
                    self.add(f"loops.{name}.bundles",
                             f"bundle {bundle!r} is in both loops {owner[bundle]!r} and {name!r}",
                             "list each bundle in exactly one loop")
                owner.setdefault(bundle, name)
        if self.problems:
            raise ConfigError(self.source, self.problems)
        return Config(self.source, loops, supervisor)

    def loop(self, name: str, table: Any) -> tuple[LoopConfig | None, frozenset[str]]:
        key = f"loops.{name}"
        n_before = len(self.problems)
        if not LOOP_NAME_RE.match(name):
            self.add(key, f"invalid loop name {name!r}",
                     "use 1-63 letters, digits, '_', '.', '-', not starting with '.' or '-' "
                     "(it becomes a process name)")
        if not isinstance(table, dict):
            self.add(key, f"must be a table, not {_type(table)}", f"write a [{key}] section")
            return None, frozenset()
        self.unknown(f"{key}.", table, _LOOP_KEYS)
        bundles = self.bundles(name, table)
        venv, python = self.interpreter(key, table)
        isolation = self.isolation(name, table, has_interpreter=python is not None)
        allowed = self.allowed_triggers(key, table)
        restart = self.restart(f"{key}.restart", table.get("restart", {}))
        start_method = table.get("start_method", "fork")
        if start_method not in START_METHODS:
            self.add(f"{key}.start_method", f"unknown start method {start_method!r}",
                     'use "fork" (from a warm zygote; the default) or "exec" (a fresh interpreter each start)')
        if len(self.problems) > n_before:
            return None, bundles
        python = python or Path(sys.executable)
        return LoopConfig(name, bundles, python, venv, isolation, allowed, restart, start_method), bundles

    def bundles(self, name: str, table: dict[str, Any]) -> frozenset[str]:
        key = f"loops.{name}.bundles"
        if name == DEFAULT_LOOP:
            if "bundles" in table:
                self.add(key, "the default loop takes no bundle list",
                         "remove it; every bundle not listed in another loop runs in the default loop")
            return frozenset()
        value = table.get("bundles")
        if value is None:
            self.add(key, "missing", 'list the bundles this loop runs, e.g. bundles = ["team_a"]')
            return frozenset()
        if not isinstance(value, list) or not all(isinstance(b, str) and b for b in value):
            self.add(key, "must be an array of non-empty strings", 'write e.g. bundles = ["team_a"]')
            return frozenset()
        if not value:
            self.add(key, "is empty", "list at least one bundle, or remove the loop")
        for dup in sorted({b for b in value if value.count(b) > 1}):
            self.add(key, f"bundle {dup!r} is listed twice", "list it once")
        return frozenset(value)

    def path(self, key: str, value: Any) -> Path | None:
        """A path relative to the config file; a bare ``python`` name is looked up on PATH."""
        if not isinstance(value, str) or not value:
            self.add(key, f"must be a non-empty string, not {_type(value)}", "give a filesystem path")
            return None
        if os.sep not in value and key.endswith(".python"):
            return Path(shutil.which(value) or value)
        p = Path(value).expanduser()
        return Path(os.path.normpath(p if p.is_absolute() else self.source.parent / p))

    def executable(self, key: str, python: Path, fix: str) -> None:
        if not python.is_file():
            self.add(key, f"interpreter {python} does not exist", fix)
        elif not os.access(python, os.X_OK):
            self.add(key, f"interpreter {python} is not executable", f"chmod +x {python}, or {fix}")

    def interpreter(self, key: str, table: dict[str, Any]) -> tuple[Path | None, Path | None]:
        if "venv" in table and "python" in table:
            self.add(f"{key}.python", "venv and python are both set",
                     "keep one: venv runs <venv>/bin/python, python names an interpreter directly")
            return None, None
        if "venv" in table:
            venv = self.path(f"{key}.venv", table["venv"])
            if venv is None:
                return None, None
            if not venv.is_dir():
                self.add(f"{key}.venv", f"venv directory {venv} does not exist",
                         "create it (multitrigger.venvs.create_bundle_venv layers it on the "
                         "supervisor's packages) or fix the path")
                return venv, None
            self.executable(f"{key}.venv", venv / "bin" / "python",
                            f"recreate the virtualenv at {venv}")
            return venv, venv / "bin" / "python"
        if "python" in table:
            python = self.path(f"{key}.python", table["python"])
            if python is not None:
                self.executable(f"{key}.python", python, "point python at an existing interpreter")
            return None, python
        return None, None

    def isolation(self, name: str, table: dict[str, Any], has_interpreter: bool) -> str:
        key = f"loops.{name}.isolation"
        default = "venv" if has_interpreter else "process"
        value = table.get("isolation", default)
        if not isinstance(value, str):
            self.add(key, f"must be a string, not {_type(value)}", 'use "process" or "venv"')
        elif value == "shared":
            self.add(key, 'isolation "shared" is not a loop mode',
                     "omit isolation; the default loop is the shared loop" if name == DEFAULT_LOOP
                     else "omit the loop; bundles not listed in any loop run in the default loop")
        elif value in ("cgroup", "dedicated"):
            self.add(key, f'isolation "{value}" is not supported yet in this version', _ISOLATION_FIX)
        elif value not in ISOLATIONS:
            self.add(key, f'unknown isolation "{value}"', 'use one of: "process", "venv"')
        elif value == "venv" and not has_interpreter and "venv" not in table:
            self.add(key, 'isolation "venv" needs an interpreter',
                     'set venv = "/path/to/venv" (or python = ...), or use isolation = "process"')
        elif value == "process" and ("venv" in table or "python" in table):
            self.add(key, 'isolation "process" runs the supervisor\'s interpreter, but venv/python is set',
                     'remove isolation (it defaults to "venv" when venv or python is set)')
        return value if isinstance(value, str) else default

    def allowed_triggers(self, key: str, table: dict[str, Any]) -> tuple[str, ...] | None:
        key += ".allowed_triggers"
        value = table.get("allowed_triggers")
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.add(key, "must be an array of strings", 'write e.g. allowed_triggers = ["pkg.mod.MyTrigger"]')
            return None
        if not value:
            self.add(key, "is empty, which would reject every trigger",
                     "list the allowed classpaths, or remove the key to allow all")
        for i, pattern in enumerate(value):
            if not _CLASSPATH_RE.match(pattern):
                self.add(f"{key}[{i}]", f"{pattern!r} is not a classpath",
                         "use a dotted path like pkg.mod.MyTrigger, or a prefix ending in '.*'")
        return tuple(value)

    def numbers(self, key: str, table: Any, cls: type[_T]) -> _T:
        """A table of numeric settings into the dataclass ``cls`` (defaults for what is missing)."""
        if not isinstance(table, dict):
            self.add(key, f"must be a table, not {_type(table)}", f"write a [{key}] section")
            return cls()
        allowed = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
        self.unknown(f"{key}.", table, allowed)
        values: dict[str, Any] = {}
        for name in allowed:
            if name not in table:
                continue
            v = table[name]
            want_int = isinstance(getattr(cls, name), int)
            ok = isinstance(v, int) if want_int else isinstance(v, (int, float))
            if not ok or isinstance(v, bool):
                self.add(f"{key}.{name}", f"must be {'an integer' if want_int else 'a number'}, "
                         f"not {_type(v)}", f"write e.g. {name} = {getattr(cls, name)}")
            else:
                values[name] = v if want_int else float(v)
        return cls(**values)

    def restart(self, key: str, table: Any) -> RestartSettings:
        s = self.numbers(key, table, RestartSettings)
        checks = [
            ("backoff_initial", s.backoff_initial > 0, "must be > 0"),
            ("backoff_max", s.backoff_max >= s.backoff_initial, "must be >= backoff_initial"),
            ("backoff_multiplier", s.backoff_multiplier >= 1, "must be >= 1"),
            ("jitter", 0 <= s.jitter <= 1, "must be between 0 and 1 (a fraction)"),
            ("stable_after", s.stable_after >= 0, "must be >= 0"),
            ("poison_threshold", s.poison_threshold >= 1, "must be >= 1"),
        ]
        for name, ok, msg in checks:
            if not ok:
                self.add(f"{key}.{name}", f"{msg}, got {getattr(s, name)}", "change the value")
        return s


def _probe_all(config: Config) -> None:
    """Handshake every loop's interpreter in parallel (~4 s each: imports airflow.sdk)."""
    loops = list(config.loops.values())
    with ThreadPoolExecutor(max_workers=min(8, len(loops))) as pool:
        results = list(pool.map(lambda lp: interpreter_probe.probe(lp.python, timeout=120), loops))
    problems = [
        Problem(_interpreter_key(loop), problem, fix)
        for loop, result in zip(loops, results)
        for problem, fix in interpreter_probe.incompatibilities(result)
    ]
    if problems:
        raise ConfigError(config.source, problems)


def _interpreter_key(loop: LoopConfig) -> str:
    if loop.venv is not None:
        return f"loops.{loop.name}.venv"
    return f"loops.{loop.name}" + (".python" if loop.python != Path(sys.executable) else "")
