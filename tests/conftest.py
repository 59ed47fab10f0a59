"""Shared fixtures: an Airflow home of the tests' own, the sandbox gateway, gateway hooks."""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_HOME = Path(os.environ.get("MEDINS_TEST_AIRFLOW_HOME", ROOT / ".airflow-test"))

# Airflow reads its settings when first imported: set them before any test module imports it.
os.environ["AIRFLOW_HOME"] = str(TEST_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__EXECUTOR"] = "LocalExecutor"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{TEST_HOME}/airflow.db"
os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", "medins-tests-only")
TEST_HOME.mkdir(parents=True, exist_ok=True)

MYSQL_SERVER = {
    "host": os.environ.get("MEDINS_TEST_MYSQL_HOST", "127.0.0.1"),
    "port": int(os.environ.get("MEDINS_TEST_MYSQL_PORT", "3306")),
    "user": os.environ.get("MEDINS_TEST_MYSQL_USER", "root"),
    "password": os.environ.get("MEDINS_TEST_MYSQL_PASSWORD", ""),
}

SANDBOX_APP_ID = "test-app"
SANDBOX_SECRET = "test-secret"
INSTITUTIONS = json.loads((ROOT / "include/samples/institutions.json").read_text(encoding="utf-8"))[
    "institutions"
]
NO_FAULTS = {
    "latency_ms": 0,
    "jitter_ms": 0,
    "error_5xx": 0.0,
    "drop": 0.0,
    "lost_reply": 0.0,
    "business_error": 0.0,
    "rate_limit": 0,
    "hang": False,
}


@pytest.fixture(scope="session")
def sandbox_server():
    """Start the sandbox gateway once per session, on a free loopback port, with signing on."""
    from sandbox import start_sandbox

    server = start_sandbox(port=0, app_id=SANDBOX_APP_ID, app_secret=SANDBOX_SECRET)
    yield server
    server.stop()


@pytest.fixture
def sandbox(sandbox_server):
    """Give each test the sandbox with no faults, no messages, no settlements and no sign-ins."""
    sandbox_server.set_faults(**NO_FAULTS)
    sandbox_server.reset()
    yield sandbox_server
    sandbox_server.set_faults(**NO_FAULTS)


def unused_port() -> int:
    """Return a loopback port nothing listens on now: free to start a server on, refused to connect to."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def gateway_connection(port: int, *, password: str = SANDBOX_SECRET, orgs: int = 2, **extra) -> dict:
    """Return the JSON form of a gateway Connection to the sandbox on ``port``."""
    institutions = dict(list(INSTITUTIONS.items())[:orgs])
    return {
        "conn_type": "http",
        "host": "127.0.0.1",
        "schema": "http",
        "port": port,
        "password": password,
        "extra": {"app_id": SANDBOX_APP_ID, "timeout": [2, 5], "institutions": institutions, **extra},
    }


@pytest.fixture
def make_hook(sandbox, monkeypatch, tmp_path):
    """Build gateway hooks on Connections given as ``AIRFLOW_CONN_*`` variables."""
    from medins.hooks.gateway import MedicalInsuranceHook
    from medins.sequence import FileMsgIdSequence

    hooks = []

    def make(conn_id: str = "medins_gateway_test", *, port: int | None = None, password: str = SANDBOX_SECRET,
             extra: dict | None = None, timeout=None) -> MedicalInsuranceHook:  # fmt: skip
        connection = gateway_connection(port or sandbox.port, password=password)
        if extra:
            connection["extra"].update(extra)
        if timeout is not None:
            connection["extra"]["timeout"] = timeout
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection, ensure_ascii=False))
        hook = MedicalInsuranceHook(
            conn_id, msgid_sequence=FileMsgIdSequence(tmp_path / f"msgid-{len(hooks)}")
        )
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        hook.close()


@pytest.fixture
def hook(make_hook):
    """Return a gateway hook on the sandbox, serving two institutions."""
    return make_hook()


@pytest.fixture(scope="session")
def airflow_db():
    """Migrate the tests' own Airflow metadata DB (SQLite) once per session."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="session")
def mariadb_database() -> Iterator[str]:
    """Create a throwaway database on the test MariaDB; drop it at the end of the session."""
    import MySQLdb

    name = f"medins_test_{secrets.token_hex(4)}"

    def admin() -> Any:
        return MySQLdb.connect(
            host=MYSQL_SERVER["host"],
            port=MYSQL_SERVER["port"],
            user=MYSQL_SERVER["user"],
            passwd=MYSQL_SERVER["password"],
        )

    try:
        conn = admin()
    except MySQLdb.OperationalError as err:
        pytest.fail(
            f"MariaDB is not reachable at {MYSQL_SERVER['host']}:{MYSQL_SERVER['port']} ({err}): start it; "
            "the MariaDB tests do not skip."
        )
    with closing(conn):
        conn.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET latin1 COLLATE latin1_swedish_ci")
    try:
        yield name
    finally:
        # A fresh connection: the fault matrix restarts MariaDB, which ends any connection held this long.
        with closing(admin()) as conn:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def shared_redis(monkeypatch):
    """
    Give a test the Redis of the shared state, reached through ``RedisHook``, with a key prefix of its own.

    The Connection ``medins_redis_test`` is an ``AIRFLOW_CONN_*`` variable; ``extra`` is what a gateway
    Connection's extras need to use it. The test fails, never skips, when Redis is down; every key under
    the prefix is deleted afterwards.
    """
    from types import SimpleNamespace

    from airflow.providers.redis.hooks.redis import RedisHook
    from redis.exceptions import ConnectionError as RedisConnectionError

    conn_id = "medins_redis_test"
    connection = {"conn_type": "redis", "host": "127.0.0.1", "port": 6379, "extra": {"db": 0}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
    client = RedisHook(redis_conn_id=conn_id).get_conn()
    try:
        client.ping()
    except RedisConnectionError as err:
        pytest.fail(
            f"Redis is not reachable at 127.0.0.1:6379 ({err}): start it with `scripts/services.sh redis`; "
            "the Redis tests do not skip."
        )
    prefix = f"medins-test-{secrets.token_hex(4)}"
    yield SimpleNamespace(
        conn_id=conn_id,
        client=client,
        prefix=prefix,
        extra={"redis_conn_id": conn_id, "redis_key_prefix": prefix},
    )
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def mariadb_connect(database: str, **kwargs):
    """Open a plain connection to ``database`` on the test MariaDB, in UTC, outside the store."""
    import MySQLdb

    conn = MySQLdb.connect(
        host=MYSQL_SERVER["host"],
        port=MYSQL_SERVER["port"],
        user=MYSQL_SERVER["user"],
        passwd=MYSQL_SERVER["password"],
        db=database,
        charset="utf8mb4",
        **kwargs,
    )
    conn.cursor().execute("SET time_zone = '+00:00'")
    return conn


def pytest_collection_modifyitems(config, items):
    """Run the ``personal_data_scan`` tests last: they scan what every other test of the session left."""
    items.sort(key=lambda item: item.get_closest_marker("personal_data_scan") is not None)
