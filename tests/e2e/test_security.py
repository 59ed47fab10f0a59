"""
Who gets in on the native topology: tokens on the REST API and the status API, signatures at the gateway.

The api-server refuses every call without a valid token (no token, a garbage token, an expired token, a
token signed with another secret or not signed at all, a password sent as basic authentication), on
Airflow's REST API and on every route of the status API, and what it refuses changes nothing: no DAG run
is created, no request is cancelled. The topology's sandbox gateway runs with the app secret of the
gateway Connection: the hook with that Connection signs in every institution, the same hook with another
secret is refused on every call.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Callable

import jwt
import pytest
import requests

from tests.conftest import ROOT
from tests.e2e.conftest import API, CLUSTER
from tests.e2e.test_distributed import SANDBOX
from tests.e2e.test_status_api import STATUS_API, mariadb

pytestmark = pytest.mark.distributed

HOME = ROOT / ".airflow-cluster"
ORG = "H44010600001"
SINGLE_CALL = {"api_code": "5301", "org_code": ORG, "data": {"psn_no": "44010000000000000001"}}
SERVICE = f"{SANDBOX}/fsi/api/rsfComIfsService/callService"
WRONG_LOGINS = [{"username": "admin", "password": "not-the-password"}, {"username": "root", "password": "x"}]


def token(*, secret: str | None = None, expires_in: int = 300, role: str = "admin") -> str:
    """Sign a token as /auth/token would, with the topology's JWT secret unless another is given."""
    now = int(time.time())
    claims = {
        "sub": f"medins-security-{role}",
        "role": role,
        "jti": uuid.uuid4().hex,
        "aud": "apache-airflow",
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + expires_in,
    }
    key = secret if secret is not None else (HOME / "secrets/jwt").read_text().strip()
    return jwt.encode(claims, key, algorithm="HS512")


def unsigned_token() -> str:
    """Return an admin token with ``alg: none``: claims anyone can write."""
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    payload = jwt.decode(token(), options={"verify_signature": False})
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{header}.{body}."


def basic_auth() -> str:
    password = json.loads((HOME / "passwords.json").read_text())["admin"]
    return "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()


# How each kind of bad credentials is answered: Airflow says 401 when it has no credentials it can use
# (none, an expired token, basic authentication) and 403 when the token is not one it signed.
BAD_CREDENTIALS: dict[str, tuple[Callable[[], dict[str, str]], int, str]] = {
    "no-token": (lambda: {}, 401, "Not authenticated"),
    "garbage-token": (lambda: {"Authorization": "Bearer not-a-jwt"}, 403, "Invalid JWT token"),
    "expired-token": (lambda: {"Authorization": f"Bearer {token(expires_in=-120)}"}, 401, "Token Expired"),
    "other-secret": (lambda: {"Authorization": f"Bearer {token(secret='x' * 64)}"}, 403, "Invalid JWT token"),
    "unsigned-token": (lambda: {"Authorization": f"Bearer {unsigned_token()}"}, 403, "Invalid JWT token"),
    "basic-auth": (lambda: {"Authorization": basic_auth()}, 401, "Not authenticated"),
}


def run_exists(api: requests.Session, dag_id: str, run_id: str) -> bool:
    reply = api.get(f"{API}/api/v2/dags/{dag_id}/dagRuns/{run_id}", timeout=30)
    assert reply.status_code in (200, 404), reply.text[:300]
    return reply.status_code == 200


# -- the REST API --------------------------------------------------------------------------------


@pytest.mark.parametrize("dag_id", ["medins_batch", "medins_call"])
@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS))
def test_a_trigger_without_a_valid_token_is_refused_and_creates_no_run(api, credentials, dag_id):
    headers, status, detail = BAD_CREDENTIALS[credentials]
    run_id = f"security-{credentials}-{uuid.uuid4().hex[:8]}"
    conf = {"requests": [SINGLE_CALL]} if dag_id == "medins_batch" else SINGLE_CALL

    reply = requests.post(
        f"{API}/api/v2/dags/{dag_id}/dagRuns",
        json={"dag_run_id": run_id, "logical_date": None, "conf": conf},
        headers=headers(),
        timeout=30,
    )

    assert (reply.status_code, reply.json()) == (status, {"detail": detail})
    assert not run_exists(api, dag_id, run_id)
    assert mariadb("SELECT COUNT(*) FROM async_task_status WHERE batch_id = %s", run_id) == [(0,)]


@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS))
def test_reading_dag_runs_without_a_valid_token_is_refused(api, credentials):
    headers, status, detail = BAD_CREDENTIALS[credentials]
    url = f"{API}/api/v2/dags/medins_batch/dagRuns"

    reply = requests.get(url, headers=headers(), timeout=30)

    assert (reply.status_code, reply.json()) == (status, {"detail": detail})
    assert api.get(url, timeout=30).status_code == 200


def test_a_viewer_may_read_dag_runs_but_not_trigger_one(api):
    viewer = {"Authorization": f"Bearer {token(role='viewer')}"}
    run_id = f"security-viewer-{uuid.uuid4().hex[:8]}"

    read = requests.get(f"{API}/api/v2/dags/medins_call/dagRuns", headers=viewer, timeout=30)
    triggered = requests.post(
        f"{API}/api/v2/dags/medins_call/dagRuns",
        json={"dag_run_id": run_id, "logical_date": None, "conf": SINGLE_CALL},
        headers=viewer,
        timeout=30,
    )

    assert read.status_code == 200
    assert triggered.status_code == 403
    assert not run_exists(api, "medins_call", run_id)


@pytest.mark.parametrize("credentials", WRONG_LOGINS, ids=["wrong-password", "unknown-user"])
def test_no_token_is_issued_for_a_wrong_user_or_password(cluster, credentials):
    reply = requests.post(f"{API}/auth/token", json=credentials, timeout=30)

    assert (reply.status_code, reply.json()) == (401, {"detail": "Invalid credentials"})


# -- the status API ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def waiting_batch(cluster):
    """Store a batch of three PENDING requests straight in MariaDB (no DAG run sends them); drop it after."""
    import MySQLdb

    from medins.store import RequestRow, StatusStore

    batch_id = f"security-{uuid.uuid4().hex[:8]}"
    request = {"request": SINGLE_CALL}
    rows = [RequestRow(f"{batch_id}-{i}", "PENDING", request, batch_id, 0, "5301", ORG) for i in range(3)]
    connection = {"conn_type": "mysql", "host": "127.0.0.1", "login": "root", "schema": "medins"}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIRFLOW_CONN_MEDINS_STATUS_SECURITY", json.dumps(connection))
        with StatusStore.from_conn_id("medins_status_security") as store:
            store.register(rows)
            store.put_batch(batch_id, "RUNNING", {"total": 3})
    yield batch_id
    conn = MySQLdb.connect(host="127.0.0.1", port=3306, user="root", db="medins", charset="utf8mb4")
    try:
        query = "DELETE FROM async_task_status WHERE batch_id = %s OR task_id = %s"
        conn.cursor().execute(query, (batch_id, batch_id))
        conn.commit()
    finally:
        conn.close()


STATUS_ROUTES = [
    ("GET", "/tasks/{task_id}"),
    ("GET", "/tasks"),
    ("GET", "/batches/{batch_id}"),
    ("GET", "/statistics"),
    ("POST", "/batches/{batch_id}/cancel"),
    ("POST", "/tasks/{task_id}/cancel"),
]


@pytest.mark.parametrize(("method", "path"), STATUS_ROUTES, ids=[f"{m} {p}" for m, p in STATUS_ROUTES])
@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS))
def test_every_status_route_refuses_a_call_without_a_valid_token_and_changes_nothing(
    waiting_batch, credentials, method, path
):
    headers, status, detail = BAD_CREDENTIALS[credentials]
    url = STATUS_API + path.format(batch_id=waiting_batch, task_id=f"{waiting_batch}-0")

    reply = requests.request(method, url, headers=headers(), timeout=30)

    assert (reply.status_code, reply.json()) == (status, {"detail": detail})
    states = mariadb(
        "SELECT task_id, status FROM async_task_status WHERE batch_id = %s OR task_id = %s ORDER BY task_id",
        waiting_batch,
        waiting_batch,
    )
    assert states == [(waiting_batch, "RUNNING"), *((f"{waiting_batch}-{i}", "PENDING") for i in range(3))]


# -- the topology's gateway ----------------------------------------------------------------------


def topology_connection(conn_id: str) -> dict:
    """Read a Connection of the native topology as Airflow holds it (its metadata DB), secrets included."""
    import shlex
    import subprocess

    exports = subprocess.run([*CLUSTER, "env"], capture_output=True, text=True, check=True).stdout
    env = dict(os.environ)
    for line in exports.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    shown = subprocess.run(
        ["airflow", "connections", "get", conn_id, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    from airflow.models.connection import Connection

    conn = Connection(conn_id=conn_id, uri=json.loads(shown.stdout)[0]["get_uri"])
    fields = ("conn_type", "host", "schema", "port", "login", "password")
    return {**{name: getattr(conn, name) for name in fields}, "extra": conn.extra_dejson}


@pytest.fixture
def topology_hook(cluster, monkeypatch, tmp_path):
    """Build hooks on the topology's gateway Connection (without its Redis), with its secret or another."""
    from medins.hooks.gateway import MedicalInsuranceHook
    from medins.sequence import FileMsgIdSequence

    gateway = topology_connection("medins_gateway_default")
    extra = gateway["extra"]
    extra.pop("redis_conn_id", None)
    hooks = []

    def make(secret: str | None = None) -> MedicalInsuranceHook:
        conn_id = f"medins_gateway_security_{len(hooks)}"
        connection = {**gateway, "extra": extra, "password": secret or gateway["password"]}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection, ensure_ascii=False))
        sequence = FileMsgIdSequence(tmp_path / f"msgid-{len(hooks)}")
        hook = MedicalInsuranceHook(conn_id, msgid_sequence=sequence)
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        hook.close()


def test_the_gateway_takes_the_hook_with_its_secret_and_refuses_it_with_another(topology_hook):
    right, wrong = topology_hook(), topology_hook(secret="not-the-topology-secret")

    ok, message = right.test_connection()
    refused, reason = wrong.test_connection()
    unsigned = requests.post(SERVICE, json={"infno": "9001"}, timeout=10)

    assert ok, message
    assert f"Signed in {len(right.institutions)} institution(s)" in message
    assert not refused
    assert "HTTP 401" in reason and "签名校验失败: X-Medins-Signature 不正确" in reason
    assert unsigned.status_code == 401
    assert unsigned.json()["err_msg"] == "签名校验失败: 缺少请求头 X-Medins-App-Id"
