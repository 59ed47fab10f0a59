"""The status API (docs/status-api.md) on the api-server of the native topology (scripts/cluster.py).

Rows come from ``medins_batch`` runs triggered over Airflow's REST API; every number the API
gives is checked against a direct query of the MariaDB table.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import jwt
import pytest
import requests

from tests.conftest import ROOT
from tests.e2e.conftest import API
from tests.e2e.test_distributed import SANDBOX, batch_of, trigger, wait

pytestmark = pytest.mark.distributed

# The topology's fixtures: started unless it runs already; an admin session with a token.

STATUS_API = f"{API}/medins/api/v1"
INJECTIONS = [
    "' OR 1=1 --",
    "1101' UNION SELECT task_id FROM async_task_status --",
    "x'; DROP TABLE async_task_status; --",
]
CODES = ["1101", "1201", "1312", "2201", "2207", "3201", "5201", "5301"]
OPEN = {"PENDING", "PROCESSING", "RETRY"}
SENT = {"SUCCESS", "FAILURE", "UNKNOWN"}
BEIJING = timezone(timedelta(hours=8))


def mariadb(sql: str, *params: Any) -> list[tuple]:
    """Run one query on the status table's database, in UTC, on a connection of its own."""
    import MySQLdb

    conn = MySQLdb.connect(host="127.0.0.1", port=3306, user="root", db="medins", charset="utf8mb4")
    try:
        cursor = conn.cursor()
        cursor.execute("SET time_zone = '+00:00'")
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    finally:
        conn.close()


def db_counts(group_by: str, batch_id: str) -> dict:
    """Count a batch's requests by ``group_by`` columns straight from MariaDB."""
    rows = mariadb(
        f"SELECT {group_by}, COUNT(*) FROM async_task_status WHERE batch_id = %s AND kind <> 'batch' "
        f"GROUP BY {group_by}",
        batch_id,
    )
    return {tuple(row[:-1]) if len(row) > 2 else row[0]: row[-1] for row in rows}


def created_range(batch_id: str) -> tuple[datetime, datetime]:
    """Return the first and last ``created_at`` of a batch's requests, naive UTC, from MariaDB."""
    ((first, last),) = mariadb(
        "SELECT MIN(created_at), MAX(created_at) FROM async_task_status "
        "WHERE batch_id = %s AND kind <> 'batch'",
        batch_id,
    )
    return first, last


def mixed_requests(prefix: str, per_code: int = 5) -> list[dict]:
    """Return ``per_code`` demo requests of each interface and the demo's 8 invalid ones, ids made unique."""
    demo = json.loads((ROOT / "include/samples/demo_batch.json").read_text(encoding="utf-8"))
    valid, invalid = demo[:-8], demo[-8:]
    chosen = []
    for code in CODES:
        for request in [r for r in valid if r["api_code"] == code][:per_code]:
            request = json.loads(json.dumps(request))
            request["request_id"] = f"{prefix}-{request['request_id']}"
            for key in ("mdtrt_id", "ipt_otp_no", "chrg_bchno"):
                if key in request["data"]:
                    request["data"][key] = f"{request['data'][key]}-{prefix[-8:]}"[:30]
            chosen.append(request)
    for request in invalid:
        request = json.loads(json.dumps(request))
        if "request_id" in request:  # demo-00000 stays a duplicate of the first request
            request["request_id"] = f"{prefix}-{request['request_id']}"
        chosen.append(request)
    return chosen


def token_for(role: str, expires_in: int = 300) -> str:
    """Sign a token for a user of ``role`` with the topology's JWT secret, as /auth/token would."""
    secret = (ROOT / ".airflow-cluster/secrets/jwt").read_text().strip()
    now = int(time.time())
    claims = {
        "sub": f"medins-test-{role}",
        "role": role,
        "jti": uuid.uuid4().hex,
        "aud": "apache-airflow",  # [api_auth] jwt_audience is not set on the topology
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + expires_in,
    }
    return jwt.encode(claims, secret, algorithm="HS512")


def utc_iso(moment: datetime) -> str:
    return moment.replace(tzinfo=UTC).isoformat()


@pytest.fixture(scope="module")
def batch(api) -> dict[str, Any]:
    """Run one small batch of eight interfaces to the end; return its id and requests."""
    batch_id = f"status-api-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    requests_ = mixed_requests(batch_id)

    reply = trigger(api, "medins_batch", {"requests": requests_, "chunk_size": 10}, batch_id)
    assert reply.status_code == 200, reply.text[:500]
    assert wait(api, "medins_batch", batch_id, timeout=300) == "success"

    return {"batch_id": batch_id, "requests": requests_, "size": len(requests_)}


def get(api: requests.Session, path: str, **params: Any) -> requests.Response:
    return api.get(f"{STATUS_API}{path}", params=params, timeout=60)


def all_pages(api: requests.Session, page_size: int, **params: Any) -> list[dict]:
    items, page = [], 1
    while True:
        reply = get(api, "/tasks", page=page, page_size=page_size, **params).json()
        items.extend(reply["items"])
        if page * page_size >= reply["total"]:
            return items
        page += 1


# -- authentication ------------------------------------------------------------------------------

ROUTES = [
    ("GET", "/tasks/x"),
    ("GET", "/tasks"),
    ("GET", "/batches/x"),
    ("GET", "/statistics"),
    ("POST", "/batches"),
    ("POST", "/batches/x/cancel"),
    ("POST", "/tasks/x/cancel"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_route_refuses_a_call_without_a_token_with_401(cluster, method, path):
    reply = requests.request(method, f"{STATUS_API}{path}", timeout=30)

    assert reply.status_code == 401
    assert reply.json() == {"detail": "Not authenticated"}


def test_an_expired_token_is_refused_with_401(cluster):
    headers = {"Authorization": f"Bearer {token_for('admin', expires_in=-120)}"}

    reply = requests.get(f"{STATUS_API}/tasks", headers=headers, timeout=30)

    assert reply.status_code == 401


def test_a_token_not_signed_by_airflow_is_refused_as_airflow_refuses_it(cluster):
    headers = {"Authorization": "Bearer not-a-jwt"}

    ours = requests.get(f"{STATUS_API}/tasks", headers=headers, timeout=30)
    airflows = requests.get(f"{API}/api/v2/dags", headers=headers, timeout=30)

    assert ours.status_code == airflows.status_code == 403
    assert ours.json() == airflows.json()


def test_a_viewer_may_read_but_not_cancel(batch):
    viewer = requests.Session()
    viewer.headers["Authorization"] = f"Bearer {token_for('viewer')}"
    task_id = f"{batch['batch_id']}-demo-00000"

    assert viewer.get(f"{STATUS_API}/tasks/{task_id}", timeout=30).status_code == 200
    assert viewer.get(f"{STATUS_API}/statistics", timeout=30).status_code == 200
    for path in (f"/tasks/{task_id}/cancel", f"/batches/{batch['batch_id']}/cancel"):
        reply = viewer.post(f"{STATUS_API}{path}", timeout=30)
        assert reply.status_code == 403, path
        assert "edit access to DAG runs" in reply.json()["detail"]
    assert mariadb("SELECT status FROM async_task_status WHERE task_id = %s", batch["batch_id"]) == [
        ("DONE",)
    ]


# -- reads ---------------------------------------------------------------------------------------


def test_get_task_masks_personal_data_unless_full(api, batch):
    sent = next(r for r in batch["requests"] if r["api_code"] == "1101" and "psn_name" in r["data"])

    masked = get(api, f"/tasks/{sent['request_id']}").json()
    full = get(api, f"/tasks/{sent['request_id']}", full="true").json()

    assert masked["status"] == full["status"] == "SUCCESS"
    assert (masked["api_code"], masked["org_code"], masked["batch_id"]) == (
        "1101",
        sent["org_code"],
        batch["batch_id"],
    )
    assert full["request"]["data"] == sent["data"]
    assert masked["request"]["request_id"] == masked["task_id"] == sent["request_id"]
    assert masked["request"]["data"]["mdtrt_cert_type"] == sent["data"]["mdtrt_cert_type"]
    for field in ("mdtrt_cert_no", "psn_name"):
        assert masked["request"]["data"][field] != sent["data"][field]
        assert "*" in masked["request"]["data"][field]
    assert full["infcode"] == masked["infcode"] == 0 and full["attempts"] >= 1 and len(full["msgid"]) == 30
    baseinfo = full["result"]["baseinfo"]
    masked_text = json.dumps(masked, ensure_ascii=False)
    for field in ("psn_name", "certno", "psn_no"):
        assert baseinfo[field] and baseinfo[field] not in masked_text, field
    assert masked["result"]["baseinfo"].keys() == baseinfo.keys()


def test_get_task_of_an_unknown_id_or_a_batch_is_404(api, batch):
    assert get(api, "/tasks/no-such-request").status_code == 404
    reply = get(api, f"/tasks/{batch['batch_id']}")
    assert reply.status_code == 404
    assert "is a batch" in reply.json()["detail"]


def test_list_tasks_of_a_batch_pages_through_every_request_newest_first(api, batch):
    expected = [
        task_id
        for (task_id,) in mariadb(
            "SELECT task_id FROM async_task_status WHERE batch_id = %s AND kind <> 'batch' ORDER BY id DESC",
            batch["batch_id"],
        )
    ]

    first = get(api, "/tasks", batch_id=batch["batch_id"], page_size=7).json()
    items = all_pages(api, 7, batch_id=batch["batch_id"])

    assert (first["total"], first["page"], first["page_size"], len(first["items"])) == (
        batch["size"],
        1,
        7,
        7,
    )
    assert [item["task_id"] for item in items] == expected
    created = [item["created_at"] for item in items]
    assert created == sorted(created, reverse=True)
    last = get(api, "/tasks", batch_id=batch["batch_id"], page_size=7, page=100).json()
    assert (last["items"], last["total"]) == ([], batch["size"])


def test_list_tasks_masks_personal_data(api, batch):
    items = all_pages(api, 100, batch_id=batch["batch_id"], api_code="1101")
    text = json.dumps(items, ensure_ascii=False)

    sent = [r for r in batch["requests"] if r["api_code"] == "1101"]
    assert len(items) == len(sent)
    for request in sent:
        for field in ("mdtrt_cert_no", "psn_name"):
            if field in request["data"]:
                assert request["data"][field] not in text


@pytest.mark.parametrize(
    ("params", "where", "args"),
    [
        ({"status": "REJECTED"}, "status = %s", ["REJECTED"]),
        ({"status": ["SUCCESS", "REJECTED"]}, "status IN (%s, %s)", ["SUCCESS", "REJECTED"]),
        ({"api_code": "2207"}, "api_code = %s", ["2207"]),
        ({"org_code": "H44010600001"}, "org_code = %s", ["H44010600001"]),
        (
            {"api_code": "1101", "org_code": "H44010400002"},
            "api_code = %s AND org_code = %s",
            ["1101", "H44010400002"],
        ),
    ],
    ids=["status", "two-statuses", "api-code", "org-code", "api-and-org"],
)
def test_list_tasks_filters_match_mariadb(api, batch, params, where, args):
    expected = {
        task_id
        for (task_id,) in mariadb(
            f"SELECT task_id FROM async_task_status WHERE batch_id = %s AND kind <> 'batch' AND {where}",
            batch["batch_id"],
            *args,
        )
    }

    items = all_pages(api, 500, batch_id=batch["batch_id"], **params)

    assert expected
    assert {item["task_id"] for item in items} == expected
    assert get(api, "/tasks", batch_id=batch["batch_id"], **params).json()["total"] == len(expected)


def test_list_tasks_filters_by_created_at_inclusive_with_utc_for_times_without_offset(api, batch):
    first, last = created_range(batch["batch_id"])

    def total(**params: Any) -> int:
        reply = get(api, "/tasks", batch_id=batch["batch_id"], **params)
        assert reply.status_code == 200, reply.text
        return reply.json()["total"]

    assert total(created_from=first.isoformat(), created_to=last.isoformat()) == batch["size"]
    assert total(created_from=utc_iso(first)) == batch["size"]
    assert total(created_from=first.replace(tzinfo=UTC).astimezone(BEIJING).isoformat()) == batch["size"]
    assert total(created_from=(last + timedelta(seconds=1)).isoformat()) == 0
    assert (
        total(created_to=(first - timedelta(seconds=1)).replace(tzinfo=UTC).astimezone(BEIJING).isoformat())
        == 0
    )


def test_get_batch_reports_its_progress_and_registration(api, batch):
    reply = get(api, f"/batches/{batch['batch_id']}")

    body = reply.json()
    assert reply.status_code == 200
    assert body["counts"] == db_counts("status", batch["batch_id"])
    assert (body["status"], body["current"], body["total"], body["percentage"]) == (
        "DONE",
        batch["size"],
        batch["size"],
        100.0,
    )
    assert (body["dag_id"], body["run_id"], body["submitted"], body["rejected"]) == (
        "medins_batch",
        batch["batch_id"],
        batch["size"],
        8,
    )
    assert body["already_stored"] == 0
    assert body["created_at"] and body["updated_at"] and body["finished_at"]
    offsets = {stamp[19:].lstrip(".0123456789") for stamp in (body["created_at"], body["finished_at"])}
    assert len(offsets) == 1 and offsets <= {"Z", "+00:00"}, offsets  # every time in UTC, one style
    assert get(api, "/batches/no-such-batch").status_code == 404


def test_statistics_of_a_batch_match_a_direct_count_from_mariadb(api, batch):
    by_status = db_counts("status", batch["batch_id"])
    by_api = Counter()
    by_org = Counter()
    for (api_code, org_code, state), count in db_counts(
        "api_code, org_code, status", batch["batch_id"]
    ).items():
        by_api[(api_code or "", state)] += count
        by_org[(org_code or "", state)] += count

    stats = get(api, "/statistics", batch_id=batch["batch_id"]).json()

    final = sum(count for state, count in by_status.items() if state not in OPEN)
    assert stats["total"] == batch["size"] == sum(by_status.values())
    assert stats["by_status"] == by_status
    assert stats["success_rate"] == pytest.approx(by_status.get("SUCCESS", 0) / final, abs=1e-4)
    assert {(c, s): n for c, states in stats["by_api_code"].items() for s, n in states.items()} == by_api
    assert {(c, s): n for c, states in stats["by_org_code"].items() for s, n in states.items()} == by_org
    assert set(stats["by_api_code"]) >= set(CODES)


def test_statistics_filters_match_a_direct_count_from_mariadb(api, batch):
    first, last = created_range(batch["batch_id"])
    expected = dict(
        mariadb(
            "SELECT status, COUNT(*) FROM async_task_status WHERE batch_id = %s AND kind <> 'batch' "
            "AND api_code = %s AND org_code = %s AND created_at BETWEEN %s AND %s GROUP BY status",
            batch["batch_id"],
            "1101",
            "H44010600001",
            first,
            last,
        )
    )

    stats = get(
        api,
        "/statistics",
        batch_id=batch["batch_id"],
        api_code="1101",
        org_code="H44010600001",
        created_from=utc_iso(first),
        created_to=utc_iso(last),
    ).json()

    assert expected
    assert stats["by_status"] == expected
    assert stats["by_api_code"] == {"1101": expected}
    assert stats["by_org_code"] == {"H44010600001": expected}
    later = get(
        api, "/statistics", batch_id=batch["batch_id"], created_from=utc_iso(last + timedelta(seconds=1))
    )
    assert later.json() == {
        "total": 0,
        "success_rate": 0.0,
        "by_status": {},
        "by_api_code": {},
        "by_org_code": {},
    }


# -- bad parameters and SQL in parameters ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "reason"),
    [
        ("/tasks", {"page": 0}, "page: Input should be greater than or equal to 1"),
        ("/tasks", {"page_size": 1000}, "page_size: Input should be less than or equal to 500"),
        ("/tasks", {"page_size": 0}, "page_size: Input should be greater than or equal to 1"),
        ("/tasks", {"status": "NOPE"}, "status: Input should be 'PENDING'"),
        ("/tasks", {"created_from": "yesterday"}, "created_from: Input should be a valid datetime"),
        ("/tasks", {"created_to": "2026-13-45T99:00:00"}, "created_to: Input should be a valid datetime"),
        ("/tasks", {"page": "first"}, "page: Input should be a valid integer"),
        (
            "/tasks",
            {"created_from": "2026-12-03T10:00:00Z", "created_to": "2026-12-03T09:00:00Z"},
            "created_from (2026-12-03T10:00:00+00:00) is after created_to",
        ),
        ("/statistics", {"created_from": "yesterday"}, "created_from: Input should be a valid datetime"),
        ("/tasks/x", {"full": "maybe"}, "full: Input should be a valid boolean"),
    ],
    ids=[
        "page-0",
        "page-size-1000",
        "page-size-0",
        "status-nope",
        "from-yesterday",
        "to-impossible",
        "page-not-a-number",
        "range-backwards",
        "statistics-from-yesterday",
        "full-maybe",
    ],
)
def test_bad_parameters_are_refused_with_400_and_the_reason(api, path, params, reason):
    reply = get(api, path, **params)

    assert reply.status_code == 400, reply.text
    assert reason in reply.json()["detail"]


def test_several_bad_parameters_are_named_in_one_reply(api):
    reply = get(api, "/tasks", page=0, page_size=1000, status="NOPE", created_from="yesterday")

    detail = reply.json()["detail"]
    assert reply.status_code == 400
    assert all(name in detail for name in ("page:", "page_size:", "status:", "created_from:"))


@pytest.mark.parametrize("injection", INJECTIONS, ids=["or-1-1", "union", "drop"])
def test_sql_in_any_filter_finds_nothing_and_harms_nothing(api, batch, injection):
    before = mariadb("SELECT COUNT(*), MAX(id) FROM async_task_status")

    for name in ("api_code", "org_code", "batch_id"):
        listed = get(api, "/tasks", **{name: injection})
        counted = get(api, "/statistics", **{name: injection})
        assert listed.status_code == counted.status_code == 200, (name, listed.text, counted.text)
        assert (listed.json()["items"], listed.json()["total"]) == ([], 0), name
        assert (counted.json()["total"], counted.json()["by_status"]) == (0, {}), name
    assert get(api, "/tasks", status=injection).status_code == 400  # a state, checked before any query
    assert get(api, f"/tasks/{injection}").status_code == 404
    assert get(api, f"/batches/{injection}").status_code == 404
    assert api.post(f"{STATUS_API}/tasks/{injection}/cancel", timeout=30).status_code == 404
    assert api.post(f"{STATUS_API}/batches/{injection}/cancel", timeout=30).status_code == 404

    after = mariadb("SELECT COUNT(*), MAX(id) FROM async_task_status")
    assert after[0][0] >= before[0][0] and after[0][1] >= before[0][1]
    assert get(api, "/tasks", batch_id=batch["batch_id"]).json()["total"] == batch["size"]
    assert (
        db_counts("status", batch["batch_id"]) == get(api, f"/batches/{batch['batch_id']}").json()["counts"]
    )


# -- cancel --------------------------------------------------------------------------------------


def test_cancel_of_a_request_already_final_is_409_and_changes_nothing(api, batch):
    task_id = f"{batch['batch_id']}-demo-00000"

    reply = api.post(f"{STATUS_API}/tasks/{task_id}/cancel", timeout=30)

    assert reply.status_code == 409
    assert reply.json()["task_id"] == task_id and reply.json()["status"] == "SUCCESS"
    assert "only PENDING or RETRY" in reply.json()["detail"]
    assert mariadb("SELECT status FROM async_task_status WHERE task_id = %s", task_id) == [("SUCCESS",)]
    assert api.post(f"{STATUS_API}/tasks/no-such-request/cancel", timeout=30).status_code == 404
    assert api.post(f"{STATUS_API}/batches/no-such-batch/cancel", timeout=30).status_code == 404


def test_cancel_of_a_running_batch_stops_it_and_keeps_what_was_sent(api):
    batch_id = f"status-api-cancel-{time.strftime('%Y%m%d%H%M%S')}"
    requests_ = batch_of(3000, batch_id)
    conf = {"requests": requests_, "chunk_size": 250, "concurrency": 4}
    requests.post(f"{SANDBOX}/_sandbox/faults", json={"latency_ms": 200}, timeout=10).raise_for_status()
    try:
        assert trigger(api, "medins_batch", conf, batch_id).status_code == 200
        deadline = time.monotonic() + 300
        while get(api, "/tasks", batch_id=batch_id, status="SUCCESS", page_size=1).json()["total"] == 0:
            assert time.monotonic() < deadline, "no request of the batch became final"
            time.sleep(0.5)
        pending = get(api, "/tasks", batch_id=batch_id, status="PENDING", page_size=1).json()["items"]
        assert pending, "the batch ran through before it could be cancelled"
        one = api.post(f"{STATUS_API}/tasks/{pending[0]['task_id']}/cancel", timeout=30)
        again = api.post(f"{STATUS_API}/tasks/{pending[0]['task_id']}/cancel", timeout=30)

        cancelled = api.post(f"{STATUS_API}/batches/{batch_id}/cancel", timeout=60)
        state = wait(api, "medins_batch", batch_id, timeout=600)
    finally:
        requests.post(f"{SANDBOX}/_sandbox/faults", json={"latency_ms": 5}, timeout=10)

    assert (one.status_code, one.json()) == (200, {"task_id": pending[0]["task_id"], "status": "CANCELLED"})
    assert (again.status_code, again.json()["status"]) == (409, "CANCELLED")
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert (body["batch_id"], body["status"]) == (batch_id, "CANCELLED") and body["cancelled"] > 0
    assert state == "success"

    rows = mariadb(
        "SELECT status, attempts, msgid, error FROM async_task_status "
        "WHERE batch_id = %s AND kind <> 'batch'",
        batch_id,
    )
    by_state = Counter(status for status, _, _, _ in rows)
    assert len(rows) == 3000
    assert not OPEN & set(by_state), by_state
    assert by_state["CANCELLED"] == body["cancelled"] + 1
    assert by_state["SUCCESS"] > 0
    for status, attempts, msgid, error in rows:
        if attempts:
            assert status in SENT, (status, attempts)
        if status == "CANCELLED":
            assert (attempts, msgid, error) == (0, None, "cancelled by request")
    progress = get(api, f"/batches/{batch_id}").json()
    assert progress["status"] == "CANCELLED"
    assert progress["counts"] == dict(sorted(by_state.items()))
    assert progress["current"] == progress["total"] == 3000


# -- the batches page's reads: batches listed, requests counted per interval -----------------------

PAGE_ROUTES = ["/batches", "/statistics/timeline"]


@pytest.mark.parametrize("path", PAGE_ROUTES)
def test_the_batches_page_routes_refuse_a_call_without_a_token_with_401(cluster, path):
    reply = requests.get(f"{STATUS_API}{path}", timeout=30)

    assert reply.status_code == 401
    assert reply.json() == {"detail": "Not authenticated"}


def test_list_batches_pages_through_batch_rows_newest_first_with_counts_from_mariadb(api, batch):
    ((created,),) = mariadb("SELECT created_at FROM async_task_status WHERE task_id = %s", batch["batch_id"])
    expected = [
        task_id
        for (task_id,) in mariadb(
            "SELECT task_id FROM async_task_status WHERE kind = 'batch' AND created_at <= %s "
            "ORDER BY id DESC",
            created,
        )
    ]

    first = get(api, "/batches", created_to=utc_iso(created), page_size=3).json()
    listed = []
    for page in range(1, (len(expected) + 99) // 100 + 1):
        listed += get(api, "/batches", created_to=utc_iso(created), page_size=100, page=page).json()["items"]

    assert (first["total"], first["page"], first["page_size"], len(first["items"])) == (
        len(expected),
        1,
        3,
        min(3, len(expected)),
    )
    assert [item["batch_id"] for item in listed] == expected
    ours = next(item for item in listed if item["batch_id"] == batch["batch_id"])
    assert ours == get(api, f"/batches/{batch['batch_id']}").json()
    assert ours["counts"] == db_counts("status", batch["batch_id"])
    assert (ours["current"], ours["total"], ours["percentage"]) == (batch["size"], batch["size"], 100.0)
    ((data,),) = mariadb("SELECT data FROM async_task_status WHERE task_id = %s", batch["batch_id"])
    assert ours["chunks"] == json.loads(data)["chunks"] > 0


@pytest.mark.parametrize(
    ("params", "listed"),
    [
        ({"status": "DONE"}, True),
        ({"status": ["RUNNING", "CANCELLED"]}, False),
        ({"dag_id": "medins_batch"}, True),
        ({"dag_id": ["medins_call", "medins_nightly"]}, False),
        ({"dag_id": INJECTIONS[0]}, False),
    ],
    ids=["done", "running-or-cancelled", "dag", "other-dags", "sql-in-dag-id"],
)
def test_list_batches_filters_by_state_and_dag(api, batch, params, listed):
    ((created,),) = mariadb("SELECT created_at FROM async_task_status WHERE task_id = %s", batch["batch_id"])
    window = {"created_from": utc_iso(created), "created_to": utc_iso(created)}

    reply = get(api, "/batches", page_size=100, **window, **params)

    assert reply.status_code == 200, reply.text
    ids = [item["batch_id"] for item in reply.json()["items"]]
    assert (batch["batch_id"] in ids) is listed
    assert reply.json()["total"] == len(ids)


def test_timeline_of_a_batch_counts_each_minute_as_mariadb_does(api, batch):
    first, last = created_range(batch["batch_id"])
    expected: dict[str, dict[str, int]] = {}
    for minute, state, count in mariadb(
        "SELECT DATE_FORMAT(created_at, '%%Y-%%m-%%dT%%H:%%i:00Z'), status, COUNT(*) FROM async_task_status "
        "WHERE batch_id = %s AND kind <> 'batch' GROUP BY 1, 2",
        batch["batch_id"],
    ):
        expected.setdefault(minute, {})[state] = count

    timeline = get(
        api,
        "/statistics/timeline",
        interval="minute",
        batch_id=batch["batch_id"],
        created_from=utc_iso(first - timedelta(minutes=5)),
        created_to=utc_iso(last + timedelta(minutes=5)),
    ).json()

    assert timeline["interval"] == "minute"
    assert {bucket["start"]: bucket["by_status"] for bucket in timeline["buckets"]} == expected
    assert [bucket["start"] for bucket in timeline["buckets"]] == sorted(expected)
    for bucket in timeline["buckets"]:
        by_status = bucket["by_status"]
        final = sum(count for state, count in by_status.items() if state not in OPEN)
        assert bucket["total"] == sum(by_status.values())
        assert bucket["success_rate"] == pytest.approx(by_status.get("SUCCESS", 0) / final, abs=1e-4)
    hourly = get(
        api,
        "/statistics/timeline",
        batch_id=batch["batch_id"],
        created_from=utc_iso(first - timedelta(hours=1)),
    ).json()
    assert sum(bucket["total"] for bucket in hourly["buckets"]) == batch["size"]
    assert all(bucket["start"].endswith(":00:00Z") for bucket in hourly["buckets"])


def test_timeline_reaches_back_24_hours_unless_told_and_refuses_ranges_too_long(api):
    default = get(api, "/statistics/timeline", batch_id="no-such-batch").json()
    start, end = (datetime.fromisoformat(default[name]) for name in ("created_from", "created_to"))
    too_long = get(
        api,
        "/statistics/timeline",
        interval="minute",
        created_from="2026-12-01T00:00:00Z",
        created_to="2026-12-02T00:00:00Z",
    )
    future = get(api, "/statistics/timeline", created_from=utc_iso(datetime(2999, 1, 1)))

    assert (end - start, default["interval"], default["buckets"]) == (timedelta(hours=24), "hour", [])
    assert too_long.status_code == 400
    assert "spans more than 1000 minutes" in too_long.json()["detail"]
    assert future.status_code == 400 and "in the future" in future.json()["detail"]
    assert get(api, "/statistics/timeline", interval="day").status_code == 400
    assert get(api, "/batches", status="PENDING").status_code == 400  # a request's state, not a batch's
    assert get(api, "/batches", page_size=101).status_code == 400
