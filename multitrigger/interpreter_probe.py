"""Handshake with a Python interpreter a trigger loop will run in.

A loop may run in another interpreter (a bundle virtualenv). Before the
supervisor trusts it we ask that interpreter itself -- in a subprocess, never by
reading files -- which Python, Airflow and Task SDK it has and whether it can
import ``multitrigger``, because that is what the loop process will see.

The loop launcher and the probe share one bootstrap (:func:`bootstrap_code`):
the directory holding the ``multitrigger`` package is *appended* to
``sys.path``, so a bundle venv needs no copy of multitrigger, yet its own
packages (listed earlier on ``sys.path``) still win.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "JSON_MARKER",
    "ProbeResult",
    "bootstrap_code",
    "clean_env",
    "incompatibilities",
    "loop_bootstrap_args",
    "probe",
    "run_python_json",
    "source_root",
]

#: Prefixes the JSON line a child prints; Airflow may print warnings to stdout on import.
JSON_MARKER = "MULTITRIGGER-JSON:"


def source_root() -> Path:
    """The directory that contains the ``multitrigger`` package directory."""
    return Path(__file__).resolve().parent.parent


def _path_setup_code() -> str:
    # Append, not prepend: the interpreter's own site-packages must win, so a
    # bundle venv that pins its own copy of a package keeps it.
    return f"import sys; sys.path.append({str(source_root())!r})"


def bootstrap_code(module: str) -> str:
    """``python -c`` code that makes multitrigger importable and runs *module*.

    ``alter_sys=True`` makes the module a real ``__main__`` (sys.argv[0],
    sys.modules), as ``python -m`` would.
    """
    return (
        f"{_path_setup_code()}; import runpy; "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )


def loop_bootstrap_args(python: Path) -> list[str]:
    """argv that starts a trigger loop child process in *python*."""
    return [str(python), "-c", bootstrap_code("multitrigger.loop")]


def clean_env(airflow_home: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """os.environ without AIRFLOW* and PYTHONPATH/PYTHONHOME.

    The supervisor's Airflow settings (DB URL, AIRFLOW_HOME) must not leak into
    a probe: with *airflow_home* pointing at an empty temp dir, nothing there
    can read a real airflow.cfg or touch a database. PYTHONPATH/PYTHONHOME
    would make the answer describe our environment, not the interpreter's.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("AIRFLOW") and k not in ("PYTHONPATH", "PYTHONHOME")
    }
    if airflow_home is not None:
        env["AIRFLOW_HOME"] = str(airflow_home)
    return env


def run_python_json(
    python: Path,
    code: str,
    *,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Any:
    """Run *code* in *python*; it must ``print(JSON_MARKER + json.dumps(...))``.

    Raises RuntimeError with the child's stderr tail on any failure, so callers
    can put one readable reason into their own error.
    """
    try:
        proc = subprocess.run(
            [str(python), "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env() if env is None else env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError:
        raise RuntimeError(f"interpreter {python} does not exist") from None
    except PermissionError:
        raise RuntimeError(f"interpreter {python} is not executable") from None
    except OSError as exc:
        raise RuntimeError(f"cannot run {python}: {exc}") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{python} did not answer within {timeout:g}s") from None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(JSON_MARKER):
            return json.loads(line[len(JSON_MARKER):])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
    raise RuntimeError(f"{python} exited with code {proc.returncode}: {tail or '(no output)'}")


@dataclass(frozen=True)
class ProbeResult:
    """What an interpreter reported about itself; ``error`` set if unusable."""

    python: Path
    python_version: str | None
    airflow_version: str | None  # distribution apache-airflow-core
    task_sdk_version: str | None  # distribution apache-airflow-task-sdk
    multitrigger_importable: bool
    sys_path: list[str] = field(default_factory=list)
    error: str | None = None
    multitrigger_location: str | None = None  # which copy won (venv's or appended source)
    multitrigger_error: str | None = None  # why ``import multitrigger`` failed

    @property
    def ok(self) -> bool:
        return self.error is None


# Runs in the probed interpreter (any Python 3); reads versions from metadata
# (milliseconds) and only imports airflow.sdk when asked (~4 s).
_PROBE_BODY = """
import json, sys
out = {"python_version": "%d.%d.%d" % sys.version_info[:3], "error": None,
       "airflow_version": None, "task_sdk_version": None,
       "multitrigger_importable": False, "multitrigger_location": None}
try:
    from importlib import metadata
    for key, dist in (("airflow_version", "apache-airflow-core"),
                      ("task_sdk_version", "apache-airflow-task-sdk")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
except Exception as exc:
    out["error"] = "reading package metadata failed: %r" % (exc,)
try:
    import multitrigger
    out["multitrigger_importable"] = True
    out["multitrigger_location"] = getattr(multitrigger, "__file__", None)
except Exception as exc:
    out["multitrigger_error"] = "%s: %s" % (type(exc).__name__, exc)
if IMPORT_CHECK and out["task_sdk_version"] and out["error"] is None:
    try:
        import airflow.sdk
    except Exception as exc:
        out["error"] = "import airflow.sdk failed: %s: %s" % (type(exc).__name__, exc)
out["sys_path"] = list(sys.path)
print(MARKER + json.dumps(out))
"""


def probe(python: Path, timeout: float = 60, *, import_check: bool = True) -> ProbeResult:
    """Ask *python* what it can run, through the same bootstrap as a loop.

    Never raises for a broken interpreter: the reason is in ``error`` (could
    not run, or ``import airflow.sdk`` failed) or in the version/importable
    fields, so ``config check`` can report every loop at once.
    """
    python = Path(python)
    code = (
        f"{_path_setup_code()}\nMARKER = {JSON_MARKER!r}\nIMPORT_CHECK = {bool(import_check)!r}\n"
        + _PROBE_BODY
    )
    with tempfile.TemporaryDirectory(prefix="multitrigger-probe-") as home:
        try:
            data = run_python_json(python, code, env=clean_env(home), timeout=timeout)
        except RuntimeError as exc:
            return ProbeResult(python, None, None, None, False, [], str(exc))
    return ProbeResult(
        python=python,
        python_version=data.get("python_version"),
        airflow_version=data.get("airflow_version"),
        task_sdk_version=data.get("task_sdk_version"),
        multitrigger_importable=bool(data.get("multitrigger_importable")),
        sys_path=list(data.get("sys_path", [])),
        error=data.get("error"),
        multitrigger_location=data.get("multitrigger_location"),
        multitrigger_error=data.get("multitrigger_error"),
    )


def _own_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def incompatibilities(result: ProbeResult) -> list[tuple[str, str]]:
    """(problem, fix) pairs why a loop cannot run in ``result.python``.

    A loop must run the supervisor's exact Airflow and Task SDK (versions as
    installed in *this* process): trigger classes, serialization and the
    supervisor<->loop protocol are only tested against one pair.
    """
    py = result.python
    if result.error is not None:
        return [(f"interpreter {py} failed the handshake: {result.error}",
                 f"make `{py} -c 'import airflow.sdk'` work")]
    out: list[tuple[str, str]] = []
    for dist, have in (("apache-airflow-core", result.airflow_version),
                       ("apache-airflow-task-sdk", result.task_sdk_version)):
        want = _own_version(dist)
        if have is None:
            out.append((f"{dist} is not installed in {py} (Airflow missing)",
                        (f"install {dist}=={want} there, or build the venv with "
                         "multitrigger.venvs.create_bundle_venv (layers it on the supervisor's "
                         "packages)")))
        elif have != want:
            out.append((f"{py} has {dist} {have}, the supervisor runs {want}",
                        f"install {dist}=={want} there; loops must run the supervisor's Airflow"))
    if not result.multitrigger_importable:
        out.append((f"multitrigger is not importable in {py}: {result.multitrigger_error}",
                    (f"the loop appends {source_root()} to sys.path; make it readable "
                     "and use Python >= 3.10")))
    return out
