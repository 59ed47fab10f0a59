#!/usr/bin/env bash
# Run the test suite: start the services it talks to, then pytest (extra arguments pass through).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash scripts/services.sh mariadb
export MEDINS_TEST_AIRFLOW_HOME="${MEDINS_TEST_AIRFLOW_HOME:-$ROOT/.airflow-test}"
ruff check .
exec python -m pytest "$@"
