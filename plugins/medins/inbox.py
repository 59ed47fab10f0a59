"""
The inbox of ``medins_nightly``: request files departments drop during the day (每日收件箱).

A department saves a CSV, Excel (``.xlsx``) or JSON file of requests, in the format the command
line submits (:mod:`medins_client.files`), into the inbox folder (``<AIRFLOW_HOME>/medins/inbox``
unless the Airflow Variable ``medins_inbox_dir`` names another). The night's run takes every file
present when it starts, in name order, and leaves alone the ones still being written: names
starting with ``.`` or ending in ``.part`` or ``.tmp``.

Each file is read with the client's reader, which checks the interfaces against the catalog. Its
requests join the night's batch ``nightly-<ds>``; a request's id is the file's own ``request_id``,
else ``inbox-<ds>-<file stem>-<row>`` (the stem reduced to letters, digits and ``_.-``, with a
short hash of the real name when it had to be changed), so running the night again adds nothing.
``<row>`` is the row as a spreadsheet shows it (the header is row 1), or the request's number in a
JSON file.

Once the batch is registered, a file that was read goes to ``<inbox>/processed/<ds>/``, even when
registration rejected some of its rows; a file that could not be read goes to
``<inbox>/failed/<ds>/``. Next to it, ``<name>.report.json`` holds the counts, and each rejected
row's number and reason or the reader's message, personal data masked. A file is moved with
one rename inside the inbox's file system, after its report is written, and never over another
file: a retried task finds it either still in the inbox or already moved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medins.batch import generated_ids
from medins.masking import mask_text
from medins.states import RequestKind, RequestState
from medins.store import RequestRow, StatusStore
from medins.timeutil import now_cst

log = logging.getLogger(__name__)

INBOX_VARIABLE = "medins_inbox_dir"
"""Airflow Variable holding the inbox folder, when it is not the default."""

PROCESSED = "processed"
FAILED = "failed"
REPORT_SUFFIX = ".report.json"
PARTIAL_SUFFIXES = (".part", ".tmp")
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")
_SLUG_LENGTH = 40


def default_inbox_dir() -> Path:
    """Return ``<AIRFLOW_HOME>/medins/inbox``."""
    home = os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow"
    return Path(home) / "medins" / "inbox"


@dataclass
class InboxFile:
    """One file of the inbox: its requests and their rows, or why it could not be read."""

    path: Path
    requests: list[dict[str, Any]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    ignored_options: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def read(self) -> bool:
        """Tell whether the file could be read."""
        return self.error is None


@dataclass
class Inbox:
    """The files a night takes from the inbox, and how many it left alone."""

    folder: Path
    files: list[InboxFile] = field(default_factory=list)
    left_alone: int = 0

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Return the requests of every file that was read, in file order."""
        return [request for entry in self.files for request in entry.requests]


def is_partial(path: Path) -> bool:
    """Tell whether a file name says it is hidden or still being written."""
    return path.name.startswith(".") or path.name.lower().endswith(PARTIAL_SUFFIXES)


def read_inbox(folder: str | Path, ds: str, *, catalog_path: str | None = None) -> Inbox:
    """
    Read every file of the inbox, in name order, into requests with ids of their file and row.

    A file that cannot be read is kept with the reader's message, masked; the others are read on.

    :param folder: The inbox folder; created when missing.
    :param ds: The night's day (``yyyy-MM-dd``), part of the request ids.
    :param catalog_path: The interface catalog the reader checks against; the bundled one when not given.
    """
    from medins_client.catalog import load_catalog

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inbox = Inbox(folder)
    candidates = sorted(path for path in folder.iterdir() if path.is_file())
    inbox.left_alone = sum(1 for path in candidates if is_partial(path))
    paths = [path for path in candidates if not is_partial(path)]
    if not paths:
        return inbox

    catalog = load_catalog(catalog_path)
    for path in paths:
        inbox.files.append(_read_file(path, ds, catalog))
    return inbox


def file_inbox(
    inbox: Inbox, ds: str, *, batch_id: str, store: StatusStore, first_index: int = 0
) -> dict[str, int]:
    """
    Write each file's report from its rows in the store, and move it to ``processed`` or ``failed``.

    Call it once the night's batch is registered.

    :param inbox: The inbox, from :func:`read_inbox`.
    :param ds: The night's day; the files go to ``processed/<ds>/`` and ``failed/<ds>/``.
    :param batch_id: The night's batch.
    :param store: The status store holding the batch.
    :param first_index: Where the inbox's requests began in the list of requests registered (after
        the recurring jobs'): a row's ``data["index"]``, which finds a request whose ``request_id``
        ``plan_batch`` refused and replaced.
    :return: How many files were processed and failed, and their requests accepted and rejected.
    """
    counts = dict.fromkeys(("processed", "failed", "requests", "accepted", "rejected"), 0)
    stored = {row.data.get("index"): row for row in store.rows(batch_id)} if inbox.files else {}
    position = first_index

    for entry in inbox.files:
        if not entry.read:
            report = {"file": entry.path.name, "night": ds, "outcome": FAILED, "message": entry.error}
            _move_with_report(entry.path, inbox.folder / FAILED / ds, report)
            counts["failed"] += 1
            continue

        rows = []
        for number, request in zip(entry.rows, entry.requests, strict=True):
            row = _row_of(request.get("request_id"), stored.get(position), batch_id, position, store)
            position += 1
            rows.append((number, row.task_id if row else str(request.get("request_id")), row))
        report = _report(entry, ds, batch_id, rows)
        _move_with_report(entry.path, inbox.folder / PROCESSED / ds, report)
        counts["processed"] += 1
        counts["requests"] += report["requests"]
        counts["accepted"] += report["accepted"]
        counts["rejected"] += report["rejected"]

    log.info(
        "Inbox of %s: %d files processed (%d requests, %d accepted, %d rejected), %d failed, "
        "%d left alone as still being written",
        ds,
        counts["processed"],
        counts["requests"],
        counts["accepted"],
        counts["rejected"],
        counts["failed"],
        inbox.left_alone,
    )
    if counts["failed"]:
        log.warning(
            "Inbox of %s: %d files could not be read; see their reports in failed/", ds, counts["failed"]
        )
    return counts


def request_id_for(ds: str, stem: str, row: int) -> str:
    """Return the id of an inbox request without one of its own: ``inbox-<ds>-<stem>-<row>``."""
    slug = _SLUG.sub("-", stem).strip("-.")[:_SLUG_LENGTH]
    if slug != stem:
        slug = f"{slug}-{hashlib.sha256(stem.encode()).hexdigest()[:8]}".lstrip("-")
    return f"inbox-{ds}-{slug}-{row}"


def _read_file(path: Path, ds: str, catalog: Any) -> InboxFile:
    """Read one file with the client's reader; give its requests their ids and rows."""
    from medins_client import files

    entry = InboxFile(path)
    try:
        read = files.read_requests(path, catalog)
        entry.rows = read.rows
    except Exception as err:  # the reader's InputError, or anything a malformed file makes a library raise
        message = str(err) if isinstance(err, files.InputError) else f"{type(err).__name__}: {err}"
        entry.error = mask_text(message.replace(str(path), path.name))[:2000]
        return entry

    entry.ignored_options = sorted(read.options)
    for request, row in zip(read.requests, entry.rows, strict=True):
        request = dict(request)
        if request.get("request_id") in (None, ""):
            request["request_id"] = request_id_for(ds, path.stem, row)
        entry.requests.append(request)
    return entry


def _row_of(
    request_id: Any, at_index: RequestRow | None, batch_id: str, index: int, store: StatusStore
) -> RequestRow | None:
    """
    Return the row a request of the night's batch was stored as, or ``None``.

    The batch's row at the request's place holds it under its own id, or, if ``plan_batch`` refused
    the id (invalid, repeated, a batch's), under ``<batch id>-<index>``; otherwise an earlier
    batch stored the id already.
    """
    if at_index is not None and (
        at_index.task_id == request_id or at_index.task_id in generated_ids(batch_id, index)
    ):
        return at_index
    found = store.get(request_id) if isinstance(request_id, str) else None
    return found if found is not None and found.kind != RequestKind.BATCH else None


def _report(
    entry: InboxFile, ds: str, batch_id: str, rows: Sequence[tuple[int, str, RequestRow | None]]
) -> dict[str, Any]:
    """Return a read file's report: counts by state, and each rejected row with its reason."""
    states = Counter(str(row.status) if row else "NOT_STORED" for _, _, row in rows)
    rejected = [
        {"row": number, "request_id": mask_text(task_id), "reason": mask_text(row.error or "")}
        for number, task_id, row in rows
        if row is not None and row.status == RequestState.REJECTED
    ]
    earlier = sum(1 for _, _, row in rows if row is not None and row.batch_id != batch_id)
    report = {
        "file": entry.path.name,
        "night": ds,
        "outcome": PROCESSED,
        "batch_id": batch_id,
        "requests": len(rows),
        "accepted": len(rows) - len(rejected),
        "rejected": len(rejected),
        "stored_by_an_earlier_batch": earlier,
        "states": dict(sorted(states.items())),
        "rejected_rows": rejected,
    }
    if entry.ignored_options:
        report["ignored_options"] = entry.ignored_options
    return report


def _move_with_report(path: Path, folder: Path, report: dict[str, Any]) -> Path:
    """Write the report, then move the file next to it, never over another file of the same name."""
    folder.mkdir(parents=True, exist_ok=True)
    target = _free_name(folder, path.name)
    report = {
        **report,
        "moved_to": str(target.relative_to(folder.parent.parent)),
        "at": now_cst().isoformat(),
    }
    report_path = target.with_name(target.name + REPORT_SUFFIX)
    partial = report_path.with_name(f".{report_path.name}.part")
    partial.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, report_path)
    os.replace(path, target)
    return target


def _free_name(folder: Path, name: str) -> Path:
    """Return ``folder/name``, or ``folder/<stem>-<n><suffix>`` when a file of that name is already there."""
    target = folder / name
    number = 1
    while target.exists():
        number += 1
        target = folder / f"{Path(name).stem}-{number}{Path(name).suffix}"
    return target
