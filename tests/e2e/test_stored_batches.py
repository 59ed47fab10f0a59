"""Large batches: stored through the status API (``POST /batches``), sent by ``medins_stored_batch``.

On the native topology (scripts/cluster.py); what was stored is read straight from MariaDB.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests
from medins_client import MedicalInsuranceClient, SubmissionRefused
from medins_client.client import STORE_FIRST_ABOVE

from tests.e2e.conftest import API
from tests.e2e.test_distributed import batch_of, wait
from tests.e2e.test_status_api import STATUS_API, mariadb, token_for

pytestmark = pytest.mark.distributed

CERTNO = "440106199001011234"
SMALL = {
    "api_code": "1101",
    "org_code": "H44010600001",
    "data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": CERTNO},
}


def new_id(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"


def stored_rows(batch_id: str) -> list[tuple]:
    return mariadb("SELECT task_id, status FROM async_task_status WHERE batch_id = %s", batch_id)


def test_storing_a_batch_needs_a_token_and_the_right_to_trigger_runs(cluster):
    batch_id = new_id("stored-auth")
    body = {"requests": [SMALL], "batch_id": batch_id}
    viewer = {"Authorization": f"Bearer {token_for('viewer')}"}

    anonymous = requests.post(f"{STATUS_API}/batches", json=body, timeout=30)
    refused = requests.post(f"{STATUS_API}/batches", json=body, headers=viewer, timeout=30)

    assert anonymous.status_code == 401
    assert (
        refused.status_code == 403 and "trigger" not in refused.text.lower()
    ) or refused.status_code == 403
    assert "storing a batch to send" in refused.json()["detail"]
    assert stored_rows(batch_id) == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"requests": []}, "requests should be non-empty"),
        ({"requests": "1101"}, "requests is not of type 'array'"),
        (
            {"requests": [SMALL, {**SMALL, "api_code": 1101}]},
            "requests[1]['api_code'] is not of type 'string'",
        ),
        ({"requests": [{**SMALL, "request_id": "has space"}]}, "requests[0]['request_id'] does not match"),
        ({"requests": [SMALL], "chunk_size": 0}, "chunk_size is less than the minimum of 1"),
        ({"requests": [SMALL], "conf": {}}, "unknown keys: conf"),
    ],
    ids=["empty", "a-string", "api-code-a-number", "request-id-with-a-space", "chunk-size-0", "unknown-key"],
)
def test_a_bad_body_is_refused_with_400_and_its_reason_and_nothing_is_stored(api, body, reason):
    batch_id = new_id("stored-bad")

    reply = api.post(f"{STATUS_API}/batches", json={**body, "batch_id": batch_id}, timeout=30)

    assert reply.status_code == 400, reply.text[:500]
    assert reason in reply.json()["detail"], reply.text[:500]
    assert CERTNO not in reply.text
    assert stored_rows(batch_id) == []


def test_a_batch_id_that_is_a_request_id_is_refused_with_409(api):
    first = new_id("stored-first")
    taken = f"{first}-only"
    stored = api.post(
        f"{STATUS_API}/batches",
        json={"requests": [{**SMALL, "request_id": taken}], "batch_id": first},
        timeout=30,
    )
    assert stored.status_code == 201, stored.text[:500]

    reply = api.post(f"{STATUS_API}/batches", json={"requests": [SMALL], "batch_id": taken}, timeout=30)

    assert reply.status_code == 409 and "another batch id" in reply.json()["detail"]
    assert mariadb("SELECT kind, batch_id FROM async_task_status WHERE task_id = %s", taken) == [
        ("query", first)
    ]


def test_a_stored_batch_waits_for_its_run_and_a_bad_request_in_it_is_rejected(api):
    batch_id = new_id("stored-wait")
    body = {"requests": [SMALL, {**SMALL, "api_code": "9999"}], "batch_id": batch_id}

    reply = api.post(f"{STATUS_API}/batches", json=body, timeout=30)

    assert reply.status_code == 201, reply.text[:500]
    assert reply.json() == {
        "batch_id": batch_id, "status": "STORED", "submitted": 2, "rejected": 1, "stored": 2,
        "already_stored": 0, "chunks": 1, "dag_id": "medins_stored_batch",
    }  # fmt: skip
    assert sorted(status for _, status in stored_rows(batch_id)) == ["PENDING", "REJECTED", "STORED"]
    assert api.get(f"{STATUS_API}/batches/{batch_id}", timeout=30).json()["status"] == "STORED"


def test_the_client_stores_a_large_batch_and_its_run_carries_only_the_batch_id(password, api):
    batch_id = new_id("stored-client")
    batch = batch_of(STORE_FIRST_ABOVE + 200, batch_id)

    with MedicalInsuranceClient(API, "admin", password) as client:
        assert client.call_batch_async(batch, batch_id=batch_id, concurrency=8) == batch_id
        progress = client.wait_for_batch(batch_id, timeout=600)

    run = api.get(f"{API}/api/v2/dags/medins_stored_batch/dagRuns/{batch_id}", timeout=30).json()
    states = dict(
        mariadb(
            "SELECT status, COUNT(*) FROM async_task_status WHERE batch_id = %s AND kind <> 'batch' "
            "GROUP BY status",
            batch_id,
        )
    )
    assert wait(api, "medins_stored_batch", batch_id) == "success"
    assert run["conf"] == {"batch_id": batch_id, "concurrency": 8}
    assert progress["percentage"] == 100.0 and progress["total"] == len(batch)
    assert sum(states.values()) == len(batch) and states["REJECTED"] == 8
    assert not {"PENDING", "PROCESSING", "RETRY"} & set(states)


def test_the_client_passes_on_a_refused_store_with_its_reason(password):
    with (
        MedicalInsuranceClient(API, "admin", password) as client,
        pytest.raises(SubmissionRefused) as refused,
    ):
        client.call_batch_async([{**SMALL, "api_code": 1101}], store_first=True)

    assert "requests[0]['api_code'] is not of type 'string'" in refused.value.reason
    assert CERTNO not in str(refused.value)
