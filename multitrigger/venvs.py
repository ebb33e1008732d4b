"""Layered bundle virtualenvs: only the bundle's extras on top of the supervisor's.

A trigger loop needs Airflow, the Task SDK and multitrigger at the supervisor's
exact versions, plus whatever the bundle's triggers import. Copying the whole
supervisor environment per bundle is slow and drifts, and
``python -m venv --system-site-packages`` run from inside a venv exposes the
*base* interpreter's packages, not the venv's. So a bundle venv is a plain venv
of the same CPython whose site-packages holds one ``.pth`` line::

    import site; site.addsitedir('<parent site-packages>')

``addsitedir`` appends the parent's directory *after* the venv's own
site-packages (the bundle's versions win) and also runs the parent's ``.pth``
files (editable installs, further layers), which a plain path line would not.

Installers differ on such a layered venv (measured with pip 23.2 / uv 0.13):

* pip resolves against ``sys.path``, so it sees the parent layer: shared deps
  are "already satisfied", and a package wanted at another version gets its
  own copy in the bundle venv ("Not uninstalling ... outside environment").
* uv only looks at the target venv's own site-packages. A plain
  ``uv pip install`` re-resolves the whole closure (131 packages for a package
  depending on the Task SDK, at uv's preferred versions, which would shadow
  the supervisor's Airflow) and cannot resolve packages that exist only
  locally. We therefore install the requested packages with ``--no-deps`` and
  then resolve their dependencies with ``--excludes`` listing everything the
  parent layers provide. A transitive dependency that needs a *different*
  version than the parent's is not upgraded by this; the consistency check
  below reports it (fix: name it explicitly, or use pip).

After installing, :func:`describe` checks, inside the new interpreter, that
every requirement touching a bundle package is met by the version that
actually wins on ``sys.path``; a bundle package that breaks Airflow's own
requirements fails loudly here instead of in a running loop.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from multitrigger.interpreter_probe import JSON_MARKER, clean_env, run_python_json

__all__ = ["PTH_NAME", "VenvError", "create_bundle_venv", "describe", "parent_site_packages"]

log = logging.getLogger(__name__)

#: File in the bundle venv's site-packages that links in the parent layer.
PTH_NAME = "_multitrigger_parent.pth"
_MARK = JSON_MARKER  # short alias for the code templates below
_INSTALLERS = ("auto", "pip", "uv")


class VenvError(Exception):
    """A bundle venv could not be created, installed into, or is inconsistent."""


_INFO_CODE = f"""
import json, site, sys, sysconfig
try:
    import pip; has_pip = True
except Exception:
    has_pip = False
print({_MARK!r} + json.dumps({{
    "version": "%d.%d.%d" % sys.version_info[:3],
    "base_executable": getattr(sys, "_base_executable", sys.executable),
    "site_packages": site.getsitepackages(),
    "prefix": sys.prefix,
    "purelib": sysconfig.get_path("purelib"),
    "has_pip": has_pip,
}}))
"""

# Runs in the bundle interpreter: which distribution wins per name, which own
# ones shadow a parent copy, and which requirements touching an own
# distribution are unmet.
_INSPECT_CODE = f"""
import json, os, sys
from importlib import metadata
own = os.path.realpath(sys.argv[1])
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
first, shadows = {{}}, {{}}
for dist in metadata.distributions():
    name = dist.metadata["Name"]
    if not name:
        continue
    key = canonicalize_name(name)
    where = os.path.realpath(str(dist.locate_file("")))
    if key not in first:
        first[key] = (dist, where)
    elif first[key][1] == own and where != own and key not in shadows:
        shadows[key] = {{"bundle": first[key][0].version, "parent": dist.version}}
problems = []
for key, (dist, where) in sorted(first.items()):
    for line in dist.requires or []:
        try:
            req = Requirement(line)
        except Exception:
            continue
        if req.marker is not None and not req.marker.evaluate({{"extra": ""}}):
            continue
        found = first.get(canonicalize_name(req.name))
        if where != own and (found is None or found[1] != own):
            continue
        if found is None:
            problems.append("%s %s requires %s, which is not installed" % (dist.metadata["Name"], dist.version, req))
        elif not req.specifier.contains(found[0].version, prereleases=True):
            problems.append("%s %s requires %s, but %s %s wins on sys.path (%s)" % (
                dist.metadata["Name"], dist.version, req, found[0].metadata["Name"],
                found[0].version, "bundle venv" if found[1] == own else "parent layer"))
print({_MARK!r} + json.dumps({{
    "version": "%d.%d.%d" % sys.version_info[:3],
    "packages": {{d.metadata["Name"]: d.version for d, w in first.values() if w == own}},
    "shadows": shadows, "problems": problems}}))
"""


def _info(python: Path) -> dict[str, Any]:
    try:
        info: dict[str, Any] = run_python_json(python, _INFO_CODE, timeout=60)
        return info
    except RuntimeError as exc:
        raise VenvError(f"cannot inspect interpreter {python}: {exc}") from None


def parent_site_packages(python: Path) -> list[str]:
    """The site-packages directories *python* itself installs into and reads.

    For a venv that is its own site-packages; layers below it come along via
    its ``.pth`` files when :func:`site.addsitedir` processes the directory.
    """
    return [p for p in _info(Path(python))["site_packages"] if os.path.isdir(p)]


def _python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def _read_pth(site_packages: Path) -> list[str]:
    """The parent directories our ``.pth`` line adds (parsed, not executed)."""
    try:
        tree = ast.parse((site_packages / PTH_NAME).read_text())
    except (OSError, SyntaxError):
        return []
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "addsitedir"
        and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
    ]


def _run(cmd: Sequence[str], what: str) -> None:
    log.info("%s: %s", what, " ".join(cmd))
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=clean_env(),
                          stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-25:])
        raise VenvError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


def _find_uv(parent_python: Path) -> str | None:
    # Not resolving symlinks: a venv's bin/ is where its uv lives.
    for bindir in (parent_python.parent, Path(sys.executable).parent):
        if os.access(bindir / "uv", os.X_OK):
            return str(bindir / "uv")
    return shutil.which("uv")


def _install(
    python: Path, purelib: Path, installer: str, uv: str | None, args: list[str],
    build_isolation: bool,
) -> None:
    extra = [] if build_isolation else ["--no-build-isolation"]
    if installer == "pip":
        _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *extra, *args],
             "pip install")
        return
    assert uv is not None
    base = [uv, "pip", "install", "--python", str(python), *extra]
    # 1) the requested packages themselves, into the bundle venv.
    _run([*base, "--no-deps", *args], "uv pip install --no-deps")
    # 2) their dependencies, minus everything the parent layers already hold
    #    (uv cannot see them, see module docstring).
    own, below = _names_by_layer(python, purelib)
    with tempfile.TemporaryDirectory(prefix="multitrigger-uv-") as tmp:
        excludes = Path(tmp) / "excludes.txt"
        excludes.write_text("".join(f"{n}\n" for n in sorted(below - own)))
        _run([*base, "--excludes", str(excludes), *args], "uv pip install (dependencies)")


def _names_by_layer(python: Path, purelib: Path) -> tuple[set[str], set[str]]:
    """Distribution names *python* sees in its own site-packages / below it."""
    code = (
        "import json, os, sys\nfrom importlib import metadata\n"
        "own = os.path.realpath(sys.argv[1])\n"
        "print(MARK + json.dumps([(d.metadata['Name'], "
        "os.path.realpath(str(d.locate_file(''))) == own) "
        "for d in metadata.distributions() if d.metadata['Name']]))"
    ).replace("MARK", repr(_MARK))
    rows: list[tuple[str, bool]] = run_python_json(python, code, args=[str(purelib)])
    return ({_canon(n) for n, mine in rows if mine}, {_canon(n) for n, mine in rows if not mine})


def _canon(name: str) -> str:
    """PEP 503 normalized name, the form uv's --excludes matches on."""
    return re.sub(r"[-_.]+", "-", name).lower()


def create_bundle_venv(
    path: Path,
    requirements: list[str] | None = None,
    requirements_file: Path | None = None,
    parent_python: Path = Path(sys.executable),
    installer: str = "auto",
    *,
    build_isolation: bool = True,
) -> Path:
    """Create (or update) a bundle venv layered on *parent_python*'s packages.

    Idempotent: on an existing bundle venv the ``.pth`` is rewritten (the
    parent may have moved) and the requirements installed again. *installer*
    is "pip", "uv" or "auto" (pip when the parent layer provides it, because it
    resolves against the layers natively; otherwise uv). Returns the venv's
    interpreter, ``<path>/bin/python``.
    """
    path, parent_python = Path(path).absolute(), Path(parent_python)
    if installer not in _INSTALLERS:
        raise VenvError(f"installer must be one of {', '.join(_INSTALLERS)}, not {installer!r}")
    if requirements_file is not None and not Path(requirements_file).is_file():
        raise VenvError(f"requirements file {requirements_file} does not exist")
    parent = _info(parent_python)
    parent_sites = [p for p in parent["site_packages"] if os.path.isdir(p)]
    if not parent_sites:
        raise VenvError(f"{parent_python} reports no existing site-packages directory")
    if path.resolve() == Path(parent["prefix"]).resolve():
        raise VenvError(f"{path} is the parent environment itself; choose another directory")
    python = _python_of(path)
    if (path / "pyvenv.cfg").is_file():
        have = _info(python)["version"] if python.exists() else None
        if have != parent["version"]:
            raise VenvError(
                f"{path} exists with Python {have or 'unknown'}, but {parent_python} is "
                f"Python {parent['version']}; delete {path} and run again to recreate it"
            )
    elif path.exists() and any(path.iterdir()):
        raise VenvError(f"{path} exists and is not a virtualenv; refusing to write into it")
    else:
        # Same CPython as the parent, no pip of its own: pip (if any) comes
        # from the parent layer, which keeps the venv tiny and fast to create.
        _run([parent["base_executable"], "-m", "venv", "--without-pip", str(path)], "python -m venv")
    purelib = Path(_info(python)["purelib"])
    purelib.mkdir(parents=True, exist_ok=True)
    line = "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in parent_sites)
    (purelib / PTH_NAME).write_text(line + "\n")

    args = list(requirements or [])
    if requirements_file is not None:
        args += ["-r", str(requirements_file)]
    if args:
        has_pip, uv = _info(python)["has_pip"], _find_uv(parent_python)
        if installer == "auto":
            installer = "pip" if has_pip else "uv"
        if installer == "pip" and not has_pip:
            raise VenvError(f"pip is not importable from {parent_python}; install pip there or use installer='uv'")
        if installer == "uv" and uv is None:
            raise VenvError(f"no uv executable next to {parent_python} or on PATH (and no pip in the "
                            "parent environment); install uv or pip")
        _install(python, purelib, installer, uv, args, build_isolation)
        problems = describe(path)["problems"]
        if problems:
            raise VenvError(
                f"{path}: installed, but the layered environment is inconsistent:\n  "
                + "\n  ".join(problems)
                + f"\nfix: delete {path}, then change the requirements and run again. A package "
                "that needs another version of something the parent provides: list that "
                "requirement explicitly (uv never replaces parent-provided dependencies by "
                "itself). A bundle package that breaks Airflow's own requirements cannot share "
                "the supervisor's Airflow: pin a compatible version."
            )
    return python


def describe(venv: Path) -> dict[str, Any]:
    """What a bundle venv holds, asked of its own interpreter.

    Keys: path, python, python_version, parents (from the ``.pth``),
    site_packages, packages (own name -> version), shadows (own packages that
    hide a different parent copy: name -> {"bundle", "parent"}), problems
    (unmet requirements involving own packages; empty when consistent).
    """
    venv = Path(venv).absolute()
    python = _python_of(venv)
    if not (venv / "pyvenv.cfg").is_file() or not python.exists():
        raise VenvError(f"{venv} is not a virtualenv (no pyvenv.cfg or bin/python)")
    purelib = Path(_info(python)["purelib"])
    try:
        data = run_python_json(python, _INSPECT_CODE, args=[str(purelib)], timeout=120)
    except RuntimeError as exc:
        raise VenvError(f"cannot inspect {venv}: {exc}") from None
    return {
        "path": str(venv),
        "python": str(python),
        "python_version": data["version"],
        "parents": _read_pth(purelib),
        "site_packages": str(purelib),
        "packages": data["packages"],
        "shadows": data["shadows"],
        "problems": data["problems"],
    }
