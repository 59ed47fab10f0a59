"""
### medins_nightly: the recurring calls of every night (每日定时任务)

Runs at 02:00 China time and works on the day before (the run of 3 December at 02:00 works on
2 December; a backfill over past dates works on the day before each).

1. **register** expands the recurring-jobs file (`include/nightly/jobs.json`, or the path in the
   Airflow Variable `medins_nightly_jobs`) for the day: e.g. a `1312` catalog sync per institution
   and a `3201` reconciliation per institution, whose totals come from the settlement summary the
   hospital system exports (a CSV file). The requests become the batch `nightly-<day>`; their ids
   derive from job, day and institution, so running the same night again adds and sends nothing.
   The same batch takes the requests of the CSV, Excel or JSON files departments dropped into the
   inbox during the day (`<AIRFLOW_HOME>/medins/inbox`, or the folder in the Airflow Variable
   `medins_inbox_dir`; names starting with `.` or ending in `.part`/`.tmp` are left alone); their
   ids derive from day, file and row. Each file then moves to `processed/<day>/` (read, even if
   some rows were rejected) or `failed/<day>/` (unreadable), next to a `.report.json` with the
   counts and each rejected row's reason.
2. **send_chunk** and **summarize** are the chunked fan-out of `medins_batch`: the same operator,
   mapped over chunk descriptors, then the batch's final counts.
3. **resolve_unknown_settlements** resolves the day's `UNKNOWN` settlements (`2207` whose reply was
   lost): `5203` finds the settlement, and the row becomes `SUCCESS`; not found, the row stays
   `UNKNOWN` unless the Param `reverse_unresolved` is on, which reverses it with `2601`. A `2207` is
   never sent again.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from medins.defaults import START_DATE, default_args
from medins.fanout import chunked_fanout

STATUS_CONN_ID = "medins_status_default"
GATEWAY_CONN_ID = "medins_gateway_default"


@dag(
    schedule="0 2 * * *",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    max_active_tasks=16,
    tags=["medins", "nightly"],
    doc_md=__doc__,
    params={
        "reverse_unresolved": Param(
            False,
            type="boolean",
            title="Reverse unresolved settlements",
            description="Reverse with 2601 the day's UNKNOWN settlements that 5203 does not find.",
        ),
    },
    default_args=default_args(),
)
def medins_nightly():
    @task
    def register(logical_date=None, dag_run=None, run_id=None, dag=None, ti=None) -> list[dict]:
        from airflow.sdk import Variable

        from medins.inbox import INBOX_VARIABLE, default_inbox_dir
        from medins.nightly import DEFAULT_JOBS_FILE, JOBS_VARIABLE, night_before, register_night

        night = night_before(logical_date or dag_run.run_after)
        ti.xcom_push(key="batch_id", value=night.batch_id)
        return register_night(
            Variable.get(JOBS_VARIABLE, default=str(DEFAULT_JOBS_FILE)),
            night,
            inbox_dir=Variable.get(INBOX_VARIABLE, default=str(default_inbox_dir())),
            run_id=run_id,
            dag_id=dag.dag_id,
            medins_conn_id=GATEWAY_CONN_ID,
            status_conn_id=STATUS_CONN_ID,
        )

    @task(queue="medical_interface")
    def resolve_unknown_settlements(params=None, logical_date=None, dag_run=None) -> dict:
        from medins.nightly import night_before
        from medins.nightly import resolve_unknown_settlements as resolve

        return resolve(
            night_before(logical_date or dag_run.run_after),
            reverse_unresolved=params["reverse_unresolved"],
            medins_conn_id=GATEWAY_CONN_ID,
            status_conn_id=STATUS_CONN_ID,
        )

    chunks = register()
    chunked_fanout(
        chunks,
        batch_id=chunks["batch_id"],
        medins_conn_id=GATEWAY_CONN_ID,
        status_conn_id=STATUS_CONN_ID,
    )
    resolve_unknown_settlements()


medins_nightly()
