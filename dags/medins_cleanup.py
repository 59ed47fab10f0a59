"""
### medins_cleanup: hourly removal of expired records

1. **purge_status_table** deletes the rows of `async_task_status` created more than
   `retention_hours` ago (24 by default), about 1,000 rows per short transaction, so the table
   is never locked for long. Rows of a running batch stay however old they are: a batch whose
   own row is `RUNNING`, or that holds a `PENDING`, `PROCESSING` or `RETRY` request. A batch's
   own row goes with its last requests.
2. **clean_airflow_metadata** runs `airflow db clean` on Airflow's own tables (`dag_run`,
   `task_instance`, `xcom`, `log`, ...) for records older than `metadata_retention_days` (30 by
   default), with no archive tables. `dag_run` holds each batch's `conf`, personal data included.

Retention of the status table: `retention_hours` in the run's `conf` wins, then the Airflow
Variable `medins_retention_hours`, then 24. Inside a task process Airflow 3 blocks the metadata
database URL; when the workers' `airflow.cfg` does not set it either, give it as the extra
`sql_alchemy_conn` of the Connection `medins_airflow_metadata`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from medins.defaults import START_DATE, default_args

STATUS_CONN_ID = "medins_status_default"


@dag(
    schedule="@hourly",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["medins", "maintenance"],
    doc_md=__doc__,
    params={
        "retention_hours": Param(
            24,
            type="integer",
            minimum=1,
            title="Retention of request rows (hours)",
            description="Rows of async_task_status older than this go, unless their batch still runs. "
            "Given in a run's conf it wins over the Variable medins_retention_hours.",
        ),
        "metadata_retention_days": Param(
            30,
            type="integer",
            minimum=1,
            title="Retention of Airflow metadata (days)",
            description="DAG runs, task instances, XComs and logs older than this are deleted.",
        ),
    },
    default_args=default_args(queue="maintenance"),
)
def medins_cleanup():
    @task(execution_timeout=timedelta(minutes=10))
    def purge_status_table(params=None, dag_run=None) -> int:
        from airflow.sdk import Variable

        from medins import cleanup

        hours = cleanup.retention_hours(
            dag_run.conf,
            params["retention_hours"],
            Variable.get(cleanup.RETENTION_VARIABLE, default=None),
        )
        # Stop well inside the timeout; the next hourly run deletes the rest.
        return cleanup.purge_status_table(STATUS_CONN_ID, hours, max_seconds=8 * 60)

    @task(execution_timeout=timedelta(minutes=10))
    def clean_airflow_metadata(params=None) -> str:
        from medins import cleanup

        return cleanup.clean_airflow_metadata(params["metadata_retention_days"])

    # Independent: one failing does not hold the other back.
    purge_status_table()
    clean_airflow_metadata()


medins_cleanup()
