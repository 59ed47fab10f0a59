"""The sandbox gateway over real HTTP on loopback: envelope checks, sign-in, signing, every
interface of the catalog, the settlement rules, the faults and the control endpoints."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import itertools
import json
import logging
import re
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox import SandboxServer, start_sandbox

ROOT = Path(__file__).resolve().parents[2]
CATALOG = json.loads((ROOT / "include" / "interfaces.json").read_text(encoding="utf-8"))["interfaces"]
ORG = "H44010600001"
OTHER_ORG = "H44010600002"
OPERATOR = "OP0001"
PSN_NO = "44010000000000000001"
APP_ID, APP_SECRET = "sandbox-test-app", "sandbox-test-secret"
ENVELOPE_FIELDS = [
    "infno", "msgid", "mdtrtarea_admvs", "recer_sys_code", "infver", "opter_type", "opter", "opter_name",
    "inf_time", "fixmedins_code", "fixmedins_name", "input",
]  # fmt: skip
# One msgid sequence for the whole module, so no two messages share a msgid by accident.
_SEQUENCE = itertools.count(1)


def id_number(first17: str) -> str:
    """Complete 17 digits into an ID number with its ISO 7064 MOD 11-2 check character."""
    weights = [2 ** (17 - i) % 11 for i in range(17)]
    return first17 + "10X98765432"[sum(int(d) * w for d, w in zip(first17, weights, strict=True)) % 11]


VALID_ID = id_number("44010619900307123")
BAD_ID = VALID_ID[:17] + ("0" if VALID_ID[17] != "0" else "1")


def settlement_input(mdtrt_id: str = "MDT0001", amount: float = 128.5, **extra: Any) -> dict[str, Any]:
    return {
        "psn_no": PSN_NO,
        "mdtrt_cert_type": "02",
        "mdtrt_id": mdtrt_id,
        "chrg_bchno": "CB0001",
        "insutype": "310",
        "medfee_sumamt": amount,
        "psn_setlway": "01",
        **extra,
    }


def registration_input(ipt_otp_no: str = "OTP0001") -> dict[str, Any]:
    return {
        "psn_no": PSN_NO,
        "insutype": "310",
        "begntime": "2024-06-01 09:00:00",
        "mdtrt_cert_type": "02",
        "mdtrt_cert_no": VALID_ID,
        "ipt_otp_no": ipt_otp_no,
        "atddr_no": "D001",
        "dr_name": "王医生",
        "dept_code": "K01",
        "dept_name": "内科",
        "caty": "A03",
    }


# A valid input of every interface; one that needs earlier messages gets its values in prepare().
SAMPLES: dict[str, dict[str, Any]] = {
    "9001": {"opter_no": OPERATOR, "mac": "00:11:22:33:44:55", "ip": "127.0.0.1"},
    "9002": {"sign_no": "0" * 30, "opter_no": OPERATOR},
    "1101": {"mdtrt_cert_type": "02", "mdtrt_cert_no": VALID_ID, "psn_name": "张三"},
    "1201": {"fixmedins_type": "1", "fixmedins_code": ORG},
    "1312": {"query_date": "2024-06-01", "page_num": 1, "page_size": 10},
    "5201": {"psn_no": PSN_NO, "begntime": "2020-01-01 00:00:00", "endtime": "2030-12-31 23:59:59"},
    "5203": {"psn_no": PSN_NO, "setl_id": "S0", "mdtrt_id": "MDT0001"},
    "5301": {"psn_no": PSN_NO},
    "2201": registration_input(),
    "2202": {"psn_no": PSN_NO, "mdtrt_id": "MDT-REG", "ipt_otp_no": "OTP0001"},
    "2207": settlement_input(),
    "2208": {"setl_id": "S0", "mdtrt_id": "MDT0001", "psn_no": PSN_NO},
    "2601": {"psn_no": PSN_NO, "omsgid": f"{ORG}202406010900000001", "oinfno": "2207"},
    "3201": {
        "insutype": "310",
        "clr_type": "11",
        "setl_optins": "440100",
        "stmt_begndate": "2024-06-01",
        "stmt_enddate": "2024-06-01",
        "medfee_sumamt": 0,
        "fund_pay_sumamt": 0,
        "acct_pay": 0,
        "fixmedins_setl_cnt": 0,
    },
}
OUTPUT_KEYS = {
    "9001": {"signinoutb"},
    "9002": {"signoutoutb"},
    "1101": {"baseinfo", "insuinfo", "idetinfo"},
    "1201": {"medinsinfo"},
    "1312": {"data", "recordCounts", "pageNum", "pageSize"},
    "5201": {"mdtrtinfo"},
    "5203": {"setlinfo"},
    "5301": {"feedetail"},
    "2201": {"data"},
    "2202": set(),
    "2207": {"setlinfo"},
    "2208": {"setlinfo"},
    "2601": set(),
    "3201": {"stmtinfo"},
}


def sample_input(infno: str) -> dict[str, Any]:
    """Return a valid input: the sample above, or one built from the catalog's rules."""
    if infno in SAMPLES:
        return dict(SAMPLES[infno])
    spec = CATALOG[infno]
    names = list(spec.get("required", [])) + list((spec.get("required_any") or [[]])[0])
    return {name: _sample_value(spec["fields"].get(name, {})) for name in names}


def _sample_value(rule: dict[str, Any]) -> Any:
    if "enum" in rule:
        return rule["enum"][0]
    if rule.get("type") in ("integer", "number"):
        return max(1, rule.get("minimum", 1))
    return {"date": "2024-06-01", "datetime": "2024-06-01 09:00:00"}.get(rule.get("format"), "X")


def sign(body: bytes, *, app_id: str = APP_ID, secret: str = APP_SECRET, **override: str) -> dict[str, str]:
    """Return the signed headers of the protocol for ``body``."""
    timestamp = override.get("timestamp", str(int(time.time() * 1000)))
    nonce = override.get("nonce", secrets.token_hex(16))
    message = "\n".join((app_id, timestamp, nonce, hashlib.sha256(body).hexdigest()))
    return {
        "X-Medins-App-Id": app_id,
        "X-Medins-Timestamp": timestamp,
        "X-Medins-Nonce": nonce,
        "X-Medins-Signature": hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest(),
    }


class Client:
    """Build valid envelopes for one institution's operator and post them to a sandbox."""

    def __init__(self, server: SandboxServer, org: str = ORG, *, signed: bool = False) -> None:
        self.server = server
        self.org = org
        self.signed = signed
        self.http = requests.Session()
        self.sign_no = ""

    def msgid(self) -> str:
        return f"{self.org}{datetime.now():%Y%m%d%H%M%S}{next(_SEQUENCE) % 10000:04d}"

    def envelope(self, infno: str, data: Any, **override: Any) -> dict[str, Any]:
        key = CATALOG[infno]["input_key"] if infno in CATALOG else "data"
        envelope = {
            "infno": infno,
            "msgid": self.msgid(),
            "mdtrtarea_admvs": "440106",
            "insuplc_admdvs": "440100",
            "recer_sys_code": "MEDINS",
            "dev_no": "",
            "dev_safe_info": "",
            "cainfo": "",
            "signtype": "SM3",
            "infver": "V1.0",
            "opter_type": "1",
            "opter": OPERATOR,
            "opter_name": "收费员",
            "inf_time": f"{datetime.now():%Y-%m-%d %H:%M:%S}",
            "fixmedins_code": self.org,
            "fixmedins_name": "测试医院",
            "sign_no": self.sign_no,
            "input": {key: data},
        }
        envelope.update(override)
        return envelope

    def post(self, payload: dict[str, Any] | bytes, *, headers=None, timeout: float = 5) -> requests.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
        if self.signed and headers is None:
            headers = sign(body)
        return self.http.post(self.server.service_url, data=body, headers=headers or {}, timeout=timeout)

    def sign_in(self) -> str:
        reply = self.post(self.envelope("9001", SAMPLES["9001"], sign_no="")).json()
        assert reply["infcode"] == 0, reply["err_msg"]
        self.sign_no = reply["output"]["signinoutb"]["sign_no"]
        return self.sign_no

    def call(self, infno: str, data: Any, **override: Any) -> dict[str, Any]:
        """Send one message (signing in first when needed) and return its reply."""
        return self.send(infno, data, **override)[1]

    def send(self, infno: str, data: Any, **override: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Send one message (signing in first when needed) and return it with its reply."""
        if not self.sign_no and infno != "9001":
            self.sign_in()
        envelope = self.envelope(infno, data, **override)
        response = self.post(envelope)
        assert response.status_code == 200, response.text
        return envelope, response.json()

    def settle(self, mdtrt_id: str = "MDT0001", **kw: Any) -> dict[str, Any]:
        reply = self.call("2207", settlement_input(mdtrt_id, **kw))
        assert reply["infcode"] == 0, reply["err_msg"]
        return reply["output"]["setlinfo"]

    def control(self, method: str, name: str, body: Any = None) -> requests.Response:
        return self.http.request(method, f"{self.server.url}/_sandbox/{name}", json=body, timeout=5)


def refused(reply: dict[str, Any], prefix: str) -> bool:
    return reply["infcode"] == -1 and reply["err_msg"].startswith(prefix) and reply["output"] is None


def outcomes(server: SandboxServer, msgid: str) -> list[str]:
    return next(m["outcomes"] for m in server.messages()["messages"] if m["msgid"] == msgid)


@pytest.fixture(scope="module")
def server():
    server = start_sandbox(port=0)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def signed_server():
    server = start_sandbox(port=0, app_id=APP_ID, app_secret=APP_SECRET)
    yield server
    server.stop()


@pytest.fixture
def gw(server):
    server.reset(faults=True)
    client = Client(server)
    yield client
    client.http.close()
    server.reset(faults=True)


@pytest.fixture
def signed(signed_server):
    signed_server.reset(faults=True)
    client = Client(signed_server, signed=True)
    yield client
    client.http.close()


class TestEnvelope:
    @pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"text"', b"\xff\xfe{}", b"{NaN: 1}"])
    def test_body_that_is_not_a_json_object_is_refused(self, gw, body):
        reply = gw.post(body).json()

        assert refused(reply, "报文格式错误")

    @pytest.mark.parametrize("name", ENVELOPE_FIELDS)
    def test_each_missing_envelope_field_is_named(self, gw, name):
        envelope = gw.envelope("1101", SAMPLES["1101"])
        del envelope[name]

        reply = gw.post(envelope).json()

        assert refused(reply, "缺少必填字段")
        assert reply["err_msg"] == f"缺少必填字段: {name}"

    def test_blank_envelope_field_counts_as_missing(self, gw):
        reply = gw.post(gw.envelope("1101", SAMPLES["1101"], opter_name=" ")).json()

        assert reply["err_msg"] == "缺少必填字段: opter_name"

    def test_other_spelling_of_the_care_area_is_accepted(self, gw):
        gw.sign_in()
        envelope = gw.envelope("1101", SAMPLES["1101"])
        envelope["mdtrt_area_admvs"] = envelope.pop("mdtrtarea_admvs")

        assert gw.post(envelope).json()["infcode"] == 0

    def test_unknown_interface_is_refused(self, gw):
        assert refused(gw.post(gw.envelope("9999", {})).json(), "交易编号不存在")

    @pytest.mark.parametrize(
        "msgid",
        [
            f"{ORG}202406010900000001X",  # 31 characters
            f"{ORG}20240601090000001",  # 29 characters
            f"{OTHER_ORG}202406010900000001",  # another institution's code
            f"{ORG}202413010900000001",  # month 13
            f"{ORG}202406010961000001",  # minute 61
            f"{ORG}20240601090000000A",  # sequence not digits
        ],
        ids=["too-long", "too-short", "other-org", "bad-month", "bad-minute", "bad-sequence"],
    )
    def test_malformed_msgid_is_refused(self, gw, msgid):
        reply = gw.post(gw.envelope("1101", SAMPLES["1101"], msgid=msgid)).json()

        assert refused(reply, "报文ID格式错误")

    @pytest.mark.parametrize(
        "inf_time", ["2024/06/01 09:00:00", "2024-02-30 09:00:00", "2024-06-01T09:00:00"]
    )
    def test_malformed_inf_time_is_refused(self, gw, inf_time):
        reply = gw.post(gw.envelope("1101", SAMPLES["1101"], inf_time=inf_time)).json()

        assert refused(reply, "交易时间格式错误")

    @pytest.mark.parametrize("opter_type", ["4", "0", 1])
    def test_unknown_operator_kind_is_refused(self, gw, opter_type):
        reply = gw.post(gw.envelope("1101", SAMPLES["1101"], opter_type=opter_type)).json()

        assert refused(reply, "经办人类别错误")

    @pytest.mark.parametrize(
        ("override", "infno"),
        [
            ({"mdtrtarea_admvs": "44010"}, "1101"),
            ({"mdtrtarea_admvs": "44010A"}, "1101"),
            ({"insuplc_admdvs": ""}, "5301"),
            ({"insuplc_admdvs": "4401000"}, "1101"),
        ],
        ids=["care-area-short", "care-area-letter", "no-insured-area-with-psn_no", "insured-area-long"],
    )
    def test_bad_admin_division_is_refused(self, gw, override, infno):
        reply = gw.post(gw.envelope(infno, sample_input(infno), **override)).json()

        assert refused(reply, "医保区划错误")

    def test_insured_area_may_be_empty_without_psn_no(self, gw):
        assert gw.call("1101", SAMPLES["1101"], insuplc_admdvs="")["infcode"] == 0

    def test_checks_run_in_the_order_of_the_protocol(self, gw):
        envelope = gw.envelope("1101", {"mdtrt_cert_type": "99"}, inf_time="bad", sign_no="")
        assert gw.post(envelope).json()["err_msg"].startswith("交易时间格式错误")

        envelope = gw.envelope("1101", {"mdtrt_cert_type": "99"}, sign_no="")
        assert gw.post(envelope).json()["err_msg"].startswith("签到信息无效")

    def test_reply_envelope_has_every_field_in_its_format(self, gw):
        reply = gw.call("1101", SAMPLES["1101"])

        assert set(reply) == {
            "infcode", "inf_refmsgid", "refmsg_time", "respond_time", "err_msg", "warn_msg", "output",
            "signtype", "cainfo",
        }  # fmt: skip
        assert reply["infcode"] == 0 and isinstance(reply["infcode"], int)
        assert len(reply["inf_refmsgid"]) == 30
        assert re.fullmatch(r"\d{17}", reply["refmsg_time"]) and re.fullmatch(
            r"\d{17}", reply["respond_time"]
        )
        assert reply["inf_refmsgid"] != gw.call("1101", SAMPLES["1101"])["inf_refmsgid"]


class TestSignIn:
    def test_every_interface_but_sign_in_needs_a_sign_no(self, gw):
        reply = gw.post(gw.envelope("5301", SAMPLES["5301"], sign_no="")).json()

        assert refused(reply, "签到信息无效")

    def test_a_sign_no_the_gateway_did_not_issue_is_refused(self, gw):
        reply = gw.post(gw.envelope("5301", SAMPLES["5301"], sign_no="1" * 30)).json()

        assert refused(reply, "签到信息无效")

    def test_a_sign_no_is_bound_to_its_institution_and_operator(self, gw, server):
        sign_no = gw.sign_in()
        other = Client(server, OTHER_ORG)

        by_other_org = other.post(other.envelope("5301", SAMPLES["5301"], sign_no=sign_no)).json()
        by_other_operator = gw.post(gw.envelope("5301", SAMPLES["5301"], opter="OP0002")).json()

        assert refused(by_other_org, "签到信息无效")
        assert refused(by_other_operator, "签到信息无效")

    def test_sign_in_issues_a_30_digit_sign_no_reused_for_the_day(self, gw):
        first = gw.sign_in()
        second = gw.sign_in()

        assert re.fullmatch(r"\d{30}", first)
        assert second == first
        assert all(gw.call("5301", SAMPLES["5301"])["infcode"] == 0 for _ in range(3))

    def test_sign_out_revokes_the_sign_no(self, gw):
        sign_no = gw.sign_in()

        assert gw.call("9002", {"sign_no": sign_no, "opter_no": OPERATOR})["infcode"] == 0
        assert refused(gw.call("5301", SAMPLES["5301"]), "签到信息无效")
        assert gw.sign_in() != sign_no

    def test_reset_forgets_sign_ins(self, gw, server):
        gw.sign_in()
        server.reset()

        assert refused(gw.call("5301", SAMPLES["5301"]), "签到信息无效")


class TestSigning:
    def test_correctly_signed_message_is_accepted(self, signed):
        assert signed.call("5301", SAMPLES["5301"])["infcode"] == 0

    @pytest.mark.parametrize(
        ("make_headers", "detail"),
        [
            (lambda body: {}, "缺少请求头"),
            (lambda body: {**sign(body), "X-Medins-Signature": "0" * 64}, "X-Medins-Signature"),
            (lambda body: sign(body, secret="another-secret"), "X-Medins-Signature"),
            (lambda body: sign(body, app_id="another-app"), "X-Medins-App-Id"),
            (lambda body: sign(body + b" "), "X-Medins-Signature"),
            (lambda body: sign(body, timestamp=str(int(time.time() * 1000) - 301_000)), "X-Medins-Timestamp"),
            (lambda body: sign(body, nonce="short"), "X-Medins-Nonce"),
        ],
        ids=["unsigned", "wrong-signature", "wrong-secret", "wrong-app", "other-body", "stale", "bad-nonce"],
    )
    def test_bad_signature_is_refused_with_401_before_processing(self, signed, make_headers, detail):
        signed.sign_in()
        envelope = signed.envelope("2207", settlement_input())
        body = json.dumps(envelope).encode()

        response = signed.post(body, headers=make_headers(body))

        assert response.status_code == 401
        assert refused(response.json(), "签名校验失败")
        assert detail in response.json()["err_msg"]
        assert outcomes(signed.server, envelope["msgid"]) == ["unsigned"]
        assert signed.server.state.standing == {}

    def test_a_nonce_is_accepted_once(self, signed):
        body = json.dumps(signed.envelope("9001", SAMPLES["9001"])).encode()
        headers = sign(body)

        first = signed.post(body, headers=headers)
        again = signed.post(body, headers=headers)

        assert first.status_code == 200
        assert again.status_code == 401 and "已使用" in again.json()["err_msg"]

    def test_control_endpoints_need_no_signature(self, signed):
        assert signed.control("GET", "health").json() == {"status": "ok"}


class TestInterfaces:
    def prepare(self, gw: Client, infno: str) -> dict[str, Any]:
        """Return a valid input for ``infno``, sending the messages it depends on first."""
        data = sample_input(infno)
        if infno in ("5203", "2208"):
            setlinfo = gw.settle()
            data.update(setl_id=setlinfo["setl_id"], mdtrt_id=setlinfo["mdtrt_id"])
        elif infno == "2202":
            data["mdtrt_id"] = gw.call("2201", registration_input())["output"]["data"]["mdtrt_id"]
        elif infno == "2601":
            envelope, reply = gw.send("2207", settlement_input())
            assert reply["infcode"] == 0
            data["omsgid"] = envelope["msgid"]
        elif infno == "9002":
            data["sign_no"] = gw.sign_in()
        return data

    @pytest.mark.parametrize("infno", sorted(CATALOG))
    def test_interface_answers_with_its_output_shape(self, gw, infno):
        gw.sign_in()
        data = self.prepare(gw, infno)

        reply = gw.call(infno, data)

        assert reply["infcode"] == 0, reply["err_msg"]
        assert isinstance(reply["output"], dict)
        assert set(reply["output"]) >= OUTPUT_KEYS.get(infno, set())

    @pytest.mark.parametrize("infno", sorted(CATALOG))
    def test_missing_required_input_field_is_named(self, gw, infno):
        spec = CATALOG[infno]
        data = sample_input(infno)
        missing = spec["required"][0]
        del data[missing]

        reply = gw.call(infno, data)

        assert refused(reply, "输入参数错误")
        assert reply["err_msg"] == f"输入参数错误: 缺少必填字段 {missing}"

    @pytest.mark.parametrize("infno", [code for code, spec in CATALOG.items() if spec.get("required_any")])
    def test_input_needs_one_complete_group_of_required_any(self, gw, infno):
        data = sample_input(infno)
        for group in CATALOG[infno]["required_any"]:
            for name in group:
                data.pop(name, None)
        first_group = CATALOG[infno]["required_any"][0]
        data[first_group[0]] = _sample_value(CATALOG[infno]["fields"][first_group[0]])
        if len(first_group) == 1:
            data.pop(first_group[0])

        reply = gw.call(infno, data)

        assert refused(reply, "输入参数错误: 须提供")

    @pytest.mark.parametrize(
        ("infno", "change", "message"),
        [
            ("1101", {"mdtrt_cert_type": "04"}, "输入参数错误: mdtrt_cert_type 取值不在[01,02,03]"),
            ("1312", {"page_num": "1"}, "输入参数错误: page_num 须为整数"),
            ("1312", {"page_size": 0}, "输入参数错误: page_size 不能小于1"),
            ("1312", {"page_size": 1001}, "输入参数错误: page_size 不能大于1000"),
            ("1312", {"page_size": True}, "输入参数错误: page_size 须为整数"),
            ("1312", {"query_date": "2024/06/01"}, "输入参数错误: query_date 格式须为yyyy-MM-dd"),
            ("5201", {"begntime": "2024-06-01"}, "输入参数错误: begntime 格式须为yyyy-MM-dd HH:mm:ss"),
            ("5301", {"psn_no": 44010000000000000001}, "输入参数错误: psn_no 须为字符串"),
            ("5301", {"psn_no": "4" * 31}, "输入参数错误: psn_no 长度不能超过30"),
            ("2207", {"medfee_sumamt": "128.50"}, "输入参数错误: medfee_sumamt 须为数值"),
            ("2207", {"medfee_sumamt": -1}, "输入参数错误: medfee_sumamt 不能小于0"),
            ("2207", {"medfee_sumamt": 1.005}, "输入参数错误: medfee_sumamt 小数位数不能超过2"),
            ("2207", {"acct_used_flag": "2"}, "输入参数错误: acct_used_flag 取值不在[0,1]"),
        ],
    )
    def test_field_rules_of_the_catalog_are_enforced(self, gw, infno, change, message):
        reply = gw.call(infno, {**sample_input(infno), **change})

        assert reply["err_msg"] == message

    def test_input_must_sit_under_the_catalog_key(self, gw):
        reply = gw.call("1201", {"fixmedins_type": "1"}, input={"data": {"fixmedins_type": "1"}})

        assert reply["err_msg"] == "输入参数错误: input 缺少 medinsinfo"

    def test_unknown_extra_fields_are_allowed(self, gw):
        assert gw.call("5301", {**SAMPLES["5301"], "province_extra": {"x": [1]}})["infcode"] == 0

    def test_length_is_counted_in_characters(self, gw):
        fifty = "测" * 49 + "😀"

        assert gw.call("1101", {**SAMPLES["1101"], "psn_name": fifty})["infcode"] == 0
        assert refused(gw.call("1101", {**SAMPLES["1101"], "psn_name": fifty + "测"}), "输入参数错误")


class TestPerson:
    def test_id_card_person_is_derived_from_the_id_number(self, gw):
        baseinfo = gw.call("1101", SAMPLES["1101"])["output"]["baseinfo"]

        assert baseinfo["certno"] == VALID_ID
        assert baseinfo["brdy"] == "1990-03-07"
        assert baseinfo["gend"] == "1"  # 17th digit odd
        assert baseinfo["psn_name"] == "张三"
        assert re.fullmatch(r"\d{20}", baseinfo["psn_no"])

    def test_id_number_with_a_wrong_check_digit_is_not_a_person(self, gw):
        reply = gw.call("1101", {"mdtrt_cert_type": "02", "mdtrt_cert_no": BAD_ID})

        assert refused(reply, "人员信息不存在")

    def test_same_input_gives_the_same_person(self, gw):
        data = {"mdtrt_cert_type": "01", "mdtrt_cert_no": "E1234567890", "begntime": "2024-06-01 09:00:00"}

        first, second = gw.call("1101", data), gw.call("1101", data)
        other = gw.call("1101", {**data, "mdtrt_cert_no": "E1234567891"})

        assert first["output"] == second["output"]
        assert first["output"] != other["output"]
        certno = first["output"]["baseinfo"]["certno"]
        assert certno == id_number(certno[:17])

    def test_chinese_and_emoji_name_is_echoed_byte_for_byte(self, gw):
        name = "𠀀明😀·李"
        gw.sign_in()

        response = gw.post(gw.envelope("1101", {**SAMPLES["1101"], "psn_name": name}))

        assert name.encode("utf-8") in response.content
        assert response.json()["output"]["baseinfo"]["psn_name"] == name

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(name=st.text(min_size=1, max_size=50).filter(str.strip))
    def test_any_name_is_echoed_unchanged(self, gw, name):
        assert (
            gw.call("1101", {**SAMPLES["1101"], "psn_name": name})["output"]["baseinfo"]["psn_name"] == name
        )

    def test_institution_name_is_echoed(self, gw):
        reply = gw.call("1201", {"fixmedins_type": "1", "fixmedins_name": "广州市第一人民医院🏥"})

        assert reply["output"]["medinsinfo"][0]["fixmedins_name"] == "广州市第一人民医院🏥"


class TestQueries:
    def test_catalog_pages_through_a_fixed_total(self, gw):
        first = gw.call("1312", {"query_date": "2024-06-01", "page_num": 1, "page_size": 50})["output"]
        second = gw.call("1312", {"query_date": "2024-06-01", "page_num": 2, "page_size": 50})["output"]
        beyond = gw.call("1312", {"query_date": "2024-06-01", "page_num": 10_000, "page_size": 50})["output"]

        assert len(first["data"]) == len(second["data"]) == 50
        assert first["recordCounts"] == second["recordCounts"] > 100
        assert (second["pageNum"], second["pageSize"]) == (2, 50)
        assert not {r["hilist_code"] for r in first["data"]} & {r["hilist_code"] for r in second["data"]}
        assert beyond["data"] == []

    def test_catalog_item_by_code(self, gw):
        output = gw.call("1312", {"query_date": "2024-06-01", "hilist_code": "XJ01CAA040A001"})["output"]

        assert output["recordCounts"] == 1
        assert output["data"][0]["hilist_code"] == "XJ01CAA040A001"

    def test_registration_shows_among_the_visits_until_cancelled(self, gw):
        registered = gw.call("2201", registration_input())["output"]["data"]
        window = {"psn_no": PSN_NO, "begntime": "2024-06-01 00:00:00", "endtime": "2024-06-01 23:59:59"}

        visits = gw.call("5201", window)["output"]["mdtrtinfo"]
        cancel = {"psn_no": PSN_NO, "mdtrt_id": registered["mdtrt_id"], "ipt_otp_no": "OTP0001"}
        assert gw.call("2202", cancel)["infcode"] == 0
        after = gw.call("5201", window)["output"]["mdtrtinfo"]

        assert registered["mdtrt_id"] in [v["mdtrt_id"] for v in visits]
        assert registered["mdtrt_id"] not in [v["mdtrt_id"] for v in after]

    def test_visit_window_must_not_be_reversed(self, gw):
        reply = gw.call(
            "5201", {"psn_no": PSN_NO, "begntime": "2024-06-02 00:00:00", "endtime": "2024-06-01 00:00:00"}
        )

        assert refused(reply, "输入参数错误")


class TestSettlement:
    def test_settlement_splits_the_bill_deterministically_to_the_cent(self, gw):
        setlinfo = gw.settle("MDT-SPLIT", amount=1234.56, acct_used_flag="1")

        parts = [setlinfo[k] for k in ("fund_pay_sumamt", "acct_pay", "psn_cash_pay")]
        assert round(sum(parts), 2) == setlinfo["medfee_sumamt"] == 1234.56
        assert all(round(p, 2) == p and p >= 0 for p in parts)
        assert setlinfo["psn_no"] == PSN_NO and setlinfo["mdtrt_id"] == "MDT-SPLIT"
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", setlinfo["setl_time"])
        gw.server.reset()
        gw.sign_in()
        again = gw.settle("MDT-SPLIT", amount=1234.56, acct_used_flag="1")
        assert [again[k] for k in ("fund_pay_sumamt", "acct_pay", "psn_cash_pay")] == parts

    def test_second_settlement_of_a_visit_is_refused_and_counted(self, gw, server):
        gw.settle("MDT-TWICE")

        again = gw.call("2207", settlement_input("MDT-TWICE"))

        assert refused(again, "该就诊已结算，不能重复结算")
        assert server.stats()["double_settlements"] == 1

    def test_same_visit_at_another_institution_is_another_visit(self, gw, server):
        gw.settle("MDT-SHARED")
        other = Client(server, OTHER_ORG)

        assert other.call("2207", settlement_input("MDT-SHARED"))["infcode"] == 0
        assert server.stats()["double_settlements"] == 0

    def test_cancelled_settlement_frees_the_visit(self, gw, server):
        setlinfo = gw.settle("MDT-CANCEL")
        cancel = {"setl_id": setlinfo["setl_id"], "mdtrt_id": "MDT-CANCEL", "psn_no": PSN_NO}

        undone = gw.call("2208", cancel)
        again = gw.call("2208", cancel)

        assert undone["infcode"] == 0
        assert undone["output"]["setlinfo"]["medfee_sumamt"] == -setlinfo["medfee_sumamt"]
        assert refused(again, "该结算已撤销")
        assert gw.settle("MDT-CANCEL")["setl_id"] != setlinfo["setl_id"]
        assert server.stats()["double_settlements"] == 0

    def test_cancel_of_an_unknown_settlement_is_refused(self, gw):
        reply = gw.call("2208", {"setl_id": "NOPE", "mdtrt_id": "MDT0001", "psn_no": PSN_NO})

        assert refused(reply, "未找到结算信息")

    def test_reversal_undoes_a_settlement_by_its_msgid(self, gw, server):
        envelope, reply = gw.send("2207", settlement_input("MDT-REVERSE"))
        setlinfo = reply["output"]["setlinfo"]
        reversal = {"psn_no": PSN_NO, "omsgid": envelope["msgid"], "oinfno": "2207"}

        reversed_ = gw.call("2601", reversal)
        query = gw.call("5203", {"psn_no": PSN_NO, "setl_id": setlinfo["setl_id"], "mdtrt_id": "MDT-REVERSE"})
        repeated = gw.call("2601", reversal)

        assert reversed_["infcode"] == 0 and not reversed_["warn_msg"]
        assert refused(query, "未找到结算信息")
        assert repeated["infcode"] == 0 and repeated["warn_msg"] == "原交易已冲正"
        assert gw.call("2207", settlement_input("MDT-REVERSE"))["infcode"] == 0
        assert server.stats()["double_settlements"] == 0

    def test_reversal_of_a_message_never_applied_has_nothing_to_undo(self, gw):
        reply = gw.call("2601", {"psn_no": PSN_NO, "omsgid": gw.msgid(), "oinfno": "2207"})

        assert reply["infcode"] == 0
        assert reply["warn_msg"].startswith("原交易未成功处理")

    def test_reversal_must_match_the_original(self, gw):
        envelope, reply = gw.send("2207", settlement_input("MDT-MISMATCH"))
        assert reply["infcode"] == 0

        wrong_infno = gw.call("2601", {"psn_no": PSN_NO, "omsgid": envelope["msgid"], "oinfno": "2201"})
        wrong_person = gw.call("2601", {"psn_no": "44019999", "omsgid": envelope["msgid"], "oinfno": "2207"})
        query = gw.call("2601", {"psn_no": PSN_NO, "omsgid": envelope["msgid"], "oinfno": "1101"})

        assert refused(wrong_infno, "冲正信息与原交易不符")
        assert refused(wrong_person, "冲正信息与原交易不符")
        assert refused(query, "该交易不支持冲正")

    def test_reversal_of_a_registration_cancels_it(self, gw):
        envelope, reply = gw.send("2201", registration_input("OTP-REV"))
        mdtrt_id = reply["output"]["data"]["mdtrt_id"]

        assert (
            gw.call("2601", {"psn_no": PSN_NO, "omsgid": envelope["msgid"], "oinfno": "2201"})["infcode"] == 0
        )
        window = {"psn_no": PSN_NO, "begntime": "2024-06-01 00:00:00", "endtime": "2024-06-01 23:59:59"}
        assert mdtrt_id not in [v["mdtrt_id"] for v in gw.call("5201", window)["output"]["mdtrtinfo"]]

    @pytest.mark.parametrize("by", ["setl_id", "mdtrt_id+psn_no"])
    def test_settlement_query_finds_a_settlement(self, gw, by):
        setlinfo = gw.settle("MDT-FIND")
        setl_id = setlinfo["setl_id"] if by == "setl_id" else "UNKNOWN-SETL-ID"

        reply = gw.call("5203", {"psn_no": PSN_NO, "setl_id": setl_id, "mdtrt_id": "MDT-FIND"})

        assert reply["output"]["setlinfo"] == setlinfo

    def test_settlement_query_without_a_settlement_is_refused(self, gw):
        gw.settle("MDT-FIND")

        reply = gw.call("5203", {"psn_no": "44019999", "setl_id": "S0", "mdtrt_id": "MDT-FIND"})

        assert refused(reply, "未找到结算信息")

    def test_reconciliation_compares_totals_with_the_settlements_held(self, gw):
        held = [gw.settle("MDT-R1", amount=100), gw.settle("MDT-R2", amount=50.05, acct_used_flag="1")]
        cancelled = gw.settle("MDT-R3", amount=999)
        gw.call("2208", {"setl_id": cancelled["setl_id"], "mdtrt_id": "MDT-R3", "psn_no": PSN_NO})
        day = held[0]["setl_time"][:10]
        totals = {
            "insutype": "310",
            "clr_type": "11",
            "setl_optins": "440100",
            "stmt_begndate": day,
            "stmt_enddate": day,
            "fixmedins_setl_cnt": 2,
            **{
                k: round(sum(s[k] for s in held), 2) for k in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay")
            },
        }

        balanced = gw.call("3201", totals)["output"]["stmtinfo"]
        unbalanced = gw.call("3201", {**totals, "fixmedins_setl_cnt": 3})["output"]["stmtinfo"]
        other_period = gw.call(
            "3201", {**totals, "stmt_begndate": "2020-01-01", "stmt_enddate": "2020-01-31"}
        )

        assert balanced["stmt_rslt"] == "0"
        assert unbalanced["stmt_rslt"] == "1" and "fixmedins_setl_cnt" in unbalanced["stmt_rslt_dscr"]
        assert other_period["output"]["stmtinfo"]["stmt_rslt"] == "0"  # nothing held: consistent


class TestFaults:
    def test_5xx_answers_without_processing(self, gw, server):
        gw.sign_in()
        server.set_faults(error_5xx=1.0)
        envelope = gw.envelope("2207", settlement_input("MDT-5XX"))

        statuses = {gw.post(envelope).status_code for _ in range(12)}

        assert statuses <= {500, 502, 503} and len(statuses) > 1
        assert set(outcomes(server, envelope["msgid"])) == {"error_5xx"}
        assert server.state.standing == {}

    def test_drop_closes_the_connection_before_processing(self, gw, server):
        gw.sign_in()
        server.set_faults(drop=1.0)
        envelope = gw.envelope("2207", settlement_input("MDT-DROP"))

        with pytest.raises(requests.ConnectionError):
            gw.post(envelope)

        assert outcomes(server, envelope["msgid"]) == ["dropped"]
        assert server.state.standing == {}

    def test_lost_reply_applies_the_write_then_closes(self, gw, server):
        gw.sign_in()
        server.set_faults(lost_reply=1.0)
        envelope = gw.envelope("2207", settlement_input("MDT-LOST"))

        with pytest.raises(requests.ConnectionError):
            gw.post(envelope)
        query = gw.call("5203", {"psn_no": PSN_NO, "setl_id": "S0", "mdtrt_id": "MDT-LOST"})

        assert query["infcode"] == 0  # queries are answered even with lost_reply on
        assert query["output"]["setlinfo"]["mdtrt_id"] == "MDT-LOST"
        assert outcomes(server, envelope["msgid"]) == ["ok_reply_lost"]

    def test_rate_limit_answers_429_per_institution(self, gw, server):
        other = Client(server, OTHER_ORG)
        gw.sign_in()
        other.sign_in()
        server.set_faults(rate_limit=3)

        responses = [gw.post(gw.envelope("5301", SAMPLES["5301"])) for _ in range(6)]
        other_org = other.post(other.envelope("5301", SAMPLES["5301"]))

        statuses = [r.status_code for r in responses]
        assert statuses.count(200) == 3 and statuses.count(429) == 3
        limited = next(r for r in responses if r.status_code == 429)
        assert limited.json()["infcode"] == -1 and limited.json()["err_msg"] == "请求过于频繁，请稍后重试"
        assert server.stats()["by_outcome"]["rate_limited"] == 3
        assert other_org.status_code == 200

    def test_hang_never_answers_and_other_requests_still_work(self, gw, server):
        gw.sign_in()
        server.set_faults(hang=1.0)
        envelope = gw.envelope("5301", SAMPLES["5301"])

        with pytest.raises(requests.ReadTimeout):
            gw.post(envelope, timeout=0.3)
        server.set_faults(hang=0.0)

        assert outcomes(server, envelope["msgid"]) == ["hung"]
        assert gw.call("5301", SAMPLES["5301"])["infcode"] == 0

    def test_latency_delays_each_answer(self, gw, server):
        gw.sign_in()
        server.set_faults(latency_ms=150, jitter_ms=20)

        started = time.perf_counter()
        gw.call("5301", SAMPLES["5301"])
        elapsed = time.perf_counter() - started

        assert 0.12 <= elapsed < 1.0

    def test_business_error_refuses_valid_messages_but_not_sign_in(self, gw, server):
        server.set_faults(business_error=1.0)

        gw.sign_in()
        reply = gw.call("2207", settlement_input("MDT-BIZ"))

        assert refused(reply, "业务处理失败")
        assert server.state.standing == {}

    def test_a_seed_replays_the_same_faults(self, gw, server):
        gw.sign_in()

        def run() -> list[int]:
            server.set_faults(error_5xx=0.5, seed=42)
            return [gw.post(gw.envelope("5301", SAMPLES["5301"])).status_code for _ in range(16)]

        first, second = run(), run()

        assert first == second
        assert 200 in first and any(status >= 500 for status in first)

    def test_control_endpoints_are_never_faulty(self, gw, server):
        server.set_faults(drop=1.0, error_5xx=1.0, hang=1.0, latency_ms=2000, rate_limit=1)

        assert all(gw.control("GET", "health").status_code == 200 for _ in range(3))

    def test_stop_does_not_wait_for_a_hung_request(self):
        server = start_sandbox(port=0, hang=1.0)
        client = Client(server)
        errors = []
        thread = threading.Thread(target=lambda: _capture(errors, client.post, client.envelope("9001", {})))
        thread.start()
        _wait_for(lambda: server.stats()["received"] == 1)

        started = time.perf_counter()
        server.stop()
        thread.join(5)

        assert time.perf_counter() - started < 2
        assert not thread.is_alive() and errors and isinstance(errors[0], requests.ConnectionError)


class TestControl:
    def test_stats_and_messages_count_every_message(self, gw, server):
        gw.sign_in()
        envelope = gw.envelope("5301", SAMPLES["5301"])
        gw.post(envelope)
        gw.post(envelope)
        gw.post(gw.envelope("1101", {"mdtrt_cert_type": "02", "mdtrt_cert_no": BAD_ID}))

        stats = gw.control("GET", "stats").json()
        messages = gw.control("GET", "messages").json()["messages"]

        assert stats["received"] == 4
        assert stats["by_infno"] == {"9001": 1, "5301": 2, "1101": 1}
        assert stats["by_outcome"] == {"ok": 3, "refused": 1}
        assert stats["duplicate_msgids"] == [envelope["msgid"]]
        assert stats["double_settlements"] == 0
        assert {"msgid": envelope["msgid"], "infno": "5301", "count": 2, "outcomes": ["ok", "ok"]} in messages
        assert stats == server.stats() and messages == server.messages()["messages"]

    def test_faults_can_be_set_and_read_over_http(self, gw, server):
        changed = gw.control("POST", "faults", {"latency_ms": 5, "hang": False, "rate_limit": 10})

        assert changed.status_code == 200 and changed.json()["rate_limit"] == 10
        assert gw.control("GET", "faults").json() == server.faults.as_dict()
        assert gw.control("POST", "faults", {"nonsense": 1}).status_code == 400
        assert gw.control("POST", "faults", {"drop": 2}).status_code == 400

    def test_reset_over_http_forgets_everything(self, gw, server):
        gw.settle("MDT-RESET")

        assert gw.control("POST", "reset").json() == {"status": "ok"}
        assert server.stats()["received"] == 0 and server.state.standing == {}

    def test_unknown_paths_are_404(self, gw, server):
        assert gw.control("GET", "nothing").status_code == 404
        assert gw.http.post(f"{server.url}/other/path", json={}).status_code == 404


class TestTransport:
    def test_connection_is_kept_alive_between_messages(self, gw, server):
        gw.sign_in()
        connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
        try:
            for _ in range(3):
                body = json.dumps(gw.envelope("5301", SAMPLES["5301"])).encode()
                connection.request("POST", server.service_path, body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                assert response.status == 200 and json.loads(response.read())["infcode"] == 0
                assert response.getheader("Connection") != "close"
            local_port = connection.sock.getsockname()[1]
            connection.request("GET", "/_sandbox/health")
            connection.getresponse().read()
            assert connection.sock.getsockname()[1] == local_port
        finally:
            connection.close()

    def test_fifty_concurrent_connections_are_served(self, gw, server):
        gw.sign_in()
        server.set_faults(latency_ms=20)

        def work(_: int) -> list[int]:
            client = Client(server)
            client.sign_no = gw.sign_no
            with client.http:
                return [client.call("5301", SAMPLES["5301"])["infcode"] for _ in range(4)]

        with ThreadPoolExecutor(50) as pool:
            results = [code for codes in pool.map(work, range(50)) for code in codes]

        assert results == [0] * 200
        assert server.stats()["by_outcome"]["ok"] == 201

    def test_chunked_body_is_read(self, gw, server):
        gw.sign_in()
        body = json.dumps(gw.envelope("5301", SAMPLES["5301"])).encode()

        response = gw.http.post(server.service_url, data=iter([body[:10], body[10:]]))

        assert response.json()["infcode"] == 0


def test_personal_data_never_reaches_the_log(gw, server, caplog):
    caplog.set_level(logging.DEBUG, logger="sandbox")
    name, psn_no = "欧阳娜娜", "44010099999999999999"

    gw.call("1101", {**SAMPLES["1101"], "psn_name": name})
    gw.call("2207", {**settlement_input("MDT-LOG"), "psn_no": psn_no})
    gw.call("1101", {"mdtrt_cert_type": "02", "mdtrt_cert_no": BAD_ID})

    assert caplog.records
    for secret in (name, psn_no, VALID_ID, BAD_ID):
        assert secret not in caplog.text


def test_command_line_serves_until_terminated():
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", "0", "--latency-ms", "1", "--seed", "3"],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "include"), "PATH": "/usr/bin:/bin"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stderr.readline()
        url = re.search(r"listening on (http://[\d.]+:\d+)/", line).group(1)
        assert requests.get(f"{url}/_sandbox/health", timeout=5).json() == {"status": "ok"}
        assert requests.get(f"{url}/_sandbox/faults", timeout=5).json()["latency_ms"] == 1
    finally:
        process.terminate()
        assert process.wait(10) == 0
        process.stderr.close()


def _capture(errors: list[BaseException], func, *args) -> None:
    try:
        func(*args, timeout=30)
    except BaseException as err:  # handed over to the test's thread
        errors.append(err)


def _wait_for(condition, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# -- signed gateway: whatever is refused at the door is not processed ----------------------------


def control_stats(client: Client) -> dict[str, Any]:
    """Return ``GET /_sandbox/stats``."""
    return client.control("GET", "stats").json()


def without(name: str):
    return lambda body: {key: value for key, value in sign(body).items() if key != name}


class TestRefusedSignaturesProcessNothing:
    """Each way of getting the signed headers wrong is refused with 401 and why, and nothing is applied."""

    @pytest.mark.parametrize(
        ("make_headers", "reason"),
        [
            (lambda body: {}, "缺少请求头 X-Medins-App-Id"),
            (without("X-Medins-App-Id"), "缺少请求头 X-Medins-App-Id"),
            (without("X-Medins-Timestamp"), "缺少请求头 X-Medins-Timestamp"),
            (without("X-Medins-Nonce"), "缺少请求头 X-Medins-Nonce"),
            (without("X-Medins-Signature"), "缺少请求头 X-Medins-Signature"),
            (lambda body: {**sign(body), "X-Medins-Signature": "0" * 64}, "X-Medins-Signature 不正确"),
            (lambda body: sign(body, secret="not-" + APP_SECRET), "X-Medins-Signature 不正确"),
            (lambda body: sign(body, timestamp=str(int(time.time() * 1000) - 301_000)), "相差超过300秒"),
            (lambda body: sign(body, timestamp=str(int(time.time() * 1000) + 301_000)), "相差超过300秒"),
        ],
        ids=["no-headers", "no-app-id", "no-timestamp", "no-nonce", "no-signature", "wrong-signature",
             "wrong-secret", "stale", "from-the-future"],
    )  # fmt: skip
    def test_a_bad_signature_is_refused_with_401_and_the_settlement_is_not_applied(
        self, signed, make_headers, reason
    ):
        signed.sign_in()
        envelope = signed.envelope("2207", settlement_input("MDT-SIGNED"))
        body = json.dumps(envelope).encode()

        response = signed.post(body, headers=make_headers(body))

        assert response.status_code == 401
        assert refused(response.json(), "签名校验失败") and reason in response.json()["err_msg"]
        stats = control_stats(signed)
        assert stats["by_outcome"] == {"ok": 1, "unsigned": 1}  # the sign-in, and this message
        assert stats["double_settlements"] == 0
        assert signed.call("2207", settlement_input("MDT-SIGNED"))["infcode"] == 0  # not settled before

    def test_a_body_changed_after_signing_is_refused_and_not_applied(self, signed):
        signed.sign_in()
        envelope = signed.envelope("2207", settlement_input("MDT-CHANGED", amount=128.5))
        headers = sign(json.dumps(envelope).encode())
        changed = json.dumps({**envelope, "input": {"data": settlement_input("MDT-CHANGED", amount=1.5)}})

        response = signed.post(changed.encode(), headers=headers)

        assert response.status_code == 401
        assert refused(response.json(), "签名校验失败: X-Medins-Signature 不正确")
        assert control_stats(signed)["by_outcome"] == {"ok": 1, "unsigned": 1}
        assert signed.call("2207", settlement_input("MDT-CHANGED"))["infcode"] == 0

    def test_a_replayed_message_is_refused_and_applied_once(self, signed):
        signed.sign_in()
        envelope = signed.envelope("2207", settlement_input("MDT-REPLAY"))
        body = json.dumps(envelope).encode()
        headers = sign(body)

        first = signed.post(body, headers=headers)
        again = signed.post(body, headers=headers)
        other = json.dumps(signed.envelope("5301", SAMPLES["5301"])).encode()  # another message, same nonce
        reused = signed.post(other, headers=sign(other, nonce=headers["X-Medins-Nonce"]))

        assert first.status_code == 200 and first.json()["infcode"] == 0
        for response in (again, reused):
            assert response.status_code == 401
            assert refused(response.json(), "签名校验失败: X-Medins-Nonce 已使用过")
        assert control_stats(signed)["by_outcome"] == {"ok": 2, "unsigned": 2}
        assert outcomes(signed.server, envelope["msgid"]) == ["ok", "unsigned"]
        settled = [s for s in signed.server.state.settlements.values() if s.mdtrt_id == "MDT-REPLAY"]
        assert len(settled) == 1
