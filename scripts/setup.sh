#!/usr/bin/env bash
# Set up everything the embedded default needs; safe to run again (it only redoes what changed).
#   --no-airflow-home   stop after the venv (the tests make their own Airflow home)
#   --with-browser      also install Debian's Chromium and a CJK font (the batches page's test)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
with_home=1
for arg in "$@"; do [ "$arg" = "--no-airflow-home" ] && with_home=0; done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# 1. Debian packages: mysqlclient builds against libmysqlclient with pkg-config; docker-compose
#    validates the compose file (it needs no engine for that). For the tests (--with-browser), Debian's
#    Chromium, which Playwright drives in the batches page's test, and a CJK font for its Chinese text.
packages=(default-libmysqlclient-dev pkg-config gcc docker-compose)
for arg in "$@"; do [ "$arg" = "--with-browser" ] && packages+=(chromium fonts-wqy-microhei); done
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "Installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. The venv, installed from the pinned lock whenever the lock changes.
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="${VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  say "Creating the virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
lock_hash="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$VENV/.lock-hash" 2>/dev/null)" != "$lock_hash" ]; then
  say "Installing the pinned requirements (requirements.txt)"
  # The grep drops the notices pip prints for every unreachable extra index of the machine's pip.conf.
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | { grep -v "is ignored: it is neither" || true; }
  "$VENV/bin/python" -m pip install -q -r requirements.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
  echo "$lock_hash" > "$VENV/.lock-hash"
fi
# The client package and its `medins` command (include/medins_client), installed editable.
if [ ! -x "$VENV/bin/medins" ]; then
  "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT" 2>&1 | { grep -v "is ignored: it is neither" || true; }
fi
[ "$with_home" = 1 ] || exit 0

# 3. Airflow's home: metadata DB, connections, the status table.
# shellcheck source=scripts/env.sh
source "$ROOT/scripts/env.sh"
say "Preparing the Airflow home in $AIRFLOW_HOME"
airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -n 30 "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
MEDINS_GATEWAY_SECRET="$(medins_secret sandbox)" python "$ROOT/scripts/connections.py" \
  --gateway-url "http://127.0.0.1:$MEDINS_SANDBOX_PORT" --app-id "$MEDINS_SANDBOX_APP_ID" \
  --status "sqlite:$AIRFLOW_HOME/medins_status.db" > "$AIRFLOW_HOME/connections.json.tmp"
chmod 600 "$AIRFLOW_HOME/connections.json.tmp"
mv "$AIRFLOW_HOME/connections.json.tmp" "$AIRFLOW_HOME/connections.json"
airflow connections import --overwrite "$AIRFLOW_HOME/connections.json" >/dev/null
rm -f "$AIRFLOW_HOME/connections.json"  # it holds the gateway secret in plain text: the Connections keep it
python -m medins.admin init-store
airflow pools set medins_batch "${MEDINS_BATCH_POOL_SLOTS:-4}" \
  "Chunks of medical-insurance batches running at once; match the medical_batch workers' slots" >/dev/null
say "Set up: Airflow home $AIRFLOW_HOME, connections medins_gateway_default and medins_status_default"
