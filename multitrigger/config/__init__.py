"""The multitrigger configuration: one typed, immutable object, validated once.

Everything downstream (supervisor, loops, CLI) trusts a :class:`Config`, so all checking happens
here, at load time, and every problem is reported in one go: an operator fixing a file should not
have to rerun once per mistake. Each problem line reads ``<file>: <key>: <problem> — <fix>``.

Three roles: this module (the objects everyone reads, loading, the interpreter handshake),
``schema`` (what each key may hold and the rules across keys, in pydantic v2) and ``problems``
(pydantic's errors as problem lines with a fix).

Format (``$AIRFLOW_HOME/multitrigger.toml``; every table optional)::

    [loops.team_a]                  # [loops.default] takes every unlisted bundle
    bundles = ["team_a"]            # required for non-default loops
    venv = "/opt/venvs/team_a"      # or python = "..."; relative to this file
    allowed_triggers = ["pkg.triggers.*"]
    start_method = "fork"           # or "exec": a fresh interpreter per (re)start
    python_path = ["lib"]           # extra sys.path entries; relative to this file
    python_path_mode = "extend"     # or "replace": drop PYTHONPATH, plugins folder, config dir
    bundle_code = true              # the loop's LocalDagBundle roots on its sys.path; versioned bundles
    max_bundle_versions = 4         # versions of one bundle (GitDagBundle) running at once
    level = "venv"                  # shared | process | venv | cgroup | dedicated (levels.py)
    capacity = 20                   # at most this many of its bundles' triggers held at once
    user = "team_a"                 # run the loop as this Unix user (supervisor as root)
    [loops.team_a.restart]          # backoff_*, jitter, stable_after, poison_threshold
    [loops.team_a.limits]           # memory, memory_high, cpu, pids, best_effort: its cgroup
    [supervisor]                    # db_retry_limit, db_timeout, request_timeout, log limits,
                                    # bundles (serve only these; see multitrigger.scope)
    [health]                        # enabled, host, port, live_threshold (multitrigger.health)
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

import multitrigger
from multitrigger import interpreter_probe
from multitrigger.bundles import Bundles
from multitrigger.config.levels import Level, derived_level
from multitrigger.config.problems import ConfigError, Problem, problems_from
from multitrigger.loop import privileges
from multitrigger.config.schema import (DEFAULT_LOOP, REMOVED_KEYS, FileTable, HealthSettings, Limits, LoopTable,
                                        RestartSettings, SupervisorSettings, relations, schema_at)

__all__ = [
    "DEFAULT_LOOP", "Config", "ConfigError", "HealthSettings", "Limits", "LoopConfig", "Problem", "RestartSettings",
    "SupervisorSettings", "default_config", "load_config",
]

# --- the objects everything else reads ----------------------------------------------------------


@dataclass(frozen=True)
class LoopConfig:
    """One event loop (one child process) and the bundles it runs."""

    name: str
    bundles: frozenset[str]
    python: Path  # for a venv: <venv>/bin/python, deliberately not symlink-resolved
    venv: Path | None
    allowed_triggers: tuple[str, ...] | None  # None: every trigger is allowed
    restart: RestartSettings = RestartSettings()
    start_method: str = "fork"  # "fork": from its interpreter's warm zygote; "exec": fresh each start
    python_path: tuple[Path, ...] = ()  # extra sys.path entries (supervisor.trigger_path)
    python_path_mode: str = "extend"  # "extend": after the inherited entries; "replace": instead of them
    bundle_code: bool = True  # the roots of this loop's LocalDagBundles on its sys.path; versioned bundles
    max_bundle_versions: int = 4  # versions of one versioned bundle running at once (supervisor.bundle_versions)
    limits: Limits | None = None  # its cgroup's limits (multitrigger.cgroups); None: no cgroup
    level: Level = "process"  # config.levels; "shared" only for the default loop
    capacity: int | None = None  # at most this many of its bundles' triggers held at once
    user: str | None = None  # Unix user the loop process runs as

    @property
    def own_interpreter(self) -> bool:
        """The loop runs an interpreter other than the supervisor's (a venv or ``python``)."""
        return self.python != Path(sys.executable)


@dataclass(frozen=True)
class Config:
    """All loops; ``loops`` always has ``"default"``, which takes unlisted bundles."""

    source: Path | None
    loops: Mapping[str, LoopConfig]
    supervisor: SupervisorSettings = SupervisorSettings()
    health: HealthSettings = HealthSettings()
    #: Bundles of ``level = "shared"`` entries, per entry name: they run in the default loop.
    shared: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    #: What this instance serves (``multitrigger.scope.served_config``; the file alone: everything).
    #: A trigger of any other bundle runs in no loop here: not ``dedicated`` ones, not those outside
    #: ``--bundles``, whatever routes to them (an asset watcher's DAG, say).
    served: Bundles = Bundles.everything()

    def __post_init__(self) -> None:
        if DEFAULT_LOOP not in self.loops:
            raise ValueError(f"Config.loops must contain {DEFAULT_LOOP!r}")
        object.__setattr__(self, "loops", MappingProxyType(dict(self.loops)))

    def loop_for_bundle(self, bundle: str | None) -> str | None:
        """The loop that runs *bundle*'s triggers (``None`` as *bundle*: unknown), or ``None`` when
        this instance does not serve it. The one bundle → loop rule: routing, the claim groups
        (``scope``), trigger paths, teams and ``config check`` all ask it (or ``bundles_of``)."""
        if bundle not in self.served:
            return None
        return self._by_bundle.get(bundle, DEFAULT_LOOP) if bundle is not None else DEFAULT_LOOP

    def bundles_of(self, loop: str) -> Bundles:
        """Every bundle ``loop_for_bundle`` sends to *loop*: its list; for the default loop every
        bundle no loop lists (shared entries' too) and unknown ones; within ``served``."""
        if loop != DEFAULT_LOOP:
            return Bundles(self.loops[loop].bundles) & self.served
        return ~Bundles(frozenset(self._by_bundle)) & self.served

    @cached_property
    def _by_bundle(self) -> Mapping[str, str]:
        return {bundle: name for name, loop in self.loops.items() for bundle in loop.bundles}


def _default_loop() -> LoopConfig:
    return LoopConfig(DEFAULT_LOOP, frozenset(), Path(sys.executable), None, None, level="shared")


def default_config() -> Config:
    """One default loop running every bundle in the supervisor's interpreter."""
    return Config(source=None, loops={DEFAULT_LOOP: _default_loop()})


# --- loading ------------------------------------------------------------------------------------


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
            config = _parse(path, _read_toml(path))
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


def _parse(source: Path, data: dict[str, Any]) -> Config:
    problems: list[Problem] = []
    try:
        table = FileTable.model_validate(data, context={"base": source.parent})
    except ValidationError as exc:
        problems = problems_from(exc, schema_at, REMOVED_KEYS)
    problems += relations(data)
    if problems:
        raise ConfigError(source, problems)
    shared = {name: frozenset(t.bundles or ()) for name, t in table.loops.items() if t.level == "shared" and name != DEFAULT_LOOP}
    loops = {DEFAULT_LOOP: _default_loop()} | {
        name: _loop(name, t, data["loops"][name]) for name, t in table.loops.items() if name not in shared}
    if problems := [p for loop in loops.values() if (p := _user_reaches_interpreter(loop))]:
        raise ConfigError(source, problems)
    return Config(source, loops, table.supervisor, table.health, MappingProxyType(shared))


def _user_reaches_interpreter(loop: LoopConfig) -> Problem | None:
    """An exec'd loop with ``user`` starts its interpreter as root, then drops to the user before
    importing anything: the user must be able to read the interpreter and multitrigger itself, or the
    loop dies on its first import (a forked loop imports in its zygote, which stays root)."""
    if loop.user is None or loop.start_method != "exec":
        return None
    for path, need in ((loop.python, os.X_OK), (Path(multitrigger.__file__).parent, os.R_OK | os.X_OK)):
        if (barrier := privileges.first_barrier(path, loop.user, need)) is not None:
            return Problem(f"loops.{loop.name}.user", f"user {loop.user!r} cannot reach {path} ({barrier} is closed to it)",
                           "install the interpreter and multitrigger where the user can read them (e.g. under /opt), "
                           'or use start_method = "fork" (forked loops import as the supervisor\'s user first)')
    return None


def _loop(name: str, table: LoopTable, raw: dict[str, Any]) -> LoopConfig:
    python = table.venv / "bin" / "python" if table.venv else table.python or Path(sys.executable)
    level = derived_level(name, raw, own_interpreter=python != Path(sys.executable))
    allowed = tuple(table.allowed_triggers) if table.allowed_triggers is not None else None
    return LoopConfig(name, frozenset(table.bundles or ()), python, table.venv, allowed,
                      table.restart, table.start_method, tuple(table.python_path or ()),
                      table.python_path_mode, table.bundle_code, limits=table.limits,
                      max_bundle_versions=table.max_bundle_versions, level=level, capacity=table.capacity, user=table.user)


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
    return f"loops.{loop.name}" + (".python" if loop.own_interpreter else "")
