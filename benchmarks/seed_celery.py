"""The seed's design, kept as a baseline: one plain Celery task per request, each upserting its own row.

No Airflow, no chunks, no bulk writes: what a team starts from. Each worker process keeps one gateway
hook (pooled HTTP) and one MariaDB connection. The benchmark (``benchmarks/bench.py``) starts a
worker of this app with 16 prefork processes and sends one task per request.

Settings come from the environment the benchmark sets: ``SEED_BROKER_URL`` (a Redis database of its
own), ``SEED_GATEWAY_CONN_ID`` and ``SEED_STATUS_DB`` (the MariaDB database holding the table).
"""

from __future__ import annotations

import json
import os
from functools import cache
from typing import Any

from celery import Celery

app = Celery("seed", broker=os.environ.get("SEED_BROKER_URL", "redis://127.0.0.1:6379/7"))
app.conf.update(
    task_ignore_result=True,
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_UPSERT = (
    "INSERT INTO async_task_status "
    "(task_id, status, data, batch_id, api_code, org_code, kind, attempts, msgid) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, 1, %s) "
    "ON DUPLICATE KEY UPDATE status = VALUES(status), data = VALUES(data), attempts = attempts + 1, "
    "msgid = VALUES(msgid)"
)


@cache
def _hook() -> Any:
    from medins.hooks.gateway import MedicalInsuranceHook

    return MedicalInsuranceHook(medins_conn_id=os.environ["SEED_GATEWAY_CONN_ID"])


@cache
def _db() -> Any:
    import MySQLdb

    return MySQLdb.connect(
        host="127.0.0.1", user="root", db=os.environ["SEED_STATUS_DB"], charset="utf8mb4", autocommit=True
    )


@app.task(name="seed.call_one")
def call_one(task_id: str, batch_id: str, request: dict[str, Any]) -> None:
    """Call one interface and upsert its row: one round trip to the gateway and one to the database."""
    outcome = _hook().call(request["api_code"], request["data"], org_code=request["org_code"])
    status = {"SUCCESS": "SUCCESS", "REFUSED": "FAILURE"}.get(outcome.kind.value, "UNKNOWN")
    data = json.dumps(
        {"request": request, "output": outcome.output, "err_msg": outcome.err_msg}, ensure_ascii=False
    )
    kind = "write" if _hook().catalog[request["api_code"]].is_write else "query"
    with _db().cursor() as cursor:
        cursor.execute(
            _UPSERT,
            (task_id, status, data, batch_id, request["api_code"], request["org_code"], kind, outcome.msgid),
        )
