"""
The native topology keeps no personal data or secret where people read: logs, rendered fields, XCom, errors.

These tests run after every other test of the session (``personal_data_scan``, see ``tests/conftest.py``),
fault-injection runs included, and scan what all of them left: every log file of the topology (task logs
and the components' own), every row of Airflow's metadata DB in PostgreSQL, and the error texts of every
row of the status table in MariaDB. Left out are the DAG runs' ``conf`` (the batch as submitted) and
Airflow's own copies of it: the audit log's record of a trigger, and the callback request the scheduler
logs when a worker dies (see ``tests/personal_data.py``). They first run the demo's batch with gateway
faults, single calls that end in each outcome, and triggers refused for a conf that puts personal data
where the schema does not allow it, so they prove something when run alone too.

The values looked for are every certificate number, name, phone number and ``psn_no`` of the sample
data and of the gateway's answers about the same people; the secrets are the gateway's app secret, the
JWT secret, the Fernet key and the admin's password.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
import requests

from tests.conftest import ROOT
from tests.e2e.conftest import CLUSTER
from tests.e2e.test_distributed import SANDBOX, batch_of, trigger, wait
from tests.personal_data import (
    Scanner,
    files_under,
    home_secrets,
    refused_confs,
    sample_requests,
    sample_values,
    single_calls,
    status_rows,
)

pytestmark = [pytest.mark.distributed, pytest.mark.personal_data_scan]

HOME = ROOT / ".airflow-cluster"
# The demo's gateway faults, and business refusals too, so the table holds the gateway's error texts.
DEMO_FAULTS = {"error_5xx": 0.05, "drop": 0.02, "lost_reply": 0.02, "business_error": 0.02}


def metadata_db_url() -> str:
    """Return the URL of the topology's metadata DB, as ``scripts/cluster.py env`` gives it."""
    exports = subprocess.run([*CLUSTER, "env"], capture_output=True, text=True, check=True).stdout
    settings = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines())
    return json.loads(settings["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])


def metadata_db(sql: str, **params: Any) -> list[tuple]:
    """Run one query on the topology's metadata DB."""
    from sqlalchemy import create_engine, text

    engine = create_engine(metadata_db_url())
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def mariadb_rows() -> list:
    import MySQLdb

    conn = MySQLdb.connect(host="127.0.0.1", port=3306, user="root", db="medins", charset="utf8mb4")
    try:
        return status_rows(conn.cursor())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def demo(api) -> dict[str, Any]:
    """Run the demo's batch with gateway faults and three single calls; trigger seven refused confs."""
    stamp = time.strftime("%Y%m%d%H%M%S")
    faults_before = requests.get(f"{SANDBOX}/_sandbox/faults", timeout=10).json()
    requests.post(f"{SANDBOX}/_sandbox/faults", json=DEMO_FAULTS, timeout=10).raise_for_status()
    try:
        batch_id = f"pd-scan-{stamp}"
        batch = batch_of(len(sample_requests()), batch_id)
        reply = trigger(api, "medins_batch", {"requests": batch}, batch_id)
        assert reply.status_code == 200, reply.text[:500]
        call_ids = [f"pd-scan-call-{index}-{stamp}" for index in range(3)]
        for run_id, conf in zip(call_ids, single_calls(sample_requests()), strict=True):
            assert trigger(api, "medins_call", conf, run_id).status_code == 200
        refused = [
            trigger(api, dag_id, conf, f"pd-scan-refused-{index}-{stamp}")
            for index, (dag_id, conf, _) in enumerate(refused_confs(sample_requests()))
        ]
        states = [wait(api, "medins_batch", batch_id), *(wait(api, "medins_call", i, 300) for i in call_ids)]
    finally:
        requests.post(f"{SANDBOX}/_sandbox/faults", json=faults_before, timeout=10)
    return {"batch_id": batch_id, "call_ids": call_ids, "states": states, "refused": refused}


@pytest.fixture(scope="module")
def rows(demo) -> list:
    """Return every row of the status table, the demo's and every earlier test's."""
    return mariadb_rows()


@pytest.fixture(scope="module")
def scanner(rows) -> Scanner:
    return Scanner(sample_values(rows), home_secrets(HOME))


def test_the_demo_ran_and_its_conf_holds_the_sample_data(demo, rows, scanner):
    ((conf,),) = metadata_db("SELECT CAST(conf AS TEXT) FROM dag_run WHERE run_id = :id", id=demo["batch_id"])
    ours = {row.status for row in rows if row.batch_id == demo["batch_id"]}

    assert demo["states"] == ["success"] * 4
    assert ours >= {"SUCCESS", "FAILURE", "REJECTED"}
    assert [reply.status_code for reply in demo["refused"]] == [400] * 6 + [422]
    # The scan finds what it looks for where the data is kept by design.
    assert len(scanner.scan("dag_run.conf", conf)) > 1000


def task_logs() -> list:
    return files_under(*(HOME / "logs").glob("dag_id=*"))


def test_no_task_log_holds_personal_data_or_a_secret(demo, scanner):
    paths = task_logs()

    findings = scanner.scan_files(paths, HOME)

    assert sum(f"run_id={demo['batch_id']}" in str(path) for path in paths) >= 3
    assert findings == [], "\n".join(map(str, findings[:50]))


def test_no_component_log_holds_personal_data_or_a_secret_but_airflows_copies_of_a_runs_conf(demo, scanner):
    paths = sorted(set(files_under(HOME / "logs")) - set(task_logs()))

    findings = scanner.scan_files(paths, HOME, conf_copies=True)

    assert {"api-server.log", "scheduler.log", "worker-medical_batch.log"} <= {path.name for path in paths}
    assert findings == [], "\n".join(map(str, findings[:50]))


def test_the_metadata_db_holds_none_outside_the_runs_conf(demo, scanner):
    run_ids = [demo["batch_id"], *demo["call_ids"]]

    findings = scanner.scan_metadata_db(metadata_db_url())

    for table in ("rendered_task_instance_fields", "xcom", "task_instance"):  # the demo's were scanned
        assert metadata_db(f"SELECT COUNT(*) FROM {table} WHERE run_id = ANY(:ids)", ids=run_ids)[0][0], table
    assert findings == [], "\n".join(map(str, findings[:50]))


def test_no_error_text_of_the_status_table_holds_personal_data(demo, rows, scanner):
    findings = scanner.scan_status_rows("async_task_status", rows)

    assert sum(bool(row.error) for row in rows) > 10
    assert findings == [], "\n".join(map(str, findings[:50]))


def test_a_refused_trigger_does_not_quote_personal_data(demo, scanner):
    findings = [finding for reply in demo["refused"] for finding in scanner.scan("trigger reply", reply.text)]

    assert findings == [], "\n".join(map(str, findings[:50]))


def test_the_masked_detail_of_a_refused_trigger_names_the_field_and_the_rule_not_the_value(demo, scanner):
    from medins.masking import mask_refusal

    details = [mask_refusal(reply.json()["detail"]) for reply in demo["refused"]]

    assert scanner.scan("masked details", json.dumps(details, ensure_ascii=False)) == []
    for detail, (_, _, masked) in zip(details, refused_confs(sample_requests()), strict=True):
        assert detail == masked if isinstance(masked, list) else detail.startswith(masked), detail
