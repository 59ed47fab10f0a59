"""``medins_stored_batch`` with ``dag.test()``: a batch stored first, then sent by a run given its id."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import ROOT
from tests.dags.test_medins_batch_e2e import FAULTS, OPEN_STATES, gateway, sample_requests, status_backend

__all__ = ["gateway", "status_backend"]  # fixtures, shared with medins_batch's tests


def run_stored(conf: dict):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["medins_stored_batch"]
    return dag.test(run_conf=conf)


@pytest.mark.e2e
def test_a_stored_batch_is_sent_by_a_run_whose_conf_holds_only_its_id(airflow_db, gateway, status_backend):
    from medins.store import StatusStore
    from medins.tasks import store_batch

    batch_id = f"stored-{status_backend}"
    requests = sample_requests(200, batch_id)
    stored = store_batch(requests, batch_id=batch_id, chunk_size=60)
    with StatusStore.from_conn_id("medins_status_default") as store:
        waiting = store.get_batch(batch_id)
    assert gateway.stats()["received"] == 0  # storing sends nothing
    gateway.set_faults(**FAULTS)

    dag_run = run_stored({"batch_id": batch_id, "concurrency": 8})

    with StatusStore.from_conn_id("medins_status_default") as store:
        rows = [row for row in store.rows(batch_id) if row.kind != "batch"]
        batch = store.get_batch(batch_id)
    by_state = Counter(row.status for row in rows)
    assert stored == {
        "batch_id": batch_id, "status": "STORED", "submitted": 248, "rejected": 8, "already_stored": 0,
        "stored": 248, "chunks": 4, "new_batch": True,
    }  # fmt: skip
    assert waiting.status == "STORED" and [c["size"] for c in waiting.data["chunk_plan"]] == [60, 60, 60, 60]
    assert str(dag_run.state) == "success"
    assert dag_run.conf == {"batch_id": batch_id, "concurrency": 8}
    assert len(rows) == len(requests) and not OPEN_STATES & set(by_state), by_state
    assert by_state["REJECTED"] == 8 and by_state["SUCCESS"] > 200
    assert batch.status == "DONE" and batch.data["run_id"] == dag_run.run_id
    assert batch.data["current"] == batch.data["total"] == len(rows)
    assert gateway.stats()["duplicate_msgids"] == [] and gateway.stats()["double_settlements"] == 0


@pytest.mark.e2e
def test_a_second_run_for_a_stored_batch_sends_nothing_that_is_final(airflow_db, gateway, status_backend):
    from medins.tasks import store_batch

    batch_id = f"stored-again-{status_backend}"
    store_batch(sample_requests(30, batch_id), batch_id=batch_id)
    run_stored({"batch_id": batch_id})
    received = gateway.stats()["received"]

    again = store_batch(sample_requests(30, batch_id), batch_id=batch_id)
    dag_run = run_stored({"batch_id": batch_id})

    assert str(dag_run.state) == "success"
    # The same batch id names requests without a request_id the same way: nothing is new.
    assert again["stored"] == 0 and again["already_stored"] == again["submitted"]
    assert again["status"] == "DONE" and not again["new_batch"]
    assert gateway.stats()["received"] == received


@pytest.mark.e2e
def test_a_request_named_after_another_batch_is_rejected_not_taken_as_stored(
    airflow_db, gateway, status_backend
):
    from medins.store import StatusStore
    from medins.tasks import store_batch

    earlier, later = f"earlier-{status_backend}", f"later-{status_backend}"
    store_batch(sample_requests(2, earlier), batch_id=earlier)
    request = {**sample_requests(1, later)[0], "request_id": earlier}

    stored = store_batch([request], batch_id=later)

    with StatusStore.from_conn_id("medins_status_default") as store:
        (row,) = store.rows(later)
        earlier_batch = store.get_batch(earlier)
    assert (stored["stored"], stored["rejected"], stored["already_stored"]) == (1, 1, 0)
    assert row.task_id == f"{later}-000000" and row.status == "REJECTED"
    assert row.error == f"request_id {earlier} is the id of another batch; choose another"
    assert earlier_batch.kind == "batch" and earlier_batch.data["submitted"] == 50


@pytest.mark.e2e
def test_a_run_for_a_batch_never_stored_fails_and_says_how_to_store_it(airflow_db, gateway, status_backend):
    from airflow.sdk.exceptions import AirflowFailException

    from medins.tasks import take_stored_batch

    with pytest.raises(AirflowFailException, match="POST /medins/api/v1/batches"):
        take_stored_batch("never-stored", run_id="run-1", dag_id="medins_stored_batch")

    dag_run = run_stored({"batch_id": "never-stored"})

    assert str(dag_run.state) == "failed"
    assert gateway.stats()["received"] == 0
