"""Check a message the way the gateway protocol says, in its order, and name what is wrong.

Every check raises :class:`Refusal` with the Chinese ``err_msg`` prefix of the protocol table
followed by a detail. Details name fields and rules, never the values, so no personal data
reaches a reply or a log through them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from sandbox.catalog import InterfaceSpec
from sandbox.state import REFUSED, UNSIGNED

FORMAT_ERROR = "报文格式错误"
MISSING_FIELD = "缺少必填字段"
UNKNOWN_INFNO = "交易编号不存在"
BAD_MSGID = "报文ID格式错误"
BAD_INF_TIME = "交易时间格式错误"
BAD_OPTER_TYPE = "经办人类别错误"
BAD_ADMDVS = "医保区划错误"
SIGN_IN_INVALID = "签到信息无效"
BAD_INPUT = "输入参数错误"
BAD_SIGNATURE = "签名校验失败"
TOO_MANY_REQUESTS = "请求过于频繁，请稍后重试"

# Envelope fields that must be present and not blank; a tuple lists accepted spellings.
ENVELOPE_REQUIRED: tuple[str | tuple[str, ...], ...] = (
    "infno",
    "msgid",
    ("mdtrtarea_admvs", "mdtrt_area_admvs"),
    "recer_sys_code",
    "infver",
    "opter_type",
    "opter",
    "opter_name",
    "inf_time",
    "fixmedins_code",
    "fixmedins_name",
    "input",
)

SIGNATURE_HEADERS = ("X-Medins-App-Id", "X-Medins-Timestamp", "X-Medins-Nonce", "X-Medins-Signature")
SIGNATURE_WINDOW_MS = 300_000

_TIME_FORMATS = {
    "date": ("%Y-%m-%d", re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"), "yyyy-MM-dd"),
    "datetime": (
        "%Y-%m-%d %H:%M:%S",
        re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}"),
        "yyyy-MM-dd HH:mm:ss",
    ),
    "compact": ("%Y%m%d%H%M%S", re.compile(r"[0-9]{14}"), "yyyyMMddHHmmss"),
}
_TYPE_NAMES = {"string": "字符串", "integer": "整数", "number": "数值"}
_SIX_DIGITS = re.compile(r"[0-9]{6}")
_HEX_NONCE = re.compile(r"[0-9a-fA-F]{32}")


class Refusal(Exception):
    """
    A message the gateway answers with ``infcode`` -1.

    :param err_msg: The reply's ``err_msg``: a protocol prefix, then a detail.
    :param status: The HTTP status of the reply (200 for business refusals).
    :param outcome: How ``/_sandbox/messages`` records the message.
    """

    def __init__(self, err_msg: str, *, status: int = 200, outcome: str = REFUSED) -> None:
        super().__init__(err_msg)
        self.err_msg = err_msg
        self.status = status
        self.outcome = outcome


def is_blank(value: Any) -> bool:
    """Tell whether a value counts as missing: absent, null or a whitespace-only string."""
    return value is None or (isinstance(value, str) and not value.strip())


def is_time(value: Any, kind: str) -> bool:
    """Tell whether ``value`` is a string in the ``date``, ``datetime`` or ``compact`` format."""
    fmt, pattern, _ = _TIME_FORMATS[kind]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        return False
    try:
        datetime.strptime(value, fmt)
    except ValueError:
        return False
    return True


def parse_envelope(body: bytes) -> dict[str, Any]:
    """Decode a request body into the envelope object, or refuse it as malformed."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Refusal(f"{FORMAT_ERROR}: 报文不是UTF-8编码") from None
    try:
        envelope = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise Refusal(f"{FORMAT_ERROR}: 报文不是合法的JSON") from None
    if not isinstance(envelope, dict):
        raise Refusal(f"{FORMAT_ERROR}: 报文须为JSON对象")
    return envelope


def check_envelope(envelope: dict[str, Any], catalog: Mapping[str, InterfaceSpec]) -> InterfaceSpec:
    """
    Check the envelope fields (all but ``sign_no``) and return the interface it calls.

    :param envelope: The parsed request body.
    :param catalog: The interfaces the gateway knows, by number.
    """
    for names in ENVELOPE_REQUIRED:
        names = names if isinstance(names, tuple) else (names,)
        if all(is_blank(envelope.get(name)) for name in names):
            raise Refusal(f"{MISSING_FIELD}: {names[0]}")

    infno = envelope["infno"]
    spec = catalog.get(infno) if isinstance(infno, str) else None
    if spec is None:
        raise Refusal(f"{UNKNOWN_INFNO}: {str(infno)[:10]}")

    _check_msgid(envelope["msgid"], envelope["fixmedins_code"])
    if not is_time(envelope["inf_time"], "datetime"):
        raise Refusal(f"{BAD_INF_TIME}: inf_time 须为yyyy-MM-dd HH:mm:ss")
    if envelope["opter_type"] not in ("1", "2", "3"):
        raise Refusal(f"{BAD_OPTER_TYPE}: opter_type 须为1、2或3")
    _check_admdvs(envelope, spec)
    return spec


def check_input(spec: InterfaceSpec, envelope: dict[str, Any]) -> dict[str, Any]:
    """Check the interface's input against the catalog and return it (what sits under input_key)."""
    wrapper = envelope["input"]
    if not isinstance(wrapper, dict):
        raise Refusal(f"{BAD_INPUT}: input 须为JSON对象")
    data = wrapper.get(spec.input_key)
    if data is None:
        raise Refusal(f"{BAD_INPUT}: input 缺少 {spec.input_key}")
    if not isinstance(data, dict):
        raise Refusal(f"{BAD_INPUT}: input.{spec.input_key} 须为JSON对象")

    for name in spec.required:
        if is_blank(data.get(name)):
            raise Refusal(f"{BAD_INPUT}: 缺少必填字段 {name}")
    if spec.required_any and not any(
        all(not is_blank(data.get(name)) for name in group) for group in spec.required_any
    ):
        choices = " 或 ".join("+".join(group) for group in spec.required_any)
        raise Refusal(f"{BAD_INPUT}: 须提供 {choices}")

    for name, rule in spec.fields.items():
        value = data.get(name)
        if value is not None:
            problem = _field_problem(name, value, rule)
            if problem:
                raise Refusal(f"{BAD_INPUT}: {problem}")
    return data


def to_decimal(value: int | float) -> Decimal:
    """Return a JSON number as the decimal it was written as (``0.1`` stays ``0.1``)."""
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


class NonceCache:
    """Remember the signature nonces seen within the signature window, so none is accepted twice."""

    def __init__(self, ttl_seconds: float = 2 * SIGNATURE_WINDOW_MS / 1000) -> None:
        self._ttl = ttl_seconds
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._next_prune = 0.0

    def add(self, nonce: str) -> bool:
        """Remember ``nonce``; return False when it was already seen."""
        now = time.monotonic()
        with self._lock:
            if now >= self._next_prune:
                self._seen = {key: seen for key, seen in self._seen.items() if now - seen < self._ttl}
                self._next_prune = now + 10
            if nonce in self._seen:
                return False
            self._seen[nonce] = now
            return True


def verify_signature(
    headers: Mapping[str, str] | Any,
    body: bytes,
    *,
    app_id: str | None,
    app_secret: str,
    nonces: NonceCache,
    now_ms: int | None = None,
) -> None:
    """
    Check the signed headers of a request; refuse with HTTP 401 when they do not hold.

    :param headers: The request headers (anything with ``get``).
    :param body: The raw request body the signature covers.
    :param app_id: The app id requests must carry; any when None.
    :param app_secret: The HMAC key.
    :param nonces: The nonces seen so far.
    :param now_ms: The current Unix time in milliseconds; the clock when None.
    """
    values = {name: (headers.get(name) or "").strip() for name in SIGNATURE_HEADERS}
    for name, value in values.items():
        if not value:
            raise _unsigned(f"缺少请求头 {name}")
    request_app_id, timestamp, nonce, signature = values.values()

    if app_id is not None and request_app_id != app_id:
        raise _unsigned("X-Medins-App-Id 不是本网关登记的应用")
    if not re.fullmatch(r"[0-9]{1,16}", timestamp):
        raise _unsigned("X-Medins-Timestamp 须为毫秒级Unix时间")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if abs(now_ms - int(timestamp)) > SIGNATURE_WINDOW_MS:
        raise _unsigned("X-Medins-Timestamp 与网关时间相差超过300秒")
    if not _HEX_NONCE.fullmatch(nonce):
        raise _unsigned("X-Medins-Nonce 须为32位十六进制字符")

    message = "\n".join((request_app_id, timestamp, nonce, hashlib.sha256(body).hexdigest()))
    expected = hmac.new(app_secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature.lower()):
        raise _unsigned("X-Medins-Signature 不正确")
    if not nonces.add(nonce):
        raise _unsigned("X-Medins-Nonce 已使用过")


def _unsigned(detail: str) -> Refusal:
    return Refusal(f"{BAD_SIGNATURE}: {detail}", status=401, outcome=UNSIGNED)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_msgid(msgid: Any, fixmedins_code: Any) -> None:
    if not isinstance(msgid, str) or len(msgid) != 30:
        raise Refusal(f"{BAD_MSGID}: msgid 须为30位")
    if not isinstance(fixmedins_code, str) or len(fixmedins_code) != 12 or msgid[:12] != fixmedins_code:
        raise Refusal(f"{BAD_MSGID}: msgid 前12位须为12位定点医药机构编号 fixmedins_code")
    if not is_time(msgid[12:26], "compact"):
        raise Refusal(f"{BAD_MSGID}: msgid 第13至26位须为有效的yyyyMMddHHmmss")
    if not re.fullmatch(r"[0-9]{4}", msgid[26:]):
        raise Refusal(f"{BAD_MSGID}: msgid 末4位须为数字序号")


def _check_admdvs(envelope: dict[str, Any], spec: InterfaceSpec) -> None:
    area = envelope.get("mdtrtarea_admvs")
    if is_blank(area):
        area = envelope.get("mdtrt_area_admvs")
    if not _is_six_digits(area):
        raise Refusal(f"{BAD_ADMDVS}: mdtrtarea_admvs 须为6位数字")

    wrapper = envelope["input"]
    data = wrapper.get(spec.input_key) if isinstance(wrapper, dict) else None
    carries_psn_no = isinstance(data, dict) and not is_blank(data.get("psn_no"))
    insuplc = envelope.get("insuplc_admdvs")
    if carries_psn_no and not _is_six_digits(insuplc):
        raise Refusal(f"{BAD_ADMDVS}: 入参含psn_no时 insuplc_admdvs 须为6位数字")
    if not is_blank(insuplc) and not _is_six_digits(insuplc):
        raise Refusal(f"{BAD_ADMDVS}: insuplc_admdvs 须为6位数字")


def _is_six_digits(value: Any) -> bool:
    return isinstance(value, str) and _SIX_DIGITS.fullmatch(value) is not None


def _field_problem(name: str, value: Any, rule: dict[str, Any]) -> str | None:
    kind = rule.get("type", "string")
    if kind == "string" and not isinstance(value, str):
        return f"{name} 须为{_TYPE_NAMES[kind]}"
    if kind in ("integer", "number"):
        numeric = (int,) if kind == "integer" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            return f"{name} 须为{_TYPE_NAMES[kind]}"

    if isinstance(value, str):
        if "max_length" in rule and len(value) > rule["max_length"]:
            return f"{name} 长度不能超过{rule['max_length']}"
        fmt = rule.get("format")
        if fmt in _TIME_FORMATS and value and not is_time(value, fmt):
            return f"{name} 格式须为{_TIME_FORMATS[fmt][2]}"
    if "enum" in rule and value not in rule["enum"]:
        return f"{name} 取值不在[{','.join(map(str, rule['enum']))}]"
    if isinstance(value, (int, float)):
        if "minimum" in rule and value < rule["minimum"]:
            return f"{name} 不能小于{rule['minimum']}"
        if "maximum" in rule and value > rule["maximum"]:
            return f"{name} 不能大于{rule['maximum']}"
        if "decimals" in rule and -to_decimal(value).as_tuple().exponent > rule["decimals"]:
            return f"{name} 小数位数不能超过{rule['decimals']}"
    return None
