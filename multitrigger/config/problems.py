"""Config problems as an operator reads them: ``<file>: <key>: <problem> — <fix>``.

pydantic reports an error as a ``loc`` tuple and an error type; an operator needs the dotted TOML
key (``loops.team_a.restart.jitter``, ``loops.a.allowed_triggers[0]``) and what to write instead.
This module maps one onto the other, so ``multitrigger.config.schema`` states only the schema. A schema
field guides the fix through its ``description`` (what a valid value is) and ``examples`` (a
TOML line); errors the config raises itself carry their fix in the error context. Checked against
the error types of pydantic 2.14 (the version Airflow 3.3.2 installs).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

__all__ = ["ConfigError", "Problem", "dotted_key", "problems_from", "toml_type"]


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


#: The schema class of the table at a key path (``()`` is the file), or None if not a table.
SchemaAt = Callable[[tuple[str, ...]], type | None]

_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
_NOUNS = {
    "float_type": "a number", "int_type": "an integer", "string_type": "a string",
    "bool_type": "a boolean", "list_type": "an array",
    "dict_type": "a table", "model_type": "a table", "dataclass_type": "a table",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_BOUND_CTX = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}
_UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument")


def toml_type(value: Any) -> str:
    """The TOML name of a parsed value's type ("integer", "array", ...)."""
    return _TYPES.get(type(value), type(value).__name__)


def dotted_key(loc: tuple[int | str, ...]) -> str:
    """``("loops", "a", "allowed_triggers", 0)`` → ``loops.a.allowed_triggers[0]``."""
    key = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for a dict key that failed (a loop name)
            continue
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else part)
    return key


def problems_from(exc: ValidationError, schema_at: SchemaAt,
                  removed: Mapping[str, tuple[str, str]]) -> list[Problem]:
    """One :class:`Problem` per pydantic error; *removed* maps retired keys to (problem, fix)."""
    return [_problem(err, schema_at, removed) for err in exc.errors(include_url=False)]


def _problem(err: Mapping[str, Any], schema_at: SchemaAt, removed: Mapping[str, tuple[str, str]]) -> Problem:
    loc: tuple[int | str, ...] = tuple(p for p in err["loc"] if p != "[key]")
    key, kind, value = dotted_key(loc), err["type"], err["input"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    if "fix" in ctx:  # raised by multitrigger.config itself
        return Problem(key, ctx["problem"], ctx["fix"])
    at = max((i for i, p in enumerate(loc) if isinstance(p, str)), default=0)
    name = str(loc[at]) if loc else ""
    table = schema_at(tuple(str(p) for p in loc[:at]))
    fields: dict[str, FieldInfo] = getattr(table, "__pydantic_fields__", {})
    info = fields.get(name)
    if kind in _UNKNOWN:
        if name in removed:
            return Problem(key, *removed[name])
        return Problem(key, "unknown key", f"remove it or use one of: {', '.join(fields)}")
    if kind in _NOUNS:
        return Problem(key, f"must be {_NOUNS[kind]}, not {toml_type(value)}", _write(key, name, _NOUNS[kind], info))
    if kind in _BOUNDS:
        op, limit = _BOUNDS[kind], ctx[_BOUND_CTX[kind]]
        fix = f"use {info.description}" if info and info.description else f"use a value {op} {limit}"
        if info is not None and _is_scalar(info.default):
            fix += f" (default {_toml(info.default)})"
        return Problem(key, f"must be {op} {limit}, got {_toml(value)}", fix)
    if kind == "string_too_short":
        return Problem(key, "must not be empty", _write(key, name, "a non-empty string", info))
    if kind == "literal_error":
        fix = f"use {info.description}" if info and info.description else f"use one of: {ctx.get('expected')}"
        return Problem(key, f"unknown {name.replace('_', ' ')} {value!r}", fix)
    return Problem(key, str(err["msg"]), "see the Configuration section of the README")


def _write(key: str, name: str, noun: str, info: FieldInfo | None) -> str:
    """The fix for a value of the wrong type: what to write, with an example where there is one."""
    what = info.description if info is not None and info.description else None
    if info is not None and info.examples:
        return f"write {what}, e.g. {info.examples[0]}" if what else f"write e.g. {info.examples[0]}"
    if noun == "a table":
        return f"write {what}" if what else f"write a [{key}] section"
    if info is not None and _is_scalar(info.default):
        return f"write {noun}, e.g. {name} = {_toml(info.default)}"
    return f"write {noun}"


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def _toml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, bool)) else repr(value)
