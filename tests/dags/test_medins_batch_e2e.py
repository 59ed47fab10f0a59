"""``medins_batch`` end to end with ``dag.test()``: a batch with faults, and every row's final state."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from samples.fake_people import make_person

from tests.conftest import ROOT, gateway_connection

FAULTS = {
    "latency_ms": 2,
    "jitter_ms": 2,
    "error_5xx": 0.08,
    "drop": 0.04,
    "lost_reply": 0.05,
    "business_error": 0.02,
}
OPEN_STATES = {"PENDING", "PROCESSING", "RETRY"}


def sample_requests(count: int, prefix: str) -> list[dict]:
    """Return the demo batch's first ``count`` valid requests and all its invalid ones, ids prefixed."""
    batch = json.loads((ROOT / "include/samples/demo_batch.json").read_text(encoding="utf-8"))
    valid, invalid = batch[:count], batch[-8:]
    chosen = [dict(r) for r in valid + invalid]
    for request in chosen:
        if "request_id" in request:
            request["request_id"] = f"{prefix}-{request['request_id']}"
    rng = random.Random(3)
    for i in range(40):  # settlements, so the batch holds enough writes
        person = make_person(rng)
        chosen.append(
            {
                "request_id": f"{prefix}-settle-{i}",
                "api_code": "2207",
                "org_code": "H44010600001",
                "data": {
                    "psn_no": person.psn_no, "mdtrt_cert_type": "02", "mdtrt_id": f"{prefix}-MDT-{i}",
                    "chrg_bchno": f"CB{i}", "insutype": "310", "medfee_sumamt": 99.5, "psn_setlway": "01",
                },
            }
        )  # fmt: skip
    return chosen


@pytest.fixture(params=["sqlite", "mariadb"])
def status_backend(request, tmp_path, monkeypatch):
    """Point ``medins_status_default`` at a fresh SQLite file or a throwaway MariaDB database."""
    from medins.store import StatusStore

    if request.param == "sqlite":
        connection = {"conn_type": "sqlite", "host": str(tmp_path / "status.db")}
    else:
        database = request.getfixturevalue("mariadb_database")
        connection = {
            "conn_type": "mysql", "host": "127.0.0.1", "port": 3306, "login": "root", "schema": database,
            "extra": {"charset": "utf8mb4"},
        }  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_MEDINS_STATUS_DEFAULT", json.dumps(connection))
    with StatusStore.from_conn_id("medins_status_default") as store:
        store.create_schema()
    return request.param


@pytest.fixture
def gateway(sandbox, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_MEDINS_GATEWAY_DEFAULT", json.dumps(gateway_connection(sandbox.port, orgs=5))
    )
    return sandbox


def run_batch(conf: dict):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["medins_batch"]
    return dag.test(run_conf=conf)


@pytest.mark.e2e
def test_batch_with_faults_ends_with_every_row_final_and_nothing_sent_twice(
    airflow_db, gateway, status_backend
):
    from medins.store import StatusStore

    requests = sample_requests(300 if status_backend == "mariadb" else 600, status_backend)
    gateway.set_faults(**FAULTS)

    dag_run = run_batch({"requests": requests, "chunk_size": 100, "concurrency": 8})

    with StatusStore.from_conn_id("medins_status_default") as store:
        rows = [row for row in store.rows(dag_run.run_id) if row.kind != "batch"]
        batch = store.get_batch(dag_run.run_id)
    messages = {m["msgid"]: m for m in gateway.messages()["messages"]}
    stats = gateway.stats()
    by_state = Counter(row.status for row in rows)

    assert str(dag_run.state) == "success"
    assert len(rows) == len(requests)
    assert not OPEN_STATES & set(by_state), by_state
    assert by_state["REJECTED"] == 8
    assert by_state["SUCCESS"] > len(requests) * 0.8
    assert by_state["UNKNOWN"] >= 1 and by_state["FAILURE"] >= 1, by_state  # the faults did happen
    assert stats["by_outcome"].get("error_5xx", 0) >= 1 and stats["by_outcome"].get("dropped", 0) >= 1
    assert batch.status == "DONE" and batch.data["percentage"] == 100.0
    assert batch.data["current"] == batch.data["total"] == len(rows)

    # Nothing sent twice: no msgid reused; no settlement applied twice; no success re-sent.
    assert stats["duplicate_msgids"] == []
    assert stats["double_settlements"] == 0
    for row in rows:
        sent = [messages[m] for m in row.data.get("msgids", []) if m in messages]
        applied = [o for m in sent for o in m["outcomes"] if o in ("ok", "ok_reply_lost")]
        if row.status == "SUCCESS":
            assert applied.count("ok") == 1, row.task_id
        if row.kind == "write":
            assert len(applied) <= 1, row.task_id
        if row.status == "REJECTED":
            assert row.attempts == 0 and not row.data.get("msgids") and row.error, row.task_id
        if row.status == "UNKNOWN":
            assert row.kind == "write" and "never send it again" in row.error


@pytest.mark.e2e
def test_invalid_requests_are_rejected_with_their_reason_and_never_sent(airflow_db, gateway, status_backend):
    from medins.store import StatusStore

    requests = sample_requests(5, f"rej-{status_backend}")

    dag_run = run_batch({"requests": requests})

    with StatusStore.from_conn_id("medins_status_default") as store:
        reasons = " | ".join(row.error for row in store.rows(dag_run.run_id, statuses=["REJECTED"]))
    for reason in (
        "unknown interface '9999'",
        "missing required field mdtrt_cert_no",
        "mdtrt_cert_type must be one of 01, 02, 03",
        "medfee_sumamt must be a number",
        "is not configured",
        "query_date must be a date",
        "duplicate request_id",
        "unknown field(s) note",
    ):
        assert reason in reasons
    assert gateway.stats()["received"] - gateway.stats()["by_infno"].get("9001", 0) == 45


@pytest.mark.e2e
def test_rerun_of_a_finished_batch_sends_nothing(airflow_db, gateway, status_backend):
    from medins.hooks.gateway import MedicalInsuranceHook
    from medins.runner import ChunkRunner
    from medins.store import StatusStore

    dag_run = run_batch({"requests": sample_requests(50, f"again-{status_backend}")})
    received = gateway.stats()["received"]

    with StatusStore.from_conn_id("medins_status_default") as store:
        report = ChunkRunner(MedicalInsuranceHook(), store).run(dag_run.run_id, 0)

    assert report.sent == 0
    assert gateway.stats()["received"] == received


@pytest.mark.e2e
def test_the_same_batch_submitted_twice_adds_and_sends_nothing_the_second_time(
    airflow_db, gateway, status_backend
):
    from medins.store import StatusStore

    requests = sample_requests(20, f"twice-{status_backend}")
    first = run_batch({"requests": requests})
    received = gateway.stats()["received"]

    second = run_batch({"requests": requests})

    with StatusStore.from_conn_id("medins_status_default") as store:
        # Only the two requests with no usable request_id (a duplicate, one without) are stored again.
        assert [row.status for row in store.rows(second.run_id)] == ["REJECTED", "REJECTED"]
        assert store.get_batch(second.run_id).data["already_stored"] == len(requests) - 2
        assert store.counts(first.run_id)["SUCCESS"] >= 20 + 40 - 3
    assert str(second.state) == "success"
    assert gateway.stats()["received"] == received


@pytest.mark.parametrize("owner_active", [True, False], ids=["owner-running", "owner-ended"])
def test_a_batch_id_another_run_is_sending_is_left_to_that_run(gateway, status_backend, owner_active):
    from medins.store import StatusStore
    from medins.tasks import register_batch, summarize_batch

    requests = sample_requests(10, f"owned-{owner_active}")
    batch_id = f"owned-{owner_active}-{status_backend}"
    asked: list[tuple[str, str]] = []

    def run_is_active(dag_id: str, run_id: str) -> bool:
        asked.append((dag_id, run_id))
        return owner_active

    register_batch(requests[:5], run_id="run-a", dag_id="medins_batch", batch_id=batch_id)
    chunks = register_batch(
        requests, run_id="run-b", dag_id="medins_batch", batch_id=batch_id, run_is_active=run_is_active
    )
    summary = (
        summarize_batch(run_id="run-b", batch_id=batch_id, run_is_active=run_is_active)
        if owner_active
        else {}
    )

    with StatusStore.from_conn_id("medins_status_default") as store:
        batch, rows = store.get_batch(batch_id), store.rows(batch_id)
    assert asked[0] == ("medins_batch", "run-a")
    if owner_active:  # nothing stored, nothing to send, and the owner's batch row untouched
        assert chunks == [] and len(rows) == 5
        assert summary == {"batch_id": batch_id, "sent_by": "run-a"}
        assert batch.status == "RUNNING" and batch.data["run_id"] == "run-a"
    else:  # the owner ended: this run resumes the batch with what it adds
        assert chunks and len(rows) == len(requests)
        assert batch.data["run_id"] == "run-b"


def test_a_batch_id_that_is_already_a_request_id_is_refused_before_anything_is_stored(
    gateway, status_backend
):
    from airflow.sdk.exceptions import AirflowFailException

    from medins.store import StatusStore
    from medins.tasks import register_batch

    first = sample_requests(3, f"taken-{status_backend}")
    register_batch(first, run_id="run-1", dag_id="medins_batch", batch_id=f"taken-{status_backend}-batch")
    taken = first[0]["request_id"]

    with pytest.raises(AirflowFailException, match="submit again with another batch id"):
        register_batch(sample_requests(2, "other"), run_id="run-2", dag_id="medins_batch", batch_id=taken)

    with StatusStore.from_conn_id("medins_status_default") as store:
        assert store.get(taken).kind != "batch" and store.get(taken).data["request"] == first[0]
        assert store.rows(taken) == []


@pytest.mark.parametrize(
    ("state", "active"), [("RUNNING", True), ("QUEUED", True), ("SUCCESS", False), ("FAILED", False)]
)
def test_run_is_active_reads_the_task_sdk_dag_run_state(state, active):
    from airflow.sdk.api.datamodels._generated import DagRunState

    from medins.tasks import run_is_active

    class TaskInstance:  # answers as RuntimeTaskInstance.get_dagrun_state does: the Task SDK's enum
        @staticmethod
        def get_dagrun_state(dag_id: str, run_id: str) -> DagRunState:
            return DagRunState[state]

    assert run_is_active(TaskInstance())("medins_batch", "run-a") is active
    assert run_is_active(None) is None
