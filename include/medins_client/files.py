"""
Read request files (JSON, CSV, Excel) into a batch's requests; write a batch's rows to CSV or Excel.

A JSON file holds a list of requests, or a batch ``conf`` (``{"requests": [...], "batch_id": ...,
"chunk_size": ..., "concurrency": ...}``). A CSV or Excel file holds one request per row, under a
header row with the columns ``api_code``, ``org_code`` (its cells may be empty when the gateway
serves one institution), optionally ``request_id`` and ``insuplc_admdvs``, and the input either as
one ``data`` column of JSON objects or as ``data.<field>`` columns, one per input field.

Every cell is read as text, so codes such as ``01`` and 18-digit ID numbers stay as written; a
cell becomes a number only for the fields the interface catalog types as ``number`` or ``integer``
(amounts, counts, page sizes), and a date cell of Excel is written the way the catalog's format
for the field says. Empty cells and blank rows are left out; cells are trimmed. Rows are numbered
as a spreadsheet shows them: the header is row 1.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from medins_client.catalog import InterfaceCatalog, load_catalog
from medins_client.errors import InputError

#: How many requests one batch takes (``medins_batch``'s ``requests`` param).
MAX_REQUESTS = 50_000

READERS = {".json": "JSON", ".csv": "CSV", ".xlsx": "Excel"}
EXPORT_SUFFIXES = (".csv", ".xlsx")

REQUIRED_COLUMNS = ("api_code", "org_code")
OPTIONAL_COLUMNS = ("request_id", "insuplc_admdvs")
BATCH_OPTIONS = ("batch_id", "chunk_size", "concurrency")

#: Columns of an export, in order; ``request`` and ``result`` hold JSON.
EXPORT_COLUMNS = (
    "task_id",
    "status",
    "api_code",
    "org_code",
    "batch_id",
    "kind",
    "attempts",
    "msgid",
    "infcode",
    "err_msg",
    "error",
    "created_at",
    "updated_at",
    "request",
    "result",
)

_INTEGER = re.compile(r"^[+-]?\d+$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_EXCEL_DIGITS = 15
_TIME_FORMATS = {"date": "%Y-%m-%d", "datetime": "%Y-%m-%d %H:%M:%S"}
_SKIP = object()


@dataclass
class RequestFile:
    """The requests read from a file, and the batch options a JSON batch ``conf`` carried."""

    path: Path
    requests: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    #: Where each request stands in the file: its row as a spreadsheet shows it (the header is
    #: row 1, blank rows count) for CSV and Excel, its position from 1 for JSON.
    rows: list[int] = field(default_factory=list)


def read_requests(path: str | os.PathLike[str], catalog: InterfaceCatalog | None = None) -> RequestFile:
    """
    Read a JSON, CSV or Excel (``.xlsx``) file of requests.

    :param path: The file.
    :param catalog: The interface catalog; the bundled one when not given.
    :raises InputError: The file is missing, unreadable, empty or malformed; the message names the
        row (or, in JSON, the request) at fault.
    """
    path = Path(path)
    kind = READERS.get(path.suffix.lower())
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a file")
    if kind is None:
        hint = ": save the workbook as .xlsx" if path.suffix.lower() == ".xls" else ""
        raise InputError(
            f"{path}: cannot read {path.suffix or 'files without an extension'}{hint}; "
            "give a .json, .csv or .xlsx file"
        )
    catalog = catalog or load_catalog()

    options: dict[str, Any] = {}
    if kind == "JSON":
        requests, options = _read_json(path, catalog)
        rows = list(range(1, len(requests) + 1))
    else:
        table = _read_csv(path) if kind == "CSV" else _read_excel(path)
        requests, rows = _table_requests(path, table, catalog)

    if not requests:
        raise InputError(f"{path} holds no requests")
    if len(requests) > MAX_REQUESTS:
        raise InputError(
            f"{path} holds {len(requests):,} requests, more than the {MAX_REQUESTS:,} one batch takes: "
            "split it"
        )
    return RequestFile(path=path, requests=requests, options=options, rows=rows)


def check_export_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` when an export can be written there as CSV or Excel, else raise :class:`InputError`."""
    path = Path(path)
    if path.suffix.lower() not in EXPORT_SUFFIXES:
        raise InputError(
            f"{path}: cannot export to {path.suffix or 'a file without extension'}; give a .csv or .xlsx file"
        )
    if not path.parent.is_dir():
        raise InputError(f"{path}: the folder {path.parent} does not exist")
    return path


def write_export(tasks: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> int:
    """
    Write requests (as the status API returns them) to a CSV or Excel file; return how many.

    CSV is written as UTF-8 with a byte-order mark, so that Excel shows Chinese text as it is.
    The file appears complete or not at all.
    """
    import pandas as pd

    path = check_export_path(path)
    rows = [{column: _export_cell(task.get(column)) for column in EXPORT_COLUMNS} for task in tasks]
    frame = pd.DataFrame(rows, columns=list(EXPORT_COLUMNS), dtype=object)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")

    try:
        if path.suffix.lower() == ".csv":
            frame.to_csv(partial, index=False, encoding="utf-8-sig")
        else:
            frame.to_excel(partial, index=False, engine="openpyxl", sheet_name="requests")
        os.replace(partial, path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {err.strerror or err}") from None
    return len(rows)


def _read_json(path: Path, catalog: InterfaceCatalog) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    try:
        content = json.loads(_read_bytes(path).decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        if not err.doc.strip():
            raise InputError(f"{path} is empty") from None
        raise InputError(
            f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None

    options: dict[str, Any] = {}
    if isinstance(content, dict):
        unknown = sorted(set(content) - {"requests", *BATCH_OPTIONS})
        if "requests" not in content or unknown:
            raise InputError(
                f'{path} must hold a list of requests or {{"requests": [...]}} with optional '
                f"{', '.join(BATCH_OPTIONS)}" + (f"; unknown keys: {', '.join(unknown)}" if unknown else "")
            )
        options = {key: content[key] for key in BATCH_OPTIONS if content.get(key) is not None}
        content = content["requests"]
    if not isinstance(content, list):
        raise InputError(f"{path}: the requests must be a JSON list, not {_json_type(content)}")

    for number, request in enumerate(content, start=1):
        where = f"{path}, request {number}"
        if not isinstance(request, dict):
            raise InputError(f"{where} is {_json_type(request)}, not an object")
        _check_interface(where, request.get("api_code"), catalog)
        if not isinstance(request.get("data"), dict):
            raise InputError(f"{where}: data must be an object of the interface's input fields")
    return content, options


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise InputError(f"{path} cannot be read: {err.strerror or err}") from None


def _read_csv(path: Path) -> list[list[Any]]:
    """Return the CSV's rows as text; UTF-8 (with or without BOM), else GB18030 as Excel writes it."""
    import io

    import pandas as pd

    raw = _read_bytes(path)
    if not raw.strip():
        raise InputError(f"{path} is empty")
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise InputError(f"{path} is neither UTF-8 nor GB18030 text: save it as CSV UTF-8")

    try:
        frame = pd.read_csv(
            io.StringIO(text), header=None, dtype=str, keep_default_na=False, na_filter=False,
            skip_blank_lines=False,
        )  # fmt: skip
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty") from None
    except (pd.errors.ParserError, ValueError) as err:
        raise InputError(f"{path} is not a well-formed CSV file: {str(err).strip()}") from None
    return frame.values.tolist()


def _read_excel(path: Path) -> list[list[Any]]:
    """Return the first sheet's rows, from row 1, cells as Excel typed them."""
    import pandas as pd

    _read_bytes(path)  # a clear message when it cannot be read
    try:
        frame = pd.read_excel(
            path, sheet_name=0, header=None, dtype=object, na_filter=False, engine="openpyxl"
        )
    except Exception as err:  # openpyxl and zipfile raise many kinds for a file that is not a workbook
        raise InputError(f"{path} is not a readable .xlsx workbook ({type(err).__name__}: {err})") from None
    return frame.values.tolist()


def _table_requests(
    path: Path, rows: list[list[Any]], catalog: InterfaceCatalog
) -> tuple[list[dict[str, Any]], list[int]]:
    """Turn the rows of a CSV file or a sheet into requests and their row numbers; the first
    non-blank row is the header."""
    start = next((index for index, row in enumerate(rows) if not _blank_row(row)), None)
    if start is None:
        raise InputError(f"{path} is empty")
    header = [_text(cell) for cell in rows[start]]
    columns = _columns(path, header, rows[start + 1 :])

    requests, numbers = [], []
    for index in range(start + 1, len(rows)):
        row = rows[index]
        if _blank_row(row):
            continue
        cells = dict(zip(header, row, strict=False))
        requests.append(_row_request(f"{path}, row {index + 1}", cells, columns, catalog))
        numbers.append(index + 1)
    return requests, numbers


def _columns(path: Path, header: list[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Check the header; return the ``data.<field>`` columns (empty when a ``data`` column is used)."""
    for position, name in enumerate(header):
        if not name and any(position < len(row) and not _blank(row[position]) for row in rows):
            raise InputError(
                f"{path}: column {_column_letter(position)} has values but no name in the header"
            )
    named = [name for name in header if name]
    twice = sorted({name for name in named if named.count(name) > 1})
    if twice:
        raise InputError(f"{path}: the header names {', '.join(twice)} more than once")
    fields = [name for name in named if name.startswith("data.") and len(name) > len("data.")]
    unknown = [name for name in named if name not in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, "data", *fields)]
    if unknown:
        raise InputError(
            f"{path}: unknown column(s) {', '.join(unknown)}. The columns are api_code, org_code, optional "
            "request_id and insuplc_admdvs, and the input as one data column of JSON or as data.<field> "
            "columns (e.g. data.psn_no)"
        )
    missing = [name for name in REQUIRED_COLUMNS if name not in named]
    if "data" not in named and not fields:
        missing.append("data (or data.<field> columns)")
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} in the header (row 1)")
    if "data" in named and fields:
        raise InputError(f"{path}: give the input as a data column or as data.<field> columns, not both")
    return fields


def _row_request(
    where: str, cells: dict[str, Any], fields: list[str], catalog: InterfaceCatalog
) -> dict[str, Any]:
    api_code = _check_interface(where, _text(cells.get("api_code")), catalog)
    request: dict[str, Any] = {"api_code": api_code}
    for column in ("org_code", *OPTIONAL_COLUMNS):
        value = _text(cells.get(column))
        if value:
            request[column] = value

    if fields:
        data = {}
        for column in fields:
            name = column[len("data.") :]
            value = _cell(f"{where}: {column}", cells.get(column), catalog.rule(api_code, name))
            if value is not _SKIP:
                data[name] = value
    else:
        data = _json_cell(where, cells.get("data"))
    request["data"] = data
    return request


def _check_interface(where: str, api_code: Any, catalog: InterfaceCatalog) -> str:
    if api_code is None or api_code == "":
        raise InputError(f"{where}: api_code is empty")
    if not isinstance(api_code, str) or not catalog.knows(api_code):
        raise InputError(
            f"{where}: interface {api_code!r} is not in the catalog {catalog.path} "
            f"(it knows {catalog.known_codes()})"
        )
    return api_code


def _json_cell(where: str, value: Any) -> dict[str, Any]:
    text = _text(value)
    if not text:
        raise InputError(f"{where}: the data cell is empty; give the input as a JSON object")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(
            f"{where}: the data cell is not valid JSON ({err.msg} at character {err.pos + 1})"
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"{where}: the data cell must hold a JSON object, not {_json_type(data)}")
    return data


def _cell(where: str, value: Any, rule: dict[str, Any]) -> Any:
    """Return a cell as the JSON value its field takes (text unless the catalog says a number)."""
    if _blank(value):
        return _SKIP
    kind = rule.get("type", "string")
    if kind in ("integer", "number"):
        return _number(where, value, integer=kind == "integer")
    if isinstance(value, datetime | date):
        return _time_text(value, rule.get("format"))
    if isinstance(value, time):
        return value.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _excel_number_text(where, value)
    return _text(value)


def _number(where: str, value: Any, *, integer: bool) -> int | float:
    expected = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InputError(f"{where} must be {expected}, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not _NUMBER.match(text):
            # The text itself stays out of the message: a misplaced column may hold a name.
            raise InputError(f"{where} must be {expected}, got text that is not one ({len(text)} characters)")
        value = int(text) if _INTEGER.match(text) else float(text)
    if integer and isinstance(value, float):
        if not value.is_integer():
            raise InputError(f"{where} must be {expected}, got {value!r}")
        value = int(value)
    return value


def _excel_number_text(where: str, value: int | float) -> str:
    """Return a number Excel typed as the text it was; refuse one Excel may have rounded."""
    if isinstance(value, float) and not value.is_integer():
        return repr(value)
    digits = len(str(abs(int(value))))
    if digits > _EXCEL_DIGITS:
        raise InputError(
            f"{where} is a {digits}-digit number in the sheet, and Excel keeps only {_EXCEL_DIGITS} digits "
            "of a number: format the column as Text and enter the values again"
        )
    return str(int(value))


def _time_text(value: date, fmt: str | None) -> str:
    if fmt in _TIME_FORMATS:
        return value.strftime(_TIME_FORMATS[fmt])
    if isinstance(value, datetime) and value.time() != time():
        return value.strftime(_TIME_FORMATS["datetime"])
    return value.strftime(_TIME_FORMATS["date"])


def _text(value: Any) -> str:
    """Return a cell as trimmed text; a whole number Excel typed loses its ``.0``."""
    if _blank(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime | date):
        return _time_text(value, None)
    return str(value).strip()


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def _blank_row(row: Sequence[Any]) -> bool:
    return all(_blank(cell) for cell in row)


def _column_letter(position: int) -> str:
    letters = ""
    position += 1
    while position:
        position, remainder = divmod(position - 1, 26)
        letters = chr(ord("A") + remainder) + letters
    return letters


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _export_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return value
