"""
The hook signs what the gateway checks: the real hook against a sandbox gateway started with a secret.

A hook whose Connection carries the gateway's app id and secret gets every call through; the same hook
with a wrong secret, another app id or no secret at all is refused with HTTP 401 on every message, sign-in
and interface calls alike, and the gateway processes none of them.
"""

from __future__ import annotations

import json
import secrets

import pytest
import requests

from medins.hooks.gateway import LocalSignInCache, MedicalInsuranceHook, OutcomeKind
from medins.sequence import FileMsgIdSequence
from sandbox import start_sandbox
from sandbox.checks import NonceCache, Refusal, verify_signature
from tests.conftest import gateway_connection
from tests.personal_data import sample_requests

APP_ID = "medins-signing-test"
SECRET = secrets.token_hex(32)
CODES = ("1101", "1201", "1312", "2201", "2207", "3201", "5201", "5301")


def one_request_per_interface() -> list[dict]:
    """Return the first valid request of each interface of the demo's batch, with a person found by 1101."""
    chosen: dict[str, dict] = {}
    for request in sample_requests()[:-8]:  # the last 8 are invalid on purpose
        data = request["data"]
        if request["api_code"] == "1101" and data.get("mdtrt_cert_type") != "02":
            continue
        chosen.setdefault(request["api_code"], request)
    return [chosen[code] for code in CODES]


@pytest.fixture(scope="module")
def gateway():
    """Start a sandbox gateway that demands requests signed with ``APP_ID`` and ``SECRET``."""
    server = start_sandbox(port=0, app_id=APP_ID, app_secret=SECRET)
    yield server
    server.stop()


@pytest.fixture
def make_hook(gateway, monkeypatch, tmp_path):
    """Build hooks on Connections to the signing gateway (five institutions) with the given credentials."""
    gateway.reset()
    hooks = []

    def make(secret: str | None, app_id: str | None = APP_ID, **kwargs) -> MedicalInsuranceHook:
        conn_id = f"medins_signing_{len(hooks)}"
        connection = gateway_connection(gateway.port, password=secret, orgs=5)
        if app_id is None:
            del connection["extra"]["app_id"]
        else:
            connection["extra"]["app_id"] = app_id
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection, ensure_ascii=False))
        hook = MedicalInsuranceHook(
            conn_id, msgid_sequence=FileMsgIdSequence(tmp_path / f"msgid-{len(hooks)}"), **kwargs
        )
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        hook.close()


def stats(gateway) -> dict:
    """Return the gateway's counters, read over HTTP like any client would."""
    return requests.get(f"{gateway.url}/_sandbox/stats", timeout=5).json()


def call_each(hook: MedicalInsuranceHook) -> list:
    return [
        hook.call(request["api_code"], request["data"], org_code=request["org_code"])
        for request in one_request_per_interface()
    ]


def test_every_call_of_a_hook_with_the_gateways_secret_succeeds(make_hook, gateway):
    hook = make_hook(SECRET)

    outcomes = call_each(hook)

    assert [(o.api_code, o.kind, o.http_status) for o in outcomes] == [
        (code, OutcomeKind.SUCCESS, 200) for code in CODES
    ]
    counted = stats(gateway)
    sign_ins = counted["by_infno"]["9001"]
    assert counted["by_outcome"] == {"ok": len(CODES) + sign_ins}
    assert sign_ins == len({request["org_code"] for request in one_request_per_interface()})


def test_every_call_of_a_hook_with_a_wrong_secret_is_refused_and_nothing_is_processed(make_hook, gateway):
    hook = make_hook("not-" + SECRET)

    outcomes = call_each(hook)

    assert all(o.kind is OutcomeKind.TRANSIENT for o in outcomes)
    assert all("HTTP 401" in o.reason and "签名校验失败" in o.reason for o in outcomes), outcomes[0].reason
    counted = stats(gateway)
    assert set(counted["by_outcome"]) == {"unsigned"}
    assert counted["by_outcome"]["unsigned"] == counted["received"] >= len(CODES)
    assert counted["double_settlements"] == 0


def test_interface_messages_are_checked_as_well_as_the_sign_in(make_hook, gateway):
    # The wrongly signed hook reuses a sign_no the right one obtained, so its interface messages go out.
    shared = LocalSignInCache()
    right = make_hook(SECRET, sign_in_cache=shared)
    for code in {request["org_code"] for request in one_request_per_interface()}:
        right.sign_in(right.institution(code))
    wrong = make_hook("not-" + SECRET, sign_in_cache=shared)

    outcomes = call_each(wrong)

    assert all(o.kind is OutcomeKind.TRANSIENT and o.http_status == 401 for o in outcomes)
    counted = stats(gateway)
    assert counted["by_outcome"] == {"ok": counted["by_infno"]["9001"], "unsigned": len(CODES)}
    assert {code: counted["by_infno"].get(code) for code in CODES} == dict.fromkeys(CODES, 1)


@pytest.mark.parametrize(
    ("secret", "app_id", "reason"),
    [
        (None, None, "缺少请求头 X-Medins-App-Id"),
        (SECRET, "another-app", "X-Medins-App-Id 不是本网关登记的应用"),
        ("not-" + SECRET, APP_ID, "X-Medins-Signature 不正确"),
    ],
    ids=["unsigned", "another-app-id", "wrong-secret"],
)
def test_a_hook_without_the_gateways_credentials_cannot_sign_in(make_hook, gateway, secret, app_id, reason):
    hook = make_hook(secret, app_id)

    ok, message = hook.test_connection()

    assert not ok
    assert "HTTP 401" in message and reason in message
    assert stats(gateway)["by_outcome"] == {"unsigned": 1}


def test_the_hooks_headers_pass_the_gateways_check_for_their_body_only(make_hook):
    hook = make_hook(SECRET)
    body = json.dumps({"infno": "1101", "input": {"data": {"psn_name": "张三"}}}, ensure_ascii=False).encode()
    headers = hook.sign_headers(body)
    nonces = NonceCache()

    verify_signature(headers, body, app_id=APP_ID, app_secret=SECRET, nonces=nonces)
    with pytest.raises(Refusal, match="X-Medins-Signature 不正确") as changed:
        verify_signature(headers, body.replace(b"1101", b"2207"), app_id=APP_ID, app_secret=SECRET,
                         nonces=NonceCache())  # fmt: skip

    assert changed.value.status == 401
    assert len({hook.sign_headers(body)["X-Medins-Nonce"] for _ in range(100)}) == 100
