"""
Zygote ownership: ``supervisor.zygote_pool.ZygotePool`` with real zygote processes (restart after a
death, none after an import failure, adoption of a prestarted staged zygote), and the modules the
pre-Airflow start-up path (``supervisor.prestart``) may import.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from multitrigger import paths


def test_prestart_imports_neither_cli_nor_airflow() -> None:
    """``cli`` imports ``prestart``; ``prestart`` runs before Airflow is imported and must not
    import ``cli`` back (the old cycle) nor anything that imports Airflow."""
    code = textwrap.dedent("""\
        import sys
        import multitrigger.supervisor.prestart
        print(sorted(m for m in sys.modules if m == "multitrigger.cli" or m.split(".")[0] == "airflow"))
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize(("value", "expected"), [
    (None, Path.home() / "airflow"),
    ("~/af", Path.home() / "af"),
    ("$MT_TEST_ROOT/home", Path("/srv/mt/home")),
])
def test_airflow_home_is_expanded_like_airflow(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: Path) -> None:
    monkeypatch.setenv("MT_TEST_ROOT", "/srv/mt")
    if value is None:
        monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW_HOME", value)
    from airflow.configuration import get_airflow_home

    assert paths.airflow_home() == expected == Path(get_airflow_home())
    assert paths.default_config_path() == expected / "multitrigger.toml"
    assert paths.state_dir() == expected / "multitrigger"
