"""Isolation levels: one word per loop, and the rules that make it agree with the finer keys.

| level       | what the loop's bundles get                                   | keys it needs / forbids          |
| ----------- | ------------------------------------------------------------- | -------------------------------- |
| `shared`    | no loop of their own: they run in the default loop            | only `bundles` (and `level`)     |
| `process`   | own process, the supervisor's interpreter                     | no `venv`/`python`, no `limits`  |
| `venv`      | own process, own interpreter                                  | `venv` or `python`; no `limits`  |
| `cgroup`    | `process` or `venv` plus cgroup limits                        | a `[loops.<name>.limits]` table  |
| `dedicated` | not run by this instance unless it was started for the bundle | anything a loop may have         |

Without ``level`` the level follows from the keys: ``limits`` → ``cgroup``, an interpreter other
than the supervisor's (``venv``/``python``) → ``venv``, else ``process``; the default loop is always ``shared`` (it is the shared loop, whatever
interpreter it runs). Read from the raw TOML, like ``schema.relations``, so these problems come in
the same run as every schema error.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from multitrigger.config.problems import Problem

Level = Literal["shared", "process", "venv", "cgroup", "dedicated"]
LEVELS: tuple[str, ...] = get_args(Level)
DEFAULT_LOOP = "default"
#: The keys a ``shared`` entry may have: everything else belongs to the default loop.
_SHARED_KEYS = {"bundles", "level"}


def derived_level(name: str, table: dict[str, Any], own_interpreter: bool) -> Level:
    """The level of a loop table: its ``level`` if set, else what its keys make it."""
    if name == DEFAULT_LOOP:
        return "shared"
    level = table.get("level")
    if level in LEVELS:
        return level  # type: ignore[return-value]
    if "limits" in table:
        return "cgroup"
    return "venv" if own_interpreter else "process"


def level_problems(name: str, table: dict[str, Any]) -> list[Problem]:
    """Every way *table*'s ``level`` disagrees with its other keys (a bad value is the schema's)."""
    level, key = table.get("level"), f"loops.{name}"
    if level not in LEVELS:
        return []
    interpreter = "venv" if "venv" in table else ("python" if "python" in table else None)
    if name == DEFAULT_LOOP:
        if level == "shared":
            return []
        return [Problem(f"{key}.level", f"the default loop is the shared loop; it cannot be {level!r}",
                        f'remove level here, and give the bundles that need it their own [loops.<name>] with level = "{level}"')]
    if level == "shared":
        return [Problem(f"{key}.{k}", f"a shared entry runs its bundles in the default loop, which has its own {k}",
                        'remove it, set it on [loops.default], or give the loop its own process (level = "process")')
                for k in sorted(set(table) - _SHARED_KEYS)]
    problems: list[Problem] = []
    if level == "process" and interpreter:
        problems.append(Problem(f"{key}.{interpreter}", "level \"process\" runs the supervisor's interpreter",
                                f'remove {interpreter}, or set level = "venv"'))
    if level == "venv" and not interpreter:
        problems.append(Problem(f"{key}.level", 'level "venv" needs an interpreter of its own',
                                f'add venv = "/opt/venvs/{name}" (see multitrigger venv create) or python = "/path/to/python"'))
    if level in ("process", "venv") and "limits" in table:
        problems.append(Problem(f"{key}.limits", f"level {level!r} has no cgroup limits",
                                f'set level = "cgroup" (own process{", own venv" if interpreter else ""}, plus limits), or remove the limits'))
    if level == "cgroup" and "limits" not in table:
        problems.append(Problem(f"{key}.level", 'level "cgroup" needs limits',
                                f"add a [{key}.limits] table (memory, CPU, pids), or choose level \"process\" or \"venv\""))
    return problems
