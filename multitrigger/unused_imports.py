"""
Keep ``rich``, ``pygments`` and ``libcst`` out of processes that only import them by accident.

Why: nothing a triggerer runs uses them, yet every process that imports Airflow carries them.

``rich`` (and the ``pygments`` it pulls in): two optional imports pull it in, both guarded by
``except ImportError`` in their own code:

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
(Airflow's rich warning printer, a user's trigger) imports it as usual.

``libcst`` (5.5 MB the same way): ``airflow.sdk.definitions._internal.decorators`` imports it at module
level for ``remove_task_decorator`` (the source of a ``@task.virtualenv``-style callable, run by
workers), and ``BaseOperator`` imports that module for ``fixup_decorator_warning_stack``, which
needs no ``libcst``. So that one module is loaded in two parts (``_DeferLibcst``): its statements
that use ``cst``, or a name such a statement binds, run on the first access to one of those names
(PEP 562 module ``__getattr__``: ``from … import remove_task_decorator`` included), the rest at
import. Checked against Airflow 3.3.2; if the module cannot be split (a statement of the first part
would need the second) it is loaded whole, as usual.

Stdlib only: the zygote installs both before it imports anything (``multitrigger.loop.zygote``).
"""

from __future__ import annotations

import ast
import importlib.abc
import os
import sys
import threading
from collections.abc import Sequence
from importlib.machinery import ModuleSpec, PathFinder, SourceFileLoader
from types import ModuleType
from typing import Any

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


#: The module loaded in two parts, and the name whose users make up the second part.
DEFERRED_MODULE, DEFERRED_NAME = "airflow.sdk.definitions._internal.decorators", "cst"


class _DeferLibcst(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finder and loader of ``DEFERRED_MODULE`` in two parts (see the module docstring)."""

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name != DEFERRED_MODULE:
            return None
        spec = PathFinder.find_spec(name, path)
        if spec is None or not isinstance(spec.loader, SourceFileLoader) or spec.origin is None:
            return spec
        deferred = ModuleSpec(name, self, origin=spec.origin, loader_state=spec.loader)
        deferred.has_location = True  # __file__, as the path finder's spec gives it
        return deferred

    def create_module(self, spec: ModuleSpec) -> None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        assert spec is not None and spec.origin is not None
        source = spec.loader_state.get_source(module.__name__)
        parts = split_on(ast.parse(source, spec.origin), DEFERRED_NAME)
        if parts is None:
            exec(compile(source, spec.origin, "exec", dont_inherit=True), module.__dict__)
            return
        now, later, names = (compile(part, spec.origin, "exec", dont_inherit=True) if isinstance(part, ast.Module)
                             else part for part in parts)
        exec(now, module.__dict__)

        lock, ran = threading.RLock(), []  # two threads' first use: the deferred part runs once, both wait for it

        def __getattr__(name: str) -> Any:  # PEP 562: only names the module does not have yet
            with lock:
                if name in names and not ran:
                    ran.append(True)
                    module.__dict__.pop("__getattr__", None)
                    exec(later, module.__dict__)
            try:
                return module.__dict__[name]
            except KeyError:
                raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}") from None

        module.__dict__["__getattr__"] = __getattr__


def split_on(tree: ast.Module, name: str) -> tuple[ast.Module, ast.Module, frozenset[str]] | None:
    """(statements that need neither ``name`` nor what the others bind, the others, the names these
    bind); None if nothing uses ``name`` or a statement of the first part that is not an import, a
    definition or a docstring comes after one of the second (it might depend on it by order)."""
    if any("__getattr__" in _binds(st) for st in tree.body):
        return None  # the module's own __getattr__ would replace the one that loads the second part
    future = [st for st in tree.body if isinstance(st, ast.ImportFrom) and st.module == "__future__"]
    deferred, later, now = {name}, [], []
    for st in tree.body:
        if st in future:
            continue
        used = {n.id for n in ast.walk(st) if isinstance(n, ast.Name)}
        if used & deferred or _binds(st) & deferred:
            later.append(st)
            deferred |= _binds(st)
        elif later and not (isinstance(st, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef))
                            or isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant)):
            return None
        else:
            now.append(st)
    if not later:
        return None
    return (ast.Module(body=[*future, *now], type_ignores=[]), ast.Module(body=[*future, *later], type_ignores=[]),
            frozenset(deferred))


def _binds(st: ast.stmt) -> set[str]:
    if isinstance(st, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).partition(".")[0] for a in st.names}
    if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {st.name}
    return {n.id for n in ast.walk(st) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def skip_unused_imports() -> None:
    """Install both finders once; the ``rich`` one not with ``$DEV`` set (Airflow then renders
    tracebacks with rich)."""
    if not any(isinstance(finder, _DeferLibcst) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DeferLibcst())
    if os.environ.get("DEV", "") == "":
        if not any(isinstance(finder, _Refuse) for finder in sys.meta_path):
            sys.meta_path.insert(0, _Refuse())
