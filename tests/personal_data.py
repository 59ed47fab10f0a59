"""
Find the sample data's personal data, and secrets, where neither may be: logs, rendered fields, XCom, errors.

The values looked for are those of ``include/samples/demo_batch.json`` (certificate numbers, names, phone
numbers, ``psn_no``) and those the gateway answered about the same people (``1101``'s ``baseinfo``, the
``psn_no`` of visits, filings and settlements), read from the outputs stored in the status table. A value
is found as it is, JSON-escaped (``\\u738b``) or percent-encoded; its masked form is no finding.

A finding says where it is and which field the value belongs to, and shows the value masked, so that a
failing test does not spread what it found.

After ``./run demo``, scan its Airflow home (logs, SQLite metadata DB, status table) by hand::

    source scripts/env.sh && python -m tests.personal_data .airflow
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from medins.masking import mask_value

ROOT = Path(__file__).resolve().parents[1]
DEMO_BATCH = ROOT / "include/samples/demo_batch.json"

#: Fields whose values are personal data: certificate numbers, names, phone numbers and ``psn_no``.
PERSONAL_FIELDS = frozenset(
    {"mdtrt_cert_no", "certno", "psn_cert_no", "card_sn", "psn_no", "psn_name", "name", "dr_name", "tel",
     "mob", "phone", "mobile"}
)  # fmt: skip
NAME_FIELDS = frozenset({"psn_name", "name", "dr_name"})
#: Shorter numbers (``"1"``, the invalid requests' ``psn_no``) say nothing about anyone and occur anywhere.
MIN_NUMBER_LENGTH = 6
MIN_NAME_LENGTH = 2

#: What Airflow's metadata DB holds by design and is not scanned: each DAG run's ``conf`` (the batch as
#: submitted) and the Connections (the secrets).
NOT_SCANNED: dict[str, tuple[str, ...]] = {"dag_run": ("conf",), "connection": ("*",)}
#: Rows not scanned: the audit log's record of a REST trigger, which copies the request body, ``conf``
#: included (``airflow.api_fastapi.logging.decorators.action_logging``).
CONF_COPIES: dict[str, str] = {"log": "event = 'trigger_dag_run'"}

#: Airflow's own copy of a DAG run's ``conf`` in a component's log: when a task instance stops
#: heartbeating (its worker was killed), the scheduler logs the whole callback request, whose run context
#: holds the run's ``conf`` (``SchedulerJobRunner._purge_task_instances_without_heartbeats``).
# TODO: stop exempting it once a batch's conf no longer carries the requests (submitted by reference).
CONF_IN_LOGS = re.compile(r"(?<=[ (]conf=)\{.*?\}(?=, triggering_user_name=)", re.DOTALL)

_TOKEN = re.compile(rf"[0-9A-Za-z]{{{MIN_NUMBER_LENGTH},}}")
_DIGITS = re.compile(rf"[0-9]{{{MIN_NUMBER_LENGTH},}}")
_WIDE = re.compile(r"[^\x00-\x7f\s]+")  # runs of Chinese characters (and other non-ASCII letters)
_ESCAPE = re.compile(r"(?:\\u[0-9a-fA-F]{4})+")
_CONTEXT = 40


@dataclass(frozen=True)
class Finding:
    """One value found where it must not be."""

    place: str
    field: str
    value: str
    context: str  # the text around the value, every known value in it masked

    def __str__(self) -> str:
        return f"{self.place}: {self.field} {_masked(self.field, self.value)!r} in …{self.context}…"


class Scanner:
    """
    Look for known values in text.

    Numbers and codes count as found when a whole run of letters and digits, or of digits, is one;
    names when they are part of a run of non-ASCII characters; secrets anywhere.

    :param personal: Personal values, each with the field it came from.
    :param secrets: Secrets, each with what it is.
    """

    def __init__(self, personal: Mapping[str, str], secrets: Mapping[str, str] | None = None) -> None:
        self.tokens = {value: field for value, field in personal.items() if _TOKEN.fullmatch(value)}
        self.names = {value: field for value, field in personal.items() if value not in self.tokens}
        self.name_lengths = sorted({len(value) for value in self.names})
        self.secrets = {value: what for value, what in (secrets or {}).items() if value}

    def __len__(self) -> int:
        return len(self.tokens) + len(self.names) + len(self.secrets)

    def scan(self, place: str, text: str) -> list[Finding]:
        """Return each known value in ``text`` once."""
        found: dict[str, Finding] = {}
        for variant in _variants(text or ""):
            for match in [*_TOKEN.finditer(variant), *_DIGITS.finditer(variant)]:
                value = match.group(0)
                if value in self.tokens and value not in found:
                    found[value] = self._finding(place, self.tokens[value], value, variant, match.start())
            for match in _WIDE.finditer(variant):
                run = match.group(0)
                for start in range(len(run)):
                    for length in self.name_lengths:
                        value = run[start : start + length]
                        if value in self.names and value not in found:
                            at = match.start() + start
                            found[value] = self._finding(place, self.names[value], value, variant, at)
            for value, what in self.secrets.items():
                at = variant.find(value)
                if at >= 0 and value not in found:
                    found[value] = self._finding(place, what, value, variant, at)
        return list(found.values())

    def _finding(self, place: str, field: str, value: str, text: str, at: int) -> Finding:
        context = text[max(0, at - _CONTEXT) : at + len(value) + _CONTEXT].replace("\n", " ")
        context = _ESCAPE.sub(_unescape, context)
        known = {**self.tokens, **self.names, **self.secrets}
        for other in sorted((v for v in known if v in context), key=len, reverse=True):
            context = context.replace(other, _masked(known[other], other))
        return Finding(place, field, value, context)

    def scan_files(
        self, paths: Iterable[Path], root: Path | None = None, *, conf_copies: bool = False
    ) -> list[Finding]:
        """
        Scan text files (logs).

        :param paths: The files.
        :param root: Folder the findings name the files relative to.
        :param conf_copies: Whether to leave out Airflow's copies of a run's ``conf`` (``CONF_IN_LOGS``).
        """
        findings = []
        for path in paths:
            place = str(path.relative_to(root)) if root else str(path)
            text = path.read_text(encoding="utf-8", errors="replace")
            findings.extend(self.scan(place, CONF_IN_LOGS.sub("{…}", text) if conf_copies else text))
        return findings

    def scan_metadata_db(self, url: str, *, run_ids: Collection[str] | None = None) -> list[Finding]:
        """
        Scan every column of every table of an Airflow metadata DB, but ``NOT_SCANNED`` and ``CONF_COPIES``.

        :param url: SQLAlchemy URL of the database.
        :param run_ids: Only the rows of these DAG runs, in the tables that have a ``run_id``; every row
            of every table when None.
        """
        from sqlalchemy import create_engine, inspect, text

        engine = create_engine(url)
        findings: list[Finding] = []
        try:
            with engine.connect() as conn:
                for table in sorted(inspect(conn).get_table_names()):
                    columns = [column["name"] for column in inspect(conn).get_columns(table)]
                    skipped = NOT_SCANNED.get(table, ())
                    scanned = [column for column in columns if column not in skipped and "*" not in skipped]
                    if not scanned or (run_ids is not None and "run_id" not in columns):
                        continue
                    where, args = [], {}
                    if table in CONF_COPIES:
                        where.append(f"NOT ({CONF_COPIES[table]})")
                    if run_ids is not None:
                        args = {f"run_{index}": run_id for index, run_id in enumerate(run_ids)}
                        where.append(f"run_id IN ({', '.join(':' + name for name in args)})")
                    query = f"SELECT {', '.join(map(_quote, scanned))} FROM {_quote(table)}"
                    if where:
                        query += " WHERE " + " AND ".join(where)
                    for row in conn.execute(text(query), args).mappings():
                        for column, value in row.items():
                            if value is not None:
                                findings.extend(self.scan(f"{table}.{column}", as_text(value)))
        finally:
            engine.dispose()
        return findings

    def scan_status_rows(self, place: str, rows: Iterable[Any]) -> list[Finding]:
        """Scan the error texts of status rows: their ``error``, ``data.err_msg`` and ``data.warn_msg``."""
        findings = []
        for row in rows:
            data = row.data or {}
            texts = {"error": row.error, "err_msg": data.get("err_msg"), "warn_msg": data.get("warn_msg")}
            for name, value in texts.items():
                if value:
                    findings.extend(self.scan(f"{place} {row.task_id} {name}", as_text(value)))
        return findings


def as_text(value: Any) -> str:
    """Return a column's value as text: strings as they are, bytes decoded, structures as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def personal_values_in(value: Any, field: str | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(value, field)`` for each value of a personal field, at any depth, long enough to matter."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from personal_values_in(item, key if key in PERSONAL_FIELDS else field)
    elif isinstance(value, list):
        for item in value:
            yield from personal_values_in(item, field)
    elif field is not None and isinstance(value, (str, int)) and not isinstance(value, bool):
        text = str(value).strip()
        if len(text) >= (MIN_NAME_LENGTH if field in NAME_FIELDS else MIN_NUMBER_LENGTH):
            yield text, field


def personal_values(*sources: Any) -> dict[str, str]:
    """Return every personal value in ``sources`` (requests, gateway outputs), with its field."""
    values: dict[str, str] = {}
    for source in sources:
        for value, field in personal_values_in(source):
            values.setdefault(value, field)
    return values


def sample_requests() -> list[dict[str, Any]]:
    """Return the demo's sample batch."""
    return json.loads(DEMO_BATCH.read_text(encoding="utf-8"))


def sample_values(rows: Iterable[Any] = ()) -> dict[str, str]:
    """
    Return the personal values of the sample batch and of what the gateway answered about its people.

    :param rows: Status rows; the outputs of those whose request carries a personal value of the sample
        batch are added.
    """
    values = personal_values(sample_requests())
    outputs = [
        row.data.get("output")
        for row in rows
        if row.data and any(value in values for value, _ in personal_values_in(row.data.get("request")))
    ]
    return {**personal_values(outputs), **values}


def single_calls(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return ``medins_call`` confs of sample people: found, refused (bad check digit), rejected."""
    from sandbox.fake_data import is_valid_id_number

    people = [r for r in requests if r["api_code"] == "1101" and r["data"].get("mdtrt_cert_type") == "02"]
    found = next(r for r in people if "psn_name" in r["data"])
    refused = next(r for r in people if not is_valid_id_number(r["data"].get("mdtrt_cert_no", "")))
    return [
        {"api_code": "1101", "org_code": found["org_code"], "data": found["data"]},
        {"api_code": "1101", "org_code": refused["org_code"], "data": refused["data"]},
        {"api_code": "2207", "org_code": found["org_code"], "data": found["data"]},  # lacks most fields
    ]


def refused_confs(requests: list[dict[str, Any]]) -> list[tuple[str, Any, Any]]:
    """
    Return triggers refused for a conf with sample personal data in a wrong place: ``(dag_id, conf, masked)``.

    ``masked`` is the reply's ``detail`` as :func:`medins.masking.mask_refusal` gives it: its start, or all.
    """
    person = next(r["data"] for r in requests if r["api_code"] == "1101" and "psn_name" in r["data"])
    number, name = person["mdtrt_cert_no"], person["psn_name"]
    param = "Invalid input for param"
    return [
        ("medins_batch", {"requests": [{"api_code": "1101", "data": f"{number} {name}"}]},
         f"{param} requests: requests[0]['data'] is not of type 'object'"),
        ("medins_batch", {"requests": [{"api_code": "1101", "request_id": f"{name}{number}", "data": {}}]},
         f"{param} requests: requests[0]['request_id'] does not match '^[A-Za-z0-9_.:@-]"),
        ("medins_batch", {"requests": [f"1101 {number} {name}"]},
         f"{param} requests: requests[0] is not of type 'object'"),
        ("medins_batch", {"requests": [{"api_code": "1101", "data": person}], "batch_id": number + name},
         f"{param} batch_id: batch_id does not match '^[A-Za-z0-9_.:+@-]"),
        ("medins_call", {"api_code": "1101", "data": [number, name]},
         f"{param} data: data is not of type 'object'"),
        ("medins_call", {"api_code": "1101", "data": person, "insuplc_admdvs": number},
         f"{param} insuplc_admdvs: insuplc_admdvs does not match '^"),
        # Not an object: refused by the request body's model, with 422.
        ("medins_call", f"{number} {name}",
         [{"type": "dict_type", "loc": ["body", "conf"], "msg": "Input should be a valid dictionary"}]),
    ]  # fmt: skip


def home_secrets(*homes: Path) -> dict[str, str]:
    """Return the secrets of Airflow homes: ``secrets/*``, ``passwords.json``, keys in ``airflow.cfg``."""
    import configparser

    found: dict[str, str] = {}
    for home in homes:
        config = configparser.ConfigParser(interpolation=None)
        config.read(home / "airflow.cfg")
        for section, key in (("core", "fernet_key"), ("api_auth", "jwt_secret")):
            if value := config.get(section, key, fallback=""):
                found[value] = f"[{section}] {key} of {home.name}"
        for path in sorted((home / "secrets").glob("*")):
            found[path.read_text().strip()] = f"secret {path.name} of {home.name}"
        passwords = home / "passwords.json"
        if passwords.exists():
            for user, password in json.loads(passwords.read_text()).items():
                found[password] = f"password of {user} of {home.name}"
    return found


def files_under(*roots: Path, since: float = 0.0) -> list[Path]:
    """Return the files under ``roots`` changed at or after ``since`` (a Unix time)."""
    return sorted(
        path
        for root in roots
        if root.is_dir()
        for path in root.rglob("*")
        if path.is_file() and path.stat().st_mtime >= since
    )


@dataclass(frozen=True)
class StatusRow:
    """What the scan reads of a row of ``async_task_status``."""

    task_id: str
    batch_id: str | None
    status: str
    error: str | None
    data: dict[str, Any]


def status_rows(cursor: Any) -> list[StatusRow]:
    """Read every row of ``async_task_status`` through a DB-API cursor (SQLite or MariaDB)."""
    cursor.execute("SELECT task_id, batch_id, status, error, data FROM async_task_status")
    return [StatusRow(*columns, json.loads(data) if data else {}) for *columns, data in cursor]


def main(argv: list[str]) -> int:
    """Scan the logs, the SQLite metadata DB and the status table of each Airflow home given."""
    import sqlite3
    from contextlib import closing

    findings: list[Finding] = []
    for home in map(Path, argv or [str(ROOT / ".airflow")]):
        rows: list[StatusRow] = []
        if (home / "medins_status.db").exists():
            with closing(sqlite3.connect(home / "medins_status.db")) as conn:
                rows = status_rows(conn.cursor())
        scanner = Scanner(sample_values(rows), home_secrets(home))
        findings += scanner.scan_files(files_under(home / "logs"), home)
        if (home / "airflow.db").exists():
            findings += scanner.scan_metadata_db(f"sqlite:///{home / 'airflow.db'}")
        findings += scanner.scan_status_rows("async_task_status", rows)
        print(f"{home}: {len(scanner)} values, {len(rows)} status rows scanned")
    for finding in findings:
        print(finding)
    print(f"{len(findings)} findings")
    return 1 if findings else 0


def _variants(text: str) -> list[str]:
    """Return ``text``, and the text with JSON escapes or percent-encoding decoded when it has any."""
    variants = [text]
    if "\\u" in text:
        variants.append(_ESCAPE.sub(_unescape, text))
    if "%" in text:
        variants.append(unquote(text))
    return variants


def _unescape(match: re.Match[str]) -> str:
    try:
        return json.loads(f'"{match.group(0)}"')
    except ValueError:
        return match.group(0)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _masked(field: str, value: str) -> str:
    return mask_value(field, value) if field in PERSONAL_FIELDS else "***"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
