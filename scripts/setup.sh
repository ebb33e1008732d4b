#!/usr/bin/env bash
# Set up everything multitrigger needs on a fresh machine: a project venv (.venv) with Airflow 3.3.2,
# multitrigger (editable), the test tools and the test-support package (testsupport/, editable;
# never in the multitrigger wheel). Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check uv
fi
.venv/bin/uv pip install --quiet --python .venv/bin/python -e '.[test]' -e ./testsupport
