"""Tiny local packages for venv tests (no index needed to install them)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path


def write_package(root: Path, name: str, version: str, deps: list[str], modules: dict[str, str] | None = None) -> Path:
    """A source tree of ``name`` at ``version`` (``__version__`` set), plus extra ``modules``."""
    src = root / f"{name}-{version}"
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text(f'__version__ = "{version}"\n')
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "{version}"
        dependencies = {json.dumps(deps)}
        """))
    for module, source in (modules or {}).items():
        (src / name / f"{module}.py").write_text(source)
    return src
