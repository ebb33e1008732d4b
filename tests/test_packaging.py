"""Only product code ships: a real wheel build of multitrigger holds the product and the demo,
and none of the test support (``testsupport/``, a distribution of its own)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_demo_and_no_test_support(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "multitrigger", src / "multitrigger", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "testsupport", src / "testsupport", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w",
                    str(tmp_path / "dist")], cwd=src, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("multitrigger-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = {n for n in names if n.endswith(".py")}
    assert {"multitrigger/cli.py", "multitrigger/demo/home.py", "multitrigger/demo/_worker.py",
            "multitrigger/demo/triggers.py", "multitrigger/demo/run.py"} <= modules
    assert all(n.startswith(("multitrigger/", "multitrigger-")) for n in names), names
    assert not [n for n in names if "testsupport" in n or "sandbox" in n], names
    # Nothing shipped imports the test support.
    shipped = "\n".join((ROOT / n).read_text() for n in modules)
    assert not re.findall(r"^\s*(?:from|import)\s+mt_testsupport", shipped, re.M)
