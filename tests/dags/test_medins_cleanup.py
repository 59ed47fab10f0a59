"""``medins_cleanup``: its shape, and a ``dag.test()`` run against an SQLite status store."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags")).dags["medins_cleanup"]


def test_runs_hourly_without_catchup(dag):
    assert dag.schedule == "@hourly"
    assert dag.catchup is False
    assert dag.max_active_runs == 1


def test_every_task_runs_on_the_maintenance_queue(dag):
    assert {task.task_id: task.queue for task in dag.tasks} == {
        "purge_status_table": "maintenance",
        "clean_airflow_metadata": "maintenance",
    }


def test_retention_params_refuse_less_than_one(dag):
    from airflow.sdk.exceptions import ParamValidationError

    for name in ("retention_hours", "metadata_retention_days"):
        with pytest.raises(ParamValidationError):
            dag.params.get_param(name).resolve(0)
    assert dag.params["retention_hours"] == 24
    assert dag.params["metadata_retention_days"] == 30


@pytest.mark.e2e
def test_a_run_removes_expired_rows_and_keeps_the_rest(airflow_db, dag, tmp_path, monkeypatch):
    from medins.states import BatchState, RequestState
    from medins.store import RequestRow, StatusStore

    path = tmp_path / "status.db"
    monkeypatch.setenv(
        "AIRFLOW_CONN_MEDINS_STATUS_DEFAULT", json.dumps({"conn_type": "sqlite", "host": str(path)})
    )
    with StatusStore.from_conn_id("medins_status_default") as store:
        store.create_schema()
        for batch_id, status in (("old", BatchState.DONE), ("fresh", BatchState.DONE)):
            store.put_batch(batch_id, status)
        store.put_batch("running", BatchState.RUNNING)
        store.register(
            [
                RequestRow(task_id=f"{batch_id}-{i}", status=RequestState.SUCCESS, batch_id=batch_id)
                for batch_id in ("old", "fresh", "running")
                for i in range(3)
            ]
        )
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE async_task_status SET created_at = datetime(created_at, '-30 hours') "
            "WHERE batch_id IN ('old', 'running')"
        )

    dag_run = dag.test(run_conf={"metadata_retention_days": 3650})

    with sqlite3.connect(path) as conn:
        left = {task_id for (task_id,) in conn.execute("SELECT task_id FROM async_task_status")}
    assert str(dag_run.state) == "success"
    assert left == {
        "fresh",
        "fresh-0",
        "fresh-1",
        "fresh-2",
        "running",
        "running-0",
        "running-1",
        "running-2",
    }
