"""Start and stop the distributed topology natively: the same components as docker-compose.yaml.

    python scripts/cluster.py up       start what is not running, wait until every part is healthy
    python scripts/cluster.py down     stop exactly the processes ``up`` started
    python scripts/cluster.py status   show each component and where the UI and Flower are
    python scripts/cluster.py env      print the settings as shell exports (to run airflow commands)
    python scripts/cluster.py restart api-server    restart components (after a plugin changed)

Airflow's metadata DB is the local PostgreSQL, the status table lives in the local MariaDB, Redis
is the Celery broker and the workers' shared state. PostgreSQL, MariaDB and Redis are started when
they are down; the launcher then starts the api-server, scheduler, dag-processor, triggerer, one
Celery worker per queue, Flower and the sandbox gateway, each in a process group of its own,
and records them in ``$AIRFLOW_HOME/cluster.json`` so ``down`` stops only those.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
HOME = Path(os.environ.get("MEDINS_CLUSTER_HOME", ROOT / ".airflow-cluster"))
API_PORT = int(os.environ.get("MEDINS_CLUSTER_API_PORT", "8180"))
FLOWER_PORT = int(os.environ.get("MEDINS_CLUSTER_FLOWER_PORT", "5555"))
SANDBOX_PORT = int(os.environ.get("MEDINS_CLUSTER_SANDBOX_PORT", "8901"))


def metadata_db() -> str:
    """Return the metadata DB's name: one per Fernet key, since a DB whose Connections were
    encrypted with another key (another checkout, or this folder cloned anew) cannot be read."""
    default = "medins_airflow_" + hashlib.sha256(secret("fernet").encode()).hexdigest()[:10]
    return os.environ.get("MEDINS_CLUSTER_METADATA_DB", default)


STATUS_DB = os.environ.get("MEDINS_CLUSTER_STATUS_DB", "medins")
BROKER = os.environ.get("MEDINS_CLUSTER_BROKER", "redis://127.0.0.1:6379/5")
SHARED_REDIS_DB = int(os.environ.get("MEDINS_CLUSTER_SHARED_REDIS_DB", "6"))
API = f"http://127.0.0.1:{API_PORT}"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
STATE = HOME / "cluster.json"

#: Celery workers: name, queue and concurrency. The compose file has one service per queue too.
WORKERS = [
    ("default", "default", 2),
    ("medical_interface", "medical_interface", 4),
    ("medical_batch", "medical_batch", 4),
    ("maintenance", "maintenance", 1),
]
SANDBOX_FAULTS = os.environ.get("MEDINS_CLUSTER_SANDBOX_FAULTS", "--latency-ms 20 --jitter-ms 10").split()


def secret(name: str) -> str:
    """Return a secret kept in the cluster's home, generating it on first use."""
    path = HOME / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if name == "fernet":
            from cryptography.fernet import Fernet

            value = Fernet.generate_key().decode()
        else:
            value = secrets.token_hex(32)
        path.write_text(value)
        path.chmod(0o600)
    return path.read_text().strip()


def settings() -> dict[str, str]:
    """Return the environment every Airflow component of the native topology runs with."""
    metadata = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{metadata_db()}"
    return {
        "AIRFLOW_HOME": str(HOME),
        "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT / 'include'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(HOME / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata.replace("+psycopg2", ""),
        "AIRFLOW__CELERY__BROKER_URL": BROKER,
        "AIRFLOW__CORE__FERNET_KEY": secret("fernet"),
        "AIRFLOW__API_AUTH__JWT_SECRET": secret("jwt"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(API_PORT),
        "AIRFLOW__API__BASE_URL": API,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{API}/execution/",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__MAX_MAP_LENGTH": "1024",
        "AIRFLOW__CORE__PARALLELISM": "32",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        # A task whose worker died is failed (and retried) after 60 s without a heartbeat, and one
        # whose broker message was lost (a Redis restart) after 120 s queued; the batch pool keeps
        # chunks from waiting in the broker that long.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
        # An idle scheduler looks for new runs every 0.25 s rather than every second: a single call's
        # run starts about 0.4 s sooner (median 1.15 s to 0.75 s here), for about 6% of a core more
        # while idle.
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "FLOWER_UNAUTHENTICATED_API": "true",
    }


# -- services the machine provides -------------------------------------------------------------


def ensure_services() -> None:
    """Start PostgreSQL, MariaDB and Redis when they are down, and create the two databases."""
    subprocess.run(["bash", str(ROOT / "scripts/services.sh"), "postgres", "mariadb", "redis"], check=True)
    exists = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc",
         f"SELECT 1 FROM pg_database WHERE datname = '{metadata_db()}'"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if exists != "1":
        subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", metadata_db()], check=True)
    subprocess.run(
        ["mariadb", "-h", "127.0.0.1", "-u", "root", "-e",
         f"CREATE DATABASE IF NOT EXISTS `{STATUS_DB}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"],
        check=True,
    )  # fmt: skip


def connections() -> dict:
    """Return the Connections of the native topology: the sandbox, MariaDB, Redis for shared state."""
    from connections import airflow_metadata, gateway, redis, status_store

    os.environ.update(MYSQL_HOST="127.0.0.1", MYSQL_USER="root", MYSQL_PASSWORD="", MYSQL_DATABASE=STATUS_DB)
    return {
        "medins_gateway_default": gateway(
            f"http://127.0.0.1:{SANDBOX_PORT}",
            "medins-cluster",
            secret("sandbox"),
            ROOT / "include/samples/institutions.json",
            redis_conn_id="medins_redis_default",
        ),
        "medins_status_default": status_store("mysql"),
        "medins_redis_default": redis("127.0.0.1", 6379, SHARED_REDIS_DB),
        "medins_airflow_metadata": airflow_metadata(settings()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]),
    }


def prepare(env: dict[str, str]) -> None:
    """Migrate the metadata DB, write the connections and the admin password, create the table."""
    HOME.mkdir(parents=True, exist_ok=True)
    passwords = HOME / "passwords.json"
    if not passwords.exists():
        passwords.write_text(json.dumps({"admin": secret("admin")}))
        passwords.chmod(0o600)
    run_airflow(env, "db", "migrate")
    conn_file = HOME / "connections.json"
    conn_file.write_text(json.dumps(connections(), ensure_ascii=False))
    conn_file.chmod(0o600)
    try:
        run_airflow(env, "connections", "import", "--overwrite", str(conn_file))
    finally:
        conn_file.unlink()  # it holds the gateway secret in plain text: the Connections keep it
    sys.path.insert(0, str(ROOT / "plugins"))
    from medins.defaults import BATCH_POOL, BATCH_POOL_DESCRIPTION

    batch_slots = sum(concurrency for _, queue, concurrency in WORKERS if queue == "medical_batch")
    run_airflow(env, "pools", "set", BATCH_POOL, str(batch_slots), BATCH_POOL_DESCRIPTION)
    subprocess.run(
        [sys.executable, "-m", "medins.admin", "init-store"], env=env, check=True, capture_output=True
    )


def run_airflow(env: dict[str, str], *args: str) -> None:
    result = subprocess.run(["airflow", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(
            f"airflow {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )


# -- components ------------------------------------------------------------------------------


def components() -> list[tuple[str, list[str], dict[str, str]]]:
    """Return each component: its name, command line and extra environment."""
    parts = [
        ("sandbox", [sys.executable, "-m", "sandbox", "--port", str(SANDBOX_PORT),
                     "--app-id", "medins-cluster", *SANDBOX_FAULTS],
         {"SANDBOX_APP_SECRET": secret("sandbox")}),
        ("api-server", ["airflow", "api-server"], {}),
        ("scheduler", ["airflow", "scheduler"], {}),
        ("dag-processor", ["airflow", "dag-processor"], {}),
        ("triggerer", ["airflow", "triggerer"], {}),
    ]  # fmt: skip
    for index, (name, queue, concurrency) in enumerate(WORKERS):
        parts.append(
            (
                f"worker-{name}",
                ["airflow", "celery", "worker", "--queues", queue, "--concurrency", str(concurrency),
                 "--celery-hostname", f"{name}@%h", "--without-mingle", "--without-gossip"],
                # Each worker serves its logs on a port of its own; 8794 is the triggerer's.
                {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(8810 + index)},
            )
        )  # fmt: skip
    parts.append(
        ("flower", ["airflow", "celery", "flower", "--port", str(FLOWER_PORT), "--hostname", "127.0.0.1"], {})
    )
    return parts


def load_state() -> dict:
    return json.loads(STATE.read_text()) if STATE.exists() else {}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def get(url: str, **kwargs) -> requests.Response | None:
    try:
        return requests.get(url, timeout=3, **kwargs)
    except requests.RequestException:
        return None


def health() -> dict[str, bool]:
    """Return whether each part of the topology answers as healthy."""
    result: dict[str, bool] = {}
    sandbox = get(f"http://127.0.0.1:{SANDBOX_PORT}/_sandbox/health")
    result["sandbox"] = bool(sandbox and sandbox.ok)
    monitor = get(f"{API}/api/v2/monitor/health")
    body = monitor.json() if monitor is not None and monitor.ok else {}
    result["api-server"] = bool(body)
    for part in ("metadatabase", "scheduler", "dag_processor", "triggerer"):
        result[part.replace("_", "-")] = body.get(part, {}).get("status") == "healthy"
    workers = get(f"http://127.0.0.1:{FLOWER_PORT}/api/workers", params={"refresh": "true"})
    names = set(workers.json()) if workers is not None and workers.ok else set()
    result["flower"] = workers is not None and workers.ok
    for name, _, _ in WORKERS:
        result[f"worker-{name}"] = any(worker.startswith(f"{name}@") for worker in names)
    return result


def up(timeout: float) -> None:
    ensure_services()
    env = {**os.environ, **settings()}
    prepare(env)
    state = load_state()
    (HOME / "logs").mkdir(parents=True, exist_ok=True)
    for name, argv, extra in components():
        if name in state and alive(state[name]):
            continue
        log = open(HOME / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        proc = subprocess.Popen(argv, env={**env, **extra}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=ROOT)  # fmt: skip
        state[name] = proc.pid
        print(f"  started {name:<26} pid {proc.pid}")
    STATE.write_text(json.dumps(state, indent=1))

    deadline = time.monotonic() + timeout
    while True:
        status = health()
        if all(status.values()):
            break
        dead = [name for name, pid in state.items() if not alive(pid)]
        if dead:
            raise SystemExit(f"{', '.join(dead)} exited: see {HOME / 'logs'}")
        if time.monotonic() > deadline:
            waiting = ", ".join(name for name, ok in status.items() if not ok)
            raise SystemExit(f"not healthy after {timeout:.0f} s: {waiting}; see {HOME / 'logs'}")
        time.sleep(2)
    print_where()


def restart(names: list[str], timeout: float) -> None:
    """Stop the named components (e.g. ``api-server`` after a plugin changed) and start them again."""
    state = load_state()
    for name in names:
        pid = state.pop(name, None)
        if pid and alive(pid):
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.3)
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)
    STATE.write_text(json.dumps(state, indent=1))
    up(timeout)


def down() -> None:
    state = load_state()
    for name, pid in reversed(list(state.items())):
        if alive(pid):
            os.killpg(pid, signal.SIGTERM)
            print(f"  stopping {name} (pid {pid})")
    deadline = time.monotonic() + 45
    for name, pid in state.items():
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if alive(pid):
            os.killpg(pid, signal.SIGKILL)
            print(f"  killed {name} (pid {pid})")
    STATE.unlink(missing_ok=True)


def print_where() -> None:
    print(f"Airflow UI and REST API: {API} (user admin, password in {HOME / 'passwords.json'})")
    print(f"Flower:                  http://127.0.0.1:{FLOWER_PORT}")
    print(f"Sandbox gateway:         http://127.0.0.1:{SANDBOX_PORT}")
    print(f"Status table:            MariaDB 127.0.0.1:3306, database {STATUS_DB}, table async_task_status")
    print(f"Logs:                    {HOME / 'logs'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status", "env", "restart"])
    parser.add_argument("names", nargs="*", help="components to restart, e.g. api-server")
    parser.add_argument(
        "--timeout", type=float, default=240, help="seconds to wait for every part to be healthy"
    )
    args = parser.parse_args()
    if args.command == "up":
        up(args.timeout)
    elif args.command == "restart":
        restart(args.names, args.timeout)
    elif args.command == "down":
        down()
    elif args.command == "env":
        for key, value in settings().items():
            print(f"export {key}={json.dumps(value)}")
    else:
        status = health()
        for name, ok in status.items():
            print(f"  {name:<26} {'healthy' if ok else 'DOWN'}")
        print_where()
        if not all(status.values()):
            raise SystemExit(1)


if __name__ == "__main__":
    main()
