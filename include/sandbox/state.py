"""What the sandbox gateway remembers: sign-ins, visits, settlements, applied writes and messages.

One re-entrant lock guards everything; the business rules in :mod:`sandbox.business` hold it
for the whole of a check-then-change, so two concurrent messages never both settle one visit.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sandbox import fake_data

SHANGHAI = ZoneInfo("Asia/Shanghai")

OK, OK_REPLY_LOST, REFUSED = "ok", "ok_reply_lost", "refused"
ERROR_5XX, DROPPED, RATE_LIMITED, UNSIGNED, HUNG = "error_5xx", "dropped", "rate_limited", "unsigned", "hung"

# The sandbox's own 6-character code at the head of every inf_refmsgid.
REFMSGID_PREFIX = "SANDBX"


def now_cst() -> datetime:
    """Return the current time in China Standard Time, the platform's clock."""
    return datetime.now(SHANGHAI)


@dataclass
class SignIn:
    """A ``sign_no`` issued by ``9001`` to one institution's operator for one day."""

    sign_no: str
    fixmedins_code: str
    opter: str
    day: date
    sign_time: datetime


@dataclass
class Registration:
    """An outpatient visit opened by ``2201``."""

    mdtrt_id: str
    psn_no: str
    ipt_otp_no: str
    fixmedins_code: str
    fixmedins_name: str
    begntime: str
    insutype: str
    cancelled: bool = False


@dataclass
class Settlement:
    """An outpatient settlement made by ``2207``; it stands until ``2208`` or ``2601`` undoes it."""

    setl_id: str
    mdtrt_id: str
    psn_no: str
    fixmedins_code: str
    insutype: str
    setl_time: datetime
    amounts: dict[str, Decimal]
    setlinfo: dict[str, Any]
    cancelled: bool = False


@dataclass
class AppliedWrite:
    """A write message that changed the state: what ``2601`` may reverse by its ``msgid``."""

    msgid: str
    infno: str
    fixmedins_code: str
    psn_no: str
    ref: str
    reversed: bool = False


@dataclass
class _Message:
    msgid: str
    infno: str | None
    count: int = 0
    outcomes: list[str] = field(default_factory=list)


class SandboxState:
    """The gateway's memory, safe to share between the server's threads."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._refmsg_counter = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        """Forget messages, sign-ins, visits and settlements."""
        with self.lock:
            self.sign_ins: dict[str, SignIn] = {}
            self.registrations: dict[tuple[str, str], Registration] = {}
            self.settlements: dict[str, Settlement] = {}
            # (fixmedins_code, mdtrt_id) -> setl_id of the settlement that stands for the visit
            self.standing: dict[tuple[str, str], str] = {}
            self.writes: dict[str, AppliedWrite] = {}
            self.double_settlements = 0
            self._messages: dict[str, _Message] = {}
            self._received = 0
            self._by_infno: Counter[str] = Counter()
            self._by_outcome: Counter[str] = Counter()
            self._sign_in_counter = itertools.count(1)

    # -- sign-in ----------------------------------------------------------------------------

    def sign_in(self, fixmedins_code: str, opter: str, now: datetime) -> SignIn:
        """Return the operator's live sign-in for today, issuing a new ``sign_no`` when none is."""
        with self.lock:
            for sign_in in self.sign_ins.values():
                if (sign_in.fixmedins_code, sign_in.opter, sign_in.day) == (
                    fixmedins_code,
                    opter,
                    now.date(),
                ):
                    return sign_in
            serial = next(self._sign_in_counter)
            sign_no = f"{now:%Y%m%d%H%M%S}" + fake_data.digits(16, fixmedins_code, opter, now.date(), serial)
            sign_in = SignIn(sign_no, fixmedins_code, opter, now.date(), now)
            self.sign_ins[sign_no] = sign_in
            return sign_in

    def live_sign_in(self, sign_no: Any, fixmedins_code: str, opter: str, today: date) -> SignIn | None:
        """Return the sign-in of ``sign_no`` if it was issued to this institution and operator today."""
        with self.lock:
            sign_in = self.sign_ins.get(sign_no) if isinstance(sign_no, str) else None
        if sign_in and (sign_in.fixmedins_code, sign_in.opter, sign_in.day) == (fixmedins_code, opter, today):
            return sign_in
        return None

    def sign_out(self, sign_no: str) -> None:
        """Revoke a ``sign_no``."""
        with self.lock:
            self.sign_ins.pop(sign_no, None)

    # -- messages ---------------------------------------------------------------------------

    def record(self, msgid: str | None, infno: str | None, outcome: str) -> None:
        """Count one received message and how it ended; ``msgid`` None when it carried none."""
        with self.lock:
            self._received += 1
            self._by_infno[infno or "unknown"] += 1
            self._by_outcome[outcome] += 1
            if msgid is not None:
                message = self._messages.setdefault(msgid, _Message(msgid, infno))
                message.count += 1
                message.outcomes.append(outcome)

    def next_refmsgid(self, now: datetime) -> str:
        """Return a new 30-character ``inf_refmsgid``: sandbox code, time and a counter."""
        return f"{REFMSGID_PREFIX}{now:%Y%m%d%H%M%S}{next(self._refmsg_counter) % 10**10:010d}"

    def stats(self) -> dict[str, Any]:
        """Return the counters ``/_sandbox/stats`` shows."""
        with self.lock:
            return {
                "received": self._received,
                "by_infno": dict(self._by_infno),
                "by_outcome": dict(self._by_outcome),
                "duplicate_msgids": [m.msgid for m in self._messages.values() if m.count > 1],
                "double_settlements": self.double_settlements,
            }

    def messages(self) -> list[dict[str, Any]]:
        """Return every message received, by ``msgid``, in the order first seen."""
        with self.lock:
            return [
                {"msgid": m.msgid, "infno": m.infno, "count": m.count, "outcomes": list(m.outcomes)}
                for m in self._messages.values()
            ]
