"""
Where a loop looks for trigger code: the ``sys.path`` entries the supervisor computed for it.

Why: stock ``airflow triggerer`` imports a trigger class from the interpreter's packages, from
``PYTHONPATH`` and from ``[core] plugins_folder`` and ``$AIRFLOW_HOME/config`` (Airflow 3.3.2
``airflow/settings.py``, ``prepare_syspath_for_config_and_plugins``). A loop has a private
``AIRFLOW_HOME`` and no ``PYTHONPATH``, so the supervisor (``supervisor.trigger_path``) computes
those entries — plus the roots of the loop's own ``LocalDagBundle`` bundles — once, and hands them
to each loop and zygote in one environment variable, ``ENV_SYS_PATH``: a JSON array of
``{"path", "source", "position"}`` objects. Directories on ``sys.path`` are not secrets.

``position`` follows what each source does in stock Airflow: ``"front"`` entries (``PYTHONPATH``,
a loop's ``python_path``) go right after ``sys.path[0]``, before the standard library and
site-packages, as the interpreter places ``PYTHONPATH``; ``"back"`` entries (plugins folder,
config directory, bundle roots) are appended, as Airflow and workers do.

:func:`apply` is idempotent and replaces what it applied before: a zygote applies the
supervisor-wide entries before it imports Airflow, and a loop forked from it applies its own
loop's entries (which may differ: ``python_path``, bundle roots) before it imports any user code.

Stdlib only: the zygote imports this before anything else.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal

#: The environment variable carrying a loop's (or zygote's) entries.
ENV_SYS_PATH = "MULTITRIGGER_SYS_PATH"

Position = Literal["front", "back"]


@dataclass(frozen=True)
class PathEntry:
    """One ``sys.path`` entry and why it is there (``source`` names it in import errors)."""

    path: str
    source: str  # "PYTHONPATH", "plugins_folder", "AIRFLOW_HOME/config", "python_path", "bundle <name>"
    position: Position


#: What :func:`apply` put on ``sys.path`` in this process (inherited by forked children).
_APPLIED: list[PathEntry] = []


def encode(entries: Iterable[PathEntry]) -> str:
    return json.dumps([asdict(e) for e in entries], separators=(",", ":"))


def decode(value: str) -> list[PathEntry]:
    """The entries in ``value``; raises ``ValueError`` on anything else (a supervisor bug)."""
    items = json.loads(value) if value else []
    if not isinstance(items, list):
        raise ValueError(f"{ENV_SYS_PATH} is not a JSON array")
    entries = []
    for item in items:
        if not (isinstance(item, dict) and set(item) == {"path", "source", "position"}
                and item["position"] in ("front", "back")):
            raise ValueError(f"{ENV_SYS_PATH}: malformed entry {item!r}")
        entries.append(PathEntry(str(item["path"]), str(item["source"]), item["position"]))
    return entries


def apply(environ: Mapping[str, str] | None = None) -> list[PathEntry]:
    """Put the entries of ``ENV_SYS_PATH`` on ``sys.path``, replacing those applied before."""
    entries = decode((os.environ if environ is None else environ).get(ENV_SYS_PATH, ""))
    for old in _APPLIED:
        while old.path in sys.path:
            sys.path.remove(old.path)
    front = [e.path for e in entries if e.position == "front" and e.path not in sys.path]
    sys.path[1:1] = list(dict.fromkeys(front))
    for entry in entries:
        if entry.position == "back" and entry.path not in sys.path:
            sys.path.append(entry.path)
    # A fresh directory listing for exactly the entries that changed. Not importlib.invalidate_caches():
    # it writes to every cached finder (one per package directory imported: ~1600 modules' worth),
    # which in a forked loop un-shares ~2 MB of the zygote's pages (measured). Namespace packages
    # recompute their path by themselves when sys.path changes.
    for path in {e.path for e in entries} | {e.path for e in _APPLIED}:
        sys.path_importer_cache.pop(path, None)
    _APPLIED[:] = entries
    return entries


def where_looked() -> str:
    """The places this loop looked for trigger code, for an import error on the trigger's task."""
    lines = [f"  {e.source}: {e.path}" for e in _APPLIED]
    lines.append(f"  the installed packages of {sys.executable}")
    return "the loop looked in:\n" + "\n".join(lines)
