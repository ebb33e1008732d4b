"""
``multitrigger.unused_imports``: structlog and httpx come without ``rich``/``pygments``, anyone else
still imports ``rich``, ``$DEV`` turns it off, and Airflow's logging renders an exception the same
either way; Airflow's decorators module comes without ``libcst`` until ``remove_task_decorator`` is
used, which then gives stock's result; the supervisor imports its health server (``prometheus_client``)
only when it starts it. Each case runs in a fresh interpreter (the finders are
process-wide); the split itself is tested pure.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

import pytest

from multitrigger.unused_imports import split_on

PROBE = r"""
import json, sys
from multitrigger.unused_imports import skip_unused_imports
skip_unused_imports()
import httpx, structlog, structlog.dev, structlog.tracebacks
seen = {m: m in sys.modules for m in ("rich", "pygments", "httpx._main")}
seen["structlog_rich"] = structlog.dev.rich is not None
import rich.console  # anyone else gets it as usual
seen["later"] = "rich.console" in sys.modules
print(json.dumps(seen))
"""

#: Airflow 3.3.2's logging (console, as the supervisor's stdout gets it, or JSON, as loops send it)
#: of an exception.
RENDER = r"""
import sys
if sys.argv[1] == "skip":
    from multitrigger.unused_imports import skip_unused_imports
    skip_unused_imports()
from airflow._shared.logging.structlog import configure_logging
import structlog
configure_logging(json_output=sys.argv[2] == "json", colors=False)
try:
    raise ValueError("boom")
except ValueError:
    structlog.get_logger("t").exception("failed", trigger_id=7)
"""


TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?")

PID = re.compile(r"PID \d+")


def _run(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def test_structlog_and_httpx_come_without_rich() -> None:
    seen = json.loads(_run(PROBE, env={"DEV": ""}).strip().splitlines()[-1])
    assert seen == {"rich": False, "pygments": False, "httpx._main": False, "structlog_rich": False, "later": True}


def test_dev_mode_keeps_rich() -> None:
    seen = json.loads(_run(PROBE, env={"DEV": "1"}).strip().splitlines()[-1])
    assert seen["rich"] and seen["structlog_rich"] and seen["httpx._main"]


@pytest.mark.parametrize("output", ["console", "json"])
def test_airflow_logging_renders_exceptions_the_same(output: str) -> None:
    def rendered(mode: str) -> str:
        return PID.sub("PID <pid>", TIMESTAMP.sub("<ts>", _run(RENDER, mode, output, env={"DEV": ""})))

    skipped, stock = rendered("skip"), rendered("stock")
    assert "boom" in stock and "ValueError" in stock
    assert skipped == stock


DEFERRED = r"""
import json, sys
from multitrigger.unused_imports import skip_unused_imports
if sys.argv[1] == "skip":
    skip_unused_imports()
import airflow.jobs.triggerer_job_runner  # what the supervisor and every zygote import
from airflow.sdk.definitions._internal import decorators
seen = {"libcst_at_import": "libcst" in sys.modules, "file": decorators.__file__}
from airflow.sdk.definitions._internal.decorators import remove_task_decorator
src = "@setup\n@task.virtualenv(requirements=['x'])\ndef f(a):\n    return a  # kept\n"
seen["removed"] = remove_task_decorator(src, "@task.virtualenv")
seen["names"] = sorted(k for k in vars(decorators) if k not in ("__loader__", "__spec__", "__builtins__"))
seen["libcst_after"] = "libcst" in sys.modules
print(json.dumps(seen))
"""


def test_libcst_only_when_a_task_decorator_is_removed() -> None:
    skipped, stock = (json.loads(_run(DEFERRED, mode).strip().splitlines()[-1]) for mode in ("skip", "stock"))
    assert stock["libcst_at_import"] and not skipped["libcst_at_import"]
    assert skipped["libcst_after"]
    assert skipped["removed"] == stock["removed"] == "def f(a):\n    return a  # kept\n"
    assert skipped["names"] == stock["names"] and skipped["file"] == stock["file"]


def _split(source: str) -> tuple[str, str, list[str]] | None:
    parts = split_on(ast.parse(source), "cst")
    return None if parts is None else (ast.unparse(parts[0]), ast.unparse(parts[1]), sorted(parts[2]))


def test_split_defers_what_uses_the_name_and_what_it_binds() -> None:
    source = ("from __future__ import annotations\nimport sys\nimport libcst as cst\n\n"
              "def plain():\n    return sys\n\nclass T(cst.CSTTransformer):\n    pass\n\n"
              "def uses_t():\n    return T()\n")
    assert _split(source) == (
        "from __future__ import annotations\nimport sys\n\ndef plain():\n    return sys",
        "from __future__ import annotations\nimport libcst as cst\n\nclass T(cst.CSTTransformer):\n    pass\n\n"
        "def uses_t():\n    return T()",
        ["T", "cst", "uses_t"])


@pytest.mark.parametrize("source", [
    "import libcst as cst\nX = 1\n",  # a statement that might depend on the order
    "import libcst as cst\ndef __getattr__(name):\n    return name\n",  # the module's own __getattr__
    "import sys\n",  # nothing to defer
], ids=["assignment-after", "own-getattr", "nothing-deferred"])
def test_split_refuses(source: str) -> None:
    assert _split(source) is None


HEALTH = r"""
import json, sys, tempfile
from pathlib import Path
from types import SimpleNamespace
from multitrigger.config import HealthSettings
from multitrigger.health.snapshot import Board
from multitrigger.supervisor.core import Supervisor
enabled = sys.argv[1] == "on"
owner = SimpleNamespace(config=SimpleNamespace(health=HealthSettings(enabled=enabled, port=0)),
                        board=Board(lambda: 0.0), settings=SimpleNamespace(state_dir=Path(tempfile.mkdtemp())))
before = "prometheus_client" in sys.modules
server = Supervisor._start_health_server(owner)
seen = {"before": before, "after": "prometheus_client" in sys.modules, "server": server is not None}
if server is not None:
    server.stop()
print(json.dumps(seen))
"""


@pytest.mark.parametrize("health", ["on", "off"])
def test_health_server_imported_only_when_it_runs(health: str) -> None:
    seen = json.loads(_run(HEALTH, health).strip().splitlines()[-1])
    on = health == "on"
    assert seen == {"before": False, "after": on, "server": on}
