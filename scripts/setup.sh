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
# Bytecode for everything installed and for the editable sources: neither pip's nor uv's editable
# install writes it, and where PYTHONDONTWRITEBYTECODE is set (this machine, many CI images) no
# interpreter ever does, so every process importing Airflow compiled ~2000 modules anew
# (`import airflow.jobs.triggerer_job_runner`: 5.2-6.2 s without, 2.2-2.6 s with, measured here).
# Up-to-date files are skipped: a re-run costs a second.
.venv/bin/python -m compileall -q -j 0 "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
  multitrigger testsupport/mt_testsupport
