"""
Test the status store on a real MariaDB and on an SQLite file.

The MariaDB tests create a throwaway database ``medins_test_<random>`` (default character set
latin1, so the table's utf8mb4 must come from the DDL) and drop it at the end of the session. They
fail, never skip, when MariaDB is not reachable. Server settings: ``MEDINS_TEST_MYSQL_HOST``
(127.0.0.1), ``MEDINS_TEST_MYSQL_PORT`` (3306), ``MEDINS_TEST_MYSQL_USER`` (root),
``MEDINS_TEST_MYSQL_PASSWORD`` (empty).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from medins.states import FINAL, OPEN, BatchState, RequestKind, RequestState
from medins.store import BatchIdTaken, RequestRow, StatusStore, split_statements
from tests.conftest import MYSQL_SERVER, mariadb_connect, unused_port

CONN_ID = "medins_status_test"
CONN_ENV = f"AIRFLOW_CONN_{CONN_ID.upper()}"


NAME = "张三😀"
RARE = "𠀀"  # U+20000, four bytes in UTF-8
ERROR = f"拒绝: {NAME}{RARE}"


@dataclass
class Backend:
    """A database the store runs on, and a side door to it for checks."""

    name: str
    ph: str
    connect: Callable[[], Any]
    """Opens a plain DB-API connection to the store's database, without the store."""

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on a fresh connection, commit, and return its rows."""
        conn = self.connect()
        try:
            cursor = conn.cursor()
            cursor.execute(sql.format(ph=self.ph), params)
            rows = list(cursor.fetchall())
            conn.commit()
            return rows
        finally:
            conn.close()


class CountingConnection:
    """Wrap a DB-API connection and record every statement its cursors execute."""

    def __init__(self, conn: Any, statements: list[str]) -> None:
        self._conn = conn
        self._statements = statements

    def cursor(self, *args: Any) -> CountingCursor:
        return CountingCursor(self._conn.cursor(*args), self._statements)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class CountingCursor:
    """Record ``execute`` and ``executemany`` calls, then pass them on."""

    def __init__(self, cursor: Any, statements: list[str]) -> None:
        self._cursor = cursor
        self._statements = statements

    def execute(self, sql: str, params: Any = ()) -> Any:
        self._statements.append(sql)
        return self._cursor.execute(sql, params)

    def executemany(self, sql: str, params: Any) -> Any:
        self._statements.append(sql)
        return self._cursor.executemany(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


def _mariadb_backend(database: str, monkeypatch: pytest.MonkeyPatch) -> Backend:

    monkeypatch.setenv(
        CONN_ENV,
        json.dumps(
            {
                "conn_type": "mysql",
                "host": MYSQL_SERVER["host"],
                "port": MYSQL_SERVER["port"],
                "login": MYSQL_SERVER["user"],
                "password": MYSQL_SERVER["password"],
                "schema": database,
                "extra": {"charset": "utf8mb4"},
            }
        ),
    )

    def connect() -> Any:
        return mariadb_connect(database)

    backend = Backend("mariadb", "%s", connect)
    backend.query("DROP TABLE IF EXISTS async_task_status")
    return backend


def _sqlite_backend(path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    monkeypatch.setenv(CONN_ENV, json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return Backend("sqlite", "?", lambda: sqlite3.connect(path))


@pytest.fixture(params=["mariadb", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """Point Connection ``medins_status_test`` at an empty database of each kind."""
    if request.param == "mariadb":
        return _mariadb_backend(request.getfixturevalue("mariadb_database"), monkeypatch)
    return _sqlite_backend(tmp_path / "status.db", monkeypatch)


@pytest.fixture
def store(backend: Backend) -> Iterator[StatusStore]:
    """Return a store on the backend's Connection, with the schema created."""
    with StatusStore.from_conn_id(CONN_ID) as status_store:
        status_store.create_schema()
        yield status_store


@pytest.fixture
def statements(backend: Backend, store: StatusStore) -> Iterator[tuple[StatusStore, list[str]]]:
    """Return a second store on the same database that records the statements it executes."""
    log: list[str] = []
    counting = StatusStore(lambda: CountingConnection(backend.connect(), log), store.dialect)
    counting.get("warm-up")  # open the connection, so setup statements are not counted
    log.clear()
    yield counting, log
    counting.close()


def make_rows(n: int, batch_id: str = "b1", chunk_no: int = 0, **fields: Any) -> list[RequestRow]:
    """Return ``n`` pending query rows of one chunk."""
    return [
        RequestRow(
            task_id=f"{batch_id}-{i:06d}",
            status=fields.get("status", RequestState.PENDING),
            data=fields.get("data", {"request": {"api_code": "1101", "index": i}}),
            batch_id=batch_id,
            chunk_no=chunk_no,
            api_code="1101",
            org_code="H11010100001",
            kind=fields.get("kind", RequestKind.QUERY),
        )
        for i in range(n)
    ]


def must_get(store: StatusStore, task_id: str) -> RequestRow:
    """Return the row of ``task_id``, failing the test when there is none."""
    row = store.get(task_id)
    assert row is not None, f"no row {task_id!r}"
    return row


def msgid(n: int) -> str:
    """Return a 30-character msgid: institution code, time, sequence."""
    return f"H11010100001{'20260101120000'}{n:04d}"


class TestSchema:
    def test_create_schema_twice_changes_nothing(self, store: StatusStore) -> None:
        store.register(make_rows(2))

        store.create_schema()
        store.create_schema()

        assert store.counts("b1") == {"PENDING": 2}

    def test_schema_has_the_query_indexes(self, backend: Backend, store: StatusStore) -> None:
        if backend.name == "mariadb":
            found = backend.query(
                "SELECT index_name, GROUP_CONCAT(column_name ORDER BY seq_in_index) "
                "FROM information_schema.statistics WHERE table_schema = DATABASE() "
                "AND table_name = 'async_task_status' GROUP BY index_name"
            )
            indexes = {name: columns for name, columns in found}
        else:
            names = backend.query("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
            indexes = {
                name: ",".join(r[2] for r in backend.query(f"PRAGMA index_info({name})")) for (name,) in names
            }

        assert indexes["ix_async_task_status_status"] == "status"
        assert indexes["ix_async_task_status_batch"] == "batch_id,chunk_no,status"
        assert indexes["ix_async_task_status_created_at"] == "created_at"
        assert indexes["ix_async_task_status_api_code"] == "api_code,created_at"
        assert indexes["ix_async_task_status_org_code"] == "org_code,created_at"

    def test_create_schema_refuses_a_seed_table_without_the_new_columns(self, backend: Backend) -> None:
        if backend.name == "mariadb":
            backend.query(
                "CREATE TABLE async_task_status (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                "task_id VARCHAR(255) NOT NULL UNIQUE, status VARCHAR(50) NOT NULL, data JSON, "
                "created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, "
                "updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP)"
            )
        else:
            backend.query(
                "CREATE TABLE async_task_status (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "task_id TEXT NOT NULL UNIQUE, status TEXT NOT NULL, data TEXT, "
                "created_at TEXT DEFAULT CURRENT_TIMESTAMP, updated_at TEXT DEFAULT CURRENT_TIMESTAMP)"
            )

        with (
            StatusStore.from_conn_id(CONN_ID) as fresh,
            pytest.raises(RuntimeError, match="exists without the columns batch_id, chunk_no"),
        ):
            fresh.create_schema()

    @pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
    def test_mariadb_table_and_text_columns_are_utf8mb4(self, backend: Backend, store: StatusStore) -> None:
        (collation,) = backend.query(
            "SELECT table_collation FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = 'async_task_status'"
        )[0]
        charsets = backend.query(
            "SELECT column_name, character_set_name FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND table_name = 'async_task_status' "
            "AND character_set_name IS NOT NULL"
        )

        assert collation == "utf8mb4_unicode_ci"
        assert {name for name, _ in charsets} >= {"task_id", "status", "data", "error", "batch_id"}
        assert {charset for _, charset in charsets} == {"utf8mb4"}


class TestRegister:
    def test_register_inserts_new_rows_and_counts_them(self, store: StatusStore) -> None:
        assert store.register(make_rows(3)) == 3

        row = store.get("b1-000001")
        assert row is not None
        assert (row.status, row.batch_id, row.chunk_no, row.api_code, row.kind, row.attempts) == (
            "PENDING",
            "b1",
            0,
            "1101",
            "query",
            0,
        )
        assert row.data == {"request": {"api_code": "1101", "index": 1}}

    def test_register_leaves_existing_rows_untouched(self, store: StatusStore) -> None:
        store.register(make_rows(2))
        done = store.get("b1-000000")
        assert done is not None
        done.status, done.data = RequestState.SUCCESS, {"output": {"baseinfo": {"psn_name": NAME}}}
        store.finish([done])

        inserted = store.register(make_rows(3, data={"request": "again"}))

        assert inserted == 1
        kept = store.get("b1-000000")
        assert kept is not None
        assert kept.status == RequestState.SUCCESS
        assert kept.data == {"output": {"baseinfo": {"psn_name": NAME}}}
        assert must_get(store, "b1-000001").data == {"request": {"api_code": "1101", "index": 1}}
        assert must_get(store, "b1-000002").data == {"request": "again"}

    def test_register_5000_rows_takes_one_statement_per_1000(
        self, statements: tuple[StatusStore, list[str]]
    ) -> None:
        counting, log = statements

        assert counting.register(make_rows(5000)) == 5000

        assert len(log) == 5
        assert all(sql.startswith("INSERT INTO async_task_status") for sql in log)
        assert counting.counts("b1") == {"PENDING": 5000}

    def test_register_splits_statements_of_large_rows_by_size(
        self, backend: Backend, store: StatusStore
    ) -> None:
        log: list[str] = []
        small = StatusStore(
            lambda: CountingConnection(backend.connect(), log), store.dialect, max_statement_bytes=20_000
        )
        rows = make_rows(10, data={"blob": "医" * 2000})  # about 6 kB each

        with small:
            assert small.register(rows) == 10

        assert sum(sql.startswith("INSERT") for sql in log) >= 4
        assert must_get(store, "b1-000009").data == {"blob": "医" * 2000}

    def test_register_refuses_an_unknown_status(self, store: StatusStore) -> None:
        with pytest.raises(ValueError, match="unknown status 'DONE'"):
            store.register(make_rows(1, status="DONE"))

        assert store.get("b1-000000") is None


class TestClaim:
    def test_claim_skips_final_rows_and_returns_the_claimed_ids(self, store: StatusStore) -> None:
        rows = [
            RequestRow(task_id=f"t-{state}", status=state, batch_id="b1", chunk_no=0, msgid=None)
            for state in RequestState
        ]
        store.register(rows)

        claimed = store.claim(
            [(f"t-{state}", msgid(i)) for i, state in enumerate(RequestState)] + [("nope", msgid(99))]
        )

        assert claimed == {f"t-{state}" for state in OPEN}
        for i, state in enumerate(RequestState):
            row = store.get(f"t-{state}")
            assert row is not None
            if state in FINAL:
                assert (row.status, row.msgid, row.attempts) == (state, None, 0)
            else:
                assert (row.status, row.msgid, row.attempts) == (RequestState.PROCESSING, msgid(i), 1)

    def test_claim_again_counts_another_attempt_under_the_new_msgid(self, store: StatusStore) -> None:
        store.register(make_rows(2))

        store.claim([("b1-000000", msgid(1)), ("b1-000001", msgid(2))])
        claimed = store.claim([("b1-000000", msgid(3))])

        assert claimed == {"b1-000000"}
        row = store.get("b1-000000")
        assert row is not None
        assert (row.attempts, row.msgid) == (2, msgid(3))
        assert must_get(store, "b1-000001").attempts == 1

    def test_claim_2500_rows_takes_two_statements_per_1000(
        self, statements: tuple[StatusStore, list[str]]
    ) -> None:
        counting, log = statements
        counting.register(make_rows(2500))
        log.clear()

        claimed = counting.claim([(f"b1-{i:06d}", msgid(i % 10000)) for i in range(2500)])

        assert len(claimed) == 2500
        assert [sql.split()[0] for sql in log] == ["UPDATE", "SELECT"] * 3
        assert counting.counts("b1") == {"PROCESSING": 2500}


class TestFinish:
    def test_finish_overwrites_the_outcome_columns_only(self, store: StatusStore) -> None:
        store.register(make_rows(2))
        store.claim([("b1-000000", msgid(1))])
        outcome = RequestRow(
            task_id="b1-000000",
            status=RequestState.FAILURE,
            data={"infcode": -1, "err_msg": "业务处理失败"},
            batch_id="other",
            chunk_no=7,
            api_code="9999",
            org_code="X",
            kind=RequestKind.WRITE,
            attempts=1,
            msgid=msgid(1),
            error="refused: 业务处理失败",
        )

        store.finish([outcome])

        row = store.get("b1-000000")
        assert row is not None
        assert (row.status, row.data, row.error, row.msgid, row.attempts) == (
            "FAILURE",
            {"infcode": -1, "err_msg": "业务处理失败"},
            "refused: 业务处理失败",
            msgid(1),
            1,
        )
        assert (row.batch_id, row.chunk_no, row.api_code, row.org_code, row.kind) == (
            "b1",
            0,
            "1101",
            "H11010100001",
            "query",
        )

    def test_finish_inserts_a_row_that_is_not_there(self, store: StatusStore) -> None:
        store.finish(make_rows(1, status=RequestState.SUCCESS))

        assert store.counts("b1") == {"SUCCESS": 1}

    def test_finish_writes_3000_rows_in_three_statements(
        self, statements: tuple[StatusStore, list[str]]
    ) -> None:
        counting, log = statements
        rows = make_rows(3000)
        counting.register(rows)
        for row in rows:
            row.status, row.attempts, row.data = RequestState.SUCCESS, 1, {"output": {"ok": True}}
        log.clear()

        counting.finish(rows)

        assert len(log) == 3
        assert counting.counts("b1") == {"SUCCESS": 3000}

    def test_finish_cuts_an_error_to_the_column_length(self, store: StatusStore) -> None:
        row = make_rows(1, status=RequestState.FAILURE)[0]
        row.error = "错" * 1500

        store.finish([row])

        assert must_get(store, row.task_id).error == "错" * 1000


class TestReads:
    def test_counts_group_a_batch_by_status_without_its_own_row(self, store: StatusStore) -> None:
        store.register(make_rows(4) + make_rows(2, batch_id="b2"))
        store.put_batch("b1", BatchState.RUNNING, {"current": 0, "total": 4})
        store.mark(["b1-000000", "b1-000001"], RequestState.CANCELLED)

        assert store.counts("b1") == {"PENDING": 2, "CANCELLED": 2}
        assert store.counts("b2") == {"PENDING": 2}
        assert store.counts("none") == {}

    def test_fetch_chunk_returns_the_chunk_in_id_order_filtered_by_status(self, store: StatusStore) -> None:
        store.register(make_rows(3, chunk_no=0) + make_rows(2, batch_id="b1x", chunk_no=1))
        store.register([RequestRow(task_id="late", status="PENDING", batch_id="b1", chunk_no=1)])
        store.register([RequestRow(task_id="a-first-name", status="PENDING", batch_id="b1", chunk_no=1)])
        store.mark(["late"], RequestState.SUCCESS)

        assert [r.task_id for r in store.fetch_chunk("b1", 1)] == ["late", "a-first-name"]
        assert [r.task_id for r in store.fetch_chunk("b1", 1, statuses=sorted(OPEN))] == ["a-first-name"]
        assert [r.task_id for r in store.fetch_chunk("b1", 0)] == ["b1-000000", "b1-000001", "b1-000002"]
        assert store.fetch_chunk("b1", 0, statuses=[]) == []

    def test_rows_lists_a_batch_without_its_own_row(self, store: StatusStore) -> None:
        store.register(make_rows(5))
        store.put_batch("b1", BatchState.RUNNING)
        store.mark(["b1-000003"], RequestState.REJECTED, error="bad input")

        assert [r.task_id for r in store.rows("b1")] == [f"b1-{i:06d}" for i in range(5)]
        assert [r.task_id for r in store.rows("b1", limit=2)] == ["b1-000000", "b1-000001"]
        assert [r.task_id for r in store.rows("b1", statuses=[RequestState.REJECTED])] == ["b1-000003"]

    def test_open_chunks_names_the_chunks_with_rows_still_to_send(self, store: StatusStore) -> None:
        store.register(make_rows(2, chunk_no=0))
        store.register(
            [RequestRow(task_id=f"c1-{i}", status="PENDING", batch_id="b1", chunk_no=1) for i in range(2)]
        )
        store.register([RequestRow(task_id="c2-0", status="PENDING", batch_id="b1", chunk_no=2)])
        store.mark(["b1-000000", "b1-000001"], RequestState.SUCCESS)
        store.mark(["c1-0"], RequestState.RETRY)
        store.put_batch("b1", BatchState.RUNNING)

        assert store.open_chunks("b1") == {1, 2}
        assert store.open_chunks("none") == set()

    def test_batch_ids_among_names_the_ids_taken_by_batches_only(
        self, statements: tuple[StatusStore, list[str]]
    ) -> None:
        counting, log = statements
        counting.register(make_rows(2))
        counting.put_batch("b1", BatchState.RUNNING)
        counting.put_batch("B2", BatchState.DONE)
        log.clear()

        ids = ["b1", "b1-000000", "b2", "B2", "none", *(f"x{i}" for i in range(1500))]
        assert counting.batch_ids_among(ids) == {"b1", "B2"}
        assert len(log) == 2  # 1,505 ids: one SELECT per 1,000
        assert counting.batch_ids_among([]) == set()
        assert len(log) == 2

    def test_get_returns_none_for_an_unknown_task_id(self, store: StatusStore) -> None:
        assert store.get("nope") is None
        assert store.get_batch("nope") is None


class TestBatchRow:
    def test_put_batch_inserts_then_updates_the_batch_row(self, store: StatusStore) -> None:
        store.put_batch("b1", BatchState.RUNNING, {"current": 0, "total": 10, "percentage": 0.0})
        store.put_batch("b1", BatchState.DONE, {"current": 10, "total": 10, "percentage": 100.0})

        batch = store.get_batch("b1")
        assert batch is not None
        assert (batch.task_id, batch.batch_id, batch.kind, batch.status) == ("b1", "b1", "batch", "DONE")
        assert batch.data == {"current": 10, "total": 10, "percentage": 100.0}
        assert store.counts("b1") == {}

    def test_put_batch_never_reopens_a_cancelled_batch(self, store: StatusStore) -> None:
        store.put_batch("b1", BatchState.RUNNING, {"current": 0})
        store.cancel_batch("b1")

        store.put_batch("b1", BatchState.RUNNING, {"current": 5})

        batch = store.get_batch("b1")
        assert batch.status == BatchState.CANCELLED and batch.data == {"current": 5}

    def test_get_batch_ignores_a_request_row(self, store: StatusStore) -> None:
        store.register(make_rows(1))

        assert store.get_batch("b1-000000") is None

    def test_put_batch_refuses_a_batch_id_that_is_a_request_and_changes_nothing(
        self, store: StatusStore
    ) -> None:
        store.register(make_rows(1))
        before = store.get("b1-000000")

        with pytest.raises(BatchIdTaken, match="choose another batch id"):
            store.put_batch("b1-000000", BatchState.RUNNING, {"current": 0})

        assert store.get("b1-000000") == before

    def test_put_batch_refuses_a_request_state(self, store: StatusStore) -> None:
        with pytest.raises(ValueError, match="unknown status 'PENDING'"):
            store.put_batch("b1", RequestState.PENDING)


class TestMark:
    def test_mark_only_from_changes_only_rows_in_those_states(self, store: StatusStore) -> None:
        store.register(make_rows(4))
        store.claim([("b1-000001", msgid(1))])
        store.mark(["b1-000002"], RequestState.SUCCESS)

        changed = store.mark(
            [f"b1-{i:06d}" for i in range(4)] + ["nope"],
            RequestState.CANCELLED,
            error="batch cancelled",
            only_from=OPEN,
        )

        assert changed == 3
        states = {r.task_id: (r.status, r.error) for r in store.rows("b1")}
        assert states == {
            "b1-000000": ("CANCELLED", "batch cancelled"),
            "b1-000001": ("CANCELLED", "batch cancelled"),
            "b1-000002": ("SUCCESS", None),
            "b1-000003": ("CANCELLED", "batch cancelled"),
        }

    def test_mark_without_error_keeps_the_rows_error(self, store: StatusStore) -> None:
        store.register(make_rows(1))
        store.mark(["b1-000000"], RequestState.RETRY, error="timeout")

        assert store.mark(["b1-000000"], RequestState.UNKNOWN, only_from=[RequestState.RETRY]) == 1

        row = must_get(store, "b1-000000")
        assert (row.status, row.error) == ("UNKNOWN", "timeout")

    def test_mark_does_not_count_rows_already_in_the_state(self, store: StatusStore) -> None:
        store.register(make_rows(2))
        store.mark(["b1-000000"], RequestState.CANCELLED)

        assert store.mark(["b1-000000", "b1-000001"], RequestState.CANCELLED) == 1
        assert store.mark(["b1-000000"], RequestState.CANCELLED, only_from=[]) == 0
        assert store.mark([], RequestState.CANCELLED) == 0


INJECTION = "' OR 1=1 --"


def mixed_rows() -> list[RequestRow]:
    """Return requests of two batches, three interfaces and two institutions."""
    specs = [
        ("b1", "1101", "H11010100001"),
        ("b1", "1101", "H11010100002"),
        ("b1", "2207", "H11010100001"),
        ("b1", None, None),  # rejected before its code was known
        ("b2", "1101", "H11010100001"),
        ("b2", "5301", "H11010100002"),
    ]
    return [
        RequestRow(
            task_id=f"m-{i}",
            status=RequestState.PENDING,
            batch_id=batch_id,
            chunk_no=0,
            api_code=api_code,
            org_code=org_code,
            kind=RequestKind.WRITE if api_code == "2207" else RequestKind.QUERY,
        )
        for i, (batch_id, api_code, org_code) in enumerate(specs)
    ]


def set_created_at(backend: Backend, created: dict[str, datetime]) -> None:
    """Give rows a UTC ``created_at`` through the side door."""
    conn = backend.connect()
    try:
        cursor = conn.cursor()
        if backend.name == "mariadb":
            cursor.execute("SET time_zone = '+00:00'")
        for task_id, moment in created.items():
            cursor.execute(
                f"UPDATE async_task_status SET created_at = {backend.ph} WHERE task_id = {backend.ph}",
                (moment.strftime("%Y-%m-%d %H:%M:%S"), task_id),
            )
        conn.commit()
    finally:
        conn.close()


class TestListTasks:
    def test_list_tasks_returns_requests_newest_first_without_batch_rows(self, store: StatusStore) -> None:
        store.register(make_rows(5))
        store.put_batch("b1", BatchState.RUNNING, {"total": 5})

        page, total = store.list_tasks(limit=2)

        assert total == 5
        assert [row.task_id for row in page] == ["b1-000004", "b1-000003"]
        assert page[0].data == {"request": {"api_code": "1101", "index": 4}}

    def test_list_tasks_pages_through_every_row_once(self, store: StatusStore) -> None:
        store.register(make_rows(5))

        pages = [store.list_tasks(offset=offset, limit=2) for offset in (0, 2, 4, 6)]

        assert [total for _, total in pages] == [5, 5, 5, 5]
        assert [[row.task_id[-1] for row in page] for page, _ in pages] == [["4", "3"], ["2", "1"], ["0"], []]

    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            ({"status": "RETRY"}, ["m-1"]),
            ({"status": ["RETRY", "SUCCESS"]}, ["m-4", "m-1"]),
            ({"status": []}, []),
            ({"api_code": "1101"}, ["m-4", "m-1", "m-0"]),
            ({"org_code": "H11010100002"}, ["m-5", "m-1"]),
            ({"batch_id": "b2"}, ["m-5", "m-4"]),
            ({"batch_id": "b1", "api_code": "1101", "org_code": "H11010100001"}, ["m-0"]),
            ({"api_code": "9999"}, []),
        ],
        ids=["status", "statuses", "no-status", "api-code", "org-code", "batch", "all-three", "no-match"],
    )
    def test_list_tasks_filters(
        self, store: StatusStore, filters: dict[str, Any], expected: list[str]
    ) -> None:
        store.register(mixed_rows())
        store.mark(["m-1"], RequestState.RETRY)
        store.mark(["m-4"], RequestState.SUCCESS)

        page, total = store.list_tasks(**filters)

        assert [row.task_id for row in page] == expected
        assert total == len(expected)

    def test_list_tasks_filters_by_created_at_inclusive_and_reads_naive_times_as_utc(
        self, backend: Backend, store: StatusStore
    ) -> None:
        store.register(make_rows(4))
        set_created_at(backend, {f"b1-{i:06d}": datetime(2026, 1, 1, i, 0, 0, tzinfo=UTC) for i in range(4)})
        beijing = timezone(timedelta(hours=8))

        page, total = store.list_tasks(
            created_from=datetime(2026, 1, 1, 9, 0, 0, tzinfo=beijing),  # 01:00 UTC
            created_to=datetime(2026, 1, 1, 2, 0, 0),  # naive: UTC
        )

        assert [row.task_id for row in page] == ["b1-000002", "b1-000001"]
        assert total == 2
        assert store.list_tasks(created_from=datetime(2026, 1, 1, 3, 0, 0, 500_000))[1] == 0
        assert store.list_tasks(created_to=datetime(2025, 12, 31, 23, 59, 59))[1] == 0

    def test_list_tasks_binds_sql_in_filters_as_plain_values(self, store: StatusStore) -> None:
        store.register(make_rows(3))

        for name in ("status", "api_code", "org_code", "batch_id"):
            assert store.list_tasks(**{name: INJECTION}) == ([], 0), name

        assert store.list_tasks()[1] == 3
        assert store.counts("b1") == {"PENDING": 3}

    def test_list_tasks_takes_two_statements_whatever_the_size(
        self, statements: tuple[StatusStore, list[str]]
    ) -> None:
        counting, log = statements
        counting.register(make_rows(3000))
        log.clear()

        page, total = counting.list_tasks(status=["PENDING"], offset=2990, limit=50)

        assert (len(page), total) == (10, 3000)
        assert [sql.split()[0] for sql in log] == ["SELECT", "SELECT"]

    def test_list_tasks_refuses_a_negative_offset(self, store: StatusStore) -> None:
        with pytest.raises(ValueError, match="must not be negative"):
            store.list_tasks(offset=-1)


class TestStatistics:
    def test_statistics_count_by_status_interface_and_institution(self, store: StatusStore) -> None:
        store.register(mixed_rows())
        store.put_batch("b1", BatchState.RUNNING)
        store.mark(["m-0", "m-4"], RequestState.SUCCESS)
        store.mark(["m-3"], RequestState.REJECTED, error="api_code is required")

        stats = store.statistics()

        assert stats == {
            "total": 6,
            "by_status": {"PENDING": 3, "REJECTED": 1, "SUCCESS": 2},
            "by_api_code": {
                "1101": {"PENDING": 1, "SUCCESS": 2},
                "2207": {"PENDING": 1},
                "5301": {"PENDING": 1},
                None: {"REJECTED": 1},
            },
            "by_org_code": {
                "H11010100001": {"PENDING": 1, "SUCCESS": 2},
                "H11010100002": {"PENDING": 2},
                None: {"REJECTED": 1},
            },
        }

    def test_statistics_apply_the_filters(self, backend: Backend, store: StatusStore) -> None:
        store.register(mixed_rows())
        store.mark(["m-4"], RequestState.SUCCESS)
        set_created_at(backend, {"m-5": datetime(2020, 1, 1, tzinfo=UTC)})

        assert store.statistics(batch_id="b2")["by_status"] == {"PENDING": 1, "SUCCESS": 1}
        assert store.statistics(api_code="1101", status=["SUCCESS"])["total"] == 1
        assert store.statistics(created_to=datetime(2021, 1, 1, tzinfo=UTC))["by_api_code"] == {
            "5301": {"PENDING": 1}
        }
        assert store.statistics(org_code=INJECTION) == {
            "total": 0,
            "by_status": {},
            "by_api_code": {},
            "by_org_code": {},
        }

    def test_statistics_take_one_grouped_query(self, statements: tuple[StatusStore, list[str]]) -> None:
        counting, log = statements
        counting.register(make_rows(3000))
        log.clear()

        assert counting.statistics()["by_status"] == {"PENDING": 3000}

        assert len(log) == 1
        assert "GROUP BY" in log[0]


class TestCancel:
    def test_cancel_batch_cancels_its_row_and_its_pending_and_retry_requests_only(
        self, store: StatusStore
    ) -> None:
        rows = [
            RequestRow(task_id=f"t-{state}", status=state, batch_id="b1", chunk_no=0)
            for state in RequestState
        ]
        store.register([*rows, *make_rows(2, batch_id="b2")])
        store.put_batch("b1", BatchState.RUNNING, {"total": len(rows)})
        store.put_batch("b2", BatchState.RUNNING)

        cancelled = store.cancel_batch("b1")

        assert cancelled == 2
        states = {row.task_id: (row.status, row.error) for row in store.rows("b1")}
        for state in RequestState:
            if state in (RequestState.PENDING, RequestState.RETRY):
                assert states[f"t-{state}"] == ("CANCELLED", "cancelled by request")
            else:
                assert states[f"t-{state}"] == (state, None)
        batch = store.get_batch("b1")
        assert batch is not None
        assert (batch.status, batch.data) == ("CANCELLED", {"total": len(rows)})
        assert must_get(store, "b2").status == BatchState.RUNNING
        assert store.counts("b2") == {"PENDING": 2}

    def test_cancelled_requests_are_never_claimed(self, store: StatusStore) -> None:
        store.register(make_rows(3))
        store.put_batch("b1", BatchState.RUNNING)

        store.cancel_batch("b1")

        assert store.claim([(f"b1-{i:06d}", msgid(i)) for i in range(3)]) == set()
        assert store.open_chunks("b1") == set()

    def test_cancel_batch_of_an_unknown_batch_changes_nothing(self, store: StatusStore) -> None:
        store.register(make_rows(2))

        assert store.cancel_batch("nope") == 0
        assert store.cancel_batch(INJECTION) == 0

        assert store.counts("b1") == {"PENDING": 2}

    def test_cancel_batch_takes_two_statements_for_5000_rows(
        self, statements: tuple[StatusStore, list[str]]
    ) -> None:
        counting, log = statements
        counting.register(make_rows(5000))
        counting.put_batch("b1", BatchState.RUNNING)
        log.clear()

        assert counting.cancel_batch("b1") == 5000

        assert [sql.split()[0] for sql in log] == ["UPDATE", "UPDATE"]

    @pytest.mark.parametrize("state", [RequestState.PENDING, RequestState.RETRY])
    def test_cancel_task_cancels_a_request_not_yet_sent(self, store: StatusStore, state: str) -> None:
        store.register(make_rows(2, status=state))

        row = store.cancel_task("b1-000000")

        assert row is not None
        assert (row.task_id, row.status, row.error) == ("b1-000000", "CANCELLED", "cancelled by request")
        assert must_get(store, "b1-000001").status == state

    @pytest.mark.parametrize(
        "state", sorted(set(RequestState) - {RequestState.PENDING, RequestState.RETRY}), ids=str
    )
    def test_cancel_task_leaves_a_request_in_any_other_state_as_it_is(
        self, store: StatusStore, state: str
    ) -> None:
        store.register(make_rows(1, status=state))

        row = store.cancel_task("b1-000000")

        assert row is not None
        assert (row.status, row.error) == (state, None)

    def test_cancel_task_returns_none_for_an_unknown_id_or_a_batch_row(self, store: StatusStore) -> None:
        store.put_batch("b1", BatchState.RUNNING)

        assert store.cancel_task("nope") is None
        assert store.cancel_task("b1") is None
        assert store.cancel_task(INJECTION) is None

        assert must_get(store, "b1").status == BatchState.RUNNING


class TestText:
    def test_chinese_emoji_and_four_byte_cjk_are_kept_byte_for_byte(
        self, backend: Backend, store: StatusStore
    ) -> None:
        row = make_rows(1, data={"psn_name": NAME, "rare": RARE, "note": "医保结算"})[0]
        row.error = ERROR
        row.task_id = f"任务-{NAME}"

        store.finish([row])

        stored = store.get(row.task_id)
        assert stored is not None
        assert stored.data == {"psn_name": NAME, "rare": RARE, "note": "医保结算"}
        assert stored.error == ERROR
        ((error_hex, data_text),) = backend.query(
            "SELECT HEX(error), data FROM async_task_status WHERE task_id = {ph}", (row.task_id,)
        )
        assert bytes.fromhex(error_hex) == ERROR.encode("utf-8")
        assert NAME in data_text  # stored as text, not as \\u escapes
        assert RARE in data_text

    def test_task_ids_differing_in_case_or_in_one_rare_character_are_distinct(
        self, store: StatusStore
    ) -> None:
        ids = ["abc", "ABC", "任务😀", "任务😁", f"任务{RARE}", "任务\U00020001"]

        inserted = store.register([RequestRow(task_id=i, status="PENDING", batch_id="b1") for i in ids])

        assert inserted == len(ids)
        assert store.claim([("ABC", msgid(1)), ("任务😁", msgid(2))]) == {"ABC", "任务😁"}
        assert must_get(store, "abc").status == RequestState.PENDING

    def test_batch_data_keeps_chinese_text(self, store: StatusStore) -> None:
        store.put_batch("批次😀", BatchState.RUNNING, {"label": RARE})

        batch = store.get_batch("批次😀")
        assert batch is not None
        assert batch.data == {"label": RARE}


class TestTimestamps:
    def test_created_at_and_updated_at_are_set_in_utc(self, store: StatusStore) -> None:
        store.register(make_rows(1))

        row = store.get("b1-000000")

        assert row is not None and row.created_at is not None and row.updated_at is not None
        assert row.created_at.tzinfo is UTC
        assert abs(row.created_at - datetime.now(UTC)) < timedelta(minutes=1)
        assert row.updated_at >= row.created_at

    def test_updated_at_moves_when_a_row_changes(self, store: StatusStore) -> None:
        store.register(make_rows(2))
        before = store.get("b1-000000")
        time.sleep(1.1)

        store.mark(["b1-000000"], RequestState.CANCELLED)
        store.register(make_rows(2))  # duplicates: untouched

        after, other = must_get(store, "b1-000000"), must_get(store, "b1-000001")
        assert before is not None and before.updated_at is not None and after.updated_at is not None
        assert after.created_at == before.created_at
        assert after.updated_at > before.updated_at
        assert other.updated_at == other.created_at

    @pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
    def test_mariadb_store_uses_utc_whatever_the_session_time_zone(
        self, backend: Backend, store: StatusStore
    ) -> None:
        def connect_in_beijing_time() -> Any:
            conn = backend.connect()
            conn.cursor().execute("SET time_zone = '+08:00'")
            return conn

        with StatusStore(connect_in_beijing_time, "mysql") as shifted:
            shifted.register(make_rows(1))
            row = shifted.get("b1-000000")

        assert row is not None and row.created_at is not None
        assert abs(row.created_at - datetime.now(UTC)) < timedelta(minutes=1)

    @pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
    def test_sqlite_timestamps_are_utc_text(self, backend: Backend, store: StatusStore) -> None:
        store.register(make_rows(1))

        ((created, updated),) = backend.query("SELECT created_at, updated_at FROM async_task_status")

        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", created)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", updated)


class TestConnection:
    def test_stores_in_several_threads_write_at_once(self, store: StatusStore) -> None:
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                with StatusStore.from_conn_id(CONN_ID) as own:
                    for part in range(5):
                        own.register(make_rows(200, batch_id=f"w{n}-{part}"))
                        own.mark([f"w{n}-{part}-000000"], RequestState.CANCELLED)
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        assert sum(sum(store.counts(f"w{n}-{p}").values()) for n in range(4) for p in range(5)) == 4000

    @pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
    def test_mariadb_deadlock_victim_runs_again_from_the_start(
        self, backend: Backend, store: StatusStore
    ) -> None:
        import MySQLdb

        log: list[str] = []

        class DeadlockOnce(CountingCursor):
            def execute(self, sql: str, params: Any = ()) -> Any:
                if sql.startswith("INSERT") and log.count("INSERT") == 1 and "DEADLOCK" not in log:
                    log.append("DEADLOCK")
                    raise MySQLdb.OperationalError(1213, "Deadlock found when trying to get lock")
                log.append(sql.split()[0])
                return self._cursor.execute(sql, params)

        class Connection(CountingConnection):
            def cursor(self, *args: Any) -> CountingCursor:
                return DeadlockOnce(self._conn.cursor(*args), log)

        with StatusStore(lambda: Connection(backend.connect(), log), "mysql") as flaky:
            inserted = flaky.register(make_rows(1500))

        assert inserted == 1500  # the first chunk's insert was rolled back, then made again
        assert log[-4:] == ["INSERT", "DEADLOCK", "INSERT", "INSERT"]
        assert store.counts("b1") == {"PENDING": 1500}

    @pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
    def test_mariadb_connection_killed_under_a_task_store_is_replaced(
        self, backend: Backend, store: StatusStore
    ) -> None:
        with StatusStore.from_conn_id(CONN_ID) as task_store:
            task_store.register(make_rows(10))
            backend.query(f"KILL {task_store._conn.thread_id()}")

            task_store.finish(
                [RequestRow("b1-000000", RequestState.SUCCESS.value, batch_id="b1", chunk_no=0)]
            )

            assert task_store.counts("b1") == {"PENDING": 9, "SUCCESS": 1}

    @pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
    def test_mariadb_store_without_an_outage_allowance_raises_at_once(
        self, backend: Backend, store: StatusStore
    ) -> None:
        import MySQLdb

        with StatusStore(backend.connect, "mysql", outage_seconds=0) as strict:
            strict.register(make_rows(1))
            backend.query(f"KILL {strict._conn.thread_id()}")

            with pytest.raises(MySQLdb.OperationalError):
                strict.get("b1-000000")

    @pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
    def test_mariadb_out_of_reach_for_a_while_is_waited_out(
        self, backend: Backend, store: StatusStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        closed = unused_port()
        back_at = time.monotonic() + 2.0

        def connect() -> Any:  # connection refused until the server is back
            return _refused(closed) if time.monotonic() < back_at else backend.connect()

        with StatusStore(connect, "mysql", outage_seconds=30) as patient:
            patient.register(make_rows(3))

        assert time.monotonic() >= back_at
        assert store.counts("b1") == {"PENDING": 3}
        assert re.search(r"status store is unreachable \(OperationalError 200[23]\)", caplog.text)

    @pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
    def test_mariadb_out_of_reach_longer_than_the_allowance_raises(self, backend: Backend) -> None:
        import MySQLdb

        closed = unused_port()
        started = time.monotonic()

        with (
            StatusStore(lambda: _refused(closed), "mysql", outage_seconds=1.5) as patient,
            pytest.raises(MySQLdb.OperationalError) as raised,
        ):
            patient.get("x")

        assert raised.value.args[0] in (2002, 2003)  # the MariaDB client says 2002 for TCP as well
        assert 1.5 <= time.monotonic() - started < 10

    @pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
    def test_sqlite_database_is_in_wal_mode(self, backend: Backend, store: StatusStore) -> None:
        store.get("x")

        assert backend.query("PRAGMA journal_mode") == [("wal",)]

    def test_store_reopens_its_connection_after_close(self, store: StatusStore) -> None:
        store.register(make_rows(1))
        store.close()

        assert store.get("b1-000000") is not None

    @pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
    def test_mariadb_store_reads_tuples_whatever_cursor_the_extra_asks_for(
        self, backend: Backend, store: StatusStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        conn = json.loads(os.environ[CONN_ENV])
        conn["extra"] = {"cursor": "dictcursor"}
        monkeypatch.setenv(CONN_ENV, json.dumps(conn))
        store.register(make_rows(1))

        with StatusStore.from_conn_id(CONN_ID) as dict_cursor_store:
            assert dict_cursor_store.get("b1-000000") is not None

    def test_from_conn_id_refuses_other_connection_types(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(CONN_ENV, json.dumps({"conn_type": "postgres", "host": "localhost"}))

        with pytest.raises(ValueError, match="conn_type 'postgres'"):
            StatusStore.from_conn_id(CONN_ID)

    def test_from_conn_id_needs_a_sqlite_path(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(CONN_ENV, json.dumps({"conn_type": "sqlite"}))

        with pytest.raises(ValueError, match="no host"):
            StatusStore.from_conn_id(CONN_ID)


class TestSplitStatements:
    def test_split_keeps_semicolons_in_trigger_bodies_strings_and_comments(self) -> None:
        script = """
            -- a comment; with a semicolon
            CREATE TABLE t (a TEXT DEFAULT 'x;y');
            /* block; comment */
            CREATE TRIGGER tr AFTER UPDATE ON t BEGIN
                UPDATE t SET a = 'z'; UPDATE t SET a = 'w';
            END;
            SELECT 1; SELECT 2; -- trailing
        """

        statements = split_statements(script)

        assert len(statements) == 4
        assert statements[0].endswith("CREATE TABLE t (a TEXT DEFAULT 'x;y')")
        assert statements[1].startswith("/* block; comment */")
        assert statements[1].endswith("END")
        assert statements[2:] == ["SELECT 1", "SELECT 2"]

    def test_split_refuses_an_unfinished_statement(self) -> None:
        with pytest.raises(ValueError, match="ends inside a statement"):
            split_statements("SELECT 1; SELECT 2")

    @pytest.mark.parametrize("dialect", ["mysql", "sqlite"])
    def test_project_ddl_files_split_cleanly(self, dialect: str) -> None:
        from medins.store import DEFAULT_SQL_DIR

        for path in sorted((DEFAULT_SQL_DIR / dialect).glob("*.sql")):
            assert split_statements(path.read_text(encoding="utf-8"))


def _refused(port: int) -> Any:
    """Try to open a MariaDB connection on ``port``, where nothing listens: raises OperationalError 2003."""
    import MySQLdb

    return MySQLdb.connect(host="127.0.0.1", port=port, user=MYSQL_SERVER["user"], connect_timeout=2)
