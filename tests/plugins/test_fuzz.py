"""
Property-based tests (hypothesis) of the two doors bad input meets: the batch's ``conf`` validator
(the trigger's Params schema, then ``plan_batch``) and the gateway hook's envelope builder.

Requests are drawn from the interface catalog and then broken on purpose: fields dropped, retyped,
made too long, ids repeated, interfaces unknown; alongside them come arbitrary JSON values. Text
mixes Chinese, 4-byte characters (𠮷, emoji), control characters and, where only a ``\\ud800``
escape can bring it, lone surrogates. Rows go to the real MariaDB and envelopes to the sandbox
gateway over HTTP.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from airflow.exceptions import ParamValidationError
from airflow.sdk.definitions.param import ParamsDict
from airflow.serialization.serialized_objects import BaseSerialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medins.batch import MAX_CHUNKS, REQUEST_ID, BatchPlan, batch_id_for, plan_batch
from medins.catalog import SESSION, Interface, load_catalog
from medins.hooks.gateway import OutcomeKind
from medins.params import batch_params
from medins.states import RequestState
from medins.store import StatusStore
from sandbox.catalog import load_catalog as load_sandbox_catalog
from sandbox.checks import Refusal, check_envelope, check_input
from tests.conftest import INSTITUTIONS, MYSQL_SERVER

CATALOG = load_catalog()
SANDBOX_CATALOG = load_sandbox_catalog()
SENDABLE = sorted(code for code, interface in CATALOG.interfaces.items() if interface.kind != SESSION)
ORG = "H44010600001"
BATCH = "fuzz"
ENVELOPE_FIELDS = {
    "infno", "msgid", "mdtrtarea_admvs", "insuplc_admdvs", "recer_sys_code", "dev_no", "dev_safe_info",
    "cainfo", "signtype", "infver", "opter_type", "opter", "opter_name", "inf_time", "fixmedins_code",
    "fixmedins_name", "sign_no", "input",
}  # fmt: skip
MSGID = re.compile(r"(?P<org>[A-Z0-9]{12})(?P<time>[0-9]{14})(?P<seq>[0-9]{4})")
INF_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
SIX_DIGITS = re.compile(r"[0-9]{6}")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# -- strategies ----------------------------------------------------------------------------------

#: Characters bad input is made of: Chinese, 4-byte CJK and emoji, controls, invisibles, quotes, SQL.
SPECIAL = "张三李四王五赵六𠮷𠀀😀🏥\u0000\t\n\r\x1b\x7f\u200b\u2028\ufeff\ufffd'\"\\%_;-"
# Text as JSON can carry it from any caller: every code point but the surrogates.
TEXT = st.text(st.one_of(st.sampled_from(SPECIAL), st.characters(codec="utf-8")), max_size=12)
# Text as a ``\ud800`` escape can bring it: lone surrogates too.
ANY_TEXT = st.text(
    st.one_of(st.sampled_from(SPECIAL), st.characters(codec="utf-8"), st.characters(categories=["Cs"])),
    max_size=12,
)
ID_CHARACTERS = "abcXYZ0189_.:@-"
NAME = st.text(st.sampled_from(SPECIAL[:12] + "abcXYZ019·"), min_size=1, max_size=20).filter(str.strip)


def json_values(text: st.SearchStrategy[str], *, nan: bool = False) -> st.SearchStrategy[Any]:
    """Return any JSON value: scalars, lists and objects nested a few levels deep."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=nan, allow_infinity=nan) | text
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=8,
    )


def field_value(rule: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Return values that keep a catalog field's rule."""
    kind = rule.get("type", "string")
    if "enum" in rule:
        return st.sampled_from(rule["enum"])
    if kind == "integer":
        return st.integers(rule.get("minimum", -(10**6)), rule.get("maximum", 10**6))
    if kind == "number":
        return st.integers(rule.get("minimum", 0) * 100, 10**9).map(lambda cents: cents / 100)
    if rule.get("format") == "date":
        return st.dates(datetime(2000, 1, 1).date(), datetime(2099, 12, 31).date()).map(str)
    if rule.get("format") == "datetime":
        return st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(
            lambda moment: f"{moment:%Y-%m-%d %H:%M:%S}"
        )
    return NAME.map(lambda text: text[: rule.get("max_length", 50)]).filter(str.strip)


# Strategies are built once: building them per draw costs more than the tests themselves.
JSON = json_values(TEXT)
# What only a ``\ud800`` escape or a ``NaN`` literal brings: JSON parsers of Python accept both.
ANY_JSON = json_values(ANY_TEXT, nan=True)
NOT_TEXT = JSON.filter(lambda value: not isinstance(value, str))
UNSTORABLE = st.sampled_from([math.nan, math.inf, -math.inf, "\ud800", "a\udfff"])
FIELD_VALUES = {
    code: {name: field_value(rule) for name, rule in interface.fields.items()}
    for code, interface in CATALOG.interfaces.items()
}


@st.composite
def valid_data(draw: st.DrawFn, interface: Interface) -> dict[str, Any]:
    """Draw an input the catalog accepts for ``interface``: required fields, one group, some optional."""
    names = set(interface.required)
    if interface.required_any:
        names |= set(draw(st.sampled_from(interface.required_any)))
    names |= set(draw(st.sets(st.sampled_from(sorted(interface.fields)), max_size=3)))
    return {name: draw(FIELD_VALUES[interface.code].get(name, NAME)) for name in sorted(names)}


@st.composite
def broken_data(draw: st.DrawFn, interface: Interface) -> dict[str, Any]:
    """Draw an input of ``interface`` with one field dropped, retyped, made too long or added."""
    data = draw(valid_data(interface))
    name = draw(st.sampled_from(sorted(interface.fields)))
    rule = interface.fields[name]
    how = draw(st.sampled_from(["drop", "retype", "too-long", "blank", "extra"]))
    if how == "drop":
        data.pop(name, None)
    elif how == "retype":
        data[name] = draw(NOT_TEXT)
    elif how == "too-long":
        data[name] = draw(st.sampled_from("𠮷😀张a")) * (rule.get("max_length", 50) + draw(st.integers(1, 3)))
    elif how == "blank":
        data[name] = draw(st.sampled_from(["", " ", "\t\n", "\u3000"]))
    else:
        data[draw(TEXT)] = draw(JSON)
    return data


def requests_of(
    text: st.SearchStrategy[str], json_value: st.SearchStrategy[Any], *, unstorable: bool = False
) -> st.SearchStrategy[Any]:
    """
    Return requests of a batch: valid, broken in their data or around it, or any JSON value.

    :param unstorable: Also put ``NaN``, infinities and lone surrogates into some inputs.
    """
    request_ids = st.one_of(
        st.sampled_from(["r1", "r2", "r3", BATCH, f"{BATCH}-000001", f"{BATCH}-000002"]),
        st.text(st.sampled_from(ID_CHARACTERS), min_size=1, max_size=20),
        text,
    )
    mistakes = {
        "api_code": st.one_of(st.sampled_from(["9999", "9001", "", "1101 ", "１１０１"]), json_value),
        "org_code": st.one_of(st.sampled_from(["H99999999999", "", ORG.lower()]), json_value),
        "data": json_value,
        "insuplc_admdvs": st.one_of(st.sampled_from(["440106", "4401", "440106\n", "４４０１０６"]), text),
        "note": json_value,
    }

    @st.composite
    def requests(draw: st.DrawFn) -> Any:
        if draw(st.integers(0, 9)) == 0:
            return draw(json_value)
        interface = CATALOG[draw(st.sampled_from(SENDABLE))]
        request: dict[str, Any] = {
            "api_code": interface.code,
            "org_code": draw(st.sampled_from(sorted(INSTITUTIONS))),
            "data": draw(st.one_of(valid_data(interface), broken_data(interface))),
        }
        if draw(st.booleans()):
            request["request_id"] = draw(request_ids)
        for key in draw(st.sets(st.sampled_from(sorted(mistakes)), max_size=2)):
            request[key] = draw(mistakes[key])
        if unstorable and isinstance(request.get("data"), dict) and draw(st.integers(0, 4)) == 0:
            request["data"][draw(text)] = draw(UNSTORABLE)
        if draw(st.integers(0, 9)) == 0:
            request.pop(draw(st.sampled_from(["api_code", "org_code", "data"])), None)
        return request

    return requests()


@st.composite
def typed_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Draw a request whose fields have the JSON types the schema asks for, mostly right in content too."""
    interface = CATALOG[draw(st.sampled_from(SENDABLE))]
    request = {
        "api_code": interface.code,
        "org_code": draw(st.sampled_from(sorted(INSTITUTIONS))),
        "data": draw(valid_data(interface)),
    }
    if draw(st.booleans()):
        request["request_id"] = draw(st.text(st.sampled_from(ID_CHARACTERS), min_size=1, max_size=8))
    wrong = {
        "api_code": st.sampled_from(["9999", "9001", "", "1101 "]),
        "org_code": st.sampled_from(["H99999999999", ""]),
        "data": broken_data(interface),
        "request_id": st.sampled_from(["r1", BATCH, f"{BATCH}-000001"]),
        "insuplc_admdvs": st.sampled_from(["440106", "4401", "４４０１０６"]),
    }
    if draw(st.integers(0, 2)) == 0:
        key = draw(st.sampled_from(sorted(wrong)))
        request[key] = draw(wrong[key])
    return request


REQUESTS = requests_of(TEXT, JSON)
ANY_REQUESTS = requests_of(ANY_TEXT, ANY_JSON, unstorable=True)
TYPED_REQUESTS = typed_requests()
# Confs the schema mostly lets through, so that plan_batch meets what the trigger passes on ...
LIKELY_CONFS = st.fixed_dictionaries(
    {"requests": st.lists(TYPED_REQUESTS, min_size=1, max_size=8)},
    optional={
        "batch_id": st.sampled_from([None, "night-1", "a+b", "r1"]),
        "chunk_size": st.integers(1, 6),
        "concurrency": st.integers(1, 64),
    },
)
# ... and confs of any shape, wrong types and wrong options included.
WILD_CONFS = st.fixed_dictionaries(
    {"requests": st.one_of(st.lists(st.one_of(TYPED_REQUESTS, REQUESTS), max_size=8), JSON)},
    optional={
        "batch_id": st.one_of(st.sampled_from(["has space", "x\n", "", "b" * 65]), TEXT, JSON),
        "chunk_size": st.one_of(st.integers(-1, 6000), JSON),
        "concurrency": st.one_of(st.integers(-1, 100), JSON),
        "extra": JSON,
    },
) | st.dictionaries(TEXT, JSON, max_size=3)
CONFS = st.one_of(LIKELY_CONFS, LIKELY_CONFS, WILD_CONFS)


# -- helpers ---------------------------------------------------------------------------------------

# The batch's Params as the api-server holds them: serialized with the DAG, validated there.
SERVER_PARAMS = BaseSerialization._deserialize_params_dict(
    BaseSerialization._serialize_params_dict(ParamsDict(batch_params()))
)


def validate_conf(conf: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``conf`` the way the REST trigger does before it creates the run."""
    return SERVER_PARAMS.deep_merge(conf).validate()


def plan(requests: Any, batch_id: str = BATCH, chunk_size: int | None = 3) -> BatchPlan:
    return plan_batch(
        requests, batch_id=batch_id, catalog=CATALOG, institutions=INSTITUTIONS, chunk_size=chunk_size
    )


def check_plan(result: BatchPlan, requests: list[Any]) -> None:
    """Assert what every plan must hold, whatever the requests were."""
    states = Counter(row.status for row in result.rows)
    pending = [row for row in result.rows if row.status == RequestState.PENDING]
    task_ids = [row.task_id for row in result.rows]

    assert len(result.rows) == len(requests)
    assert set(states) <= {RequestState.PENDING, RequestState.REJECTED}
    assert result.rejected == states[RequestState.REJECTED] == len(requests) - len(pending)
    assert sum(chunk["size"] for chunk in result.chunks) == len(pending)
    assert [chunk["chunk_no"] for chunk in result.chunks] == list(range(len(result.chunks)))
    assert len(result.chunks) <= MAX_CHUNKS
    assert len(set(task_ids)) == len(task_ids), Counter(task_ids).most_common(2)
    assert result.batch_id not in task_ids
    first_ids: set[str] = set()
    for index, (row, request) in enumerate(zip(result.rows, requests, strict=True)):
        assert row.data["index"] == index
        assert row.batch_id == result.batch_id
        if row.status == RequestState.PENDING:
            assert row.error is None and 0 <= row.chunk_no < len(result.chunks)
            assert CATALOG[row.api_code].kind != SESSION and row.org_code in INSTITUTIONS
            assert row.data["request"] == {**request, "org_code": row.org_code}  # sent as submitted
        else:
            assert isinstance(row.error, str) and row.error.strip(), row
            assert row.chunk_no is None
        request_id = request.get("request_id") if isinstance(request, dict) else None
        if isinstance(request_id, str) and REQUEST_ID.match(request_id) and request_id not in first_ids:
            first_ids.add(request_id)
            assert row.task_id == request_id or request_id == result.batch_id
        # Whatever the table is given must be JSON and UTF-8, or the batch's bulk insert fails.
        json.dumps(row.data, ensure_ascii=False, allow_nan=False).encode("utf-8")
        (row.error or "").encode("utf-8")
        (row.api_code or "").encode("utf-8")
        (row.org_code or "").encode("utf-8")


# -- the conf validator --------------------------------------------------------------------------


class TestConfValidator:
    @FUZZ
    @given(conf=CONFS)
    def test_a_conf_is_refused_by_the_schema_with_a_reason_or_planned_in_full(self, conf):
        try:
            params = validate_conf(conf)
        except ParamValidationError as refusal:
            name, _, reason = str(refusal).removeprefix("Invalid input for param ").partition(": ")
            assert name in SERVER_PARAMS and reason.strip(), str(refusal)
            return

        result = plan(
            params["requests"], batch_id_for("manual__fuzz", params["batch_id"]), params["chunk_size"]
        )

        check_plan(result, params["requests"])
        assert params["requests"]
        assert params["chunk_size"] is None or 1 <= params["chunk_size"] <= 5000

    @FUZZ
    @given(requests=st.lists(ANY_REQUESTS, max_size=15), chunk_size=st.integers(1, 5))
    def test_plan_batch_rejects_with_a_reason_and_never_raises_whatever_the_requests(
        self, requests, chunk_size
    ):
        result = plan(requests, chunk_size=chunk_size)

        check_plan(result, requests)

    @settings(max_examples=40, deadline=None)
    @given(values=st.lists(ANY_JSON, min_size=1, max_size=8))
    def test_plan_batch_rejects_any_json_value_that_is_no_request(self, values):
        result = plan(values)

        check_plan(result, values)
        for row, value in zip(result.rows, values, strict=True):
            if not isinstance(value, dict):
                assert "must be an object" in row.error

    @pytest.mark.parametrize(
        ("bad", "reason"),
        [
            ({"psn_no": "44\ud8001"}, "data.psn_no holds text that is not valid Unicode"),
            ({"psn_no": "4401", "x": math.nan}, "data.x is nan, which is not a JSON number"),
            ({"psn_no": "4401", "\udc00": 1}, "a field name in data is not valid Unicode"),
        ],
        ids=["surrogate", "nan", "surrogate-key"],
    )
    def test_values_no_table_can_hold_are_rejected_naming_the_field(self, bad, reason):
        good = {"api_code": "5301", "org_code": ORG, "data": {"psn_no": "4401"}}

        result = plan([good, {**good, "data": bad}])

        assert [row.status for row in result.rows] == ["PENDING", "REJECTED"]
        assert reason in result.rows[1].error
        json.dumps(result.rows[1].data, allow_nan=False).encode("utf-8")

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("request_id", "r1\n"),
            ("insuplc_admdvs", "440106\n"),
            ("insuplc_admdvs", "４４０１０６"),
            ("org_code", ["H44010600001"]),
            ("api_code", 5301),
        ],
        ids=["request-id-newline", "admdvs-newline", "admdvs-full-width", "org-code-list", "api-code-number"],
    )
    def test_a_field_that_only_looks_right_is_rejected_naming_it(self, field, value):
        result = plan([{"api_code": "5301", "org_code": ORG, "data": {"psn_no": "4401"}, field: value}])

        assert result.rows[0].status == "REJECTED" and field in result.rows[0].error

    def test_a_date_in_full_width_digits_is_rejected_as_the_gateway_would(self):
        data = {"query_date": "２０２６-12-1５", "hilist_code": "X1"}

        result = plan([{"api_code": "1312", "org_code": ORG, "data": data}])

        assert result.rows[0].status == "REJECTED" and "query_date must be a date" in result.rows[0].error

    def test_a_request_id_that_is_another_requests_generated_id_keeps_both(self):
        good = {"api_code": "5301", "org_code": ORG, "data": {"psn_no": "4401"}}

        result = plan([good, {**good, "request_id": f"{BATCH}-000000"}, {**good, "request_id": BATCH}])

        assert [row.task_id for row in result.rows] == [
            f"{BATCH}+000000",
            f"{BATCH}-000000",
            f"{BATCH}-000002",
        ]
        assert [row.status for row in result.rows] == ["PENDING", "PENDING", "REJECTED"]
        assert "is the id of the batch itself" in result.rows[2].error

    def test_a_request_id_that_is_another_batchs_id_is_rejected_and_stored_under_its_place(self):
        good = {"api_code": "5301", "org_code": ORG, "data": {"psn_no": "4401"}}

        result = plan_batch(
            [{**good, "request_id": "night-1"}, {**good, "request_id": "r2"}],
            batch_id=BATCH,
            catalog=CATALOG,
            institutions=INSTITUTIONS,
            batch_ids={"night-1"},
        )

        assert [(row.task_id, row.status) for row in result.rows] == [
            (f"{BATCH}-000000", "REJECTED"),
            ("r2", "PENDING"),
        ]
        assert result.rows[0].error == "request_id night-1 is the id of another batch; choose another"

    @pytest.mark.parametrize("pattern", ["requests", "batch_id"])
    def test_the_schema_refuses_an_id_with_a_trailing_newline(self, pattern):
        good = {"api_code": "5301", "org_code": ORG, "data": {"psn_no": "4401"}}
        conf = (
            {"requests": [{**good, "request_id": "r1\n"}]}
            if pattern == "requests"
            else {"requests": [good], "batch_id": "night-1\n"}
        )

        with pytest.raises(ParamValidationError, match="does not match"):
            validate_conf(conf)


@pytest.fixture(scope="module")
def mariadb_store(mariadb_database) -> Iterator[StatusStore]:
    """Return a store on a throwaway MariaDB database, the schema created."""
    connection = {
        "conn_type": "mysql", "host": MYSQL_SERVER["host"], "port": MYSQL_SERVER["port"],
        "login": MYSQL_SERVER["user"], "password": MYSQL_SERVER["password"], "schema": mariadb_database,
        "extra": {"charset": "utf8mb4"},
    }  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_MEDINS_STATUS_FUZZ", json.dumps(connection))
        with StatusStore.from_conn_id("medins_status_fuzz") as store:
            store.create_schema()
            yield store


@settings(max_examples=60, deadline=None)
@given(requests=st.lists(ANY_REQUESTS, min_size=1, max_size=10))
def test_every_planned_row_is_stored_in_mariadb_and_read_back_unchanged(mariadb_store, requests):
    batch_id = f"fuzz-{uuid.uuid4().hex[:12]}"
    for request in requests:  # request ids are unique across batches: give each example its own
        if isinstance(request, dict) and isinstance(request.get("request_id"), str):
            request["request_id"] = f"{batch_id}.{request['request_id']}"
    result = plan(requests, batch_id)

    inserted = mariadb_store.register(result.rows)

    stored = {row.task_id: row for row in mariadb_store.rows(batch_id)}
    assert inserted == len(result.rows) == len(stored)
    for row in result.rows:
        back = stored[row.task_id]
        assert (back.status, back.error, back.chunk_no) == (row.status, row.error, row.chunk_no)
        assert (back.api_code, back.org_code, back.kind) == (row.api_code, row.org_code, row.kind)
        assert json.dumps(back.data, ensure_ascii=False) == json.dumps(row.data, ensure_ascii=False)


# -- the envelope builder ------------------------------------------------------------------------


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """Draw an interface and an input for it: valid, broken, or any JSON object."""
    interface = CATALOG[draw(st.sampled_from(SENDABLE))]
    data = draw(
        st.one_of(
            valid_data(interface),
            valid_data(interface),
            broken_data(interface),
            st.dictionaries(TEXT, JSON, max_size=5),
        )
    )
    if interface.code == "1101" and draw(st.booleans()):
        data["psn_name"] = draw(NAME) + "𠮷😀"
    return interface.code, data


def sandbox_verdict(envelope: dict[str, Any]) -> str | None:
    """Return the sandbox's own refusal of an envelope's form and input, or None when it passes."""
    try:
        spec = check_envelope(envelope, SANDBOX_CATALOG)
        check_input(spec, envelope)
    except Refusal as refusal:
        return refusal.err_msg
    return None


class TestEnvelopeBuilder:
    @FUZZ
    @given(call=calls())
    def test_an_envelope_has_every_field_of_the_wire_format_and_the_data_byte_for_byte(self, hook, call):
        code, data = call
        interface, institution = hook.catalog[code], hook.institution(ORG)
        msgid = hook.new_msgid(ORG)

        envelope = hook.build_envelope(interface, data, institution, msgid=msgid, sign_no="S" * 30)
        body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

        assert json.loads(body) == envelope
        assert set(envelope) == ENVELOPE_FIELDS
        assert all(isinstance(value, str) for key, value in envelope.items() if key != "input")
        assert envelope["infno"] == code and re.fullmatch(r"[0-9]{4}", code)
        parts = MSGID.fullmatch(envelope["msgid"])
        assert len(envelope["msgid"]) == 30 and parts and parts["org"] == ORG
        assert INF_TIME.fullmatch(envelope["inf_time"])
        sent_at = datetime.strptime(envelope["inf_time"], "%Y-%m-%d %H:%M:%S")
        assert abs(datetime.strptime(parts["time"], "%Y%m%d%H%M%S") - sent_at) < timedelta(minutes=1)
        assert SIX_DIGITS.fullmatch(envelope["mdtrtarea_admvs"])
        assert SIX_DIGITS.fullmatch(envelope["insuplc_admdvs"])
        assert envelope["opter_type"] in ("1", "2", "3") and len(envelope["recer_sys_code"]) <= 10
        assert (envelope["fixmedins_code"], envelope["sign_no"]) == (ORG, "S" * 30)
        assert envelope["input"] == {interface.input_key: data}
        assert json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8") in body

    @FUZZ
    @given(call=calls())
    def test_the_sandbox_answers_every_envelope_and_agrees_with_the_validator(self, hook, call):
        code, data = call
        envelope = hook.build_envelope(
            hook.catalog[code], data, hook.institution(ORG), msgid=hook.new_msgid(ORG)
        )
        refusal = sandbox_verdict(envelope)

        outcome = hook.call(code, data, org_code=ORG)

        assert (refusal is None) == (hook.catalog[code].validate(data) == []), refusal
        assert outcome.http_status == 200, outcome.reason
        assert outcome.kind in (OutcomeKind.SUCCESS, OutcomeKind.REFUSED), outcome.reason
        if outcome.kind is OutcomeKind.REFUSED:
            assert outcome.infcode < 0 and outcome.err_msg.strip()
        if refusal is not None:
            assert (outcome.kind, outcome.err_msg) == (OutcomeKind.REFUSED, refusal)
        if code == "1101" and outcome.kind is OutcomeKind.SUCCESS and "psn_name" in data:
            assert outcome.output["baseinfo"]["psn_name"] == data["psn_name"]
