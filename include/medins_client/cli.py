"""
``medins``: submit request files to the medins product on Airflow and follow what became of them.

    medins submit FILE [--batch-id ID] [--chunk-size N] [--wait] [--timeout S]
    medins status ID [--batch] [--full]
    medins export BATCH_ID --out FILE.csv|FILE.xlsx
    medins stats [--from T] [--to T] [--api-code C] [--org-code C] [--batch-id ID]
    medins cancel ID [--batch]

Airflow is reached with ``--url``/``MEDINS_URL``, ``--user``/``MEDINS_USER`` and
``--password``/``MEDINS_PASSWORD`` (asked for on a terminal when not given). Exit codes: 0 done,
1 Airflow refused or failed (or the wait ran out), 2 the command line or the file is wrong.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
import time
from datetime import datetime
from typing import Any, TextIO

from medins_client.client import MedicalInsuranceClient, batch_finished
from medins_client.errors import InputError, MedinsClientError
from medins_client.files import check_export_path, read_requests, write_export

log = logging.getLogger("medins_client")

_BAR_WIDTH = 30
_STATE_ORDER = ("SUCCESS", "FAILURE", "UNKNOWN", "REJECTED", "CANCELLED", "PROCESSING", "RETRY", "PENDING")


def main(argv: list[str] | None = None) -> int:
    """Run the ``medins`` command; return its exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="medins: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.command(args)
    except InputError as err:
        _say(f"medins: error: {err}")
        return 2
    except MedinsClientError as err:
        _say(f"medins: {err}")
        return 1
    except KeyboardInterrupt:
        _say("medins: interrupted; what was submitted goes on running in Airflow")
        return 130


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``medins``."""
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("connection to Airflow")
    group.add_argument(
        "--url", help="the Airflow api-server, e.g. http://127.0.0.1:8180 (default: $MEDINS_URL)"
    )
    group.add_argument("--user", help="Airflow user (default: $MEDINS_USER)")
    group.add_argument(
        "--password", help="Airflow password (default: $MEDINS_PASSWORD; prefer it: options show in ps)"
    )
    group.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate")
    group.add_argument(
        "-v", "--verbose", action="store_true", help="also log token fetches and every HTTP call"
    )

    parser = argparse.ArgumentParser(
        prog="medins",
        description="Submit medical-insurance interface calls (医保接口) to Airflow and follow them.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    submit = commands.add_parser(
        "submit",
        parents=[connection],
        help="submit a file of requests as one batch",
        description="Submit a JSON, CSV or Excel (.xlsx) file of requests as one batch (a medins_batch run; "
        "above 1,000 requests, stored first and sent by a medins_stored_batch run). CSV and "
        "Excel columns: api_code, org_code, optional request_id and insuplc_admdvs, and the input as a data "
        "column of JSON or as data.<field> columns. Prints the batch id.",
    )
    submit.add_argument("file", metavar="FILE", help="a .json, .csv or .xlsx file")
    submit.add_argument(
        "--batch-id", help="name of the batch (1-64 letters, digits or _.:+@-); else generated"
    )
    submit.add_argument("--chunk-size", type=_positive_int, metavar="N", help="requests per chunk")
    submit.add_argument(
        "--concurrency", type=_positive_int, metavar="N", help="gateway calls in flight per chunk"
    )
    submit.add_argument("--wait", action="store_true", help="show progress until the batch is done")
    submit.add_argument(
        "--timeout", type=_positive_float, default=3600.0, metavar="S", help="seconds to wait (default 3600)"
    )
    submit.add_argument(
        "--catalog", help="interface catalog (default: $MEDINS_CATALOG, else the bundled one)"
    )
    submit.set_defaults(command=_submit)

    status = commands.add_parser("status", parents=[connection], help="show a request or a batch")
    status.add_argument("id", metavar="ID", help="a request's task id, or a batch id with --batch")
    status.add_argument("--batch", action="store_true", help="ID is a batch: show its progress")
    status.add_argument("--full", action="store_true", help="show personal data unmasked (a request only)")
    status.set_defaults(command=_status)

    export = commands.add_parser(
        "export", parents=[connection], help="write a batch's requests to CSV or Excel (masked)"
    )
    export.add_argument("batch_id", metavar="BATCH_ID")
    export.add_argument("--out", required=True, metavar="FILE", help="a .csv (UTF-8 with BOM) or .xlsx file")
    export.set_defaults(command=_export)

    stats = commands.add_parser(
        "stats", parents=[connection], help="counts by state, interface and institution"
    )
    stats.add_argument(
        "--from", dest="created_from", type=_timestamp, metavar="T", help="created at or after T"
    )
    stats.add_argument("--to", dest="created_to", type=_timestamp, metavar="T", help="created at or before T")
    stats.add_argument("--api-code", metavar="CODE")
    stats.add_argument("--org-code", metavar="CODE")
    stats.add_argument("--batch-id", metavar="ID")
    stats.set_defaults(command=_stats)

    cancel = commands.add_parser(
        "cancel", parents=[connection], help="cancel a request, or a batch's requests, not sent yet"
    )
    cancel.add_argument("id", metavar="ID", help="a request's task id, or a batch id with --batch")
    cancel.add_argument("--batch", action="store_true", help="ID is a batch")
    cancel.set_defaults(command=_cancel)
    return parser


def _submit(args: argparse.Namespace) -> int:
    from medins_client.catalog import load_catalog

    requests_file = read_requests(args.file, load_catalog(args.catalog) if args.catalog else None)
    options = {**requests_file.options}
    for name in ("batch_id", "chunk_size", "concurrency"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    client = _connect(args)

    batch_id = client.call_batch_async(requests_file.requests, **options)
    _say(f"Submitted {len(requests_file.requests)} requests from {args.file} as batch {batch_id}")
    if not args.wait:
        _out(batch_id)
        _say(f"Follow it with: medins status {batch_id} --batch")
        return 0

    bar = ProgressBar(sys.stderr)
    progress = client.wait_for_batch(batch_id, timeout=args.timeout, poll=1.0, on_progress=bar.update)
    bar.close()
    _out(summary(batch_id, progress))
    already = progress.get("already_stored") or 0
    if already:
        _say(
            f"medins: {already} of the file's requests were stored before under the same request_id and were "
            "not sent again; see them with: medins status REQUEST_ID"
        )
    not_sent = {
        state: progress.get("counts", {}).get(state, 0) for state in ("REJECTED", "FAILURE", "UNKNOWN")
    }
    if any(not_sent.values()):
        _say(
            "medins: see why with: medins export "
            f"{batch_id} --out {batch_id}.csv  ("
            + ", ".join(f"{state} {count}" for state, count in not_sent.items() if count)
            + ")"
        )
    left_open = progress["total"] - progress["current"]
    if left_open:
        _say(
            f"medins: {left_open} requests of batch {batch_id} are not final: a chunk failed all its tries. "
            "Clear its failed send_chunk tasks in the Airflow UI to resume them"
        )
        return 1
    return 0


def _status(args: argparse.Namespace) -> int:
    client = _connect(args)
    if args.batch:
        result = client.get_task_progress(args.id)
    else:
        result = client.get_task_result(args.id, full=args.full)
    _out(_json(result))
    return 0


def _export(args: argparse.Namespace) -> int:
    path = check_export_path(args.out)
    client = _connect(args)

    progress = client.get_task_progress(args.batch_id)  # a clear error for an unknown batch
    tasks: dict[str, dict[str, Any]] = {}
    for _ in range(2):  # a second pass picks up rows that moved between pages while the batch ran
        page = 1
        while True:
            listing = client.list_tasks(batch_id=args.batch_id, page=page, page_size=500)
            for task in listing["items"]:
                if task.get("kind") != "batch":
                    tasks[task["task_id"]] = task
            total = listing["total"]
            if not listing["items"] or page * listing["page_size"] >= total:
                break
            page += 1
        if len(tasks) >= progress["total"]:
            break

    rows = sorted(tasks.values(), key=lambda task: (str(task.get("created_at")), task["task_id"]))
    count = write_export(rows, path)
    _out(f"Wrote {count} requests of batch {args.batch_id} to {path}")
    if count < progress["total"]:
        _say(f"medins: the batch has {progress['total']} requests but {count} were listed: export it again")
        return 1
    return 0


def _stats(args: argparse.Namespace) -> int:
    client = _connect(args)
    result = client.get_statistics(
        created_from=args.created_from,
        created_to=args.created_to,
        api_code=args.api_code,
        org_code=args.org_code,
        batch_id=args.batch_id,
    )
    _out(_json(result))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    client = _connect(args)
    result = client.cancel_task(args.id, batch=args.batch)
    _out(_json(result))
    if not args.batch and result.get("status") != "CANCELLED":
        _say(
            f"medins: request {args.id} is {result.get('status')}: "
            "only PENDING or RETRY requests can be cancelled"
        )
        return 1
    return 0


def _connect(args: argparse.Namespace) -> MedicalInsuranceClient:
    url = args.url or os.environ.get("MEDINS_URL")
    user = args.user or os.environ.get("MEDINS_USER")
    password = args.password or os.environ.get("MEDINS_PASSWORD")
    if not url:
        raise InputError("no Airflow URL: pass --url or set MEDINS_URL (e.g. http://127.0.0.1:8180)")
    if not user:
        raise InputError("no Airflow user: pass --user or set MEDINS_USER")
    if not password:
        if not sys.stdin.isatty():
            raise InputError("no Airflow password: set MEDINS_PASSWORD (or pass --password)")
        password = getpass.getpass(f"Airflow password of {user}: ")
    return MedicalInsuranceClient(url, user, password, verify=not args.insecure)


class ProgressBar:
    """A one-line text progress bar of a batch: redrawn in place on a terminal, else a line per change."""

    def __init__(self, stream: TextIO, every: float = 5.0) -> None:
        self.stream = stream
        self.every = every
        self.interactive = stream.isatty()
        self._shown = ""
        self._shown_at = 0.0

    def update(self, progress: dict[str, Any]) -> None:
        """Show a progress read from the status API."""
        line = progress_line(progress)
        if self.interactive:
            self.stream.write("\r" + line.ljust(len(self._shown)))
        elif line != self._shown and (
            time.monotonic() - self._shown_at >= self.every or batch_finished(progress)
        ):
            self.stream.write(line + "\n")
        else:
            return
        self.stream.flush()
        self._shown = line
        self._shown_at = time.monotonic()

    def close(self) -> None:
        """End the bar's line."""
        if self.interactive and self._shown:
            self.stream.write("\n")
            self.stream.flush()


def progress_line(progress: dict[str, Any], width: int = _BAR_WIDTH) -> str:
    """Return ``[#####-----]  50.0%  1000/2000  SUCCESS 990 · FAILURE 10 · PENDING 1000`` for a progress."""
    total, current = progress.get("total") or 0, progress.get("current") or 0
    percentage = float(progress.get("percentage") or (100.0 * current / total if total else 0.0))
    done = min(width, round(width * percentage / 100))
    counts = " · ".join(f"{state} {count}" for state, count in _ordered(progress.get("counts") or {}))
    return f"[{'#' * done}{'-' * (width - done)}] {percentage:5.1f}%  {current}/{total}  {counts}".rstrip()


def summary(batch_id: str, progress: dict[str, Any]) -> str:
    """Return the counts by state of a finished batch, one state a line."""
    lines = [
        f"Batch {batch_id}: {progress.get('status')}, {progress.get('current')} of {progress.get('total')} "
        "requests final"
    ]
    lines += [f"  {state:<11}{count:>7}" for state, count in _ordered(progress.get("counts") or {})]
    return "\n".join(lines)


def _ordered(counts: dict[str, int]) -> list[tuple[str, int]]:
    rank = {state: position for position, state in enumerate(_STATE_ORDER)}
    return sorted(((s, c) for s, c in counts.items() if c), key=lambda item: (rank.get(item[0], 99), item[0]))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0")
    return value


def _timestamp(text: str) -> str:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or time, like 2026-12-03 or 2026-12-03T08:00:00+08:00"
        ) from None
    return text


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
