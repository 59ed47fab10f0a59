"""Print the project's Airflow Connections as JSON, for ``airflow connections import``.

The gateway's secret is read from ``MEDINS_GATEWAY_SECRET`` (never from the command line, where
other users could see it). The status store is an SQLite file (the embedded default) or MySQL,
whose settings come from ``MYSQL_HOST``, ``MYSQL_PORT``, ``MYSQL_USER``, ``MYSQL_PASSWORD`` and
``MYSQL_DATABASE``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]


def gateway(
    url: str, app_id: str, secret: str, institutions_file: Path, redis_conn_id: str | None = None
) -> dict:
    """Return the gateway Connection for ``url``, serving the institutions in ``institutions_file``.

    With ``redis_conn_id``, every worker shares the msgid sequence, sign-ins and rate limit there.
    """
    parts = urlsplit(url)
    institutions = json.loads(institutions_file.read_text(encoding="utf-8"))["institutions"]
    extra = {
        "app_id": app_id,
        "recer_sys_code": "MEDINS",
        "infver": "V1.0",
        "signtype": "SM3",
        "timeout": [3, 10],
        "pool_size": 32,
        "institutions": institutions,
    }
    if parts.path not in ("", "/"):
        extra["service_path"] = parts.path
    if redis_conn_id:
        extra["redis_conn_id"] = redis_conn_id
    return {
        "conn_type": "http",
        "description": "National medical-insurance gateway",
        "host": parts.hostname,
        "schema": parts.scheme,
        "port": parts.port,
        "password": secret,
        "extra": json.dumps(extra, ensure_ascii=False),
    }


def status_store(kind: str) -> dict:
    """Return the status store Connection: ``sqlite:PATH`` or ``mysql``."""
    if kind.startswith("sqlite:"):
        return {
            "conn_type": "sqlite",
            "description": "async_task_status",
            "host": kind.removeprefix("sqlite:"),
        }
    return {
        "conn_type": "mysql",
        "description": "async_task_status",
        "host": os.environ.get("MYSQL_HOST", "mysql"),
        "port": int(os.environ.get("MYSQL_PORT", "3306")),
        "login": os.environ.get("MYSQL_USER", "medins"),
        "password": os.environ.get("MYSQL_PASSWORD", ""),
        "schema": os.environ.get("MYSQL_DATABASE", "medins"),
        "extra": json.dumps({"charset": "utf8mb4"}),
    }


def redis(host: str, port: int, db: int) -> dict:
    """Return the Redis Connection the workers share state through."""
    return {"conn_type": "redis", "description": "medins shared state", "host": host, "port": port,
            "extra": json.dumps({"db": db})}  # fmt: skip


def airflow_metadata(url: str) -> dict:
    """Return the Connection through which the hourly cleanup reaches Airflow's metadata DB.

    Airflow 3 hides the metadata DB's URL from task processes; ``airflow db clean``, run by
    ``medins_cleanup``, reads it from this Connection's extra instead.
    """
    return {"conn_type": "generic", "description": "Airflow metadata DB, for airflow db clean",
            "extra": json.dumps({"sql_alchemy_conn": url})}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--gateway-url", default=os.environ.get("MEDINS_GATEWAY_URL", "http://127.0.0.1:8900")
    )
    parser.add_argument("--app-id", default=os.environ.get("MEDINS_GATEWAY_APP_ID", "medins-demo"))
    parser.add_argument(
        "--institutions",
        type=Path,
        default=Path(os.environ.get("MEDINS_INSTITUTIONS_FILE", ROOT / "include/samples/institutions.json")),
    )
    parser.add_argument("--status", default="mysql", help="sqlite:PATH or mysql (default)")
    parser.add_argument("--redis", help="HOST:PORT/DB of the Redis the workers share state through")
    parser.add_argument(
        "--metadata-url",
        default=os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"),
        help="Airflow's metadata DB URL, for the cleanup's airflow db clean (default: the current setting)",
    )
    args = parser.parse_args()

    secret = os.environ.get("MEDINS_GATEWAY_SECRET", "")
    if not secret:
        parser.error("set MEDINS_GATEWAY_SECRET to the gateway's app secret")
    redis_conn_id = "medins_redis_default" if args.redis else None
    connections = {
        "medins_gateway_default": gateway(
            args.gateway_url, args.app_id, secret, args.institutions, redis_conn_id
        ),
        "medins_status_default": status_store(args.status),
    }
    if args.metadata_url:
        connections["medins_airflow_metadata"] = airflow_metadata(args.metadata_url)
    if args.redis:
        address, _, db = args.redis.partition("/")
        host, _, port = address.partition(":")
        connections["medins_redis_default"] = redis(host, int(port or 6379), int(db or 0))
    print(json.dumps(connections, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
