"""
The work of ``medins_nightly``: the recurring jobs of a night, and the day's unresolved settlements.

**Recurring jobs.** A JSON file (``include/nightly/jobs.json`` unless the Airflow Variable
``medins_nightly_jobs`` names another) lists jobs; each names an interface, the institutions, and an
input template::

    {"jobs": [
      {"name": "catalog-sync", "api_code": "1312", "institutions": ["H44010600001"],
       "input": {"query_date": "{ds}", "page_num": 1, "page_size": 100}},
      {"name": "reconcile-310", "api_code": "3201",
       "institutions": {"H44010600001": {"setl_optins": "440106"}},
       "input": {"insutype": "310", "clr_type": "11", "stmt_begndate": "{ds}", "stmt_enddate": "{ds}"},
       "totals": {"file": "settlement_summary_{ds}.csv", "match": {"机构编码": "{org_code}"},
                  "sum": {"medfee_sumamt": "医疗费总额", "fixmedins_setl_cnt": "结算笔数"}}}
    ]}

``institutions`` is a list of institution codes, or an object whose values are input fields of
that institution's own (added to the template). Every string of the input, of ``totals.file`` and
of ``totals.match`` is a ``str.format`` template with these placeholders:

* ``{ds}``, ``{ds_nodash}``: the day the night works on (``yyyy-MM-dd``, ``yyyyMMdd``);
* ``{data_interval_start}``, ``{data_interval_end}``: that day's first moment and the next day's,
  China time (``yyyy-MM-dd HH:mm:ss``);
* ``{org_code}``: the institution.

``input`` may also be a list of templates: each becomes one request per institution.

``totals`` reads a settlement summary the hospital system exports, a CSV file (a relative path is
taken from the jobs file's folder; ``encoding`` defaults to ``utf-8-sig``). The rows whose
``match`` columns equal the given values are summed per ``sum`` column (input field -> CSV column)
into the request's input: amounts to 2 decimals, integer columns as integers. No matching row
means the institution settled nothing that day: every total is 0.

Request ids are ``<job name>-<ds>-<org_code>`` (``-<index>`` added for a list of inputs) and the
batch id is ``nightly-<ds>``: running the same night again stores and sends nothing new.

**The inbox.** The same batch takes the requests of the files departments dropped into the inbox
folder during the day; :mod:`medins.inbox` reads them and files them away with a report.

**The day's unresolved settlements.** A ``2207`` whose reply was lost is ``UNKNOWN``: it may have
been applied. :func:`resolve_unknown_settlements` asks ``5203`` whether the settlement exists;
found, the row becomes ``SUCCESS`` with the settlement; not found, the row stays ``UNKNOWN`` unless
the reversal policy is on, which sends ``2601`` with the row's ``msgid`` and marks the row
``FAILURE``. A ``2207`` is never sent again.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from medins.hooks.gateway import MedicalInsuranceHook, OutcomeKind
from medins.masking import mask_text
from medins.states import RequestState
from medins.store import RequestRow, StatusStore
from medins.timeutil import SHANGHAI, inf_time, now_cst

log = logging.getLogger(__name__)

JOBS_VARIABLE = "medins_nightly_jobs"
"""Airflow Variable holding the jobs file's path, when it is not the default."""

DEFAULT_JOBS_FILE = Path(__file__).resolve().parents[2] / "include" / "nightly" / "jobs.json"
"""The project's sample jobs file."""

JOB_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SETTLE_INFNO = "2207"
SETTLEMENT_QUERY_INFNO = "5203"
REVERSAL_INFNO = "2601"
UNKNOWN_SETL_ID = "0"
"""``setl_id`` sent to ``5203`` when the settlement's id was never received; the gateway then matches
the settlement by ``mdtrt_id`` and ``psn_no``."""


class NightlyJobError(ValueError):
    """A jobs file or a settlement summary cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Night:
    """The day a nightly run works on: a calendar day in China time."""

    day: date

    @property
    def start(self) -> datetime:
        """Return the day's first moment, China time."""
        return datetime.combine(self.day, time(), tzinfo=SHANGHAI)

    @property
    def end(self) -> datetime:
        """Return the next day's first moment, China time."""
        return self.start + timedelta(days=1)

    @property
    def ds(self) -> str:
        """Return the day as ``yyyy-MM-dd``."""
        return self.day.isoformat()

    @property
    def batch_id(self) -> str:
        """Return the id of the night's batch."""
        return f"nightly-{self.ds}"

    def placeholders(self, org_code: str = "") -> dict[str, str]:
        """Return the values the jobs file's templates may use."""
        return {
            "ds": self.ds,
            "ds_nodash": self.day.strftime("%Y%m%d"),
            "data_interval_start": inf_time(self.start),
            "data_interval_end": inf_time(self.end),
            "org_code": org_code,
        }


def night_before(moment: datetime) -> Night:
    """
    Return the night a run at ``moment`` works on: the calendar day before it, China time.

    A run scheduled at 02:00 on 3 December (China time) works on 2 December.

    :param moment: The run's logical date (or, for a run without one, when it was triggered).
    """
    if moment.tzinfo is None:
        raise ValueError(f"the moment {moment} must be timezone-aware")
    return Night(moment.astimezone(SHANGHAI).date() - timedelta(days=1))


@dataclass(frozen=True)
class Totals:
    """Where a job's totals come from: a settlement summary CSV."""

    file: str
    match: dict[str, str]
    sums: dict[str, str]
    encoding: str = "utf-8-sig"


@dataclass(frozen=True)
class Job:
    """One recurring job of the jobs file."""

    name: str
    api_code: str
    institutions: dict[str, dict[str, Any]]
    inputs: list[dict[str, Any]]
    indexed: bool
    totals: Totals | None = None


@dataclass
class Expansion:
    """The requests of one night, and the files they were read from."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def load_jobs(path: str | Path) -> list[Job]:
    """
    Read and check a jobs file.

    :param path: The JSON jobs file.
    :raises NightlyJobError: naming the file and the job when it cannot be used.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NightlyJobError(
            f"jobs file {path} does not exist: create it, or set the Airflow Variable {JOBS_VARIABLE} "
            "to the path of yours"
        ) from None
    except (OSError, ValueError) as err:
        raise NightlyJobError(f"jobs file {path} is not readable JSON: {err}") from None

    raw_jobs = document.get("jobs") if isinstance(document, dict) else None
    if not isinstance(raw_jobs, list):
        raise NightlyJobError(f'jobs file {path} must be an object with a list "jobs"')
    jobs = [_job(path, index, raw) for index, raw in enumerate(raw_jobs)]
    names = [job.name for job in jobs]
    doubles = sorted({name for name in names if names.count(name) > 1})
    if doubles:
        raise NightlyJobError(f"jobs file {path}: job names must be unique; repeated: {', '.join(doubles)}")
    return jobs


def expand_jobs(jobs: Sequence[Job], night: Night, *, base_dir: str | Path) -> Expansion:
    """
    Turn the jobs into the night's requests, in the form ``medins_batch`` takes them.

    :param jobs: The jobs, from :func:`load_jobs`.
    :param night: The night worked on.
    :param base_dir: Folder relative settlement summary paths are taken from.
    :raises NightlyJobError: naming the job, the file and the column when a template or a summary
        cannot be used.
    """
    expansion = Expansion()
    summaries: dict[Path, Any] = {}

    for job in jobs:
        for org_code, own_fields in job.institutions.items():
            values = night.placeholders(org_code)
            totals: dict[str, Any] = {}
            if job.totals is not None:
                file = Path(base_dir) / _fill(job.totals.file, values, job.name, "totals.file")
                if file not in summaries:
                    summaries[file] = read_summary(file, job.totals)
                    expansion.files.append(str(file))
                match = {column: _fill(value, values, job.name, "totals.match") for column, value in
                         job.totals.match.items()}  # fmt: skip
                totals = sum_totals(summaries[file], file, match, job.totals.sums)
            for index, template in enumerate(job.inputs):
                request_id = f"{job.name}-{night.ds}-{org_code}" + (f"-{index}" if job.indexed else "")
                data = {**_fill(template, values, job.name, "input"), **own_fields, **totals}
                expansion.requests.append(
                    {"request_id": request_id, "api_code": job.api_code, "org_code": org_code, "data": data}
                )
    return expansion


def read_summary(path: Path, totals: Totals) -> Any:
    """
    Read a settlement summary CSV and check it has the columns a job needs.

    Every cell is read as text; the summed columns are checked to be numbers.

    :param path: The CSV file.
    :param totals: The job's ``totals`` (which columns it matches on and sums).
    :raises NightlyJobError: naming the file, and the column or row, when it cannot be used.
    """
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=totals.encoding)
    except FileNotFoundError:
        raise NightlyJobError(
            f"settlement summary {path} does not exist: the hospital system has not exported the day's "
            "totals yet; export it, then clear the register task"
        ) from None
    except (OSError, ValueError) as err:  # pandas' ParserError and UnicodeDecodeError are ValueErrors
        raise NightlyJobError(f"settlement summary {path} is not a readable CSV file: {err}") from None

    frame.columns = [str(column).strip() for column in frame.columns]
    wanted = [*totals.match, *totals.sums.values()]
    missing = [column for column in wanted if column not in frame.columns]
    if missing:
        raise NightlyJobError(
            f"settlement summary {path} has no column {', '.join(missing)}; "
            f"its columns are: {', '.join(frame.columns)}"
        )
    for column in totals.sums.values():
        cells = frame[column].str.strip()
        bad = pd.to_numeric(cells, errors="coerce").isna()
        if bad.any():
            line = int(bad.idxmax()) + 2  # the header is line 1
            raise NightlyJobError(
                f"settlement summary {path}, column {column}, line {line}: "
                f"{cells[bad].iloc[0]!r} is not a number"
            )
    return frame


def sum_totals(frame: Any, path: Path, match: Mapping[str, str], sums: Mapping[str, str]) -> dict[str, Any]:
    """
    Sum the summary's rows that match, per input field.

    :param frame: The summary, from :func:`read_summary`.
    :param path: The summary's file, for messages.
    :param match: Column -> value a row must hold to be counted.
    :param sums: Input field -> column to sum into it.
    :return: Input field -> total: a whole-number column as an ``int``, else a ``float`` of 2 decimals.
    """
    selected = frame
    for column, value in match.items():
        selected = selected[selected[column].str.strip() == value]
    if selected.empty:
        log.warning("No row of %s matches %s: the totals are 0", path.name, match)

    totals: dict[str, Any] = {}
    for name, column in sums.items():
        values = [Decimal(cell.strip()) for cell in selected[column]]
        total = sum(values, Decimal(0))
        whole = all(value.as_tuple().exponent >= 0 for value in values)
        totals[name] = int(total) if whole else float(total.quantize(Decimal("0.01")))
    return totals


def register_night(
    jobs_file: str | Path,
    night: Night,
    *,
    run_id: str,
    dag_id: str,
    inbox_dir: str | Path | None = None,
    chunk_size: int | None = None,
    concurrency: int = 16,
    medins_conn_id: str = MedicalInsuranceHook.default_conn_name,
    status_conn_id: str = StatusStore.default_conn_name,
) -> list[dict[str, Any]]:
    """
    Store the night's requests as the batch ``nightly-<ds>`` and return its chunk descriptors.

    The requests are the recurring jobs' and those of the inbox's files (:mod:`medins.inbox`), one
    batch; once it is stored, each inbox file is moved to ``processed`` or ``failed`` with its
    report. Requests stored by an earlier run of the same night are left as they are, so only the
    chunks that still hold open requests are returned, including chunks of requests an earlier try
    took from inbox files that are gone since.

    :param inbox_dir: The inbox folder; ``None`` takes no files.
    """
    from medins.inbox import file_inbox, read_inbox
    from medins.tasks import register_batch

    jobs_file = Path(jobs_file)
    jobs = load_jobs(jobs_file)
    expansion = expand_jobs(jobs, night, base_dir=jobs_file.parent)
    inbox = None
    if inbox_dir is not None:
        catalog_path = MedicalInsuranceHook(medins_conn_id=medins_conn_id).catalog.path
        inbox = read_inbox(inbox_dir, night.ds, catalog_path=catalog_path)
    inbox_requests = inbox.requests if inbox else []
    log.info(
        "Night %s: %d jobs of %s expand into %d requests (summaries read: %s); the inbox adds %d "
        "requests from %d files",
        night.ds,
        len(jobs),
        jobs_file,
        len(expansion.requests),
        ", ".join(expansion.files) or "none",
        len(inbox_requests),
        len(inbox.files) if inbox else 0,
    )
    chunks = register_batch(
        [*expansion.requests, *inbox_requests],
        run_id=run_id,
        dag_id=dag_id,
        batch_id=night.batch_id,
        chunk_size=chunk_size,
        concurrency=concurrency,
        medins_conn_id=medins_conn_id,
        status_conn_id=status_conn_id,
    )

    with StatusStore.from_conn_id(status_conn_id) as store:
        if inbox is not None:
            file_inbox(
                inbox, night.ds, batch_id=night.batch_id, store=store, first_index=len(expansion.requests)
            )
        left_over = sorted(store.open_chunks(night.batch_id) - {chunk["chunk_no"] for chunk in chunks})
    for chunk_no in left_over:
        chunks.append(
            {
                "batch_id": night.batch_id,
                "chunk_no": chunk_no,
                "size": 0,
                "label": f"#{chunk_no} open requests of an earlier try",
                "concurrency": concurrency,
            }
        )
    if left_over:
        log.info("Night %s: %d more chunks hold open requests of an earlier try", night.ds, len(left_over))
    return chunks


def resolve_unknown_settlements(
    night: Night,
    *,
    reverse_unresolved: bool = False,
    medins_conn_id: str = MedicalInsuranceHook.default_conn_name,
    status_conn_id: str = StatusStore.default_conn_name,
) -> dict[str, int]:
    """
    Resolve the ``UNKNOWN`` settlements (``2207``) stored on the night's day, by query or by reversal.

    ``5203`` is asked for each one, by ``psn_no`` and ``mdtrt_id`` (and ``setl_id`` when known).
    Found, the row becomes ``SUCCESS`` with the settlement as its output. Not found, the row stays
    ``UNKNOWN`` unless ``reverse_unresolved``: then ``2601`` reverses the original ``msgid`` and the
    row becomes ``FAILURE`` (the settlement does not stand). A ``2207`` is never sent again.

    :param night: The night; rows created on its day (China time) are resolved.
    :param reverse_unresolved: Reverse the settlements ``5203`` does not find.
    :return: How many rows ended how: ``found``, ``reversed``, ``left_unknown`` (``not_reached`` is 0).
    :raises AirflowException: when the gateway did not answer for some rows, after writing the others,
        so that the task's next try asks again for those.
    """
    counts = dict.fromkeys(("found", "reversed", "left_unknown", "not_reached"), 0)
    hook = MedicalInsuranceHook(medins_conn_id=medins_conn_id)
    with StatusStore.from_conn_id(status_conn_id) as store:
        rows = _unknown_settlements(store, night)
        log.info("Night %s: %d UNKNOWN settlements (2207) to resolve", night.ds, len(rows))
        try:
            for row in rows:
                outcome = _resolve(hook, row, reverse_unresolved=reverse_unresolved)
                counts[outcome] += 1
                if outcome != "not_reached":
                    store.finish([row])
        finally:
            hook.close()

    log.info("Night %s: UNKNOWN settlements resolved: %s", night.ds, counts)
    if counts["not_reached"]:
        from airflow.sdk.exceptions import AirflowException

        raise AirflowException(
            f"{counts['not_reached']} UNKNOWN settlements of {night.ds} got no answer from the gateway; "
            "the next try asks again (5203 is a query, and a repeated 2601 is answered as already reversed)"
        )
    return counts


def _unknown_settlements(store: StatusStore, night: Night) -> list[RequestRow]:
    """Return every ``UNKNOWN`` ``2207`` row created on the night's day."""
    query = {
        "status": RequestState.UNKNOWN.value,
        "api_code": SETTLE_INFNO,
        "created_from": night.start,
        "created_to": night.end - timedelta(microseconds=1),
    }
    _, total = store.list_tasks(**query, limit=0)
    rows, _ = store.list_tasks(**query, limit=total) if total else ([], 0)
    return sorted(rows, key=lambda row: row.task_id)


def _resolve(hook: MedicalInsuranceHook, row: RequestRow, *, reverse_unresolved: bool) -> str:
    """Query (and maybe reverse) one UNKNOWN settlement; update ``row`` in place; say how it ended."""
    request = row.data.get("request") or {}
    data = request.get("data") or {}
    settled = (row.data.get("output") or {}).get("setlinfo") or {}
    query = {
        "psn_no": data.get("psn_no", ""),
        "setl_id": settled.get("setl_id") or data.get("setl_id") or UNKNOWN_SETL_ID,
        "mdtrt_id": data.get("mdtrt_id", ""),
    }
    notes = row.data.setdefault("resolution", [])

    found = hook.call(
        SETTLEMENT_QUERY_INFNO,
        query,
        org_code=row.org_code,
        insuplc_admdvs=request.get("insuplc_admdvs"),
    )
    notes.append(_note(found))
    # A gateway may quote the request it refuses: its personal values are masked wherever they appear.
    found_reason = mask_text(found.reason, data)
    if found.kind is OutcomeKind.SUCCESS and (found.output or {}).get("setlinfo"):
        setlinfo = found.output["setlinfo"]
        row.status = RequestState.SUCCESS
        row.data["output"] = found.output
        row.error = (
            f"resolved by 5203 (msgid {found.msgid}): the settlement was applied as setl_id "
            f"{setlinfo.get('setl_id')}; its reply had been lost"
        )
        log.info("Settlement %s was applied: resolved to SUCCESS by 5203", row.task_id)
        return "found"
    if found.kind is not OutcomeKind.REFUSED:
        log.warning("5203 for %s did not answer (%s); it stays UNKNOWN", row.task_id, found_reason)
        return "not_reached"

    if not reverse_unresolved:
        row.error = _clip_note(
            row.error,
            f"5203 (msgid {found.msgid}) found no settlement ({found_reason}); left UNKNOWN: reverse it "
            "with 2601 (run medins_nightly with reverse_unresolved) or by hand",
        )
        log.info("Settlement %s not found by 5203: left UNKNOWN", row.task_id)
        return "left_unknown"

    reversal = hook.call(
        REVERSAL_INFNO,
        {"psn_no": query["psn_no"], "omsgid": row.msgid or "", "oinfno": SETTLE_INFNO},
        org_code=row.org_code,
        insuplc_admdvs=request.get("insuplc_admdvs"),
    )
    notes.append(_note(reversal))
    reversal_reason = mask_text(reversal.reason, data)
    if reversal.kind is OutcomeKind.SUCCESS:
        row.status = RequestState.FAILURE
        row.error = (
            f"not found by 5203, reversed by 2601 (msgid {reversal.msgid}"
            + (f", {mask_text(reversal.warn_msg, data)}" if reversal.warn_msg else "")
            + "): the settlement does not stand; settle the visit again as a new request if it is still due"
        )
        log.info("Settlement %s not found by 5203: reversed with 2601, now FAILURE", row.task_id)
        return "reversed"
    if reversal.kind is OutcomeKind.REFUSED:
        row.error = _clip_note(
            row.error,
            f"5203 found no settlement and 2601 was refused ({reversal_reason}): resolve it by hand",
        )
        log.warning("2601 for %s was refused (%s): it stays UNKNOWN", row.task_id, reversal_reason)
        return "left_unknown"
    log.warning("2601 for %s did not answer (%s); it stays UNKNOWN", row.task_id, reversal_reason)
    return "not_reached"


def _note(outcome: Any) -> dict[str, Any]:
    """Return what the row keeps of a resolving call."""
    return {
        "api_code": outcome.api_code,
        "msgid": outcome.msgid,
        "outcome": str(outcome.kind),
        "infcode": outcome.infcode,
        "at": now_cst().isoformat(),
    }


def _clip_note(error: str | None, note: str) -> str:
    """Return the row's error with the note first, cut to the column's length."""
    return f"{note}; before: {error}"[:1000] if error else note[:1000]


def _fill(template: Any, values: Mapping[str, str], job: str, where: str) -> Any:
    """Fill the ``str.format`` placeholders of every string in ``template``."""
    if isinstance(template, str):
        try:
            return template.format(**values)
        except (KeyError, IndexError, ValueError) as err:
            raise NightlyJobError(
                f"job {job}, {where}: template {template!r} cannot be filled ({err!r}); "
                f"placeholders are {', '.join('{' + name + '}' for name in values)}"
            ) from None
    if isinstance(template, dict):
        return {key: _fill(value, values, job, where) for key, value in template.items()}
    if isinstance(template, list):
        return [_fill(value, values, job, where) for value in template]
    return template


def _job(path: Path, index: int, raw: Any) -> Job:
    """Check one job of the jobs file."""
    if not isinstance(raw, dict):
        raise NightlyJobError(f"jobs file {path}, job #{index}: must be an object")
    name = raw.get("name")
    where = f"jobs file {path}, job {name!r}" if isinstance(name, str) else f"jobs file {path}, job #{index}"
    if not isinstance(name, str) or not JOB_NAME.match(name):
        raise NightlyJobError(f"{where}: name must be 1-64 letters, digits or _.-")
    unknown = sorted(set(raw) - {"name", "api_code", "institutions", "input", "totals", "about"})
    if unknown:
        raise NightlyJobError(f"{where}: unknown field(s) {', '.join(unknown)}")
    api_code = raw.get("api_code")
    if not isinstance(api_code, str) or not api_code:
        raise NightlyJobError(f"{where}: api_code is required")

    institutions = raw.get("institutions")
    if isinstance(institutions, list) and all(isinstance(code, str) for code in institutions):
        institutions = {code: {} for code in institutions}
    if (
        not isinstance(institutions, dict)
        or not institutions
        or not all(isinstance(fields, dict) for fields in institutions.values())
    ):
        raise NightlyJobError(
            f"{where}: institutions must be a non-empty list of codes, or an object code -> input fields"
        )

    template = raw.get("input")
    indexed = isinstance(template, list)
    inputs = template if indexed else [template]
    if not inputs or not all(isinstance(item, dict) for item in inputs):
        raise NightlyJobError(f"{where}: input must be an object, or a non-empty list of objects")

    totals = raw.get("totals")
    if totals is not None:
        totals = _totals(where, totals)
    return Job(name, api_code, dict(institutions), list(inputs), indexed, totals)


def _totals(where: str, raw: Any) -> Totals:
    """Check a job's ``totals``."""
    if not isinstance(raw, dict) or not isinstance(raw.get("file"), str):
        raise NightlyJobError(f'{where}: totals must be an object with a "file" path')
    match, sums = raw.get("match", {}), raw.get("sum")
    if not isinstance(match, dict) or not all(isinstance(v, str) for v in match.values()):
        raise NightlyJobError(f"{where}: totals.match must be an object column -> value (text)")
    if not isinstance(sums, dict) or not sums or not all(isinstance(v, str) for v in sums.values()):
        raise NightlyJobError(f"{where}: totals.sum must be a non-empty object input field -> column")
    return Totals(raw["file"], dict(match), dict(sums), str(raw.get("encoding") or "utf-8-sig"))
