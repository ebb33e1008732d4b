#!/usr/bin/env bash
# Second command: set everything up, then run the test suite (SQLite and PostgreSQL at 127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two workers: most tests wait on real due times and real processes, not on the CPU. Whole files
# per worker (module fixtures are set up once), taken in the order tests/conftest.py gives them:
# the longest first (SLOWEST_FIRST), not xdist's default of the files with the most tests first.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder "$@"
