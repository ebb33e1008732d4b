#!/usr/bin/env bash
# First command: set everything up, then run multitrigger on an embedded default — a local SQLite
# Airflow home with example bundles (one in its own venv) and deferred tasks whose triggers fire
# in their own loops.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/multitrigger demo "$@"
