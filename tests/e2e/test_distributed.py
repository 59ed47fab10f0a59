"""The distributed topology started natively (scripts/cluster.py): CeleryExecutor on named queues,
PostgreSQL metadata, MariaDB status table, batches and single calls triggered over the REST API."""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter

import pytest
import requests

from tests.conftest import ROOT
from tests.e2e.conftest import API

pytestmark = pytest.mark.distributed

SANDBOX = "http://127.0.0.1:8901"
FLOWER = "http://127.0.0.1:5555"
FAULTS = {"error_5xx": 0.05, "drop": 0.02, "lost_reply": 0.03, "latency_ms": 5, "jitter_ms": 5}
TASK_INSTANCE = re.compile(r'"task_id":"(?P<task_id>\w+)","dag_id":"\w+","run_id":"(?P<run_id>[^"]+)"')
NO_FAULTS = {"error_5xx": 0, "drop": 0, "lost_reply": 0, "business_error": 0, "latency_ms": 0, "jitter_ms": 0}


@pytest.fixture(scope="module")
def store(cluster, tmp_path_factory):
    from medins.store import StatusStore

    os.environ["AIRFLOW_CONN_MEDINS_STATUS_CLUSTER"] = json.dumps(
        {"conn_type": "mysql", "host": "127.0.0.1", "port": 3306, "login": "root", "schema": "medins",
         "extra": {"charset": "utf8mb4"}}
    )  # fmt: skip
    with StatusStore.from_conn_id("medins_status_cluster") as store:
        yield store


@pytest.fixture
def sandbox_faults(cluster):
    requests.post(f"{SANDBOX}/_sandbox/reset", json={}, timeout=10).raise_for_status()
    yield lambda **faults: requests.post(
        f"{SANDBOX}/_sandbox/faults", json=faults, timeout=10
    ).raise_for_status()
    requests.post(f"{SANDBOX}/_sandbox/faults", json=NO_FAULTS, timeout=10)


def trigger(api: requests.Session, dag_id: str, conf: dict, run_id: str) -> requests.Response:
    return api.post(
        f"{API}/api/v2/dags/{dag_id}/dagRuns",
        json={"dag_run_id": run_id, "logical_date": None, "conf": conf},
        timeout=120,
    )


def wait(api: requests.Session, dag_id: str, run_id: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = api.get(f"{API}/api/v2/dags/{dag_id}/dagRuns/{run_id}", timeout=30).json()["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(2)
    raise AssertionError(f"{dag_id} run {run_id} not finished after {timeout} s")


def batch_of(size: int, prefix: str) -> list[dict]:
    """Return ``size`` requests from the demo batch (its 8 invalid ones included), ids and visits unique."""
    demo = json.loads((ROOT / "include/samples/demo_batch.json").read_text(encoding="utf-8"))
    valid, invalid = demo[:-8], demo[-8:]
    chosen: list[dict] = []
    copy = 0
    while len(chosen) < size - len(invalid):
        for request in valid[: size - len(invalid) - len(chosen)]:
            request = json.loads(json.dumps(request))
            request["request_id"] = f"{prefix}-{copy}-{request['request_id']}"
            data = request["data"]
            for key in ("mdtrt_id", "ipt_otp_no", "chrg_bchno"):
                if key in data:
                    data[key] = f"{data[key]}-{prefix[-6:]}{copy}"[:30]
            chosen.append(request)
        copy += 1
    for request in invalid:
        request = json.loads(json.dumps(request))
        if request.get("request_id") == valid[0]["request_id"]:
            request["request_id"] = chosen[0]["request_id"]  # the duplicate stays a duplicate
        elif "request_id" in request:
            request["request_id"] = f"{prefix}-{request['request_id']}"
        chosen.append(request)
    return chosen


def test_calls_without_a_valid_token_are_refused(cluster):
    reply = requests.post(f"{API}/api/v2/dags/medins_batch/dagRuns", json={"logical_date": None}, timeout=30)

    assert reply.status_code == 401


@pytest.mark.parametrize(
    ("dag_id", "conf", "reason"),
    [
        ("medins_batch", {"requests": "1101"}, "is not of type 'array'"),
        ("medins_batch", {"requests": []}, "should be non-empty"),
        ("medins_call", {"api_code": "11", "data": {}}, "does not match"),
        ("medins_call", {"api_code": "1101"}, "data"),
    ],
    ids=["batch-not-a-list", "batch-empty", "call-bad-code", "call-no-data"],
)
def test_a_bad_conf_is_refused_with_400_and_the_reason(api, dag_id, conf, reason):
    reply = trigger(api, dag_id, conf, f"bad-{time.time_ns()}")

    assert reply.status_code == 400, reply.text[:500]
    assert reason in reply.text


def test_a_batch_of_2000_with_faults_ends_with_every_row_final_and_nothing_sent_twice(
    api, store, sandbox_faults
):
    run_id = f"e2e-{time.strftime('%Y%m%d%H%M%S')}"
    requests_ = batch_of(2000, run_id)
    sandbox_faults(**FAULTS)

    assert trigger(api, "medins_batch", {"requests": requests_, "chunk_size": 200}, run_id).status_code == 200
    state = wait(api, "medins_batch", run_id)

    rows = store.rows(run_id)
    by_state = Counter(row.status for row in rows)
    stats = requests.get(f"{SANDBOX}/_sandbox/stats", timeout=30).json()
    messages = {
        m["msgid"]: m for m in requests.get(f"{SANDBOX}/_sandbox/messages", timeout=60).json()["messages"]
    }
    assert state == "success"
    assert len(rows) == 2000
    assert not {"PENDING", "PROCESSING", "RETRY"} & set(by_state), by_state
    assert by_state["REJECTED"] == 8 and by_state["UNKNOWN"] >= 1
    assert stats["duplicate_msgids"] == [] and stats["double_settlements"] == 0
    for row in rows:
        outcomes = [o for m in row.data.get("msgids", []) for o in messages.get(m, {}).get("outcomes", [])]
        if row.status == "SUCCESS":
            assert outcomes.count("ok") == 1, row.task_id
        if row.kind == "write":
            assert outcomes.count("ok") + outcomes.count("ok_reply_lost") <= 1, row.task_id
    batch = store.get_batch(run_id)
    assert batch.status == "DONE" and batch.data["current"] == batch.data["total"] == 2000


def test_a_single_call_is_made_and_its_row_is_final(api, store, sandbox_faults):
    run_id = f"call-{time.time_ns()}"
    conf = {
        "api_code": "5301",
        "org_code": "H44010600001",
        "data": {"psn_no": "44010000000000000001"},
        "request_id": f"single-{run_id}",
    }

    assert trigger(api, "medins_call", conf, run_id).status_code == 200
    state = wait(api, "medins_call", run_id, timeout=180)

    row = store.get(f"single-{run_id}")
    assert state == "success"
    assert row.status == "SUCCESS" and row.data["output"] and row.api_code == "5301"


def test_each_kind_of_task_ran_on_its_queue(api, store, sandbox_faults):
    run_id = f"queues-{time.time_ns()}"
    requests_ = batch_of(30, run_id)
    assert trigger(api, "medins_batch", {"requests": requests_, "chunk_size": 10}, run_id).status_code == 200
    call_id = f"queues-call-{time.time_ns()}"
    call = {"api_code": "5301", "data": {"psn_no": "4401"}, "org_code": "H44010600001"}
    assert trigger(api, "medins_call", call, call_id).status_code == 200
    assert wait(api, "medins_batch", run_id) == "success"
    assert wait(api, "medins_call", call_id, timeout=180) == "success"

    # Flower shows each Celery task's worker and the start of its arguments: the task instance.
    workers: dict[str, set[str]] = {}
    tasks = requests.get(f"{FLOWER}/api/tasks", params={"limit": 5000}, timeout=60).json()
    for task in tasks.values():
        found = TASK_INSTANCE.search(task.get("args") or "")
        if found and found.group("run_id") in (run_id, call_id):
            workers.setdefault(found.group("task_id"), set()).add(task["worker"].split("@")[0])
    assert workers == {
        "register": {"default"},
        "send_chunk": {"medical_batch"},
        "summarize": {"default"},
        "call_interface": {"medical_interface"},
    }
