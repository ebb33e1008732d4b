"""
Keep ``rich`` (and the ``pygments`` it pulls in) out of processes that only import it by accident.

Why: nothing a triggerer runs uses ``rich``, yet every process that imports Airflow carries it.
Two optional imports pull it in, both guarded by ``except ImportError`` in their own code:

* ``structlog.dev`` and ``structlog.tracebacks`` (structlog 25): ``rich`` is the default exception
  formatter of a ``ConsoleRenderer`` built without one, and renders locals. Airflow 3.3.2
  (``airflow._shared.logging.structlog``) passes its own formatter, ``structlog.dev.plain_traceback``,
  and builds ``ExceptionDictTransformer(use_rich=False)`` for JSON; only with ``$DEV`` set does it
  ask for ``RichTracebackFormatter``, so with ``$DEV`` set nothing is skipped.
* ``httpx/__init__`` imports its command-line client (``httpx._main``: ``rich.console``,
  ``rich.syntax``, ``pygments``) for ``httpx.main``, the ``httpx`` console script. Without it
  ``httpx.main`` is httpx's own fallback that prints how to install the CLI; no process here runs it.

Measured on Airflow 3.3.2 (tracemalloc, the modules' import-time allocations): ``rich`` 2.9 MB and
``pygments`` 0.9 MB in the supervisor, the same in every zygote, whose pages its forked loops share.

Only these importers are refused, through a ``sys.meta_path`` finder; any other ``import rich``
(Airflow's rich warning printer, a user's trigger) imports it as usual. Stdlib only: the zygote installs it
before it imports anything (``multitrigger.loop.zygote``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

#: importer → the module (with its submodules) refused to it; each import is guarded by
#: ``except ImportError`` in the importer (see the module docstring).
REFUSED = {"structlog.dev": "rich", "structlog.tracebacks": "rich", "httpx": "httpx._main"}
_WATCHED = frozenset(REFUSED.values())
_IMPORT_MACHINERY = frozenset({"importlib._bootstrap", "importlib._bootstrap_external", __name__})


class _Refuse:
    """A ``sys.meta_path`` finder that refuses the ``REFUSED`` modules to their importers only."""

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name not in _WATCHED and name.partition(".")[0] not in _WATCHED:
            return None
        refused = REFUSED.get(_importer() or "")
        if refused is not None and (name == refused or name.startswith(refused + ".")):
            raise ModuleNotFoundError(f"No module named {name!r} (multitrigger.unused_imports)", name=name)
        return None  # the next finders import it as usual


def _importer() -> str | None:
    """``__name__`` of the module whose code runs the import (the first frame outside importlib)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if name not in _IMPORT_MACHINERY:
            return name
        frame = frame.f_back
    return None


def skip_unused_imports() -> None:
    """Install the finder once, unless ``$DEV`` is set (Airflow then renders tracebacks with rich)."""
    if os.environ.get("DEV", "") != "":
        return
    if not any(isinstance(finder, _Refuse) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Refuse())
