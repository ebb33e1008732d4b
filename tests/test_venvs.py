"""Layered bundle venvs, exercised with real venvs, real installers and real interpreters.

Local packages (``confpkg`` 1.0 / 2.0 and two dependents) are built once per session into
wheels, so installing them needs no index; one test installs from a source directory the way
an operator would.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

import multitrigger
import mt_testsupport
from multitrigger.interpreter_probe import clean_env
from tests.pkgs import write_package as _write_pkg
from multitrigger.venvs import (
    PTH_NAME,
    VenvError,
    _find_uv,
    create_bundle_venv,
    describe,
    parent_site_packages,
)

pytestmark = pytest.mark.timeout(600)

PARENT_SITE = [p for p in site.getsitepackages() if os.path.isdir(p)]
HAS_UV = _find_uv(Path(sys.executable)) is not None
INSTALLERS = ["pip", pytest.param("uv", marks=pytest.mark.skipif(not HAS_UV, reason="no uv"))]




def _can_build_offline() -> bool:
    """setuptools builds wheels itself from 70.1 on; before that it needs ``wheel``."""
    try:
        import setuptools
    except ImportError:
        return False
    major_minor = tuple(int(x) for x in setuptools.__version__.split(".")[:2])
    return major_minor >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("src")
    return {
        "confpkg-1.0": _write_pkg(root, "confpkg", "1.0", []),
        "confpkg-2.0": _write_pkg(root, "confpkg", "2.0", []),
        # needs the old confpkg: breaks when a child layer shadows it with 2.0
        "needsconf1": _write_pkg(root, "needsconf1", "0.1", ["confpkg<2"]),
        # everything it needs is already in the parent layers
        "usesdk": _write_pkg(root, "usesdk", "0.1", ["apache-airflow-task-sdk", "confpkg"]),
    }


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory, sources: dict[str, Path]) -> dict[str, str]:
    out = tmp_path_factory.mktemp("wheels")
    # Offline if the parent's setuptools can build wheels; otherwise an isolated build fetches
    # setuptools through pip's configured index.
    isolation = ["--no-build-isolation"] if _can_build_offline() else []
    for src in sources.values():  # one call each: pip refuses two confpkg versions in one call
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation,
                        "-w", str(out), str(src)], check=True, env=clean_env())
    built = {p.name.split("-")[0] + "-" + p.name.split("-")[1]: str(p) for p in out.glob("*.whl")}
    return {"confpkg-1.0": built["confpkg-1.0"], "confpkg-2.0": built["confpkg-2.0"],
            "needsconf1": built["needsconf1-0.1"], "usesdk": built["usesdk-0.1"]}


@pytest.fixture(scope="session")
def mid(tmp_path_factory: pytest.TempPathFactory, wheels: dict[str, str]) -> Path:
    """A bundle venv with confpkg 1.0, used as the parent of further layers."""
    return create_bundle_venv(tmp_path_factory.mktemp("mid") / "venv", [wheels["confpkg-1.0"]])


_REPORT = """
import json, importlib, importlib.metadata as md, importlib.util, sys, multitrigger, confpkg, mt_testsupport
if sys.argv[1] == "import":
    sdk_file = importlib.import_module("airflow.sdk").__file__  # the real thing, ~4 s
else:
    sdk_file = importlib.util.find_spec("airflow.sdk").origin
print(json.dumps({"confpkg": confpkg.__version__, "confpkg_file": confpkg.__file__,
                  "sdk_file": sdk_file, "sdk_version": md.version("apache-airflow-task-sdk"),
                  "multitrigger_file": multitrigger.__file__, "testsupport_file": mt_testsupport.__file__}))
"""


def _report(python: Path, tmp: Path, import_sdk: bool = True) -> dict[str, str]:
    """Ask the interpreter itself (a fresh process) what it imports and from where."""
    mode = "import" if import_sdk else "find"
    proc = subprocess.run([str(python), "-c", _REPORT, mode], capture_output=True, text=True,
                          env=clean_env(tmp), check=True, cwd=tmp)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _under(path: str, parent: Path | str) -> bool:
    return Path(path).resolve().is_relative_to(Path(parent).resolve())


def test_parent_site_packages_of_project_venv() -> None:
    assert parent_site_packages(Path(sys.executable)) == PARENT_SITE


def test_two_bundle_venvs_see_own_confpkg_and_parent_airflow(
    tmp_path: Path, wheels: dict[str, str], sources: dict[str, Path]
) -> None:
    installers = ("uv", "pip") if HAS_UV else ("pip", "pip")
    py1 = create_bundle_venv(tmp_path / "a", [wheels["confpkg-1.0"]], installer=installers[0])
    # an operator-style install from a source directory (built through pip's index config)
    py2 = create_bundle_venv(tmp_path / "b", [str(sources["confpkg-2.0"])], installer=installers[1],
                             build_isolation=not _can_build_offline())
    assert py1 == tmp_path / "a" / "bin" / "python"

    for py, version in ((py1, "1.0"), (py2, "2.0")):
        seen = _report(py, tmp_path)
        assert seen["confpkg"] == version
        assert _under(seen["confpkg_file"], py.parent.parent)  # from the bundle venv itself
        assert _under(seen["sdk_file"], PARENT_SITE[0])  # from the supervisor's environment
        assert seen["sdk_version"] == importlib.metadata.version("apache-airflow-task-sdk")
        assert Path(seen["multitrigger_file"]) == Path(multitrigger.__file__)
        # the test support too (no PYTHONPATH here): what makes test triggers importable in a loop
        assert Path(seen["testsupport_file"]) == Path(mt_testsupport.__file__)
        # only the extra package lives in the bundle venv: no copy of Airflow
        assert describe(py.parent.parent)["packages"] == {"confpkg": version}
    # and the supervisor's own environment is untouched
    assert importlib.util.find_spec("confpkg") is None


def test_pth_is_one_addsitedir_line(tmp_path: Path) -> None:
    py = create_bundle_venv(tmp_path / "v")
    purelib = Path(describe(tmp_path / "v")["site_packages"])
    assert (purelib / PTH_NAME).read_text() == (
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in PARENT_SITE) + "\n")
    info = describe(tmp_path / "v")
    assert info["parents"] == PARENT_SITE and info["packages"] == {} and info["problems"] == []
    assert py.exists()


@pytest.mark.parametrize("installer", INSTALLERS)
def test_bundle_package_shadows_parent_version(
    tmp_path: Path, installer: str, mid: Path, wheels: dict[str, str]
) -> None:
    child = create_bundle_venv(tmp_path / "child", [wheels["confpkg-2.0"]], parent_python=mid,
                               installer=installer)
    seen = _report(child, tmp_path)
    assert seen["confpkg"] == "2.0" and _under(seen["confpkg_file"], tmp_path / "child")
    # through two layers: child -> mid -> project venv
    assert _under(seen["sdk_file"], PARENT_SITE[0])
    assert Path(seen["multitrigger_file"]) == Path(multitrigger.__file__)
    assert _report(mid, tmp_path, import_sdk=False)["confpkg"] == "1.0"  # parent keeps its own
    assert describe(tmp_path / "child")["shadows"] == {"confpkg": {"bundle": "2.0", "parent": "1.0"}}


@pytest.mark.parametrize("installer", INSTALLERS)
def test_dependencies_already_in_parent_are_not_copied(
    tmp_path: Path, installer: str, mid: Path, wheels: dict[str, str]
) -> None:
    # usesdk needs apache-airflow-task-sdk (project venv) and confpkg (mid layer).
    create_bundle_venv(tmp_path / "v", [wheels["usesdk"]], parent_python=mid, installer=installer)
    info = describe(tmp_path / "v")
    assert info["packages"] == {"usesdk": "0.1"}
    assert info["problems"] == []


def test_shadowing_that_breaks_a_parent_package_is_an_error(
    tmp_path: Path, wheels: dict[str, str]
) -> None:
    base = create_bundle_venv(tmp_path / "base", [wheels["confpkg-1.0"], wheels["needsconf1"]])
    with pytest.raises(VenvError) as err:
        create_bundle_venv(tmp_path / "child", [wheels["confpkg-2.0"]], parent_python=base)
    msg = str(err.value)
    assert "needsconf1 0.1 requires confpkg<2, but confpkg 2.0 wins on sys.path (bundle venv)" in msg
    assert "fix:" in msg


def test_rerun_is_idempotent_and_repairs_the_pth(tmp_path: Path, wheels: dict[str, str]) -> None:
    venv = tmp_path / "v"
    create_bundle_venv(venv, [wheels["confpkg-1.0"]])
    pth = Path(describe(venv)["site_packages"]) / PTH_NAME
    pth.write_text("import site; site.addsitedir('/nonexistent')\n")
    (tmp_path / "requirements.txt").write_text(f"# bundle extras\n{wheels['usesdk']}\n")
    py = create_bundle_venv(venv, requirements_file=tmp_path / "requirements.txt")
    assert describe(venv)["packages"] == {"confpkg": "1.0", "usesdk": "0.1"}
    assert _report(py, tmp_path, import_sdk=False)["confpkg"] == "1.0"  # parent layer back
    assert create_bundle_venv(venv) == py


def test_errors(tmp_path: Path) -> None:
    (tmp_path / "notavenv").mkdir()
    (tmp_path / "notavenv" / "data.txt").write_text("x")
    with pytest.raises(VenvError, match="is not a virtualenv; refusing"):
        create_bundle_venv(tmp_path / "notavenv")
    with pytest.raises(VenvError, match="installer must be one of auto, pip, uv"):
        create_bundle_venv(tmp_path / "v", installer="conda")
    with pytest.raises(VenvError, match="requirements file .* does not exist"):
        create_bundle_venv(tmp_path / "v", requirements_file=tmp_path / "missing.txt")
    with pytest.raises(VenvError, match="is the parent environment itself"):
        create_bundle_venv(Path(sys.prefix))
    with pytest.raises(VenvError, match="cannot inspect interpreter .*does not exist"):
        create_bundle_venv(tmp_path / "v", parent_python=tmp_path / "nope" / "python")
    with pytest.raises(VenvError, match="is not a virtualenv"):
        describe(tmp_path / "notavenv")
    with pytest.raises(VenvError, match="pip install failed"):
        create_bundle_venv(tmp_path / "v", [str(tmp_path / "no-such-dir")], installer="pip")
