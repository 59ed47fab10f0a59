"""
### medins_call: one medical-insurance interface call (单笔医保接口调用)

Trigger it with a `conf` of one request:
`{"api_code": "1101", "org_code": "H44010600001", "data": {...}, "request_id": "..."}`.

The call runs on the `medical_interface` queue as a batch of one: it is checked against the
interface catalog, stored as a row of `async_task_status` (task id: the `request_id`, or the DAG
run id with `-000000`), sent through the gateway hook, and its outcome written into the row. An
invalid request ends `REJECTED` with the reason, never sent.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag

from medins.defaults import START_DATE, default_args
from medins.operators.call import MedicalInsuranceCallOperator
from medins.params import call_params


@dag(
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    tags=["medins", "single-call"],
    doc_md=__doc__,
    params=call_params(),
    default_args=default_args(retry_delay=timedelta(seconds=5), max_retry_delay=timedelta(minutes=2)),
)
def medins_call():
    MedicalInsuranceCallOperator(
        task_id="call_interface",
        queue="medical_interface",
        medins_conn_id="medins_gateway_default",
        status_conn_id="medins_status_default",
    )


medins_call()
