"""The schema of ``multitrigger.toml``: what each key may hold, and the rules across keys.

Declarative (pydantic v2; 2.14 is what Airflow 3.3.2 installs): strict types (``"1"`` is not 1,
``true`` is not an integer), unknown keys rejected, ranges on the fields, relative ``venv`` and
``python`` paths resolved against the file's directory (the ``base`` validation context) and
checked to exist. A check that fails raises an error carrying its own fix; pydantic's own errors
get theirs in ``multitrigger.config.problems``, from the field's ``description`` (what a valid
value is) and ``examples``.

Rules that are no single field's business are in :func:`relations`, which reads the raw TOML so
they are reported in the same run as the schema's errors, even for a table that failed the
schema: a bundle listed by two loops, ``venv`` and ``python`` both set, ``bundles`` missing (or
set on the default loop).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict,
                      ValidationInfo, field_validator, model_validator)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticCustomError

from multitrigger.config.levels import DEFAULT_LOOP, LEVELS, Level, level_problems
from multitrigger.config.problems import Problem, toml_type
from multitrigger.restart import BackoffSettings

#: Loop names become process and cgroup names.
LOOP_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
_CLASSPATH_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(\.\*)?$")
_TABLE = ConfigDict(strict=True, extra="forbid", frozen=True)
_MiB = 1024 * 1024


def _fail(kind: str, problem: str, fix: str) -> PydanticCustomError:
    """A schema error carrying its own fix (``problems`` prints it as is)."""
    return PydanticCustomError(kind, "{problem}", {"problem": problem, "fix": fix})


# --- field types ------------------------------------------------------------------------------


def _loop_name(name: str) -> str:
    if not LOOP_NAME_RE.match(name):
        raise _fail("loop_name", f"invalid loop name {name!r}",
                    "use 1-63 letters, digits, '_', '.', '-', not starting with '.' or '-' "
                    "(it becomes a process name)")
    return name


def _bundle_list(bundles: list[str]) -> list[str]:
    if not bundles:
        raise _fail("empty", "is empty", "list at least one bundle, or remove the loop")
    dups = sorted({b for b in bundles if bundles.count(b) > 1})
    if dups:
        raise _fail("duplicate", f"bundle {', '.join(map(repr, dups))} is listed twice", "list each once")
    return bundles


def _classpath(pattern: str) -> str:
    if not _CLASSPATH_RE.match(pattern):
        raise _fail("classpath", f"{pattern!r} is not a classpath",
                    "use a dotted path like pkg.mod.MyTrigger, or a prefix ending in '.*'")
    return pattern


def _allow_list(patterns: list[str]) -> list[str]:
    if not patterns:
        raise _fail("empty", "is empty, which would reject every trigger",
                    "list the allowed classpaths, or remove the key to allow all")
    return patterns


def _relative_to_file(value: Any, info: ValidationInfo) -> Path:
    """A path relative to the config file; a bare ``python`` name is looked up on PATH."""
    if not isinstance(value, str) or not value:
        raise _fail("path", f"must be a non-empty string, not {toml_type(value)}",
                    "give a filesystem path in quotes")
    if os.sep not in value and info.field_name == "python":
        return Path(shutil.which(value) or value)
    p = Path(value).expanduser()
    base: Path = info.context["base"]
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


def _executable(python: Path, fix: str) -> None:
    if not python.is_file():
        raise _fail("interpreter", f"interpreter {python} does not exist", fix)
    if not os.access(python, os.X_OK):
        raise _fail("interpreter", f"interpreter {python} is not executable", f"chmod +x {python}, or {fix}")


def _existing_venv(venv: Path) -> Path:
    if not venv.is_dir():
        raise _fail("venv", f"venv directory {venv} does not exist",
                    "create it (multitrigger.venvs.create_bundle_venv layers it on the "
                    "supervisor's packages) or fix the path")
    _executable(venv / "bin" / "python", f"recreate the virtualenv at {venv}")
    return venv


def _existing_interpreter(python: Path) -> Path:
    _executable(python, "point python at an existing interpreter")
    return python


def _existing_path_entry(entry: Path) -> Path:
    if not entry.exists():
        raise _fail("path_entry", f"{entry} does not exist",
                    "create the directory, or fix the path (a relative one is relative to the config file)")
    return entry


def _unix_user(name: str) -> str:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise _fail("user", f"user {name!r} does not exist on this host",
                    f"create it (useradd --system {name}) or fix the name") from None
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise _fail("user", f"the supervisor is not root, so it cannot run a loop as {name!r}",
                    "run multitrigger as root, or remove user")
    if entry.pw_uid == 0:
        raise _fail("user", "a loop must not run as root", "name an unprivileged user, or remove user")
    return name


_Bundle = Annotated[str, Field(min_length=1)]
_Venv = Annotated[Path, BeforeValidator(_relative_to_file), AfterValidator(_existing_venv)]
_Python = Annotated[Path, BeforeValidator(_relative_to_file), AfterValidator(_existing_interpreter)]
_Classpath = Annotated[str, AfterValidator(_classpath)]
_PathEntry = Annotated[Path, BeforeValidator(_relative_to_file), AfterValidator(_existing_path_entry)]
#: RestartSettings is a dataclass (it extends BackoffSettings), so strictness is per field: a
#: strict *dataclass* would refuse the TOML table itself (a dict), not only coerced values.
_Float = Annotated[float, Strict()]
_Int = Annotated[int, Strict()]


# --- the schema: also the settings objects the rest of the code reads ---------------------------


def _not_below(field: str, other: str, fix: str):  # type: ignore[no-untyped-def]
    """A validator: ``field`` must be >= the (earlier) field ``other``."""

    def check(cls, value: float, info: ValidationInfo) -> float:  # type: ignore[no-untyped-def]
        floor = info.data.get(other)
        if floor is not None and value < floor:
            raise _fail("order", f"must be >= {other} ({floor}), got {value}", fix)
        return value

    return field_validator(field)(classmethod(check))


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class RestartSettings(BackoffSettings):
    """How a crashed loop is restarted: the restart policy's backoff (``restart.BackoffSettings``:
    backoff_initial, backoff_max, backoff_multiplier, jitter, stable_after) plus poison handling.
    The backoff fields are restated only to give them their bounds."""

    backoff_initial: Annotated[_Float, Field(gt=0)] = BackoffSettings.backoff_initial
    backoff_max: Annotated[_Float, Field(validate_default=True)] = BackoffSettings.backoff_max
    backoff_multiplier: Annotated[_Float, Field(ge=1)] = BackoffSettings.backoff_multiplier
    jitter: Annotated[_Float, Field(ge=0, le=1, description="a fraction between 0 and 1")] = BackoffSettings.jitter
    stable_after: Annotated[_Float, Field(ge=0)] = BackoffSettings.stable_after
    poison_threshold: Annotated[_Int, Field(ge=1)] = 3  # crashes blamed on one trigger before it is failed

    _not_below_initial = _not_below("backoff_max", "backoff_initial", "raise backoff_max or lower backoff_initial")


class SupervisorSettings(BaseModel):
    """``[supervisor]``: supervisor-wide settings that Airflow's ``[triggerer]`` has no key for.
    Read through ``multitrigger.supervisor.settings.RunSettings``, not from here."""

    model_config = _TABLE

    db_retry_limit: float = Field(120.0, gt=0)  # s of metadata-DB outage before exiting 1
    db_timeout: float = Field(10.0, gt=0)  # bound on every metadata-DB connect, statement, lock wait
    request_timeout: float = Field(30.0, gt=0)  # a loop's DB-backed request errors after this
    max_log_line_bytes: int = Field(_MiB, ge=1024)  # longer log/stdout lines are cut with a marker
    log_bytes_per_second: int = Field(8 * _MiB, ge=1024)  # per-loop log processing budget
    log_buffer_bytes: int = Field(16 * _MiB, validate_default=True)  # per-loop unprocessed-log cap
    max_open_log_files: int | None = Field(None, ge=1, description="an integer >= 1 (None: a quarter of RLIMIT_NOFILE)",
                                           examples=["max_open_log_files = 256"])  # trigger log files held open (LRU)
    cgroup_root: str = Field("/sys/fs/cgroup", min_length=1, description="the cgroup filesystem's mount point",
                             examples=['cgroup_root = "/sys/fs/cgroup"'])  # where loops' cgroups are made
    bundles: Annotated[list[_Bundle], AfterValidator(_bundle_list)] | None = Field(
        None, description="an array of bundle names this instance serves (only those; None: every bundle "
                          "whose loop is not dedicated)", examples=['bundles = ["team_a"]'])

    _holds_a_line = _not_below("log_buffer_bytes", "max_log_line_bytes", "raise log_buffer_bytes or lower max_log_line_bytes")


#: "512M", "1.5G", "64MiB", "1048576" or an integer of bytes; K/M/G/T are powers of 1024, as for
#: systemd's MemoryMax= and the kernel's cgroup files.
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
#: Below this a loop cannot even hold a forked interpreter's private pages.
MIN_MEMORY = 16 * _MiB


def _byte_size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.match(value.strip())):
        size = int(float(m[1]) * _UNITS[m[2].upper()])
    else:
        raise _fail("size", f"{value!r} is not a size" if isinstance(value, str) else f"must be a size, not {toml_type(value)}",
                    'write a size in quotes with a unit, e.g. "512M" or "2G" (K/M/G/T = 1024^n bytes)')
    if size < MIN_MEMORY:
        raise _fail("size", f"{value!r}{' bytes' if isinstance(value, int) else ''} is below the minimum of 16M", 'use at least "16M" (a forked loop alone needs ~15M)')
    return size


_ByteSize = Annotated[int, BeforeValidator(_byte_size)]


class Limits(BaseModel):
    """``[loops.<name>.limits]``: the loop's cgroup (``multitrigger.cgroups``). Frozen; a loop with
    no table has ``LoopConfig.limits = None`` (no cgroup)."""

    model_config = _TABLE

    memory: _ByteSize | None = Field(None, description='a size such as "512M"', examples=['memory = "512M"'])
    memory_high: _ByteSize | None = Field(None, description='a size such as "400M"', examples=['memory_high = "400M"'])
    cpu: float | None = Field(None, ge=0.01, le=1024, description="a number of cores between 0.01 and 1024",
                              examples=["cpu = 0.5"])
    pids: int | None = Field(None, ge=8, le=4_194_304, description="an integer >= 8 (processes and threads)",
                             examples=["pids = 256"])
    best_effort: bool = Field(False, description="true or false", examples=["best_effort = true"])

    @model_validator(mode="after")
    def _consistent(self) -> Limits:
        if self.memory is None and self.memory_high is None and self.cpu is None and self.pids is None:
            raise _fail("empty", "sets no limit", 'set at least one of memory, memory_high, cpu, pids, or remove the table')
        if self.memory is not None and self.memory_high is not None and self.memory_high > self.memory:
            raise _fail("order", f"memory_high ({self.memory_high} bytes) is above memory ({self.memory} bytes)",
                        "make memory_high at most memory (it throttles before memory kills)")
        return self

    @property
    def controllers(self) -> frozenset[str]:
        """The cgroup controllers these limits need."""
        wanted = {"memory": self.memory or self.memory_high, "cpu": self.cpu, "pids": self.pids}
        return frozenset(name for name, value in wanted.items() if value is not None)


class HealthSettings(BaseModel):
    """``[health]``: the supervisor's HTTP health server (``multitrigger.health``). Overridden by
    ``multitrigger run --health-host/--health-port/--no-health``."""

    model_config = _TABLE

    enabled: bool = Field(True, description="true or false", examples=["enabled = false"])
    host: str = Field("127.0.0.1", min_length=1, description="an address to bind, e.g. \"127.0.0.1\" (loopback) or \"0.0.0.0\"",
                      examples=['host = "127.0.0.1"'])
    port: int = Field(8796, ge=0, le=65535, description="a TCP port (0: any free port)", examples=["port = 8796"])
    live_threshold: float = Field(10.0, gt=0)  # /health/live fails once the main loop's snapshot is older (s)


class LoopTable(BaseModel):
    """``[loops.<name>]`` as written (``multitrigger.config`` makes the ``LoopConfig``)."""

    model_config = _TABLE

    bundles: Annotated[list[_Bundle], AfterValidator(_bundle_list)] | None = Field(
        None, description="an array of non-empty strings", examples=['bundles = ["team_a"]'])
    venv: _Venv | None = Field(None, examples=['venv = "/opt/venvs/team_a"'])
    python: _Python | None = Field(None, examples=['python = "/usr/bin/python3.11"'])
    allowed_triggers: Annotated[list[_Classpath], AfterValidator(_allow_list)] | None = Field(
        None, description="an array of strings", examples=['allowed_triggers = ["pkg.mod.MyTrigger"]'])
    start_method: Literal["fork", "exec"] = Field(
        "fork", description='"fork" (from a warm zygote; the default) or "exec" (a fresh interpreter each start)')
    restart: RestartSettings = RestartSettings()
    python_path: list[_PathEntry] | None = Field(
        None, description="an array of directory paths (strings)", examples=['python_path = ["/opt/airflow/lib"]'])
    python_path_mode: Literal["extend", "replace"] = Field(
        "extend", description='"extend" (after PYTHONPATH, plugins folder and config dir; the default) '
                              'or "replace" (instead of them)')
    bundle_code: bool = Field(True, description="true or false", examples=["bundle_code = false"])
    limits: Limits | None = Field(None, description="a [loops.<name>.limits] table",
                                  examples=['[loops.team_a.limits] memory = "512M"'])
    max_bundle_versions: int = Field(
        4, ge=1, description="an integer >= 1 (versions of one bundle running at once, each its own process)",
        examples=["max_bundle_versions = 4"])
    level: Level | None = Field(None, description=" or ".join(f'"{lv}"' for lv in LEVELS))
    capacity: int | None = Field(None, ge=1, description="an integer >= 1 (triggers of this loop's bundles held at once)",
                                 examples=["capacity = 20"])
    user: Annotated[str, Field(min_length=1), AfterValidator(_unix_user)] | None = Field(
        None, description="a Unix user name", examples=['user = "team_a"'])


class FileTable(BaseModel):
    model_config = _TABLE

    loops: dict[Annotated[str, AfterValidator(_loop_name)], LoopTable] = Field(
        {}, description="one [loops.<name>] section per loop")
    supervisor: SupervisorSettings = SupervisorSettings()
    health: HealthSettings = HealthSettings()


#: Keys that used to exist: rejected with what to do instead.
REMOVED_KEYS = {
    "isolation": ("is no longer a setting: the isolation level is the key level",
                  'rename it to level (one of ' + ", ".join(f'"{lv}"' for lv in LEVELS) + "), or remove it: "
                  'a loop with venv/python set runs that interpreter ("venv"), otherwise the supervisor\'s ("process")'),
}



def schema_at(path: tuple[str, ...]) -> type | None:
    """The schema class of the TOML table at key *path* (for unknown-key and type messages)."""
    match path:
        case ():
            return FileTable
        case ("supervisor",):
            return SupervisorSettings
        case ("health",):
            return HealthSettings
        case ("loops", _):
            return LoopTable
        case ("loops", _, "restart"):
            return RestartSettings
        case ("loops", _, "limits"):
            return Limits
    return None


def relations(data: dict[str, Any]) -> list[Problem]:
    """Rules across keys, read from the raw TOML (values of the wrong type are the schema's)."""
    problems: list[Problem] = []
    owner: dict[str, str] = {}
    loops = data.get("loops")
    for name, table in loops.items() if isinstance(loops, dict) else ():
        if not isinstance(table, dict):
            continue
        key = f"loops.{name}"
        if name == DEFAULT_LOOP and "bundles" in table:
            problems.append(Problem(f"{key}.bundles", "the default loop takes no bundle list",
                                    "remove it; every bundle not listed in another loop runs in the default loop"))
        elif name != DEFAULT_LOOP and "bundles" not in table:
            problems.append(Problem(f"{key}.bundles", "missing",
                                    'list the bundles this loop runs, e.g. bundles = ["team_a"]'))
        problems += level_problems(name, table)
        if "venv" in table and "python" in table:
            problems.append(Problem(f"{key}.python", "venv and python are both set",
                                    "keep one: venv runs <venv>/bin/python, python names an interpreter directly"))
        bundles = table.get("bundles")
        names = {b for b in bundles if isinstance(b, str)} if isinstance(bundles, list) else set()
        for bundle in sorted(names) if name != DEFAULT_LOOP else ():
            if owner.setdefault(bundle, name) != name:
                problems.append(Problem(f"{key}.bundles", f"bundle {bundle!r} is in both loops {owner[bundle]!r} and {name!r}",
                                        "list each bundle in exactly one loop"))
    return problems
