#!/usr/bin/env bash
# Start the local services the tests need, when they are not running: services.sh mariadb redis postgres
set -euo pipefail

up_mariadb()  { mariadb-admin --host=127.0.0.1 --user=root ping >/dev/null 2>&1; }
up_redis()    { redis-cli -h 127.0.0.1 ping 2>/dev/null | grep -q PONG; }
up_postgres() { pg_isready -h 127.0.0.1 -q 2>/dev/null; }

start_mariadb()  { start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd; }
start_redis()    { redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
                     --dir /var/lib/redis --logfile /var/log/redis/ci.log; }
start_postgres() { pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start; }

for service in "$@"; do
  if ! "up_$service"; then
    echo "==> Starting $service"
    "start_$service"
    for _ in $(seq 1 60); do "up_$service" && break; sleep 1; done
    "up_$service" || { echo "$service did not start" >&2; exit 1; }
  fi
done
