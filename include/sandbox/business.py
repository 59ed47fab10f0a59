"""The interfaces' business rules: sign-in, the fake queries, and the writes that change state.

:meth:`Gateway.process` runs the protocol's checks in order, then the interface's handler. An
interface that is in the catalog but has no handler here is checked like any other and answered
with an empty output, so adding one to the catalog needs no code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sandbox import fake_data
from sandbox.catalog import SESSION, InterfaceSpec
from sandbox.checks import (
    BAD_INPUT,
    SIGN_IN_INVALID,
    Refusal,
    check_envelope,
    check_input,
    is_blank,
    to_decimal,
)
from sandbox.fake_data import DATETIME_FMT, money
from sandbox.state import OK, REFUSED, AppliedWrite, Registration, SandboxState, Settlement

BUSINESS_FAILURE = "业务处理失败"
PERSON_NOT_FOUND = "人员信息不存在"
SETTLEMENT_NOT_FOUND = "未找到结算信息"
ALREADY_SETTLED = "该就诊已结算，不能重复结算"

SIGN_IN_INFNO = "9001"
SETTLE_INFNO = "2207"
# Writes that 2601 knows how to undo.
REVERSIBLE = frozenset({"2201", "2202", "2207", "2208"})

_AMOUNTS = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay")


@dataclass
class Call:
    """One checked message on its way through a handler."""

    spec: InterfaceSpec
    envelope: dict[str, Any]
    data: dict[str, Any]
    now: datetime
    warn_msg: str | None = None

    @property
    def fixmedins_code(self) -> str:
        """Return the sending institution's code."""
        return self.envelope["fixmedins_code"]

    @property
    def msgid(self) -> str:
        """Return the message's ``msgid``."""
        return self.envelope["msgid"]


@dataclass(frozen=True)
class Result:
    """The reply to a processed message and how ``/_sandbox/messages`` records it."""

    reply: dict[str, Any]
    outcome: str
    applied_write: bool


class Gateway:
    """
    Answer envelopes as the national platform would, from the catalog and the shared state.

    :param catalog: The interfaces the gateway knows, by number.
    :param state: The gateway's memory.
    """

    def __init__(self, catalog: Mapping[str, InterfaceSpec], state: SandboxState) -> None:
        self.catalog = catalog
        self.state = state
        self._handlers: dict[str, Callable[[Call], dict[str, Any]]] = {
            "9001": self._sign_in,
            "9002": self._sign_out,
            "1101": self._person,
            "1201": self._institution,
            "1312": self._catalog_query,
            "5201": self._visits,
            "5203": self._settlement_query,
            "5301": self._chronic_filings,
            "2201": self._register,
            "2202": self._cancel_registration,
            "2207": self._settle,
            "2208": self._cancel_settlement,
            "2601": self._reverse,
            "3201": self._reconcile,
        }

    def process(
        self, envelope: dict[str, Any], *, received_at: datetime, business_error: bool = False
    ) -> Result:
        """
        Check one envelope and apply it.

        :param envelope: The parsed request body.
        :param received_at: When the message arrived (China Standard Time).
        :param business_error: Refuse the message with ``业务处理失败`` once it passed the checks
            (never a sign-in or sign-out).
        """
        try:
            spec = check_envelope(envelope, self.catalog)
            if spec.infno != SIGN_IN_INFNO:
                self._check_sign_in(envelope, received_at.date())
            data = check_input(spec, envelope)
            if business_error and spec.kind != SESSION:
                raise Refusal(f"{BUSINESS_FAILURE}: 沙箱按故障设置拒绝了本报文")
        except Refusal as refusal:
            self.note_unprocessed(envelope)
            return self._refused(refusal, received_at)

        call = Call(spec, envelope, data, received_at)
        handler = self._handlers.get(spec.infno, _empty_output)
        try:
            output = handler(call)
        except Refusal as refusal:
            return self._refused(refusal, received_at)
        reply = self.reply(received_at=received_at, output=output, warn_msg=call.warn_msg)
        return Result(reply, OK, applied_write=spec.is_write)

    def reply(
        self,
        *,
        received_at: datetime,
        infcode: int = 0,
        output: Any = None,
        err_msg: str | None = None,
        warn_msg: str | None = None,
    ) -> dict[str, Any]:
        """Build a reply envelope."""
        return {
            "infcode": infcode,
            "inf_refmsgid": self.state.next_refmsgid(received_at),
            "refmsg_time": _millis(received_at),
            "respond_time": _millis(datetime.now(received_at.tzinfo)),
            "err_msg": err_msg,
            "warn_msg": warn_msg,
            "output": output,
            "signtype": None,
            "cainfo": None,
        }

    def note_unprocessed(self, envelope: Any) -> None:
        """Count a ``2207`` that never reached its handler if its visit is already settled."""
        if not isinstance(envelope, dict) or envelope.get("infno") != SETTLE_INFNO:
            return
        wrapper = envelope.get("input")
        spec = self.catalog.get(SETTLE_INFNO)
        data = wrapper.get(spec.input_key if spec else "data") if isinstance(wrapper, dict) else None
        mdtrt_id = data.get("mdtrt_id") if isinstance(data, dict) else None
        code = envelope.get("fixmedins_code")
        if not isinstance(mdtrt_id, str) or not isinstance(code, str):
            return
        with self.state.lock:
            if (code, mdtrt_id) in self.state.standing:
                self.state.double_settlements += 1

    def _refused(self, refusal: Refusal, received_at: datetime) -> Result:
        reply = self.reply(received_at=received_at, infcode=-1, err_msg=refusal.err_msg)
        return Result(reply, REFUSED, applied_write=False)

    def _check_sign_in(self, envelope: dict[str, Any], today: date) -> None:
        sign_no = envelope.get("sign_no")
        if is_blank(sign_no):
            raise Refusal(f"{SIGN_IN_INVALID}: 缺少签到编号 sign_no，请先签到(9001)")
        if not self.state.live_sign_in(sign_no, envelope["fixmedins_code"], str(envelope["opter"]), today):
            raise Refusal(f"{SIGN_IN_INVALID}: sign_no 不是本机构本经办人当日的有效签到，请重新签到(9001)")

    # -- session ----------------------------------------------------------------------------

    def _sign_in(self, call: Call) -> dict[str, Any]:
        sign_in = self.state.sign_in(call.fixmedins_code, str(call.envelope["opter"]), call.now)
        return {
            "signinoutb": {"sign_time": f"{sign_in.sign_time:{DATETIME_FMT}}", "sign_no": sign_in.sign_no}
        }

    def _sign_out(self, call: Call) -> dict[str, Any]:
        sign_no = call.data["sign_no"]
        if not self.state.live_sign_in(
            sign_no, call.fixmedins_code, str(call.envelope["opter"]), call.now.date()
        ):
            raise Refusal(f"{BAD_INPUT}: sign_no 不是本机构本经办人当日的有效签到编号")
        self.state.sign_out(sign_no)
        return {"signoutoutb": {"sign_time": f"{call.now:{DATETIME_FMT}}"}}

    # -- queries ----------------------------------------------------------------------------

    def _person(self, call: Call) -> dict[str, Any]:
        data = call.data
        cert_type, cert_no = data["mdtrt_cert_type"], data["mdtrt_cert_no"]
        if cert_type == "02" and not fake_data.is_valid_id_number(cert_no):
            raise Refusal(f"{PERSON_NOT_FOUND}: 身份证号码校验未通过")
        begntime = data.get("begntime")
        on = datetime.strptime(begntime[:10], "%Y-%m-%d").date() if begntime else call.now.date()
        psn_name = None if is_blank(data.get("psn_name")) else data["psn_name"]
        return fake_data.person(cert_type, cert_no, psn_name=psn_name, on=on)

    def _institution(self, call: Call) -> dict[str, Any]:
        data = call.data
        entry = fake_data.institution(
            data["fixmedins_type"], data.get("fixmedins_code") or None, data.get("fixmedins_name") or None
        )
        return {"medinsinfo": [entry]}

    def _catalog_query(self, call: Call) -> dict[str, Any]:
        data = call.data
        return fake_data.catalog_page(
            data["query_date"], data.get("hilist_code") or None, data.get("page_num"), data.get("page_size")
        )

    def _visits(self, call: Call) -> dict[str, Any]:
        data = call.data
        psn_no, begin, end = data["psn_no"], data["begntime"], data["endtime"]
        if begin > end:
            raise Refusal(f"{BAD_INPUT}: begntime 不能晚于 endtime")
        with self.state.lock:
            held = [
                _visit_row(reg)
                for reg in self.state.registrations.values()
                if reg.psn_no == psn_no and not reg.cancelled
            ]
        visits = [
            row
            for row in held + fake_data.visit_history(psn_no)
            if begin <= row["begntime"] <= end
            and data.get("mdtrt_id") in (None, "", row["mdtrt_id"])
            and data.get("med_type") in (None, "", row["med_type"])
        ]
        return {"mdtrtinfo": sorted(visits, key=lambda row: row["begntime"])}

    def _settlement_query(self, call: Call) -> dict[str, Any]:
        data = call.data
        with self.state.lock:
            settlement = self.state.settlements.get(data["setl_id"])
            if settlement is None or settlement.cancelled or settlement.fixmedins_code != call.fixmedins_code:
                setl_id = self.state.standing.get((call.fixmedins_code, data["mdtrt_id"]))
                settlement = self.state.settlements.get(setl_id) if setl_id else None
                if settlement is not None and settlement.psn_no != data["psn_no"]:
                    settlement = None
            if settlement is None:
                raise Refusal(SETTLEMENT_NOT_FOUND)
            return {"setlinfo": dict(settlement.setlinfo)}

    def _chronic_filings(self, call: Call) -> dict[str, Any]:
        return {"feedetail": fake_data.chronic_filings(call.data["psn_no"])}

    def _reconcile(self, call: Call) -> dict[str, Any]:
        data = call.data
        begin, end = data["stmt_begndate"], data["stmt_enddate"]
        if begin > end:
            raise Refusal(f"{BAD_INPUT}: stmt_begndate 不能晚于 stmt_enddate")
        with self.state.lock:
            held = [
                s
                for s in self.state.settlements.values()
                if not s.cancelled
                and s.fixmedins_code == call.fixmedins_code
                and s.insutype == data["insutype"]
                and begin <= f"{s.setl_time:%Y-%m-%d}" <= end
            ]

        differences = []
        if held:
            center: dict[str, Decimal | int] = {
                name: sum((s.amounts[name] for s in held), Decimal("0.00"))
                for name in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay")
            }
            center["fixmedins_setl_cnt"] = len(held)
            for name, held_value in center.items():
                given = data[name] if name == "fixmedins_setl_cnt" else money(to_decimal(data[name]))
                if given != held_value:
                    differences.append(f"{name} 机构{given} 中心{held_value}")
        result = {
            "setl_optins": data["setl_optins"],
            "stmt_rslt": "1" if differences else "0",
            "stmt_rslt_dscr": "不平: " + "; ".join(differences) if differences else "平",
        }
        return {"stmtinfo": result}

    # -- writes -----------------------------------------------------------------------------

    def _register(self, call: Call) -> dict[str, Any]:
        data, code = call.data, call.fixmedins_code
        with self.state.lock:
            for attempt in range(1000):
                mdtrt_id = fake_data.digits(24, "mdtrt", code, data["psn_no"], data["ipt_otp_no"], attempt)
                registration = self.state.registrations.get((code, mdtrt_id))
                if registration is None:
                    break
                if not registration.cancelled:
                    call.warn_msg = "该门诊号已挂号，返回原就诊信息"
                    return _registration_output(registration)
            registration = Registration(
                mdtrt_id=mdtrt_id,
                psn_no=data["psn_no"],
                ipt_otp_no=data["ipt_otp_no"],
                fixmedins_code=code,
                fixmedins_name=call.envelope["fixmedins_name"],
                begntime=data["begntime"],
                insutype=data["insutype"],
            )
            self.state.registrations[(code, mdtrt_id)] = registration
            self._applied(call, mdtrt_id)
        return _registration_output(registration)

    def _cancel_registration(self, call: Call) -> dict[str, Any]:
        data, key = call.data, (call.fixmedins_code, call.data["mdtrt_id"])
        with self.state.lock:
            if key in self.state.standing:
                raise Refusal("该就诊已结算，请先撤销结算(2208)")
            registration = self.state.registrations.get(key)
            if registration is None or registration.cancelled or registration.psn_no != data["psn_no"]:
                call.warn_msg = "未找到有效的挂号信息，视为已撤销"
                return {}
            registration.cancelled = True
            self._applied(call, registration.mdtrt_id)
        return {}

    def _settle(self, call: Call) -> dict[str, Any]:
        data, code = call.data, call.fixmedins_code
        key = (code, data["mdtrt_id"])
        with self.state.lock:
            if key in self.state.standing:
                self.state.double_settlements += 1
                raise Refusal(ALREADY_SETTLED)
            amounts = fake_data.settlement_split(
                data["psn_no"],
                data["mdtrt_id"],
                data["insutype"],
                to_decimal(data["medfee_sumamt"]),
                data.get("acct_used_flag") == "1",
            )
            setl_id = fake_data.digits(24, "setl", code, data["mdtrt_id"], call.msgid)
            setlinfo = {
                "setl_id": setl_id,
                "mdtrt_id": data["mdtrt_id"],
                "psn_no": data["psn_no"],
                "chrg_bchno": data["chrg_bchno"],
                "insutype": data["insutype"],
                "mdtrt_cert_type": data["mdtrt_cert_type"],
                "psn_setlway": data["psn_setlway"],
                **{name: float(value) for name, value in amounts.items()},
                "hifp_pay": float(amounts["fund_pay_sumamt"]),
                "psn_part_amt": float(amounts["acct_pay"] + amounts["psn_cash_pay"]),
                "setl_time": f"{call.now:{DATETIME_FMT}}",
                "clr_optins": call.envelope.get("insuplc_admdvs"),
            }
            self.state.settlements[setl_id] = Settlement(
                setl_id=setl_id,
                mdtrt_id=data["mdtrt_id"],
                psn_no=data["psn_no"],
                fixmedins_code=code,
                insutype=data["insutype"],
                setl_time=call.now,
                amounts=amounts,
                setlinfo=setlinfo,
            )
            self.state.standing[key] = setl_id
            self._applied(call, setl_id)
        return {"setlinfo": dict(setlinfo)}

    def _cancel_settlement(self, call: Call) -> dict[str, Any]:
        data = call.data
        with self.state.lock:
            settlement = self.state.settlements.get(data["setl_id"])
            if (
                settlement is None
                or settlement.fixmedins_code != call.fixmedins_code
                or (settlement.mdtrt_id, settlement.psn_no) != (data["mdtrt_id"], data["psn_no"])
            ):
                raise Refusal(SETTLEMENT_NOT_FOUND)
            if settlement.cancelled:
                raise Refusal("该结算已撤销，不能重复撤销")
            self._undo_settlement(settlement)
            self._applied(call, settlement.setl_id)
        setlinfo = {
            "setl_id": fake_data.digits(24, "cancel", settlement.setl_id),
            "init_setl_id": settlement.setl_id,
            "mdtrt_id": settlement.mdtrt_id,
            "psn_no": settlement.psn_no,
            **{name: float(-settlement.amounts[name]) for name in _AMOUNTS},
            "setl_time": f"{call.now:{DATETIME_FMT}}",
        }
        return {"setlinfo": setlinfo}

    def _reverse(self, call: Call) -> dict[str, Any]:
        data, state = call.data, self.state
        if data["oinfno"] not in REVERSIBLE:
            raise Refusal(f"该交易不支持冲正: oinfno 须为{','.join(sorted(REVERSIBLE))}之一")
        with state.lock:
            original = state.writes.get(data["omsgid"])
            if original is None or original.fixmedins_code != call.fixmedins_code:
                call.warn_msg = "原交易未成功处理，无需冲正"
                return {}
            if (original.infno, original.psn_no) != (data["oinfno"], data["psn_no"]):
                raise Refusal("冲正信息与原交易不符")
            if original.reversed:
                call.warn_msg = "原交易已冲正"
                return {}
            self._undo(original, call)
            original.reversed = True
            self._applied(call, original.msgid)
        return {}

    def _undo(self, original: AppliedWrite, call: Call) -> None:
        state, code = self.state, original.fixmedins_code
        if original.infno in ("2207", "2208"):
            settlement = state.settlements[original.ref]
            key = (code, settlement.mdtrt_id)
            if original.infno == "2207":
                if settlement.cancelled:
                    call.warn_msg = "原结算已撤销"
                else:
                    self._undo_settlement(settlement)
            elif key in state.standing:
                raise Refusal("原交易无法冲正: 该就诊已重新结算")
            else:
                settlement.cancelled = False
                state.standing[key] = settlement.setl_id
        else:
            registration = state.registrations[(code, original.ref)]
            if original.infno == "2201" and (code, registration.mdtrt_id) in state.standing:
                raise Refusal("原交易无法冲正: 该就诊已结算")
            registration.cancelled = original.infno == "2201"

    def _undo_settlement(self, settlement: Settlement) -> None:
        settlement.cancelled = True
        key = (settlement.fixmedins_code, settlement.mdtrt_id)
        if self.state.standing.get(key) == settlement.setl_id:
            del self.state.standing[key]

    def _applied(self, call: Call, ref: str) -> None:
        self.state.writes[call.msgid] = AppliedWrite(
            call.msgid, call.spec.infno, call.fixmedins_code, call.data.get("psn_no") or "", ref
        )


def _empty_output(call: Call) -> dict[str, Any]:
    return {}


def _registration_output(registration: Registration) -> dict[str, Any]:
    return {
        "data": {
            "mdtrt_id": registration.mdtrt_id,
            "psn_no": registration.psn_no,
            "ipt_otp_no": registration.ipt_otp_no,
        }
    }


def _visit_row(registration: Registration) -> dict[str, Any]:
    return {
        "mdtrt_id": registration.mdtrt_id,
        "psn_no": registration.psn_no,
        "fixmedins_code": registration.fixmedins_code,
        "fixmedins_name": registration.fixmedins_name,
        "med_type": "11",
        "begntime": registration.begntime,
        "endtime": None,
        "insutype": registration.insutype,
        "ipt_otp_no": registration.ipt_otp_no,
    }


def _millis(moment: datetime) -> str:
    return f"{moment:%Y%m%d%H%M%S}{moment.microsecond // 1000:03d}"
