"""
### medins_batch: a batch of medical-insurance interface calls (医保接口批量调用)

Trigger it with a `conf` holding `requests`, a list of
`{"api_code": "1101", "org_code": "H44010600001", "data": {...}, "request_id": "..."}`.

1. **register** checks every request against the interface catalog and stores it as a row of
   `async_task_status`: `PENDING` when valid, `REJECTED` with the reason when not (never sent).
   The batch gets a row of its own with its progress.
2. **send_chunk** is mapped over chunks of the batch (descriptors only: batch id and chunk
   number). Each chunk sends its open requests concurrently through the gateway hook and writes
   every outcome back in bulk. Queries are retried on transient errors; a write whose reply was
   lost becomes `UNKNOWN` and is never sent twice.
3. **summarize** writes the batch's final counts, and fails the run if requests were left open.

The status table is the source of truth: clearing a failed chunk re-sends only its requests that
are not final.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from medins.defaults import START_DATE, default_args
from medins.fanout import chunked_fanout
from medins.params import batch_params

STATUS_CONN_ID = "medins_status_default"
GATEWAY_CONN_ID = "medins_gateway_default"


@dag(
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    tags=["medins", "batch"],
    doc_md=__doc__,
    params=batch_params(),
    max_active_tasks=16,
    default_args=default_args(),
)
def medins_batch():
    @task
    def register(params=None, run_id=None, dag=None, ti=None) -> list[dict]:
        from medins.tasks import register_batch, run_is_active

        return register_batch(
            params["requests"],
            run_id=run_id,
            dag_id=dag.dag_id,
            batch_id=params.get("batch_id"),
            chunk_size=params["chunk_size"],
            concurrency=params["concurrency"],
            medins_conn_id=GATEWAY_CONN_ID,
            status_conn_id=STATUS_CONN_ID,
            run_is_active=run_is_active(ti),
        )

    chunked_fanout(register(), medins_conn_id=GATEWAY_CONN_ID, status_conn_id=STATUS_CONN_ID)


medins_batch()
