# Settings of the embedded default (SQLite, LocalExecutor, sandbox gateway), sourced by ./run.
# Secrets (JWT secret, the sandbox's app secret) are generated once into the Airflow home and
# never committed; the gateway secret reaches Airflow only as a Connection's password.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MEDINS_ROOT="$ROOT"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/.airflow}"
export VENV="${VENV:-$ROOT/.venv}"
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT/plugins:$ROOT/include${PYTHONPATH:+:$PYTHONPATH}"

export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"
export AIRFLOW__CORE__MAX_MAP_LENGTH=1024
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite:///$AIRFLOW_HOME/airflow.db}"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=10
export AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL=10
# The embedded default is a loopback-only demo: every caller of the API is an admin, so the
# api-server listens on 127.0.0.1 only.
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS:-True}"
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-http://127.0.0.1:$AIRFLOW__API__PORT}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-http://127.0.0.1:$AIRFLOW__API__PORT/execution/}"

export MEDINS_SANDBOX_PORT="${MEDINS_SANDBOX_PORT:-8900}"
export MEDINS_SANDBOX_APP_ID="${MEDINS_SANDBOX_APP_ID:-medins-demo}"

medins_secret() {
  # Print the secret kept in $AIRFLOW_HOME/secrets/$1, generating it on first use.
  local file="$AIRFLOW_HOME/secrets/$1"
  if [ ! -s "$file" ]; then
    mkdir -p "$AIRFLOW_HOME/secrets" && chmod 700 "$AIRFLOW_HOME/secrets"
    (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' > "$file")
  fi
  cat "$file"
}

mkdir -p "$AIRFLOW_HOME"
export AIRFLOW__API_AUTH__JWT_SECRET="$(medins_secret jwt)"
