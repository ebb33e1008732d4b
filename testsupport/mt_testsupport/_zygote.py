"""Fork server that makes sandbox worker subprocesses cheap.

Importing Airflow costs ~5 s on a small machine and most of it is third-party code (SQLAlchemy,
pydantic, libcst, rich, ...).  This process pre-imports those third-party modules -- but NEVER
``airflow`` (whose import reads the process's Airflow configuration) -- and then, per request,
``fork()``s a child that sets the requested environment (an ``AirflowHome.env()``), and only then
imports Airflow and runs :mod:`mt_testsupport._worker`.  Each child therefore is a fresh
Airflow process with its own configuration, exactly like ``python -m mt_testsupport._worker``.

Protocol (line-delimited JSON on stdin/stdout)::

    -> {"argv": [...], "env": {...}, "cwd": "...", "log": "..."}
    <- {"pid": <child pid>}
    <- {"rc": <exit code>}

The list of modules to pre-import is recorded by the worker itself (see ``record_modules``) in
``<tmp>/multitrigger-zygote-modules-<key>.json``; the server exits when stdin is closed.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

_EXCLUDED_PREFIXES = ("airflow", "multitrigger", "mt_testsupport", "unusual_prefix_", "__main__", "__mp_main__")


def modules_file() -> Path:
    key = hashlib.sha1(f"{sys.prefix}|{sys.version}".encode()).hexdigest()[:12]
    base = Path(os.environ.get("MULTITRIGGER_TEMPLATE_DIR") or tempfile.gettempdir())
    return base / f"multitrigger-zygote-modules-{key}.json"


def _preloadable(name: str, module: object) -> bool:
    if name.split(".")[0].startswith(_EXCLUDED_PREFIXES) or name.startswith(_EXCLUDED_PREFIXES):
        return False
    file = getattr(module, "__file__", None)
    if file is None:
        return name in sys.builtin_module_names
    file = os.path.realpath(file)
    roots = {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    return any(file.startswith(root + os.sep) for root in roots)


def record_modules() -> None:
    """Merge the third-party modules loaded by this (worker) process into the modules file."""
    try:
        path = modules_file()
        current = {name for name, mod in list(sys.modules.items()) if mod is not None and _preloadable(name, mod)}
        try:
            known = set(json.loads(path.read_text()))
        except (OSError, ValueError):
            known = set()
        if current <= known:
            return
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(sorted(known | current)))
        os.replace(tmp, path)
    except Exception:  # purely an optimisation
        pass


def _warm(path: Path) -> bool:
    try:
        names = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    for name in names:
        if name.startswith(_EXCLUDED_PREFIXES):
            continue
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: S110 - best effort
            pass
    # Belt and braces: pre-importing must never have pulled in Airflow (its import reads the
    # configuration); if it somehow did, this server is useless -- exit, the caller falls back.
    if any(n == "airflow" or n.startswith("airflow.") for n in sys.modules):
        sys.exit(3)
    return True


def _reply(obj: dict) -> None:
    os.write(1, (json.dumps(obj) + "\n").encode())


def _child(req: dict) -> int:
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    for entry in reversed([p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    sys.argv = ["mt_testsupport._worker", *req["argv"]]
    from mt_testsupport import _worker

    return _worker.main(req["argv"])


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller's Ctrl-C is not for us; stdin EOF is
    path = modules_file()
    warmed = _warm(path)
    stdin = os.fdopen(0, "rb", buffering=0)
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = stdin.read(65536)
            if not chunk:
                return 0
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("op") == "ping":
            _reply({"pong": True, "warmed": warmed})
            continue
        if not warmed:
            warmed = _warm(path)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            rc = 70
            try:
                rc = _child(req)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                try:
                    import logging

                    logging.shutdown()
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(rc)
        _reply({"pid": pid})
        _, status = os.waitpid(pid, 0)
        _reply({"rc": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    sys.exit(main())
