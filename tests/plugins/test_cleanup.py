"""
Test the removal of expired rows on a real MariaDB and on an SQLite file, and the retention settings.

The MariaDB tests use the session's throwaway database (see ``mariadb_database`` in conftest) and
fail, never skip, when MariaDB is not reachable.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from medins import cleanup
from medins.states import BatchState, RequestState
from medins.store import RequestRow, StatusStore
from tests.conftest import MYSQL_SERVER, mariadb_connect

CONN_ID = "medins_status_cleanup_test"


@dataclass
class Backend:
    """The database a store runs on, and a side door to it for ageing rows and checking them."""

    name: str
    connect: Callable[[], Any]

    def execute(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            cursor = conn.cursor()
            cursor.execute(sql.replace("?", "%s") if self.name == "mariadb" else sql, params)
            rows = list(cursor.fetchall())
            conn.commit()
            return rows
        finally:
            conn.close()

    def age(self, task_ids: list[str], hours: int) -> None:
        """Move the rows' ``created_at`` ``hours`` into the past."""
        marks = ", ".join("?" * len(task_ids))
        shift = (
            f"created_at - INTERVAL {int(hours)} HOUR"
            if self.name == "mariadb"
            else f"datetime(created_at, '-{int(hours)} hours')"
        )
        self.execute(
            f"UPDATE async_task_status SET created_at = {shift} WHERE task_id IN ({marks})", task_ids
        )

    def task_ids(self) -> set[str]:
        return {task_id for (task_id,) in self.execute("SELECT task_id FROM async_task_status")}


class CountingConnection:
    """Pass a DB-API connection through, recording every statement its cursors execute."""

    def __init__(self, conn: Any, statements: list[tuple[str, list[Any]]]) -> None:
        self._conn = conn
        self._statements = statements

    def cursor(self, *args: Any) -> Any:
        statements = self._statements
        cursor = self._conn.cursor(*args)

        class Cursor:
            def execute(self, sql: str, params: Any = ()) -> Any:
                statements.append((sql, list(params)))
                return cursor.execute(sql, params)

            def __getattr__(self, name: str) -> Any:
                return getattr(cursor, name)

        return Cursor()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.fixture(params=["mariadb", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """Point Connection ``medins_status_cleanup_test`` at an empty database of each kind."""
    env = f"AIRFLOW_CONN_{CONN_ID.upper()}"
    if request.param == "sqlite":
        path = tmp_path / "status.db"
        monkeypatch.setenv(env, json.dumps({"conn_type": "sqlite", "host": str(path)}))
        return Backend("sqlite", lambda: sqlite3.connect(path))

    database = request.getfixturevalue("mariadb_database")
    connection = {
        "conn_type": "mysql", "host": MYSQL_SERVER["host"], "port": MYSQL_SERVER["port"],
        "login": MYSQL_SERVER["user"], "password": MYSQL_SERVER["password"], "schema": database,
        "extra": {"charset": "utf8mb4"},
    }  # fmt: skip
    monkeypatch.setenv(env, json.dumps(connection))
    backend = Backend("mariadb", lambda: mariadb_connect(database))
    backend.execute("DROP TABLE IF EXISTS async_task_status")
    return backend


@pytest.fixture
def store(backend: Backend) -> Iterator[StatusStore]:
    with StatusStore.from_conn_id(CONN_ID) as status_store:
        status_store.create_schema()
        yield status_store


def requests(batch_id: str | None, n: int, status: str = RequestState.SUCCESS) -> list[RequestRow]:
    prefix = batch_id or "single"
    return [
        RequestRow(task_id=f"{prefix}-{i:06d}", status=status, batch_id=batch_id, chunk_no=0, api_code="1101")
        for i in range(n)
    ]


def add_batch(store: StatusStore, batch_id: str, n: int, status: str = BatchState.DONE) -> list[str]:
    """Store a batch row and ``n`` successful requests; return every task id, the batch's first."""
    store.put_batch(batch_id, status, {"current": n, "total": n, "percentage": 100.0})
    rows = requests(batch_id, n)
    store.register(rows)
    return [batch_id, *(row.task_id for row in rows)]


def now_plus(hours: float = 0) -> datetime:
    return datetime.now(UTC) + timedelta(hours=hours)


class TestPurgeExpired:
    def test_expired_rows_go_and_fresh_rows_stay(self, backend: Backend, store: StatusStore) -> None:
        old = add_batch(store, "old", 5)
        fresh = add_batch(store, "fresh", 5)
        single = [row.task_id for row in requests(None, 3)]
        store.register(requests(None, 3))
        backend.age(old + single, hours=30)

        deleted = store.purge_expired(now_plus(-24))

        assert deleted == len(old) + len(single)
        assert backend.task_ids() == set(fresh)

    def test_rows_of_a_running_batch_stay_however_old(self, backend: Backend, store: StatusStore) -> None:
        running = add_batch(store, "running", 4, status=BatchState.RUNNING)
        waiting = add_batch(store, "waiting", 4)  # its own row DONE, one request still open
        store.mark(["waiting-000002"], RequestState.RETRY)
        store.register(requests("claimed", 2, status=RequestState.PROCESSING))
        store.register([RequestRow(task_id="lone-open", status=RequestState.PENDING)])
        everything = backend.task_ids()
        backend.age(sorted(everything), hours=100)

        deleted = store.purge_expired(now_plus(-24))

        assert deleted == 0
        assert backend.task_ids() == everything
        assert set(running) | set(waiting) <= everything

    def test_a_finished_batch_row_goes_with_its_last_requests(
        self, backend: Backend, store: StatusStore
    ) -> None:
        ids = add_batch(store, "done", 4)
        backend.age(ids[:3], hours=30)  # the batch row and two requests; two requests are fresh

        first = store.purge_expired(now_plus(-24))
        kept = backend.task_ids()
        backend.age(ids[3:], hours=30)
        second = store.purge_expired(now_plus(-24))

        assert first == 2 and kept == {"done", *ids[3:]}
        assert second == 3 and backend.task_ids() == set()

    def test_a_cancelled_batch_goes_like_a_done_one(self, backend: Backend, store: StatusStore) -> None:
        ids = add_batch(store, "cancelled", 3, status=BatchState.CANCELLED)
        backend.age(ids, hours=30)

        assert store.purge_expired(now_plus(-24)) == 4
        assert backend.task_ids() == set()

    def test_deletes_in_chunks_of_at_most_chunk_size_rows(self, backend: Backend, store: StatusStore) -> None:
        ids = add_batch(store, "big", 10)
        backend.age(ids, hours=30)
        statements: list[tuple[str, list[Any]]] = []
        counting = StatusStore(lambda: CountingConnection(backend.connect(), statements), store.dialect)

        deleted = counting.purge_expired(now_plus(-24), chunk_size=3)
        counting.close()

        deletes = [params for sql, params in statements if sql.startswith("DELETE")]
        ids_per_delete = [len([p for p in params if isinstance(p, int)]) for params in deletes]
        assert deleted == 11
        assert ids_per_delete == [3, 3, 3, 1, 1]  # ten requests, then the batch row
        assert all("?" in sql or "%s" in sql for sql, _ in statements if sql.startswith("DELETE"))

    def test_stops_after_max_seconds_and_the_next_call_goes_on(
        self, backend: Backend, store: StatusStore
    ) -> None:
        ids = add_batch(store, "slow", 6)
        backend.age(ids, hours=30)

        first = store.purge_expired(now_plus(-24), chunk_size=2, max_seconds=0)
        rest = store.purge_expired(now_plus(-24), chunk_size=2)

        assert first == 2
        assert rest == 5 and backend.task_ids() == set()


ROWS = 200_000


def test_purging_100000_rows_never_blocks_a_writer_for_long(mariadb_database: str, monkeypatch) -> None:
    """Fill MariaDB with 200,000 rows, half expired; purge them while another session keeps updating."""
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps(
            {
                "conn_type": "mysql", "host": MYSQL_SERVER["host"], "port": MYSQL_SERVER["port"],
                "login": MYSQL_SERVER["user"], "password": MYSQL_SERVER["password"],
                "schema": mariadb_database, "extra": {"charset": "utf8mb4"},
            }
        ),
    )  # fmt: skip
    admin = mariadb_connect(mariadb_database)
    admin.cursor().execute("DROP TABLE IF EXISTS async_task_status")
    with StatusStore.from_conn_id(CONN_ID) as store:
        store.create_schema()

    # Fill: 200 batches of 1,000 final requests (no batch rows); the first 100 batches are years old.
    started = time.monotonic()
    cursor = admin.cursor()
    old, new = "2020-01-01 00:00:00", datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    for b in range(ROWS // 1000):
        created = old if b < ROWS // 2000 else new
        cursor.executemany(
            "INSERT INTO async_task_status (task_id, status, data, batch_id, chunk_no, api_code, "
            "kind, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (f"b{b:03d}-{i:04d}", "SUCCESS", '{"output":{"infcode":0}}', f"b{b:03d}", i // 250, "1101",
                 "query", created)
                for i in range(1000)
            ],
        )  # fmt: skip
        admin.commit()
    fill_seconds = time.monotonic() - started

    # A writer that keeps updating one fresh row, and may wait at most 2 s for a lock.
    writer = mariadb_connect(mariadb_database)
    writer.cursor().execute("SET SESSION innodb_lock_wait_timeout = 2")
    stop = threading.Event()
    updates: list[float] = []
    errors: list[BaseException] = []

    def keep_updating() -> None:
        c = writer.cursor()
        n = 0
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                c.execute(
                    "UPDATE async_task_status SET attempts = %s WHERE task_id = %s",
                    (n, f"b{ROWS // 1000 - 1:03d}-0000"),
                )
                writer.commit()
            except BaseException as err:
                errors.append(err)
                return
            updates.append(time.monotonic() - t0)
            n += 1

    statements: list[tuple[str, list[Any]]] = []
    timings: list[float] = []

    class TimedConnection(CountingConnection):
        def cursor(self, *args: Any) -> Any:
            inner = super().cursor(*args)

            class Cursor:
                def execute(self, sql: str, params: Any = ()) -> Any:
                    t0 = time.monotonic()
                    try:
                        return inner.execute(sql, params)
                    finally:
                        timings.append(time.monotonic() - t0)

                def __getattr__(self, name: str) -> Any:
                    return getattr(inner, name)

            return Cursor()

    purger = StatusStore(
        lambda: TimedConnection(mariadb_connect(mariadb_database), statements), "mysql", chunk_size=1000
    )
    thread = threading.Thread(target=keep_updating)
    thread.start()
    try:
        started = time.monotonic()
        deleted = purger.purge_expired(now_plus(-24))
        purge_seconds = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        purger.close()
        writer.close()

    cursor.execute("SELECT COUNT(*) FROM async_task_status")
    (left,) = cursor.fetchone()
    admin.close()
    deletes = sum(1 for sql, _ in statements if sql.startswith("DELETE"))
    print(
        f"\nfilled {ROWS} rows in {fill_seconds:.1f} s; purged {deleted} rows in {purge_seconds:.1f} s "
        f"with {deletes} DELETE statements; longest purge statement {max(timings):.3f} s; "
        f"{len(updates)} concurrent updates, longest {max(updates):.3f} s"
    )
    assert not errors, errors
    assert deleted == ROWS // 2
    assert left == ROWS // 2
    assert updates and max(updates) < 2


class TestRetentionHours:
    def test_the_run_conf_wins_over_the_variable(self) -> None:
        assert cleanup.retention_hours({"retention_hours": 6}, 24, "48") == 6

    def test_the_variable_wins_over_the_param_default(self) -> None:
        assert cleanup.retention_hours({}, 24, "48") == 48

    def test_the_param_default_applies_when_nothing_else_is_set(self) -> None:
        assert cleanup.retention_hours(None, 24, None) == 24

    @pytest.mark.parametrize("value", ["0", "-3", "a day", "1.5"])
    def test_a_bad_variable_fails_the_task_with_its_name(self, value: str) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        with pytest.raises(AirflowFailException, match="medins_retention_hours"):
            cleanup.retention_hours({}, 24, value)


class TestAirflowDbClean:
    def test_the_command_trims_the_chosen_tables_without_archive_or_prompt(self) -> None:
        command = cleanup.db_clean_command(datetime(2026, 1, 1, tzinfo=UTC))

        assert command[1:5] == ["-m", "airflow", "db", "clean"]
        assert command[command.index("--clean-before-timestamp") + 1] == "2026-01-01T00:00:00+00:00"
        assert command[command.index("--tables") + 1].split(",") == list(cleanup.METADATA_TABLES)
        assert {"--skip-archive", "--yes", "--error-on-cleanup-failure"} <= set(command)

    def test_the_blocked_database_url_is_dropped_and_the_given_one_set(self) -> None:
        blocked = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "airflow-db-not-allowed:///", "PATH": "/bin"}

        assert cleanup.db_clean_environment(blocked, None) == {"PATH": "/bin"}
        assert cleanup.db_clean_environment(blocked, "sqlite:////x.db") == {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:////x.db",
            "PATH": "/bin",
        }

    def test_a_working_database_url_is_kept(self) -> None:
        env = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:////x.db"}

        assert cleanup.db_clean_environment(env, None) == env

    def test_nothing_to_clean_is_a_success(self, airflow_db) -> None:
        before = cleanup.clean_airflow_metadata(3650)

        assert before.startswith(str(datetime.now(UTC).year - 10))
