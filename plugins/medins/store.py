"""
Read and write the request status table ``async_task_status``.

:class:`StatusStore` is the only code in the product that touches the table. It reaches the
database through an Airflow Connection (``medins_status_default``):

* ``conn_type`` ``mysql`` (MySQL 8.4 or MariaDB 10.11, through ``MySqlHook`` and mysqlclient):
  ``host``, ``port``, ``login``, ``password``, ``schema`` (the database); extra
  ``{"charset": "utf8mb4"}`` is recommended, and the store forces ``utf8mb4`` and the session
  ``time_zone`` ``'+00:00'`` on every connection it opens either way.
* ``conn_type`` ``sqlite``: ``host`` is the database file's path, e.g.
  ``{"conn_type": "sqlite", "host": "/opt/medins/status.db"}`` (as a URI:
  ``sqlite://%2Fopt%2Fmedins%2Fstatus.db``). The store opens it in WAL mode with a 30 s busy
  timeout, so several processes can write to it.

Every method is one bulk operation: rows go to the database about 1,000 to a statement, never one
round trip per row, and every value is bound as a parameter. Each method commits (or rolls back)
before it returns. Timestamps are UTC on both back ends and come back as aware datetimes.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from tenacity import RetryCallState, Retrying

from medins.states import OPEN, BatchState, RequestKind, RequestState

log = logging.getLogger(__name__)

Dialect = Literal["mysql", "sqlite"]
_T = TypeVar("_T")

TABLE = "async_task_status"
"""Name of the status table."""

DEFAULT_SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
"""Project ``sql/`` folder: one sub-folder of ordered ``*.sql`` files per dialect."""

ERROR_MAX_LENGTH = 1000
"""Length of the ``error`` column; longer messages are cut to it."""

MSGID_MAX_LENGTH = 30

_WRITE_COLUMNS = (
    "task_id",
    "status",
    "data",
    "batch_id",
    "chunk_no",
    "api_code",
    "org_code",
    "kind",
    "attempts",
    "msgid",
    "error",
)
_READ_COLUMNS = (*_WRITE_COLUMNS, "created_at", "updated_at")
_SELECT = f"SELECT {', '.join(_READ_COLUMNS)} FROM {TABLE}"

_OUTCOME_COLUMNS = ("status", "data", "error", "msgid", "attempts")
_BATCH_COLUMNS = ("status", "data")
_CLAIMABLE = tuple(sorted(OPEN))
_REQUEST_KINDS = frozenset(RequestKind) - {RequestKind.BATCH}

_DEADLOCK_TRIES = 3
_MYSQL_DEADLOCK = 1213  # ER_LOCK_DEADLOCK: InnoDB rolled the whole transaction back

# MySQL client and server codes that mean the server could not be reached or the connection broke:
# can't connect (2002 socket, 2003 TCP), server gone away (2006), lost connection (2013, 2055),
# shutdown in progress (1053), connection killed (1927, MariaDB), idle connection closed (4031).
_MYSQL_OUTAGE = frozenset({1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031})
_OUTAGE_MAX_PAUSE = 5.0

STORE_OUTAGE_SECONDS = 180.0
"""How long task-side stores wait out an unreachable database before failing (see ``outage_seconds``)."""

_SQL_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)

CANCELLED_BY_REQUEST = "cancelled by request"
"""Error written into a request row cancelled through :meth:`StatusStore.cancel_batch` or ``cancel_task``."""

_CANCELLABLE = (RequestState.PENDING.value, RequestState.RETRY.value)


class BatchIdTaken(ValueError):
    """A batch id that is already the ``task_id`` of a request: the batch's row would overwrite it."""


@dataclass(slots=True)
class RequestRow:
    """One row of the status table: a request, or a batch's own row (``kind`` ``batch``)."""

    task_id: str
    status: str
    data: dict[str, Any] = field(default_factory=dict)
    batch_id: str | None = None
    chunk_no: int | None = None
    api_code: str | None = None
    org_code: str | None = None
    kind: str = RequestKind.QUERY.value
    attempts: int = 0
    msgid: str | None = None
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class StatusStore:
    """
    Read and write ``async_task_status`` in bulk, on MySQL/MariaDB or SQLite.

    The store holds one DB-API connection, opened on first use and kept until :meth:`close`
    (or the end of a ``with`` block). It is not thread-safe: use it from one thread at a time,
    or serialize the calls; the operator writes from one thread.

    :param connect: returns a new DB-API connection (mysqlclient or sqlite3).
    :param dialect: ``mysql`` (MySQL 8.4 or MariaDB 10.11) or ``sqlite``.
    :param sql_dir: folder holding ``mysql/`` and ``sqlite/`` DDL files; the project's ``sql/``
        by default.
    :param chunk_size: most rows (or ids) per statement.
    :param max_statement_bytes: most bytes of values per statement, so a chunk of large rows stays
        well below MySQL's ``max_allowed_packet``.
    :param outage_seconds: how long a call waits out an unreachable database (server down, connection
        lost), reconnecting with backoff, before it raises; 0 raises at once. Tasks use
        :data:`STORE_OUTAGE_SECONDS`, so a database restart costs them time, not outcomes.
    """

    default_conn_name = "medins_status_default"

    def __init__(
        self,
        connect: Callable[[], Any],
        dialect: Dialect,
        *,
        sql_dir: Path | None = None,
        chunk_size: int = 1000,
        max_statement_bytes: int = 4 * 1024 * 1024,
        outage_seconds: float = 0.0,
    ) -> None:
        if dialect not in ("mysql", "sqlite"):
            raise ValueError(f"Unknown dialect {dialect!r}: the store supports 'mysql' and 'sqlite'.")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, not {chunk_size}.")
        self.dialect: Dialect = dialect
        self.sql_dir = sql_dir or DEFAULT_SQL_DIR
        self.chunk_size = chunk_size
        self.max_statement_bytes = max_statement_bytes
        self.outage_seconds = max(0.0, outage_seconds)
        self._connect = connect
        self._conn: Any = None
        self._ph = "%s" if dialect == "mysql" else "?"

    @classmethod
    def from_conn_id(cls, conn_id: str = default_conn_name, **kwargs: Any) -> StatusStore:
        """
        Build a store on the Airflow Connection ``conn_id``.

        :param conn_id: Connection of type ``mysql`` or ``sqlite`` (see the module docstring).
        :param kwargs: passed on to :class:`StatusStore`; ``outage_seconds`` is
            :data:`STORE_OUTAGE_SECONDS` unless given.
        """
        from medins.connections import get_connection

        kwargs.setdefault("outage_seconds", STORE_OUTAGE_SECONDS)

        conn = get_connection(conn_id)

        if conn.conn_type == "mysql":
            client = conn.extra_dejson.get("client", "mysqlclient")
            if client != "mysqlclient":
                raise ValueError(
                    f"Connection {conn_id!r} asks for MySQL client {client!r}; the status store needs "
                    "mysqlclient: remove 'client' from the Connection's extra."
                )
            from airflow.providers.mysql.hooks.mysql import MySqlHook

            hook = MySqlHook(mysql_conn_id=conn_id, connection=conn)
            return cls(functools.partial(_connect_mysql, hook), "mysql", **kwargs)

        if conn.conn_type == "sqlite":
            path = conn.host
            if not path:
                raise ValueError(
                    f"Connection {conn_id!r} has no host: set host to the SQLite database file's path, "
                    'e.g. {"conn_type": "sqlite", "host": "/path/to/status.db"} or the URI '
                    "sqlite://%2Fpath%2Fto%2Fstatus.db."
                )
            return cls(functools.partial(_connect_sqlite, path), "sqlite", **kwargs)

        raise ValueError(
            f"Connection {conn_id!r} has conn_type {conn.conn_type!r}; the status store supports "
            "'mysql' and 'sqlite'."
        )

    # -- connection ------------------------------------------------------------------------------

    def __enter__(self) -> StatusStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the next call opens a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connection(self) -> Any:
        """Return the open connection, opening and preparing one first if there is none."""
        if self._conn is None:
            conn = self._connect()
            try:
                self._prepare(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _prepare(self, conn: Any) -> None:
        """Set the session up: utf8mb4 and UTC on MySQL; WAL and a busy timeout on SQLite."""
        cursor = conn.cursor()
        try:
            if self.dialect == "mysql":
                # Client and server side both, whatever the Connection's extra says.
                conn.set_character_set("utf8mb4", "utf8mb4_unicode_ci")
                cursor.execute("SET time_zone = '+00:00'")
            else:
                cursor.execute("PRAGMA busy_timeout = 30000")
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.fetchall()
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()
        conn.commit()

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        """Yield a cursor; commit when the block ends, roll back if it raises."""
        conn = self._connection()
        try:
            cursor = conn.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
            conn.commit()
        except BaseException:
            self._abort(conn)
            raise

    def _transaction(self, work: Callable[[Any], _T]) -> _T:
        """
        Run ``work(cursor)`` in one transaction, and run it again when that is safe and may help.

        * MySQL picked it as a deadlock victim: InnoDB rolled it back whole, so running it again
          applies nothing twice (up to 3 runs).
        * The database could not be reached or the connection broke: with ``outage_seconds`` set,
          the store reconnects and runs it again until that long has passed since the first
          failure. Every write of the store is idempotent (an upsert, or an update guarded by the
          states it moves from), so a transaction whose commit went through before the connection
          broke does no harm when it runs again.
        """
        retrying = Retrying(
            stop=self._give_up, wait=self._pause, before_sleep=self._before_retry, reraise=True
        )
        for attempt in retrying:
            with attempt, self._cursor() as cursor:
                return work(cursor)
        raise AssertionError("unreachable: Retrying either returns or raises")  # pragma: no cover

    def _give_up(self, state: RetryCallState) -> bool:
        err = state.outcome.exception() if state.outcome else None
        if self.dialect == "mysql" and _mysql_code(err) == _MYSQL_DEADLOCK:
            return state.attempt_number >= _DEADLOCK_TRIES
        if is_outage(err):
            return state.seconds_since_start >= self.outage_seconds
        return True

    def _pause(self, state: RetryCallState) -> float:
        err = state.outcome.exception() if state.outcome else None
        if _mysql_code(err) == _MYSQL_DEADLOCK:
            return random.uniform(0.05, 0.2) * state.attempt_number
        left = self.outage_seconds - state.seconds_since_start
        return max(0.0, min(_OUTAGE_MAX_PAUSE, 0.5 * 2 ** (state.attempt_number - 1), left))

    def _before_retry(self, state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        if _mysql_code(err) == _MYSQL_DEADLOCK:
            log.warning(
                "[Try %d] Deadlock writing %s; running the transaction again.", state.attempt_number, TABLE
            )
            return
        # The connection is dead or was never made: the next run opens a new one.
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("Closing the broken status store connection failed.", exc_info=True)
        log.warning(
            "[Try %d] The status store is unreachable (%s) for %.0f s; trying again for up to %.0f s.",
            state.attempt_number,
            _describe_error(err),
            state.seconds_since_start,
            self.outage_seconds,
        )

    def _abort(self, conn: Any) -> None:
        """Roll back; drop the connection if even that fails, so the next call reconnects."""
        try:
            conn.rollback()
        except Exception:
            log.warning("Rollback failed on the status store; dropping its connection.", exc_info=True)
            self._conn = None
            try:
                conn.close()
            except Exception:
                log.debug("Closing the broken status store connection failed.", exc_info=True)

    # -- schema ----------------------------------------------------------------------------------

    def create_schema(self) -> None:
        """Run the dialect's DDL files in name order, after checking an existing table has every column."""
        paths = sorted((self.sql_dir / self.dialect).glob("*.sql"))
        if not paths:
            raise FileNotFoundError(f"No *.sql files in {self.sql_dir / self.dialect}.")

        with self._cursor() as cursor:
            existing = self._columns(cursor)
            missing = [column for column in _READ_COLUMNS if column not in existing]
            if existing and missing:
                raise RuntimeError(
                    f"Table {TABLE} exists without the columns {', '.join(missing)} (it was probably made "
                    f"from the seed schema): add them as in {self.sql_dir / self.dialect}, then retry."
                )
            for path in paths:
                statements = split_statements(path.read_text(encoding="utf-8"))
                for statement in statements:
                    cursor.execute(statement)
                log.info("Applied %s (%d statements).", path.name, len(statements))

    def _columns(self, cursor: Any) -> set[str]:
        """Return the status table's column names; an empty set if there is no table."""
        if self.dialect == "mysql":
            cursor.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND table_name = %s",
                [TABLE],
            )
        else:
            cursor.execute("SELECT name FROM pragma_table_info(?)", [TABLE])
        return {name.lower() for (name,) in cursor.fetchall()}

    # -- writes ----------------------------------------------------------------------------------

    def register(self, rows: Iterable[RequestRow]) -> int:
        """
        Insert the rows whose ``task_id`` is not in the table yet; leave existing rows untouched.

        :param rows: new requests, usually ``PENDING`` (or ``REJECTED`` for bad input).
        :return: how many rows were inserted.
        """
        params = [_request_params(row) for row in rows]

        inserted = self._transaction(lambda cursor: self._upsert(cursor, params, update=()))

        log.debug("Registered %d new of %d rows.", inserted, len(params))
        return inserted

    def claim(self, claims: Sequence[tuple[str, str]]) -> set[str]:
        """
        Mark open requests ``PROCESSING`` under a new ``msgid`` and count the attempt.

        Only rows that are ``PENDING``, ``RETRY`` or ``PROCESSING`` are claimed, never final ones.

        :param claims: ``(task_id, msgid)`` pairs; the msgid is the one the request is sent with.
        :return: the task ids actually claimed.
        """
        wanted = dict(claims)
        for task_id, msgid in wanted.items():
            _check_msgid(task_id, msgid)

        def work(cursor: Any) -> set[str]:
            claimed: set[str] = set()
            for chunk in _chunks(sorted(wanted.items()), self.chunk_size):
                ids = [task_id for task_id, _ in chunk]
                cases = " ".join(f"WHEN {self._ph} THEN {self._ph}" for _ in chunk)
                cursor.execute(
                    f"UPDATE {TABLE} SET status = {self._ph}, attempts = attempts + 1, "
                    f"msgid = CASE task_id {cases} END "
                    f"WHERE task_id IN ({self._marks(ids)}) AND status IN ({self._marks(_CLAIMABLE)})",
                    [RequestState.PROCESSING.value, *_flatten(chunk), *ids, *_CLAIMABLE],
                )
                cursor.execute(
                    f"SELECT task_id, msgid FROM {TABLE} WHERE task_id IN ({self._marks(ids)}) "
                    f"AND status = {self._ph}",
                    [*ids, RequestState.PROCESSING.value],
                )
                claimed.update(task_id for task_id, msgid in cursor.fetchall() if msgid == wanted[task_id])
            return claimed

        claimed = self._transaction(work)
        log.debug("Claimed %d of %d requests.", len(claimed), len(wanted))
        return claimed

    def finish(self, rows: Iterable[RequestRow]) -> None:
        """
        Write the requests' outcomes: status, data, error, msgid and attempts, by ``task_id``.

        A row that is not in the table yet is inserted whole.

        :param rows: the requests as the caller last saw them.
        """
        # In task_id order, so concurrent writers lock index records in the same order.
        params = sorted((_request_params(row) for row in rows), key=lambda values: values[0])

        self._transaction(lambda cursor: self._upsert(cursor, params, update=_OUTCOME_COLUMNS))

        log.debug("Wrote the outcome of %d requests.", len(params))

    def put_batch(self, batch_id: str, status: str, data: dict[str, Any] | None = None) -> None:
        """
        Insert or update the batch's own row: ``task_id`` and ``batch_id`` ``batch_id``, ``kind`` ``batch``.

        Batch ids share the ``task_id`` namespace with requests: a batch id that is already a
        request's id raises :class:`BatchIdTaken` and changes nothing.

        A cancelled batch stays ``CANCELLED``: a progress update or a retried registration racing
        with a cancel writes its data but never reopens the batch.

        :param batch_id: the batch.
        :param status: a :class:`~medins.states.BatchState`.
        :param data: the batch's progress and settings, e.g. ``current``, ``total``, ``percentage``.
        """
        row = RequestRow(
            task_id=batch_id,
            status=_enum_value(BatchState, status, batch_id),
            data=data or {},
            batch_id=batch_id,
            kind=RequestKind.BATCH.value,
        )

        def work(cursor: Any) -> None:
            cursor.execute(f"SELECT kind FROM {TABLE} WHERE task_id = {self._ph}", [batch_id])
            found = cursor.fetchone()
            if found is not None and found[0] != RequestKind.BATCH.value:
                raise BatchIdTaken(
                    f"batch id {batch_id!r} is the request_id of a request already stored: "
                    "choose another batch id"
                )
            self._upsert(cursor, [_params(row)], update=[c for c in _BATCH_COLUMNS if c != "status"])
            cursor.execute(
                f"UPDATE {TABLE} SET status = {self._ph} WHERE task_id = {self._ph} AND kind = {self._ph} "
                f"AND status NOT IN ({self._ph}, {self._ph})",
                [row.status, batch_id, RequestKind.BATCH.value, row.status, BatchState.CANCELLED.value],
            )

        self._transaction(work)

    def mark(
        self,
        task_ids: Iterable[str],
        status: str,
        error: str | None = None,
        only_from: Collection[str] | None = None,
    ) -> int:
        """
        Set many requests to ``status``, e.g. ``UNKNOWN`` after a crash or ``CANCELLED``.

        :param task_ids: the requests.
        :param status: the new :class:`~medins.states.RequestState`.
        :param error: the new error message; ``None`` keeps each row's current one.
        :param only_from: change only rows in one of these states; ``None`` for any state.
        :return: how many rows changed status (rows already in ``status`` are not counted).
        """
        ids = sorted(set(task_ids))
        new_status = _enum_value(RequestState, status, "mark")
        sources = None if only_from is None else [_enum_value(RequestState, s, "mark") for s in only_from]
        if not ids or sources == []:
            return 0

        def work(cursor: Any) -> int:
            changed = 0
            for chunk in _chunks(ids, self.chunk_size):
                sql = (
                    f"UPDATE {TABLE} SET status = {self._ph}, error = COALESCE({self._ph}, error) "
                    f"WHERE task_id IN ({self._marks(chunk)}) AND status <> {self._ph}"
                )
                args: list[Any] = [new_status, _clip(error), *chunk, new_status]
                if sources is not None:
                    sql += f" AND status IN ({self._marks(sources)})"
                    args.extend(sources)
                cursor.execute(sql, args)
                changed += cursor.rowcount
            return changed

        changed = self._transaction(work)
        log.info("Marked %d of %d requests %s.", changed, len(ids), new_status)
        return changed

    # -- reads -----------------------------------------------------------------------------------

    def get(self, task_id: str) -> RequestRow | None:
        """Return the row of ``task_id``, or ``None``."""
        found = self._select(f"WHERE task_id = {self._ph}", [task_id])
        return found[0] if found else None

    def get_batch(self, batch_id: str) -> RequestRow | None:
        """Return the batch's own row, or ``None``."""
        found = self._select(f"WHERE task_id = {self._ph} AND kind = {self._ph}", [batch_id, "batch"])
        return found[0] if found else None

    def batch_ids_among(self, ids: Iterable[str]) -> set[str]:
        """Return those of ``ids`` that are batches' own rows: no request can be stored under them."""
        wanted = sorted(set(ids))

        def work(cursor: Any) -> set[str]:
            found: set[str] = set()
            for chunk in _chunks(wanted, self.chunk_size):
                marks = self._marks(chunk)
                cursor.execute(
                    f"SELECT task_id FROM {TABLE} WHERE kind = {self._ph} AND task_id IN ({marks})",
                    [RequestKind.BATCH.value, *chunk],
                )
                found.update(record[0] for record in cursor.fetchall())
            return found

        return self._transaction(work) if wanted else set()

    def fetch_chunk(
        self, batch_id: str, chunk_no: int, statuses: Collection[str] | None = None
    ) -> list[RequestRow]:
        """
        Return a chunk's requests in id order.

        :param batch_id: the batch.
        :param chunk_no: the chunk's number within the batch.
        :param statuses: only rows in one of these states; ``None`` for all.
        """
        where = f"WHERE batch_id = {self._ph} AND chunk_no = {self._ph}"
        args: list[Any] = [batch_id, chunk_no]
        return self._select_in_states(where, args, statuses)

    def rows(
        self, batch_id: str, statuses: Collection[str] | None = None, limit: int | None = None
    ) -> list[RequestRow]:
        """
        Return a batch's requests in id order, without the batch's own row.

        :param batch_id: the batch.
        :param statuses: only rows in one of these states; ``None`` for all.
        :param limit: at most this many rows; ``None`` for all.
        """
        where = f"WHERE batch_id = {self._ph} AND kind <> {self._ph}"
        args: list[Any] = [batch_id, RequestKind.BATCH.value]
        return self._select_in_states(where, args, statuses, limit)

    def counts(self, batch_id: str) -> dict[str, int]:
        """Count a batch's requests by status, without the batch's own row."""

        def work(cursor: Any) -> dict[str, int]:
            cursor.execute(
                f"SELECT status, COUNT(*) FROM {TABLE} WHERE batch_id = {self._ph} AND kind <> {self._ph} "
                "GROUP BY status",
                [batch_id, RequestKind.BATCH.value],
            )
            return {status: int(count) for status, count in cursor.fetchall()}

        return self._transaction(work)

    def open_chunks(self, batch_id: str) -> set[int]:
        """Return the numbers of the batch's chunks that still hold a row in an open state."""
        states = sorted(OPEN)

        def work(cursor: Any) -> set[int]:
            cursor.execute(
                f"SELECT DISTINCT chunk_no FROM {TABLE} WHERE batch_id = {self._ph} AND kind <> {self._ph} "
                f"AND chunk_no IS NOT NULL AND status IN ({self._marks(states)})",
                [batch_id, RequestKind.BATCH.value, *states],
            )
            return {int(chunk_no) for (chunk_no,) in cursor.fetchall()}

        return self._transaction(work)

    def list_tasks(
        self,
        status: str | Collection[str] | None = None,
        api_code: str | None = None,
        org_code: str | None = None,
        batch_id: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[RequestRow], int]:
        """
        Return one page of requests, newest first, and how many requests match in all.

        Batch rows are never listed. Every filter left ``None`` matches everything; values of any
        content are bound as parameters, so a filter that matches nothing returns an empty page.

        :param status: one state or several; an empty collection matches nothing.
        :param api_code: interface code.
        :param org_code: institution code.
        :param batch_id: batch the requests belong to.
        :param created_from: earliest ``created_at``, inclusive; a naive datetime is taken as UTC.
        :param created_to: latest ``created_at``, inclusive; a naive datetime is taken as UTC.
        :param offset: rows to skip.
        :param limit: most rows to return.
        :return: the page (newest first, by ``id``) and the number of matching rows.
        """
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must not be negative, not {offset} and {limit}.")
        where, args = self._filter_requests(status, api_code, org_code, batch_id, created_from, created_to)

        def work(cursor: Any) -> tuple[list[RequestRow], int]:
            cursor.execute(f"SELECT COUNT(*) FROM {TABLE} {where}", args)
            total = int(cursor.fetchone()[0])
            if total <= offset or limit == 0:
                return [], total
            cursor.execute(
                f"{_SELECT} {where} ORDER BY id DESC LIMIT {self._ph} OFFSET {self._ph}",
                [*args, int(limit), int(offset)],
            )
            return [_to_row(record) for record in cursor.fetchall()], total

        return self._transaction(work)

    def statistics(
        self,
        status: str | Collection[str] | None = None,
        api_code: str | None = None,
        org_code: str | None = None,
        batch_id: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
    ) -> dict[str, Any]:
        """
        Count the requests that match the filters by state, by interface and by institution.

        One ``GROUP BY`` query counts them, without loading rows; batch rows are not counted. The
        filters are those of :meth:`list_tasks`.

        :return: ``total``; ``by_status`` (state -> count); ``by_api_code`` and ``by_org_code``
            (code -> state -> count, with ``None`` for rows that have no code, e.g. rejected ones).
        """
        where, args = self._filter_requests(status, api_code, org_code, batch_id, created_from, created_to)

        def work(cursor: Any) -> list[Any]:
            cursor.execute(
                f"SELECT api_code, org_code, status, COUNT(*) FROM {TABLE} {where} "
                "GROUP BY api_code, org_code, status",
                args,
            )
            return list(cursor.fetchall())

        groups = self._transaction(work)

        by_status: Counter[str] = Counter()
        by_api_code: dict[str | None, Counter[str]] = {}
        by_org_code: dict[str | None, Counter[str]] = {}
        for api, org, state, count in groups:
            by_status[state] += int(count)
            by_api_code.setdefault(api, Counter())[state] += int(count)
            by_org_code.setdefault(org, Counter())[state] += int(count)
        return {
            "total": sum(by_status.values()),
            "by_status": dict(sorted(by_status.items())),
            "by_api_code": {code: dict(sorted(c.items())) for code, c in _sorted_by_code(by_api_code)},
            "by_org_code": {code: dict(sorted(c.items())) for code, c in _sorted_by_code(by_org_code)},
        }

    # -- cancel ----------------------------------------------------------------------------------

    def cancel_batch(self, batch_id: str) -> int:
        """
        Cancel a batch: its own row becomes ``CANCELLED``, and so do its ``PENDING`` and ``RETRY`` requests.

        Requests already claimed or final keep their state: a ``PROCESSING`` request was sent or is
        being sent, and the chunk writes its true outcome. Chunks stop claiming requests once they
        see the batch row ``CANCELLED``. Both changes are one transaction.

        :param batch_id: the batch.
        :return: how many requests were cancelled (the batch's own row not counted).
        """

        def work(cursor: Any) -> int:
            cursor.execute(
                f"UPDATE {TABLE} SET status = {self._ph} WHERE task_id = {self._ph} AND kind = {self._ph}",
                [BatchState.CANCELLED.value, batch_id, RequestKind.BATCH.value],
            )
            return self._cancel_requests(cursor, "batch_id", batch_id)

        cancelled = self._transaction(work)
        log.info("Cancelled batch %s: %d requests cancelled before they were sent.", batch_id, cancelled)
        return cancelled

    def cancel_task(self, task_id: str) -> RequestRow | None:
        """
        Cancel one request if it is ``PENDING`` or ``RETRY``; leave it as it is in any other state.

        :param task_id: the request.
        :return: the request's row after the change (or without one), ``None`` when there is no
            request ``task_id`` (a batch's own row is not a request).
        """

        def work(cursor: Any) -> RequestRow | None:
            self._cancel_requests(cursor, "task_id", task_id)
            cursor.execute(
                f"{_SELECT} WHERE task_id = {self._ph} AND kind <> {self._ph}",
                [task_id, RequestKind.BATCH.value],
            )
            record = cursor.fetchone()
            return _to_row(record) if record is not None else None

        return self._transaction(work)

    # -- cleanup ---------------------------------------------------------------------------------

    def purge_expired(
        self,
        older_than: datetime,
        *,
        chunk_size: int | None = None,
        max_seconds: float | None = None,
    ) -> int:
        """
        Delete the rows created before ``older_than``, a chunk of ids per short transaction.

        A row is kept, however old, while it is open (``PENDING``, ``PROCESSING``, ``RETRY``) or
        belongs to a running batch: one whose own row is ``RUNNING`` or that holds an open request.
        A batch's own row goes once it is old and none of the batch's requests are left. Each chunk
        selects at most ``chunk_size`` ids, deletes them by primary key and commits, so MySQL never
        holds many locks, nor for long.

        The running batches are read once, at the start. A batch run again later (a chunk cleared in
        the UI) only claims its open rows, which are never deleted here.

        :param older_than: rows created before this moment expire; a naive datetime is taken as UTC.
        :param chunk_size: most rows per ``DELETE``; the store's ``chunk_size`` by default.
        :param max_seconds: stop after the chunk that passes this many seconds; the next call goes on.
        :return: how many rows were deleted, batch rows included.
        """
        size = chunk_size or self.chunk_size
        if size < 1:
            raise ValueError(f"chunk_size must be at least 1, not {size}.")
        cutoff = self._timestamp(older_than)
        started = time.monotonic()
        running = self._running_batches()

        requests = self._purge_chunks(self._expired_requests_sql(running), cutoff, size, started, max_seconds)
        batches = 0
        if max_seconds is None or time.monotonic() - started < max_seconds:
            batches = self._purge_chunks(
                self._expired_batches_sql(running), cutoff, size, started, max_seconds
            )

        log.info(
            "Purged %d expired requests and %d batch rows from %s in %.1f s.",
            requests,
            batches,
            TABLE,
            time.monotonic() - started,
        )
        return requests + batches

    def _running_batches(self) -> list[str]:
        """Return the ids of the batches that still run: own row ``RUNNING``, or a request open."""
        states = [*_CLAIMABLE, BatchState.RUNNING.value]

        def work(cursor: Any) -> list[str]:
            cursor.execute(
                f"SELECT DISTINCT batch_id FROM {TABLE} WHERE batch_id IS NOT NULL "
                f"AND status IN ({self._marks(states)})",
                states,
            )
            return sorted(batch_id for (batch_id,) in cursor.fetchall())

        return self._transaction(work)

    def _expired_requests_sql(self, running: Sequence[str]) -> tuple[str, list[Any]]:
        """Return the filter (after ``created_at < ?``) and its values for expired, final requests."""
        sql = f"kind <> {self._ph} AND status NOT IN ({self._marks(_CLAIMABLE)})"
        args: list[Any] = [RequestKind.BATCH.value, *_CLAIMABLE]
        if running:
            sql += f" AND (batch_id IS NULL OR batch_id NOT IN ({self._marks(running)}))"
            args.extend(running)
        return sql, args

    def _expired_batches_sql(self, running: Sequence[str]) -> tuple[str, list[Any]]:
        """Return the filter (after ``created_at < ?``) and its values for expired batch rows left alone."""
        sql = (
            f"kind = {self._ph} AND status <> {self._ph} AND NOT EXISTS ("
            f"SELECT 1 FROM {TABLE} r WHERE r.batch_id = {TABLE}.task_id AND r.kind <> {self._ph})"
        )
        args: list[Any] = [RequestKind.BATCH.value, BatchState.RUNNING.value, RequestKind.BATCH.value]
        if running:
            sql += f" AND task_id NOT IN ({self._marks(running)})"
            args.extend(running)
        return sql, args

    def _purge_chunks(
        self,
        where: tuple[str, list[Any]],
        cutoff: datetime | str,
        size: int,
        started: float,
        max_seconds: float | None,
    ) -> int:
        """Select up to ``size`` matching ids in id order, delete them, commit; repeat until none match."""
        sql, args = where
        select = (
            f"SELECT id FROM {TABLE} WHERE created_at < {self._ph} AND id > {self._ph} AND {sql} "
            f"ORDER BY id LIMIT {self._ph}"
        )

        def work(cursor: Any, after: int) -> tuple[int, int | None]:
            cursor.execute(select, [cutoff, after, *args, size])
            ids = [int(row_id) for (row_id,) in cursor.fetchall()]
            if not ids:
                return 0, None
            # Checked again on delete: a row claimed since it was selected stays.
            cursor.execute(
                f"DELETE FROM {TABLE} WHERE id IN ({self._marks(ids)}) "
                f"AND status NOT IN ({self._marks(_CLAIMABLE)})",
                [*ids, *_CLAIMABLE],
            )
            return int(cursor.rowcount), ids[-1]

        deleted = 0
        last_id = 0
        while True:
            count, last = self._transaction(functools.partial(work, after=last_id))
            deleted += count
            if last is None:
                return deleted
            last_id = last
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                log.info("Stopped purging after %.1f s; the next run deletes the rest.", max_seconds)
                return deleted

    # -- helpers ---------------------------------------------------------------------------------

    def _marks(self, values: Sequence[Any]) -> str:
        """Return one placeholder per value, comma-separated."""
        return ", ".join([self._ph] * len(values))

    def _filter_requests(
        self,
        status: str | Collection[str] | None,
        api_code: str | None,
        org_code: str | None,
        batch_id: str | None,
        created_from: datetime | None,
        created_to: datetime | None,
    ) -> tuple[str, list[Any]]:
        """Return the ``WHERE`` clause over requests (not batch rows) and its bound values."""
        clauses = [f"kind <> {self._ph}"]
        args: list[Any] = [RequestKind.BATCH.value]
        if status is not None:
            states = [status] if isinstance(status, str) else [str(s) for s in status]
            if not states:
                clauses.append("1 = 0")
            else:
                clauses.append(f"status IN ({self._marks(states)})")
                args.extend(states)
        for column, value in (("api_code", api_code), ("org_code", org_code), ("batch_id", batch_id)):
            if value is not None:
                clauses.append(f"{column} = {self._ph}")
                args.append(value)
        return self._where_created(clauses, args, created_from, created_to)

    def _where_created(
        self,
        clauses: list[str],
        args: list[Any],
        created_from: datetime | None,
        created_to: datetime | None,
    ) -> tuple[str, list[Any]]:
        """Join ``clauses`` and a ``created_at`` range (either end open) into a WHERE clause."""
        if created_from is not None:
            clauses.append(f"created_at >= {self._ph}")
            args.append(self._timestamp(created_from))
        if created_to is not None:
            clauses.append(f"created_at <= {self._ph}")
            args.append(self._timestamp(created_to))
        return "WHERE " + " AND ".join(clauses), args

    def _cancel_requests(self, cursor: Any, column: Literal["batch_id", "task_id"], value: str) -> int:
        """Cancel the ``PENDING`` and ``RETRY`` requests whose ``column`` is ``value``; return how many."""
        args = [RequestState.CANCELLED.value, CANCELLED_BY_REQUEST, value, RequestKind.BATCH.value]
        cursor.execute(
            f"UPDATE {TABLE} SET status = {self._ph}, error = {self._ph} WHERE {column} = {self._ph} "
            f"AND kind <> {self._ph} AND status IN ({self._marks(_CANCELLABLE)})",
            [*args, *_CANCELLABLE],
        )
        return int(cursor.rowcount)

    def _timestamp(self, moment: datetime) -> datetime | str:
        """Return a moment as the dialect compares it with ``created_at``: UTC, naive or as text."""
        utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        naive = utc.replace(tzinfo=None)
        # SQLite keeps 'YYYY-MM-DD HH:MM:SS' text, which compares in time order with this form.
        return naive if self.dialect == "mysql" else naive.isoformat(sep=" ")

    def _upsert(self, cursor: Any, params: list[tuple[Any, ...]], update: Sequence[str]) -> int:
        """
        Insert rows; on a duplicate ``task_id`` overwrite ``update`` columns, or nothing if empty.

        :return: the rows inserted or changed, as the driver counts them.
        """
        columns = ", ".join(_WRITE_COLUMNS)
        row_marks = f"({self._marks(_WRITE_COLUMNS)})"
        affected = 0

        for chunk in _chunks(params, self.chunk_size, self.max_statement_bytes):
            if self.dialect == "mysql":
                # A no-op update leaves a duplicate untouched and counts it as 0 affected rows,
                # unlike INSERT IGNORE, which would also swallow truncation and other errors.
                assignments = ", ".join(f"{c} = VALUES({c})" for c in update) or "task_id = task_id"
                cursor.execute(
                    f"INSERT INTO {TABLE} ({columns}) VALUES {', '.join([row_marks] * len(chunk))} "
                    f"ON DUPLICATE KEY UPDATE {assignments}",
                    _flatten(chunk),
                )
            else:
                assignments = ", ".join(f"{c} = excluded.{c}" for c in update)
                action = f"DO UPDATE SET {assignments}" if update else "DO NOTHING"
                cursor.executemany(
                    f"INSERT INTO {TABLE} ({columns}) VALUES {row_marks} ON CONFLICT (task_id) {action}",
                    chunk,
                )
            affected += cursor.rowcount

        return affected

    def _select_in_states(
        self,
        where: str,
        args: list[Any],
        statuses: Collection[str] | None,
        limit: int | None = None,
    ) -> list[RequestRow]:
        if statuses is not None:
            states = [str(s) for s in statuses]
            if not states:
                return []
            where += f" AND status IN ({self._marks(states)})"
            args.extend(states)
        where += " ORDER BY id"
        if limit is not None:
            where += f" LIMIT {self._ph}"
            args.append(int(limit))
        return self._select(where, args)

    def _select(self, where: str, args: Sequence[Any]) -> list[RequestRow]:
        def work(cursor: Any) -> list[RequestRow]:
            cursor.execute(f"{_SELECT} {where}", list(args))
            return [_to_row(record) for record in cursor.fetchall()]

        return self._transaction(work)


def _connect_mysql(hook: Any) -> Any:
    """Open a mysqlclient connection through ``MySqlHook`` that returns rows as tuples."""
    from MySQLdb.cursors import Cursor

    conn = hook.get_conn()
    # Whatever cursor the Connection's extra asks for: the store reads tuples and buffered rowcounts.
    conn.cursorclass = Cursor
    return conn


def _connect_sqlite(path: str) -> sqlite3.Connection:
    """Open an SQLite file; the store serializes its calls, so any one thread may use it."""
    return sqlite3.connect(path, timeout=30.0, check_same_thread=False)


def split_statements(script: str) -> list[str]:
    """
    Split an SQL script into statements, without their final semicolons.

    A semicolon ends a statement only where SQLite's own lexer says the statement is complete, so
    semicolons in quotes, comments and ``CREATE TRIGGER ... BEGIN ... END`` bodies are kept. Write
    scripts in the syntax both dialects share: ``--`` and ``/* */`` comments, quotes doubled rather
    than backslash-escaped, no ``DELIMITER``.

    :param script: the script's text.
    """
    statements = []
    start = 0
    for semicolon in re.finditer(";", script):
        candidate = script[start : semicolon.end()]
        if sqlite3.complete_statement(candidate):
            statement = candidate[:-1].strip()
            if _SQL_COMMENT.sub("", statement).strip():
                statements.append(statement)
            start = semicolon.end()

    rest = script[start:]
    if _SQL_COMMENT.sub("", rest).strip():
        raise ValueError(f"SQL script ends inside a statement: {rest.strip()[:80]!r}")
    return statements


def _request_params(row: RequestRow) -> tuple[Any, ...]:
    """Check a request row and return its values in ``_WRITE_COLUMNS`` order."""
    _enum_value(RequestState, row.status, row.task_id)
    if row.kind not in _REQUEST_KINDS:
        raise ValueError(
            f"Request {row.task_id!r} has kind {row.kind!r}; expected one of "
            f"{', '.join(sorted(_REQUEST_KINDS))} (batch rows go through put_batch)."
        )
    _check_msgid(row.task_id, row.msgid)
    return _params(row)


def _params(row: RequestRow) -> tuple[Any, ...]:
    """Return a row's values in ``_WRITE_COLUMNS`` order, as the drivers bind them."""
    data = None if row.data is None else json.dumps(row.data, ensure_ascii=False, separators=(",", ":"))
    return (
        row.task_id,
        str(row.status),
        data,
        row.batch_id,
        row.chunk_no,
        row.api_code,
        row.org_code,
        str(row.kind),
        int(row.attempts),
        row.msgid,
        _clip(row.error),
    )


def _to_row(record: Sequence[Any]) -> RequestRow:
    """Build a row from the values of ``_READ_COLUMNS``."""
    values = dict(zip(_READ_COLUMNS, record, strict=True))
    data = values["data"]
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    values["data"] = json.loads(data) if data is not None else {}
    values["created_at"] = _utc(values["created_at"])
    values["updated_at"] = _utc(values["updated_at"])
    return RequestRow(**values)


def _utc(value: datetime | str | bytes | None) -> datetime | None:
    """Read a stored UTC timestamp (a naive datetime or SQLite text) as an aware datetime."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii")
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _enum_value(enum: type[RequestState] | type[BatchState], value: str, owner: str) -> str:
    try:
        return enum(value).value
    except ValueError:
        raise ValueError(
            f"{owner!r}: unknown status {str(value)!r}; expected one of {', '.join(m.value for m in enum)}."
        ) from None


def _check_msgid(task_id: str, msgid: str | None) -> None:
    if msgid is not None and len(msgid) > MSGID_MAX_LENGTH:
        raise ValueError(
            f"Request {task_id!r}: msgid {msgid!r} is longer than {MSGID_MAX_LENGTH} characters."
        )


def _clip(error: str | None) -> str | None:
    """Cut an error message to the column's length."""
    return error[:ERROR_MAX_LENGTH] if error is not None else None


def _sorted_by_code(counts: dict[str | None, _T]) -> list[tuple[str | None, _T]]:
    """Return ``(code, value)`` pairs in code order, ``None`` last."""
    return sorted(counts.items(), key=lambda item: (item[0] is None, item[0] or ""))


def _flatten(rows: Iterable[Sequence[Any]]) -> list[Any]:
    return [value for row in rows for value in row]


def _chunks(items: list[Any], size: int, max_bytes: int | None = None) -> Iterator[list[Any]]:
    """
    Yield consecutive slices of at most ``size`` items and, if given, about ``max_bytes`` of text.

    A single item larger than ``max_bytes`` still goes out, alone.
    """
    chunk: list[Any] = []
    chunk_bytes = 0
    for item in items:
        item_bytes = _text_bytes(item) if max_bytes is not None else 0
        if chunk and (len(chunk) >= size or (max_bytes is not None and chunk_bytes + item_bytes > max_bytes)):
            yield chunk
            chunk, chunk_bytes = [], 0
        chunk.append(item)
        chunk_bytes += item_bytes
    if chunk:
        yield chunk


def _text_bytes(values: Sequence[Any]) -> int:
    """Estimate a row's size on the wire: UTF-8 bytes of its text, 8 per other value."""
    return sum(len(v.encode("utf-8")) if isinstance(v, str) else 8 for v in values)


def _mysql_code(err: BaseException | None) -> int | None:
    """Return the MySQL error code of a mysqlclient error, else None."""
    if err is None or not type(err).__module__.startswith("MySQLdb") or not err.args:
        return None
    code = err.args[0]
    return code if isinstance(code, int) else None


def is_outage(err: BaseException | None) -> bool:
    """Tell whether ``err`` says the database could not be reached or the connection broke."""
    if err is None or not type(err).__module__.startswith("MySQLdb"):
        return False
    if type(err).__name__ == "InterfaceError":  # a connection already closed under the client
        return True
    return type(err).__name__ == "OperationalError" and _mysql_code(err) in _MYSQL_OUTAGE


def _describe_error(err: BaseException | None) -> str:
    code = _mysql_code(err)
    return f"{type(err).__name__} {code}" if code is not None else type(err).__name__
