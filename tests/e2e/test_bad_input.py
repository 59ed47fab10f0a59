"""Bad input on the native topology (scripts/cluster.py): each refused or rejected with a clear reason,
with no partial damage.

A ``conf`` that breaks the trigger's schema is refused by the api-server, and neither a DAG run nor
a row is made. A request that passes the schema but not the catalog becomes a ``REJECTED`` row naming
the field, is never sent, and the rest of its batch runs. Text is checked byte for byte in MariaDB
and in the status API's replies.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import requests

from medins.batch import MAX_REQUESTS
from tests.conftest import ROOT
from tests.e2e.conftest import API
from tests.e2e.test_distributed import trigger, wait
from tests.e2e.test_status_api import INJECTIONS, STATUS_API, mariadb

pytestmark = pytest.mark.distributed

ORG = "H44010600001"
SMALL = {"api_code": "5301", "org_code": ORG, "data": {"psn_no": "44010000000000000001"}}
# 4-byte UTF-8 characters: a rare CJK ideograph (U+20BB7) and emoji, with BMP Chinese around them.
NAME = "张𠮷😀·李"
LONGEST_NAME = "𠮷" * 49 + "😀"  # psn_name holds 50 characters: 200 bytes of UTF-8
SQL_NAME = "Robert'); DROP TABLE async_task_status;--"
DEMO = json.loads((ROOT / "include/samples/demo_batch.json").read_text(encoding="utf-8"))


def run_id_for(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"


def stored_rows(batch_id: str) -> list[tuple]:
    """Return every row, the batch's own included, that a batch left in MariaDB."""
    return mariadb(
        "SELECT task_id FROM async_task_status WHERE batch_id = %s OR task_id = %s", batch_id, batch_id
    )


def demo_request(api_code: str, **data: Any) -> dict[str, Any]:
    """Return the demo batch's first (valid) request for ``api_code``, without its id, ``data`` changed."""
    request = json.loads(json.dumps(next(r for r in DEMO if r["api_code"] == api_code)))
    del request["request_id"]
    request["data"].update(data)
    return request


# -- refused at the door: no DAG run, no row ----------------------------------------------------


@pytest.mark.parametrize(
    "conf",
    [[SMALL], "requests", 42, True],
    ids=["list", "string", "number", "boolean"],
)
def test_a_conf_that_is_not_an_object_is_refused_and_no_run_is_created(api, conf):
    run_id = run_id_for("bad-conf")

    reply = trigger(api, "medins_batch", conf, run_id)

    assert reply.status_code == 422, reply.text[:500]
    (problem,) = reply.json()["detail"]
    assert problem["loc"] == ["body", "conf"] and problem["msg"] == "Input should be a valid dictionary"
    assert api.get(f"{API}/api/v2/dags/medins_batch/dagRuns/{run_id}", timeout=30).status_code == 404
    assert stored_rows(run_id) == []


@pytest.mark.parametrize(
    ("conf", "reason"),
    [
        ({}, "Invalid input for param requests: No value passed"),
        ({"requests": "1101"}, "requests: requests is not of type 'array'"),
        ({"requests": SMALL}, "is not of type 'array'"),
        ({"requests": 7}, "requests: requests is not of type 'array'"),
        ({"requests": None}, "requests: requests is not of type 'array'"),
        ({"requests": []}, "requests: requests should be non-empty"),
        ({"requests": [SMALL] * (MAX_REQUESTS + 1)}, "is too long"),
        ({"requests": [SMALL, "1101"]}, "requests[1] is not of type 'object'"),
        ({"requests": [SMALL, {**SMALL, "data": []}]}, "requests[1]['data'] is not of type 'object'"),
        ({"requests": [{**SMALL, "api_code": 5301}]}, "requests[0]['api_code'] is not of type 'string'"),
        ({"requests": [{**SMALL, "org_code": ["H44010600001"]}]}, "is not of type 'string'"),
        ({"requests": [{**SMALL, "request_id": "has space"}]}, "requests[0]['request_id'] does not match"),
        ({"requests": [{**SMALL, "request_id": "r1\n"}]}, "requests[0]['request_id'] does not match"),
        ({"requests": [SMALL], "batch_id": "night-1\n"}, "batch_id: batch_id does not match"),
        ({"requests": [SMALL], "chunk_size": 0}, "chunk_size: chunk_size is less than the minimum of 1"),
        ({"requests": [SMALL], "concurrency": "16"}, "concurrency: concurrency is not of type 'integer'"),
    ],
    ids=[
        "no-requests",
        "requests-a-string",
        "requests-an-object",
        "requests-a-number",
        "requests-null",
        "requests-empty",
        "over-the-maximum",
        "item-not-an-object",
        "data-a-list",
        "api-code-a-number",
        "org-code-a-list",
        "request-id-with-a-space",
        "request-id-with-a-newline",
        "batch-id-with-a-newline",
        "chunk-size-0",
        "concurrency-a-string",
    ],
)
def test_a_conf_that_breaks_the_schema_is_refused_with_400_and_nothing_is_stored(api, conf, reason):
    run_id = run_id_for("bad-requests")

    reply = trigger(api, "medins_batch", conf, run_id)

    assert reply.status_code == 400, reply.text[:500]
    assert reason in reply.json()["detail"], reply.text[:500]
    assert api.get(f"{API}/api/v2/dags/medins_batch/dagRuns/{run_id}", timeout=30).status_code == 404
    assert stored_rows(run_id) == []


@pytest.mark.parametrize(
    "value",
    ["NaN", '"44\\ud800"', '"44\\u0000"'],
    ids=["nan", "lone-surrogate", "nul"],
)
def test_a_value_the_metadata_db_cannot_hold_is_refused_and_no_run_is_created(api, value):
    # Python's JSON reader takes these; PostgreSQL's jsonb, where Airflow keeps dag_run.conf, does not.
    run_id = run_id_for("bad-json")
    body = (
        f'{{"dag_run_id": "{run_id}", "logical_date": null, "conf": {{"requests": [{{"api_code": "5301", '
        f'"org_code": "{ORG}", "data": {{"psn_no": {value}}}}}]}}}}'
    )

    reply = api.post(
        f"{API}/api/v2/dags/medins_batch/dagRuns",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
        timeout=120,
    )

    assert 400 <= reply.status_code < 500, reply.text[:500]
    assert reply.json()["detail"]["reason"] == "Value rejected by database"
    assert api.get(f"{API}/api/v2/dags/medins_batch/dagRuns/{run_id}", timeout=30).status_code == 404
    assert stored_rows(run_id) == []


# -- rejected one by one: the rest of the batch runs ------------------------------------------------

# Each bad request, and what its rejection must say. The schema sees only the envelope of a request
# (types of api_code, org_code, request_id, data); what sits inside ``data`` is the catalog's to check.
BAD = {
    "unknown-interface": (
        {**SMALL, "api_code": "9999"},
        "unknown interface '9999': not in the interface catalog",
    ),
    "unknown-interface-in-chinese": ({**SMALL, "api_code": "医保😀"}, "unknown interface '医保😀'"),
    "session-interface": ({**SMALL, "api_code": "9001"}, "is a session call the gateway hook makes itself"),
    "sql-as-interface": ({**SMALL, "api_code": INJECTIONS[0]}, "not in the interface catalog"),
    "unknown-institution": (
        {**SMALL, "org_code": "H99999999999"},
        "is not configured in the gateway Connection",
    ),
    "sql-as-institution": (
        {**SMALL, "org_code": "x' OR '1'='1"},
        "is not configured in the gateway Connection",
    ),
    "missing-field": ({**SMALL, "data": {}}, "missing required field psn_no"),
    "blank-field": ({**SMALL, "data": {"psn_no": "\u3000"}}, "missing required field psn_no"),
    "number-for-a-string": ({**SMALL, "data": {"psn_no": 4401}}, "psn_no must be a string, got int"),
    "object-for-a-string": ({**SMALL, "data": {"psn_no": {"no": "1"}}}, "psn_no must be a string, got dict"),
    "list-for-a-string": ({**SMALL, "data": {"psn_no": ["1"]}}, "psn_no must be a string, got list"),
    "string-for-a-number": (demo_request("1312", page_num="1"), "page_num must be an integer, got str"),
    "text-for-an-amount": (
        demo_request("2207", medfee_sumamt="一百元"),
        "medfee_sumamt must be a number, got str",
    ),
    "not-in-the-enum": (
        demo_request("1101", mdtrt_cert_type="09"),
        "mdtrt_cert_type must be one of 01, 02, 03",
    ),
    "bad-date": (demo_request("1312", query_date="2026/12/01"), "query_date must be a date like 2026-12-03"),
    "full-width-date": (
        demo_request("1312", query_date="２０２６-12-1５"),
        "query_date must be a date like 2026-12-03",
    ),
    "over-the-length-limit": (
        {**SMALL, "data": {"psn_no": "4" * 31}},
        "psn_no is 31 characters, longer than 30",
    ),
    "name-over-the-length-limit": (
        demo_request("1101", psn_name=LONGEST_NAME + "😀"),
        "psn_name is 51 characters, longer than 50",
    ),
    "unknown-field": ({**SMALL, "note": "补录"}, "unknown field(s) note"),
    "full-width-admdvs": ({**SMALL, "insuplc_admdvs": "４４０１０６"}, "insuplc_admdvs must be 6 digits"),
}


@pytest.fixture(scope="module")
def mixed(api) -> dict[str, Any]:
    """Run one batch of good queries and each bad request of ``BAD`` to the end."""
    batch_id = run_id_for("bad-input")
    good = {
        "person": demo_request("1101", psn_name=NAME),
        "longest-name": demo_request("1101", psn_name=LONGEST_NAME),
        "sql-as-name": demo_request("1101", psn_name=SQL_NAME),
        "institution": demo_request("1201"),
        "catalog": demo_request("1312"),
        "visits": demo_request("5201"),
        "filing": demo_request("5301"),
    }
    ids = {name: f"{batch_id}-{name}" for name in [*good, *BAD, "first"]}
    batch = [{**request, "request_id": ids[name]} for name, request in good.items()]
    batch.append({**SMALL, "request_id": ids["first"]})
    batch.append({**SMALL, "request_id": ids["first"]})  # the duplicate: rejected, the first runs
    batch += [{**request, "request_id": ids[name]} for name, (request, _) in BAD.items()]

    reply = trigger(api, "medins_batch", {"requests": batch, "chunk_size": 5}, batch_id)
    assert reply.status_code == 200, reply.text[:500]
    assert wait(api, "medins_batch", batch_id, timeout=300) == "success"

    rows = mariadb(
        "SELECT task_id, status, error, attempts, msgid, chunk_no FROM async_task_status "
        "WHERE batch_id = %s AND kind <> 'batch'",
        batch_id,
    )
    columns = ("task_id", "status", "error", "attempts", "msgid", "chunk_no")
    return {
        "batch_id": batch_id,
        "good": good,
        "ids": ids,
        "size": len(batch),
        "rows": {row[0]: dict(zip(columns, row, strict=True)) for row in rows},
    }


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_request_is_rejected_with_a_reason_naming_the_field_and_never_sent(mixed, name):
    row = mixed["rows"][mixed["ids"][name]]

    assert row["status"] == "REJECTED"
    assert BAD[name][1] in row["error"], row["error"]
    assert (row["attempts"], row["msgid"], row["chunk_no"]) == (0, None, None)


def test_a_duplicate_request_id_rejects_the_second_and_runs_the_first(mixed):
    first = mixed["rows"][mixed["ids"]["first"]]
    duplicates = [
        row for row in mixed["rows"].values() if row["error"] and "duplicate request_id" in row["error"]
    ]

    assert first["status"] == "SUCCESS" and first["attempts"] >= 1
    assert len(duplicates) == 1
    assert f"duplicate request_id {mixed['ids']['first']} (first at request #" in duplicates[0]["error"]
    assert duplicates[0]["task_id"] == f"{mixed['batch_id']}-{len(mixed['good']) + 1:06d}"
    assert (duplicates[0]["status"], duplicates[0]["attempts"]) == ("REJECTED", 0)


def test_the_good_requests_of_a_mixed_batch_all_succeed_and_every_request_has_a_row(api, mixed):
    for name in mixed["good"]:
        assert mixed["rows"][mixed["ids"][name]]["status"] == "SUCCESS", name

    batch = api.get(f"{STATUS_API}/batches/{mixed['batch_id']}", timeout=60).json()
    assert len(mixed["rows"]) == mixed["size"]
    assert (batch["status"], batch["submitted"], batch["rejected"]) == ("DONE", mixed["size"], len(BAD) + 1)
    assert batch["counts"] == {"REJECTED": len(BAD) + 1, "SUCCESS": len(mixed["good"]) + 1}


# -- text byte for byte ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["person", "longest-name", "sql-as-name"])
def test_a_name_is_stored_in_mariadb_byte_for_byte(mixed, name):
    task_id = mixed["ids"][name]
    sent = mixed["good"][name]["data"]["psn_name"]

    ((hex_name, data),) = mariadb(
        "SELECT HEX(JSON_UNQUOTE(JSON_EXTRACT(data, '$.request.data.psn_name'))), data "
        "FROM async_task_status WHERE task_id = %s",
        task_id,
    )

    assert bytes.fromhex(hex_name) == sent.encode("utf-8")
    assert sent in data  # kept as text, not as \u escapes


@pytest.mark.parametrize("name", ["person", "longest-name", "sql-as-name"])
def test_a_name_is_echoed_byte_for_byte_by_the_status_api_in_full_and_masked_otherwise(api, mixed, name):
    task_id = mixed["ids"][name]
    sent = mixed["good"][name]["data"]["psn_name"]

    full = api.get(f"{STATUS_API}/tasks/{task_id}", params={"full": "true"}, timeout=60)
    masked = api.get(f"{STATUS_API}/tasks/{task_id}", timeout=60)

    assert full.status_code == masked.status_code == 200
    assert sent.encode("utf-8") in full.content
    assert full.json()["request"]["data"]["psn_name"] == sent
    assert full.json()["result"]["baseinfo"]["psn_name"] == sent  # through the gateway and back
    assert sent.encode("utf-8") not in masked.content
    assert masked.json()["request"]["data"]["psn_name"] == sent[0] + "*" * (len(sent) - 1)


def test_a_rejection_reason_in_chinese_is_stored_byte_for_byte(mixed):
    task_id = mixed["ids"]["unknown-interface-in-chinese"]

    ((hex_error,),) = mariadb("SELECT HEX(error) FROM async_task_status WHERE task_id = %s", task_id)

    assert "'医保😀'".encode() in bytes.fromhex(hex_error)


# -- SQL in the status API's filters -------------------------------------------------------------


def test_sql_stored_as_a_value_is_found_as_that_value_and_nothing_else(api, mixed):
    org_code = BAD["sql-as-institution"][0]["org_code"]

    listed = api.get(
        f"{STATUS_API}/tasks", params={"org_code": org_code, "batch_id": mixed["batch_id"]}, timeout=60
    ).json()
    counted = api.get(f"{STATUS_API}/statistics", params={"org_code": org_code}, timeout=60).json()

    assert [item["task_id"] for item in listed["items"]] == [mixed["ids"]["sql-as-institution"]]
    assert counted["by_org_code"] == {org_code: {"REJECTED": counted["total"]}} and counted["total"] >= 1


@pytest.mark.parametrize("injection", INJECTIONS, ids=["or-1-1", "union", "drop"])
@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/tasks", "created_from"),
        ("/tasks", "created_to"),
        ("/tasks", "page"),
        ("/tasks", "page_size"),
        ("/statistics", "created_from"),
        ("/statistics", "created_to"),
        ("/tasks/x", "full"),
    ],
    ids=lambda value: value.strip("/").replace("/", "-"),
)
def test_sql_in_a_typed_filter_is_refused_with_400_naming_it_and_harms_nothing(
    api, mixed, path, name, injection
):
    before = mariadb("SELECT COUNT(*) FROM async_task_status WHERE batch_id = %s", mixed["batch_id"])

    reply = api.get(f"{STATUS_API}{path}", params={name: injection}, timeout=60)

    assert reply.status_code == 400, reply.text
    assert reply.json()["detail"].startswith(f"{name}: ") or f"; {name}: " in reply.json()["detail"]
    after = mariadb("SELECT COUNT(*) FROM async_task_status WHERE batch_id = %s", mixed["batch_id"])
    assert before == after == [(mixed["size"] + 1,)]
    assert requests.get(f"{API}/api/v2/monitor/health", timeout=30).status_code == 200


@pytest.mark.parametrize(
    ("path", "name", "value"),
    [
        ("/tasks", "created_from", "0001-01-01T00:00:00+14:00"),
        ("/tasks", "created_to", "9999-12-31T23:59:59-14:00"),
        ("/statistics", "created_from", "0001-01-01T00:00:00+14:00"),
    ],
    ids=["tasks-from-year-0", "tasks-to-year-10000", "statistics-from-year-0"],
)
def test_a_time_that_utc_cannot_hold_is_refused_with_400_naming_it(api, path, name, value):
    reply = api.get(f"{STATUS_API}{path}", params={name: value}, timeout=60)

    assert reply.status_code == 400, reply.text
    assert reply.json()["detail"] == f"{name}: {value} is out of range in UTC."


# -- the Python client ---------------------------------------------------------------------------


def test_the_client_refuses_a_batch_over_the_maximum_before_sending_it(password):
    from medins_client import InputError, MedicalInsuranceClient

    client = MedicalInsuranceClient(API, "admin", password)

    with pytest.raises(InputError, match=r"50,001 requests are more than the 50,000 one batch takes"):
        client.call_batch_async([SMALL] * (MAX_REQUESTS + 1))


def test_the_client_passes_on_a_refusal_as_its_reason_and_where_without_the_schema(password):
    from medins_client import MedicalInsuranceClient, SubmissionRefused

    client = MedicalInsuranceClient(API, "admin", password)
    batch_id = run_id_for("bad-client")

    with pytest.raises(SubmissionRefused) as refused:
        client.call_batch_async(
            [SMALL, SMALL, {**SMALL, "data": ["44010000000000000001"]}], batch_id=batch_id
        )

    reason = refused.value.reason
    assert refused.value.status == 400
    # The api-server's reply names where and which rule, not the refused value (MaskRefusedTriggers).
    assert reason.endswith("requests[2]['data'] is not of type 'object'"), reason
    assert "44010000000000000001" not in reason and "Failed validating" not in reason and len(reason) < 500
    assert stored_rows(batch_id) == []
