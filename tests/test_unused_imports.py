"""
``multitrigger.unused_imports``: structlog and httpx come without ``rich``/``pygments``, anyone else
still imports ``rich``, ``$DEV`` turns it off, and Airflow's console logging renders an exception
the same either way. Each case runs in a fresh interpreter (the finder is process-wide).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

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
