"""Hook for the national medical-insurance platform's gateway (国家医疗保障信息平台).

Every interface is one ``POST`` of a JSON envelope. The hook builds the envelope from the
Connection's institution settings, gives each message a unique ``msgid``, signs the HTTP headers
when the Connection carries an app id and secret, signs in with ``9001`` and reuses the
``sign_no`` for the operator's day, and sorts every outcome into one of four classes:

* ``SUCCESS``: ``infcode`` 0;
* ``REFUSED``: a business refusal (``infcode`` < 0); final, never retried;
* ``TRANSIENT``: the message was not processed, or it was a query: safe to send again;
* ``UNKNOWN``: a write was sent and no trustworthy reply came back; it may have been applied.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

import requests
from airflow.sdk import BaseHook
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from medins.catalog import SESSION, Catalog, Interface, load_catalog
from medins.masking import mask_text
from medins.sequence import FileMsgIdSequence, MsgIdSequence
from medins.timeutil import inf_time, now_cst

if TYPE_CHECKING:
    from medins.shared_state import RateLimiter

log = logging.getLogger(__name__)

DEFAULT_SERVICE_PATH = "/fsi/api/rsfComIfsService/callService"
DEFAULT_RATE_LIMIT_WAIT = 60.0
SIGN_IN_EXPIRED = "签到信息无效"


class OutcomeKind(StrEnum):
    """How a call ended, as far as the caller can know."""

    SUCCESS = "SUCCESS"
    REFUSED = "REFUSED"
    TRANSIENT = "TRANSIENT"
    UNKNOWN = "UNKNOWN"


@dataclass
class CallOutcome:
    """The classified result of one message sent to the gateway."""

    kind: OutcomeKind
    api_code: str
    msgid: str
    infcode: int | None = None
    err_msg: str = ""
    output: Any = None
    http_status: int | None = None
    inf_refmsgid: str | None = None
    warn_msg: str = ""
    elapsed_ms: float = 0.0

    @property
    def reason(self) -> str:
        """Say why the call did not succeed, with personal data masked; empty on success."""
        if self.kind is OutcomeKind.SUCCESS:
            return ""
        parts = [f"{self.api_code}"]
        if self.http_status is not None and self.http_status != 200:
            parts.append(f"HTTP {self.http_status}")
        if self.infcode is not None:
            parts.append(f"infcode {self.infcode}")
        if self.err_msg:
            parts.append(mask_text(self.err_msg))
        return ": ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]


@dataclass(frozen=True)
class Institution:
    """The settings one institution (定点医药机构) sends its messages with."""

    fixmedins_code: str
    fixmedins_name: str
    mdtrtarea_admvs: str
    insuplc_admdvs: str
    opter: str
    opter_name: str
    opter_type: str = "1"
    mac: str = "00:00:00:00:00:00"
    ip: str = "127.0.0.1"


class SignInCache(Protocol):
    """Keeps each institution and operator's ``sign_no`` for the day."""

    def get(self, key: str) -> str | None:
        """Return the cached ``sign_no`` for ``key``, or None."""
        ...

    def put(self, key: str, sign_no: str, ttl_seconds: int) -> None:
        """Keep ``sign_no`` for ``key`` for ``ttl_seconds``."""
        ...

    def drop(self, key: str, sign_no: str) -> None:
        """Forget ``sign_no`` for ``key`` if it is still the cached one."""
        ...


@dataclass
class LocalSignInCache:
    """A per-process sign-in cache; every process signs in once per institution and day."""

    _entries: dict[str, tuple[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: str) -> str | None:
        """Return the cached ``sign_no`` for ``key`` while it is valid."""
        with self._lock:
            entry = self._entries.get(key)
        if entry and entry[1] > time.monotonic():
            return entry[0]
        return None

    def put(self, key: str, sign_no: str, ttl_seconds: int) -> None:
        """Keep ``sign_no`` for ``key``."""
        with self._lock:
            self._entries[key] = (sign_no, time.monotonic() + ttl_seconds)

    def drop(self, key: str, sign_no: str) -> None:
        """Forget ``sign_no`` for ``key``."""
        with self._lock:
            if self._entries.get(key, ("",))[0] == sign_no:
                del self._entries[key]


class GatewayError(Exception):
    """The gateway could not be used at all (bad settings, failed sign-in)."""


class MedicalInsuranceHook(BaseHook):
    """
    Call the national medical-insurance platform's numbered interfaces through one gateway.

    The Connection (type ``http``) holds the gateway: ``host`` (a URL, or a host name with
    ``schema`` and ``port``), the app secret as ``password``, and in ``extra``: ``app_id``,
    ``service_path``, ``recer_sys_code``, ``infver``, ``signtype``, ``timeout`` (seconds, or
    ``[connect, read]``), ``pool_size``, and the institution settings: ``fixmedins_code``,
    ``fixmedins_name``, ``mdtrtarea_admvs``, ``insuplc_admdvs``, ``opter``, ``opter_name``,
    ``opter_type``, ``mac``, ``ip``; several institutions go in ``institutions``, a map from
    institution code to the same settings.

    Workers on several machines share their state through Redis when ``extra`` names an Airflow
    Redis Connection in ``redis_conn_id``: the ``msgid`` sequence, the ``9001`` sign-in (one worker
    signs in, the others wait for its ``sign_no``) and the rate limit. ``rate_limit`` caps the
    messages per second per institution (sign-ins included), over every worker sharing that Redis,
    or per process without it; 0 or absent for none. A call waits at most ``rate_limit_wait``
    seconds (60 by default) for a free slot, then ends ``TRANSIENT`` without being sent.
    ``redis_key_prefix`` (``medins`` by default) keeps the keys of separate deployments apart.

    :param medins_conn_id: Connection id of the gateway.
    :param msgid_sequence: Shared ``msgid`` sequence; from ``redis_conn_id``, else a machine-local
        file sequence, by default.
    :param sign_in_cache: Shared sign-in cache; from ``redis_conn_id``, else a per-process cache, by
        default.
    :param catalog: Interface catalog; the Connection's ``catalog_path`` or the bundled file by default.
    """

    conn_name_attr = "medins_conn_id"
    default_conn_name = "medins_gateway_default"
    conn_type = "http"
    hook_name = "Medical insurance gateway"

    def __init__(
        self,
        medins_conn_id: str = default_conn_name,
        *,
        msgid_sequence: MsgIdSequence | None = None,
        sign_in_cache: SignInCache | None = None,
        catalog: Catalog | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.medins_conn_id = medins_conn_id
        self._msgid_sequence = msgid_sequence
        self._sign_in_cache = sign_in_cache
        self._catalog = catalog
        self._sign_in_lock = threading.Lock()
        self._shared_state_lock = threading.Lock()
        self._shared_state: tuple[MsgIdSequence, SignInCache, RateLimiter] | None = None

    # -- settings ---------------------------------------------------------------------------

    @cached_property
    def connection(self):
        """Return the gateway Connection, fetched on first use."""
        return self.get_connection(self.medins_conn_id)

    @cached_property
    def extras(self) -> dict[str, Any]:
        """Return a copy of the Connection's extras."""
        return dict(self.connection.extra_dejson)

    @cached_property
    def catalog(self) -> Catalog:
        """Return the interface catalog this hook validates and sends with."""
        return self._catalog or load_catalog(self.extras.get("catalog_path"))

    @cached_property
    def url(self) -> str:
        """Return the service URL every message is posted to."""
        conn = self.connection
        host = (conn.host or "").rstrip("/")
        if not host:
            raise GatewayError(f"Connection {self.medins_conn_id!r} has no host: set the gateway URL")
        if "://" not in host:
            host = f"{conn.schema or 'http'}://{host}"
            if conn.port:
                host = f"{host}:{conn.port}"
        return host + self.extras.get("service_path", DEFAULT_SERVICE_PATH)

    @cached_property
    def timeout(self) -> tuple[float, float]:
        """Return the (connect, read) timeout of every call, in seconds."""
        value = self.extras.get("timeout", [5, 30])
        if isinstance(value, (int, float)):
            return (min(float(value), 10.0), float(value))
        return (float(value[0]), float(value[1]))

    @cached_property
    def msgid_sequence(self) -> MsgIdSequence:
        """Return the ``msgid`` sequence shared by every sender of this machine, or of all with Redis."""
        return self._resolve_shared_state()[0]

    @cached_property
    def sign_in_cache(self) -> SignInCache:
        """Return the cache that keeps each operator's ``sign_no`` for the day."""
        return self._resolve_shared_state()[1]

    @cached_property
    def rate_limiter(self) -> RateLimiter:
        """Return the per-institution rate limit every message waits for."""
        return self._resolve_shared_state()[2]

    @cached_property
    def rate_limit_wait(self) -> float:
        """Return how long a call may wait for its institution's rate limit, in seconds."""
        return float(self.extras.get("rate_limit_wait", DEFAULT_RATE_LIMIT_WAIT))

    @cached_property
    def institutions(self) -> dict[str, Institution]:
        """Return every institution the Connection sends for, by institution code."""
        extras = self.extras
        base = {
            key: extras[key]
            for key in Institution.__dataclass_fields__
            if key in extras and key != "fixmedins_code"
        }
        found: dict[str, Institution] = {}
        entries = dict(extras.get("institutions") or {})
        if extras.get("fixmedins_code"):
            entries.setdefault(extras["fixmedins_code"], {})
        for code, settings in entries.items():
            merged = {**base, **(settings or {}), "fixmedins_code": code}
            missing = [
                name
                for name in ("fixmedins_name", "mdtrtarea_admvs", "insuplc_admdvs", "opter", "opter_name")
                if not merged.get(name)
            ]
            if missing:
                raise GatewayError(
                    f"Connection {self.medins_conn_id!r}: institution {code} lacks {', '.join(missing)}"
                )
            if len(code) != 12:
                raise GatewayError(
                    f"Connection {self.medins_conn_id!r}: institution code {code!r} is not 12 characters"
                )
            found[code] = Institution(
                **{k: str(v) for k, v in merged.items() if k in Institution.__dataclass_fields__}
            )
        return found

    def institution(self, org_code: str | None = None) -> Institution:
        """Return the settings of ``org_code``, or of the only institution when it is None."""
        institutions = self.institutions
        if org_code is None:
            if len(institutions) != 1:
                raise GatewayError(
                    f"Connection {self.medins_conn_id!r} serves {len(institutions)} institutions: name one"
                )
            return next(iter(institutions.values()))
        try:
            return institutions[org_code]
        except KeyError:
            raise GatewayError(
                f"institution {org_code} is not configured in Connection {self.medins_conn_id!r}"
            ) from None

    def _resolve_shared_state(self) -> tuple[MsgIdSequence, SignInCache, RateLimiter]:
        """Build the sequence, sign-in cache and rate limiter once, however many threads ask first."""
        with self._shared_state_lock:
            if self._shared_state is None:
                from medins.shared_state import shared_state_from_extras

                sequence, cache, limiter = shared_state_from_extras(self.extras)
                self._shared_state = (
                    self._msgid_sequence or sequence or FileMsgIdSequence(self.extras.get("msgid_dir")),
                    self._sign_in_cache or cache or LocalSignInCache(),
                    limiter,
                )
            return self._shared_state

    @cached_property
    def session(self) -> requests.Session:
        """Return the pooled HTTP session shared by every thread of this hook."""
        size = int(self.extras.get("pool_size", 32))
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=size, max_retries=0, pool_block=False)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["Content-Type"] = "application/json;charset=utf-8"
        # Read the environment's proxy and CA settings once, not on every call: requests would scan
        # every environment variable for each message, a third of a call's CPU in a task process.
        session.proxies.update(requests.utils.get_environ_proxies(self.url))
        if bundle := os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"):
            session.verify = bundle
        session.trust_env = False
        return session

    # -- messages ---------------------------------------------------------------------------

    def build_envelope(
        self,
        interface: Interface,
        data: dict[str, Any],
        institution: Institution,
        *,
        msgid: str,
        sign_no: str = "",
        insuplc_admdvs: str | None = None,
    ) -> dict[str, Any]:
        """Wrap an interface's input in the national envelope."""
        extras = self.extras
        return {
            "infno": interface.code,
            "msgid": msgid,
            "mdtrtarea_admvs": institution.mdtrtarea_admvs,
            "insuplc_admdvs": insuplc_admdvs or institution.insuplc_admdvs,
            "recer_sys_code": extras.get("recer_sys_code", "MEDINS"),
            "dev_no": extras.get("dev_no", ""),
            "dev_safe_info": extras.get("dev_safe_info", ""),
            "cainfo": extras.get("cainfo", ""),
            "signtype": extras.get("signtype", "SM3"),
            "infver": extras.get("infver", "V1.0"),
            "opter_type": institution.opter_type,
            "opter": institution.opter,
            "opter_name": institution.opter_name,
            "inf_time": inf_time(),
            "fixmedins_code": institution.fixmedins_code,
            "fixmedins_name": institution.fixmedins_name,
            "sign_no": sign_no,
            "input": {interface.input_key: data},
        }

    def sign_headers(self, body: bytes) -> dict[str, str]:
        """Return the signed headers for ``body``, or none when the Connection has no app id."""
        app_id = self.extras.get("app_id")
        secret = self.connection.password
        if not app_id or not secret:
            return {}
        timestamp = str(int(time.time() * 1000))
        nonce = secrets.token_hex(16)
        message = "\n".join((app_id, timestamp, nonce, hashlib.sha256(body).hexdigest()))
        signature = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
        return {
            "X-Medins-App-Id": app_id,
            "X-Medins-Timestamp": timestamp,
            "X-Medins-Nonce": nonce,
            "X-Medins-Signature": signature,
        }

    def new_msgid(self, org_code: str) -> str:
        """Return a ``msgid`` never used before by this institution."""
        return self.msgid_sequence.next_msgid(org_code)

    def new_msgids(self, org_code: str, count: int) -> list[str]:
        """Return ``count`` msgids never used before by this institution, in one go."""
        return self.msgid_sequence.next_msgids(org_code, count) if count > 0 else []

    def sign_in(self, institution: Institution, *, force: bool = False) -> str:
        """Return the institution operator's ``sign_no`` for today, signing in with ``9001`` if needed."""
        key = _sign_in_key(institution)
        if not force and (cached := self.sign_in_cache.get(key)):
            return cached
        # One sign-in at a time: across workers when the cache is shared, else across this hook's threads.
        shared_lock = getattr(self.sign_in_cache, "lock", None)
        longest_sign_in = self.rate_limit_wait + sum(self.timeout) + 1
        with shared_lock(key, longest_sign_in) if shared_lock else self._sign_in_lock:
            if not force and (cached := self.sign_in_cache.get(key)):
                return cached
            payload = {"opter_no": institution.opter, "mac": institution.mac, "ip": institution.ip}
            outcome = self._send(
                self.catalog["9001"], payload, institution, msgid=self.new_msgid(institution.fixmedins_code)
            )
            if outcome.kind is not OutcomeKind.SUCCESS:
                raise GatewayError(
                    f"sign-in (9001) for {institution.fixmedins_code} failed: {outcome.reason}"
                )
            try:
                sign_no = str(outcome.output["signinoutb"]["sign_no"])
            except (KeyError, TypeError):
                raise GatewayError("sign-in (9001) reply carries no signinoutb.sign_no") from None
            self.sign_in_cache.put(key, sign_no, _seconds_to_midnight())
            log.info(
                "Signed in institution %s operator %s for today",
                institution.fixmedins_code,
                institution.opter,
            )
            return sign_no

    def call(
        self,
        api_code: str,
        data: dict[str, Any],
        *,
        org_code: str | None = None,
        insuplc_admdvs: str | None = None,
        msgid: str | None = None,
    ) -> CallOutcome:
        """
        Send one interface call and classify its outcome; never raises for a gateway failure.

        :param api_code: Interface number, e.g. ``1101``.
        :param data: The interface's input (what goes under its ``input_key``).
        :param org_code: Institution code; the Connection's only institution when omitted.
        :param insuplc_admdvs: Insurance area of the person, when not the institution's default.
        :param msgid: The ``msgid`` to send with, when the caller recorded it beforehand. Such a caller
            gets ``TRANSIENT`` when the gateway refused the sign-in before processing (the hook signs
            in again), and sends again under a new msgid it records; without one, the hook sends once
            more itself.
        """
        interface = self.catalog[api_code]
        institution = self.institution(org_code)
        recorded = msgid is not None
        msgid = msgid or self.new_msgid(institution.fixmedins_code)
        if interface.kind == SESSION:
            # 9001 signs in without a sign_no; 9002 signs out the one it names, which stops being cached.
            ending = str(data.get("sign_no") or "")
            outcome = self._send(
                interface, data, institution, msgid=msgid, sign_no=ending, insuplc_admdvs=insuplc_admdvs
            )
            if ending and outcome.kind is OutcomeKind.SUCCESS:
                self.sign_in_cache.drop(_sign_in_key(institution), ending)
            return outcome
        try:
            sign_no = self.sign_in(institution)
        except GatewayError as err:
            return CallOutcome(OutcomeKind.TRANSIENT, api_code, msgid, err_msg=str(err))
        outcome = self._send(
            interface, data, institution, msgid=msgid, sign_no=sign_no, insuplc_admdvs=insuplc_admdvs
        )
        if outcome.kind is OutcomeKind.REFUSED and outcome.err_msg.startswith(SIGN_IN_EXPIRED):
            # Refused before processing: sign in again and send once more under a new msgid.
            key = _sign_in_key(institution)
            # Only the stale sign_no is dropped: a worker that renewed it first is reused, not redone.
            self.sign_in_cache.drop(key, sign_no)
            try:
                sign_no = self.sign_in(institution)
            except GatewayError as err:
                return CallOutcome(OutcomeKind.TRANSIENT, api_code, msgid, err_msg=str(err))
            if recorded:
                # The caller records every msgid before it leaves: it sends again, under a msgid it records.
                return CallOutcome(
                    OutcomeKind.TRANSIENT,
                    api_code,
                    msgid,
                    infcode=outcome.infcode,
                    err_msg=f"{SIGN_IN_EXPIRED}: signed in again; not processed, safe to send again",
                    elapsed_ms=outcome.elapsed_ms,
                )
            outcome = self._send(
                interface,
                data,
                institution,
                msgid=self.new_msgid(institution.fixmedins_code),
                sign_no=sign_no,
                insuplc_admdvs=insuplc_admdvs,
            )
        return outcome

    def test_connection(self) -> tuple[bool, str]:
        """Sign in every configured institution to prove the gateway and settings work."""
        try:
            for institution in self.institutions.values():
                self.sign_in(institution, force=True)
        except Exception as err:
            return False, str(err)
        return True, f"Signed in {len(self.institutions)} institution(s) at {self.url}"

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        if "session" in self.__dict__:
            self.session.close()
            del self.__dict__["session"]

    # -- transport ---------------------------------------------------------------------------

    def _send(
        self,
        interface: Interface,
        data: dict[str, Any],
        institution: Institution,
        *,
        msgid: str,
        sign_no: str = "",
        insuplc_admdvs: str | None = None,
    ) -> CallOutcome:
        limiter, code = self.rate_limiter, institution.fixmedins_code
        try:
            admitted = limiter.acquire(code, timeout=self.rate_limit_wait)
        except GatewayError as err:  # the shared rate limit could not be read: nothing was sent
            return CallOutcome(OutcomeKind.TRANSIENT, interface.code, msgid, err_msg=str(err))
        if not admitted:
            return CallOutcome(
                OutcomeKind.TRANSIENT,
                interface.code,
                msgid,
                err_msg=f"rate limit of {limiter.per_second}/s for institution {code} kept the call waiting "
                f"too long ({self.rate_limit_wait:g} s); not sent, safe to send again",
            )

        envelope = self.build_envelope(
            interface, data, institution, msgid=msgid, sign_no=sign_no, insuplc_admdvs=insuplc_admdvs
        )
        try:
            body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        except (ValueError, UnicodeEncodeError) as err:  # NaN, infinities, lone surrogates: not JSON text
            return CallOutcome(
                OutcomeKind.REFUSED,
                interface.code,
                msgid,
                err_msg=f"input cannot be sent as JSON ({type(err).__name__}); not sent",
            )
        headers = self.sign_headers(body)
        unsure = OutcomeKind.UNKNOWN if interface.is_write else OutcomeKind.TRANSIENT
        started = time.perf_counter()
        log.debug("POST %s infno=%s msgid=%s", self.url, interface.code, msgid)

        try:
            response = self.session.post(self.url, data=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as err:
            kind = OutcomeKind.TRANSIENT if _never_sent(err) else unsure
            return CallOutcome(
                kind, interface.code, msgid, err_msg=_describe(err), elapsed_ms=_since(started)
            )

        outcome = CallOutcome(
            unsure, interface.code, msgid, http_status=response.status_code, elapsed_ms=_since(started)
        )
        try:
            reply = response.json()
        except ValueError:
            reply = None
        if isinstance(reply, dict):
            outcome.infcode = _as_int(reply.get("infcode"))
            outcome.err_msg = str(reply.get("err_msg") or "")
            outcome.warn_msg = str(reply.get("warn_msg") or "")
            outcome.inf_refmsgid = reply.get("inf_refmsgid")
            outcome.output = reply.get("output")

        if response.status_code == 429 or response.status_code == 401:
            # Refused before processing (rate limit, signature): safe to send again.
            outcome.kind = OutcomeKind.TRANSIENT
            outcome.err_msg = outcome.err_msg or response.reason
        elif response.status_code != 200 or outcome.infcode is None:
            outcome.err_msg = outcome.err_msg or f"no valid reply ({response.reason})"
        elif outcome.infcode == 0:
            outcome.kind = OutcomeKind.SUCCESS
        else:
            outcome.kind = OutcomeKind.REFUSED
        return outcome


def _never_sent(err: requests.RequestException) -> bool:
    """Tell whether the request failed before any byte reached the gateway."""
    if isinstance(err, requests.ConnectTimeout):
        return True
    reason = err.args[0] if err.args else None
    reason = getattr(reason, "reason", reason)
    return isinstance(reason, (NewConnectionError, ConnectTimeoutError))


def _describe(err: requests.RequestException) -> str:
    if isinstance(err, requests.Timeout):
        return f"no reply in time ({type(err).__name__})"
    return f"connection failed ({type(err).__name__}: {mask_text(str(err))[:200]})"


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _sign_in_key(institution: Institution) -> str:
    """Return the cache key of an institution operator's sign-in: it holds for their day."""
    return f"{institution.fixmedins_code}:{institution.opter}:{now_cst():%Y%m%d}"


def _seconds_to_midnight() -> int:
    now = now_cst()
    return max(60, 86400 - (now.hour * 3600 + now.minute * 60 + now.second))
