#!/usr/bin/env bash
# Second command: set everything up, then run the test suite (SQLite and PostgreSQL at 127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two workers: most tests wait on real due times and real processes, not on the CPU.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "$@"
