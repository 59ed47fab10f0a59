"""The gateway hook against the sandbox gateway over real HTTP on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import multiprocessing
import re
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from samples.fake_people import make_person

from medins.hooks.gateway import GatewayError, MedicalInsuranceHook, OutcomeKind
from medins.sequence import FileMsgIdSequence

ORG = "H44010600001"
MSGID = re.compile(r"^H44010600001(\d{14})(\d{4})$")


def person_query(bad_check_digit: bool = False) -> dict:
    import random

    person = make_person(random.Random(5), "440106", bad_check_digit=bad_check_digit)
    return {"mdtrt_cert_type": "02", "mdtrt_cert_no": person.certno, "psn_name": person.name}


def settlement(mdtrt_id: str) -> dict:
    return {
        "psn_no": "44010000000000000001",
        "mdtrt_cert_type": "02",
        "mdtrt_id": mdtrt_id,
        "chrg_bchno": "CB0001",
        "insutype": "310",
        "medfee_sumamt": 128.5,
        "psn_setlway": "01",
    }


class TestEnvelope:
    def test_call_sends_every_envelope_field_in_its_format(self, hook, sandbox):
        outcome = hook.call("1101", person_query(), org_code=ORG)

        assert outcome.kind is OutcomeKind.SUCCESS, outcome.reason
        assert set(outcome.output) >= {"baseinfo", "insuinfo", "idetinfo"}
        envelope = hook.build_envelope(
            hook.catalog["1101"], {"x": 1}, hook.institution(ORG), msgid=outcome.msgid
        )
        assert set(envelope) == {
            *(
                "infno",
                "msgid",
                "mdtrtarea_admvs",
                "insuplc_admdvs",
                "recer_sys_code",
                "dev_no",
                "dev_safe_info",
            ),
            *(
                "cainfo",
                "signtype",
                "infver",
                "opter_type",
                "opter",
                "opter_name",
                "inf_time",
                "fixmedins_code",
            ),
            *("fixmedins_name", "sign_no", "input"),
        }
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", envelope["inf_time"])
        assert envelope["input"] == {"data": {"x": 1}}
        assert MSGID.match(outcome.msgid)
        assert any(m["msgid"] == outcome.msgid for m in sandbox.messages()["messages"])

    @pytest.mark.parametrize(
        "value", [float("nan"), float("inf"), "\ud800"], ids=["nan", "infinity", "surrogate"]
    )
    def test_input_that_is_not_json_text_is_refused_without_sending(self, hook, sandbox, value):
        received = sandbox.stats()["received"]

        outcome = hook.call("5301", {"psn_no": value}, org_code="H44010600001")

        assert outcome.kind is OutcomeKind.REFUSED and "cannot be sent as JSON" in outcome.err_msg
        assert sandbox.stats()["received"] == received + 1  # the sign-in only

    def test_input_sits_under_the_catalog_key(self, hook):
        envelope = hook.build_envelope(
            hook.catalog["1201"], {"fixmedins_type": "1"}, hook.institution(ORG), msgid="m"
        )

        assert envelope["input"] == {"medinsinfo": {"fixmedins_type": "1"}}

    def test_msgids_are_unique_across_threads(self, hook):
        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(lambda _: hook.new_msgid(ORG), range(500)))

        assert len(set(ids)) == 500
        assert all(MSGID.match(i) for i in ids)

    def test_msgids_are_unique_across_processes(self, tmp_path):
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            batches = pool.map(_many_msgids, [str(tmp_path)] * 4)

        ids = [i for batch in batches for i in batch]
        assert len(ids) == len(set(ids)) == 800


def _many_msgids(directory: str) -> list[str]:
    sequence = FileMsgIdSequence(directory)
    return [sequence.next_msgid(ORG) for _ in range(200)]


class TestSigning:
    def test_signature_is_hmac_sha256_over_app_id_time_nonce_and_body(self, hook):
        body = b'{"infno":"1101"}'

        headers = hook.sign_headers(body)

        message = "\n".join(
            (headers["X-Medins-App-Id"], headers["X-Medins-Timestamp"], headers["X-Medins-Nonce"],
             hashlib.sha256(body).hexdigest())
        )  # fmt: skip
        expected = hmac.new(b"test-secret", message.encode(), hashlib.sha256).hexdigest()
        assert headers["X-Medins-Signature"] == expected
        assert len(headers["X-Medins-Nonce"]) == 32

    def test_gateway_refuses_a_wrong_secret_before_processing(self, make_hook):
        hook = make_hook(password="not-the-secret")

        outcome = hook.call("2207", settlement("MDT-WRONG-SECRET"), org_code=ORG)

        assert outcome.kind is OutcomeKind.TRANSIENT
        assert "9001" in outcome.err_msg or outcome.http_status == 401


class TestSignIn:
    def test_sign_in_is_reused_across_calls(self, hook, sandbox):
        for _ in range(5):
            assert (
                hook.call("5301", {"psn_no": "44010000000000000002"}, org_code=ORG).kind
                is OutcomeKind.SUCCESS
            )

        assert sandbox.stats()["by_infno"].get("9001") == 1

    def test_expired_sign_in_is_renewed_once_and_the_call_succeeds(self, hook, sandbox):
        assert hook.call("5301", {"psn_no": "44010000000000000002"}, org_code=ORG).kind is OutcomeKind.SUCCESS
        sandbox.reset()  # the gateway forgets every sign_no

        outcome = hook.call("5301", {"psn_no": "44010000000000000002"}, org_code=ORG)

        assert outcome.kind is OutcomeKind.SUCCESS, outcome.reason
        assert sandbox.stats()["by_infno"].get("9001") == 1

    def test_expired_sign_in_under_a_recorded_msgid_is_left_to_the_caller_to_send_again(self, hook, sandbox):
        assert hook.call("5301", {"psn_no": "44010000000000000002"}, org_code=ORG).kind is OutcomeKind.SUCCESS
        sandbox.reset()
        recorded = hook.new_msgid(ORG)

        refused = hook.call("5301", {"psn_no": "44010000000000000002"}, org_code=ORG, msgid=recorded)
        again = hook.call("5301", {"psn_no": "44010000000000000002"}, org_code=ORG, msgid=hook.new_msgid(ORG))

        assert refused.kind is OutcomeKind.TRANSIENT and refused.msgid == recorded
        assert "签到信息无效" in refused.reason and "safe to send again" in refused.reason
        assert again.kind is OutcomeKind.SUCCESS
        sent = {m["msgid"] for m in sandbox.messages()["messages"] if m["infno"] == "5301"}
        assert sent == {recorded, again.msgid}  # nothing left under a msgid the caller did not record
        assert sandbox.stats()["by_infno"].get("9001") == 1

    def test_connection_test_signs_in(self, hook):
        ok, message = hook.test_connection()

        assert ok, message
        assert "Signed in 2 institution(s)" in message


class TestOutcomes:
    def test_business_refusal_is_final(self, hook):
        outcome = hook.call("1101", person_query(bad_check_digit=True), org_code=ORG)

        assert outcome.kind is OutcomeKind.REFUSED
        assert outcome.infcode == -1
        assert "人员信息不存在" in outcome.err_msg

    def test_second_settlement_of_a_visit_is_refused(self, hook, sandbox):
        first = hook.call("2207", settlement("MDT-TWICE"), org_code=ORG)
        second = hook.call("2207", settlement("MDT-TWICE"), org_code=ORG)

        assert first.kind is OutcomeKind.SUCCESS
        assert second.kind is OutcomeKind.REFUSED
        assert sandbox.stats()["double_settlements"] == 1

    @pytest.mark.parametrize(
        ("fault", "api_code", "expected"),
        [
            ({"error_5xx": 1.0}, "5301", OutcomeKind.TRANSIENT),
            ({"error_5xx": 1.0}, "2207", OutcomeKind.UNKNOWN),
            ({"drop": 1.0}, "5301", OutcomeKind.TRANSIENT),
            ({"drop": 1.0}, "2207", OutcomeKind.UNKNOWN),
            ({"lost_reply": 1.0}, "2207", OutcomeKind.UNKNOWN),
            ({"rate_limit": 1}, "2207", OutcomeKind.TRANSIENT),
        ],
        ids=["5xx-query", "5xx-write", "drop-query", "drop-write", "lost-reply-write", "rate-limited-write"],
    )
    def test_gateway_faults_are_classified(self, hook, sandbox, fault, api_code, expected):
        hook.sign_in(hook.institution(ORG))
        if "rate_limit" in fault:
            sandbox.set_faults(**fault)
            hook.call("5301", {"psn_no": "44010000000000000002"}, org_code=ORG)  # uses up the second
        else:
            sandbox.set_faults(**fault)
        data = (
            settlement(f"MDT-{api_code}-{next(iter(fault))}")
            if api_code == "2207"
            else {"psn_no": "4401000001"}
        )

        outcome = hook.call(api_code, data, org_code=ORG)

        assert outcome.kind is expected, outcome.reason
        assert outcome.reason

    def test_lost_reply_write_was_applied_at_the_gateway(self, hook, sandbox):
        hook.sign_in(hook.institution(ORG))
        sandbox.set_faults(lost_reply=1.0)
        lost = hook.call("2207", settlement("MDT-LOST"), org_code=ORG)
        sandbox.set_faults(lost_reply=0.0)

        again = hook.call("2207", settlement("MDT-LOST"), org_code=ORG)

        assert lost.kind is OutcomeKind.UNKNOWN
        assert again.kind is OutcomeKind.REFUSED  # already settled: that is why UNKNOWN is never re-sent

    def test_a_gateway_that_never_answers_ends_with_the_timeout(self, make_hook, sandbox):
        hook = make_hook(timeout=[1, 0.5])
        hook.sign_in(hook.institution(ORG))
        sandbox.set_faults(hang=True)

        query = hook.call("5301", {"psn_no": "4401000001"}, org_code=ORG)
        write = hook.call("2207", settlement("MDT-HANG"), org_code=ORG)

        assert query.kind is OutcomeKind.TRANSIENT
        assert write.kind is OutcomeKind.UNKNOWN
        assert "no reply in time" in write.err_msg

    def test_refused_connection_is_safe_to_resend_even_for_a_write(self, make_hook):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        hook = make_hook(port=closed_port)
        hook.sign_in = lambda institution, force=False: "x"  # nothing listens, so no sign-in either

        outcome = hook.call("2207", settlement("MDT-CLOSED"), org_code=ORG)

        assert outcome.kind is OutcomeKind.TRANSIENT
        assert "connection failed" in outcome.err_msg

    @pytest.mark.parametrize("bypassed", [False, True], ids=["through-proxy", "no_proxy"])
    def test_proxy_settings_of_the_environment_are_followed(self, make_hook, sandbox, monkeypatch, bypassed):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            dead_proxy = f"http://127.0.0.1:{probe.getsockname()[1]}"
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, dead_proxy)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.setenv(name, "127.0.0.1" if bypassed else "")
        hook = make_hook()

        outcome = hook.call("5301", {"psn_no": "44010000000000000002"}, org_code=ORG)

        if bypassed:
            assert outcome.kind is OutcomeKind.SUCCESS, outcome.reason
        else:  # sent to the proxy, which is not there: the gateway saw nothing
            assert outcome.kind is OutcomeKind.TRANSIENT
            assert sandbox.stats()["received"] == 0


class TestSettings:
    def test_unknown_institution_is_named(self, hook):
        with pytest.raises(GatewayError, match="H99999999999 is not configured"):
            hook.institution("H99999999999")

    def test_institution_missing_settings_is_refused_with_what_lacks(self, make_hook):
        hook = make_hook(extra={"institutions": {ORG: {"fixmedins_name": "医院"}}})

        with pytest.raises(GatewayError, match="lacks mdtrtarea_admvs, insuplc_admdvs, opter, opter_name"):
            hook.institutions  # noqa: B018

    def test_hook_reads_the_connection_lazily(self):
        hook = MedicalInsuranceHook(medins_conn_id="does_not_exist")

        assert hook.medins_conn_id == "does_not_exist"


def test_personal_data_does_not_reach_the_reason(hook):
    query = person_query(bad_check_digit=True)

    outcome = hook.call("1101", query, org_code=ORG)

    assert query["mdtrt_cert_no"] not in outcome.reason
    assert json.dumps(query["psn_name"], ensure_ascii=False).strip('"') not in outcome.reason
