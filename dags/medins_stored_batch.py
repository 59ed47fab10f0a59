"""
### medins_stored_batch: send a batch stored through the status API (医保接口批量调用)

For large batches. `POST /medins/api/v1/batches` checks the requests and stores them as rows of
`async_task_status` (`PENDING`, or `REJECTED` with the reason); trigger this DAG with
`{"batch_id": "..."}` to send them. `MedicalInsuranceClient.call_batch_async` does both.

The requests never pass through the DAG run's `conf`: Airflow copies a run's `conf` to every task
instance of the run, so a batch of 50,000 in `conf` would be shipped to, and checked again by,
every chunk. Here each task gets a batch id.

1. **take_batch** makes this run the batch's sender and returns the chunks that still hold requests
   that are not final (descriptors only: batch id and chunk number).
2. **send_chunk** and **summarize** are those of `medins_batch`: each chunk sends its open requests
   concurrently through the gateway hook and writes every outcome back in bulk.

Triggering it again for the same batch resumes what is not final; nothing that succeeded is sent again.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from medins.defaults import START_DATE, default_args
from medins.fanout import chunked_fanout
from medins.params import stored_batch_params

STATUS_CONN_ID = "medins_status_default"
GATEWAY_CONN_ID = "medins_gateway_default"


@dag(
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    tags=["medins", "batch"],
    doc_md=__doc__,
    params=stored_batch_params(),
    max_active_tasks=16,
    default_args=default_args(),
)
def medins_stored_batch():
    @task
    def take_batch(params=None, run_id=None, dag=None, ti=None) -> list[dict]:
        from medins.tasks import run_is_active, take_stored_batch

        return take_stored_batch(
            params["batch_id"],
            run_id=run_id,
            dag_id=dag.dag_id,
            concurrency=params["concurrency"],
            status_conn_id=STATUS_CONN_ID,
            run_is_active=run_is_active(ti),
        )

    chunked_fanout(take_batch(), medins_conn_id=GATEWAY_CONN_ID, status_conn_id=STATUS_CONN_ID)


medins_stored_batch()
