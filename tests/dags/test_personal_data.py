"""
The demo's batch, run with ``dag.test()`` against a faulty gateway, leaves no personal data or secret behind.

The sample batch (``include/samples/demo_batch.json``) runs through ``medins_batch`` on SQLite against
the sandbox with faults, and single calls through ``medins_call`` end in success, a business refusal and
a rejection; then the task logs, the rendered fields, XComs and every other row of those runs in
Airflow's metadata DB (but the runs' ``conf``), and the error texts of the status table are scanned for
every certificate number, name, phone number and ``psn_no`` of the sample data and of the gateway's
answers about the same people, and for the secrets the tests' Airflow runs with.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import ROOT, SANDBOX_SECRET, TEST_HOME, gateway_connection
from tests.personal_data import (
    NAME_FIELDS,
    Scanner,
    files_under,
    personal_values,
    refused_confs,
    sample_requests,
    sample_values,
    single_calls,
)

FAULTS = {
    "latency_ms": 2,
    "jitter_ms": 2,
    "error_5xx": 0.08,
    "drop": 0.04,
    "lost_reply": 0.05,
    "business_error": 0.03,
}
NO_FAULTS = dict.fromkeys(FAULTS, 0)


@pytest.fixture
def embedded(airflow_db, sandbox, monkeypatch, tmp_path):
    """Point both Connections at the sandbox (five institutions) and a fresh SQLite status table."""
    from medins.store import StatusStore

    monkeypatch.setenv(
        "AIRFLOW_CONN_MEDINS_GATEWAY_DEFAULT", json.dumps(gateway_connection(sandbox.port, orgs=5))
    )
    connection = {"conn_type": "sqlite", "host": str(tmp_path / "status.db")}
    monkeypatch.setenv("AIRFLOW_CONN_MEDINS_STATUS_DEFAULT", json.dumps(connection))
    with StatusStore.from_conn_id("medins_status_default") as store:
        store.create_schema()
    return sandbox


def run_dag(dag_id: str, conf: dict):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags")).dags[dag_id].test(run_conf=conf)


def secrets_of_the_test_home() -> dict[str, str]:
    """Return the secrets the tests' Airflow runs with: the gateway's app secret, JWT secret, Fernet key."""
    from airflow.configuration import conf

    found = {SANDBOX_SECRET: "gateway app secret"}
    for section, key in (("api_auth", "jwt_secret"), ("core", "fernet_key")):
        if value := conf.get(section, key, fallback=""):
            found[value] = f"[{section}] {key}"
    return found


def test_every_number_of_the_sample_data_is_masked_inside_free_text():
    from medins.masking import mask_text

    numbers = {value: field for value, field in sample_values().items() if field not in NAME_FIELDS}

    unmasked = [(field, value[:3]) for value, field in numbers.items() if value in mask_text(f"号码{value}")]

    assert len(numbers) > 1000
    assert unmasked == []


def test_every_personal_value_a_message_quotes_is_masked_given_the_request():
    from medins.masking import mask_text

    quoted = []
    for request in sample_requests():
        values = personal_values(request)
        message = "人员信息不存在: " + ", ".join(values)

        masked = mask_text(message, request["data"])

        quoted += [(field, value[:1]) for value, field in values.items() if value in masked]
    assert quoted == []


@pytest.mark.parametrize(
    "index",
    range(6),
    ids=["batch-data", "batch-request-id", "batch-request", "batch-id", "call-data", "call-insuplc-admdvs"],
)
def test_the_reason_a_conf_is_refused_for_quotes_its_value_and_names_only_field_and_rule_masked(index):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.exceptions import ParamValidationError
    from airflow.serialization.serialized_objects import DagSerialization

    from medins.masking import mask_refusal

    dag_id, conf, masked = refused_confs(sample_requests())[index]
    # Validated as the api-server validates a trigger: the serialized DAG's params.
    dag = DagSerialization.from_dict(DagSerialization.to_dict(DagBag(str(ROOT / "dags")).dags[dag_id]))
    scanner = Scanner(sample_values())

    with pytest.raises(ParamValidationError) as refused:
        dag.params.deep_merge(conf).validate()

    assert scanner.scan("Airflow's reason", str(refused.value)) != []
    assert mask_refusal(str(refused.value)).startswith(masked)
    assert scanner.scan("masked reason", mask_refusal(str(refused.value))) == []


@pytest.mark.e2e
def test_the_demo_batch_and_single_calls_leave_no_personal_data_or_secret_behind(embedded, capfd):
    from medins.store import StatusStore

    started = time.time()
    requests = sample_requests()
    embedded.set_faults(**FAULTS)

    batch = run_dag("medins_batch", {"requests": requests, "chunk_size": 250, "concurrency": 8})
    embedded.set_faults(**NO_FAULTS)
    calls = [run_dag("medins_call", conf) for conf in single_calls(requests)]
    logs = capfd.readouterr()

    run_ids = [batch.run_id, *(call.run_id for call in calls)]
    with StatusStore.from_conn_id("medins_status_default") as store:
        rows = [row for run_id in run_ids for row in store.rows(run_id)]
    scanner = Scanner(sample_values(rows), secrets_of_the_test_home())
    findings = [
        *scanner.scan("task logs (stdout)", logs.out),
        *scanner.scan("task logs (stderr)", logs.err),
        *scanner.scan_files(files_under(TEST_HOME / "logs", since=started), TEST_HOME),
        *scanner.scan_metadata_db(f"sqlite:///{TEST_HOME}/airflow.db", run_ids=run_ids),
        *scanner.scan_status_rows("async_task_status", rows),
    ]

    assert str(batch.state) == "success"
    assert {row.status for row in rows} >= {"SUCCESS", "FAILURE", "UNKNOWN", "REJECTED"}
    assert [row.status for row in rows if row.batch_id in run_ids[1:]] == ["SUCCESS", "FAILURE", "REJECTED"]
    assert "Pushing xcom" in logs.out + logs.err  # the task logs were captured
    assert len(scanner) > 2000
    assert findings == [], "\n".join(map(str, findings[:50]))
