"""One chunk through the runner: the table decides what is sent, and nothing final is sent again."""

from __future__ import annotations

import pytest

from medins.batch import plan_batch
from medins.runner import ChunkRunner
from medins.states import BatchState
from medins.store import StatusStore

ORG = "H44010600001"


def settlement(i: int) -> dict:
    data = {
        "psn_no": f"440100000000000{i:05d}", "mdtrt_cert_type": "02", "mdtrt_id": f"RUN-MDT-{i}",
        "chrg_bchno": f"CB{i}", "insutype": "310", "medfee_sumamt": 10.0, "psn_setlway": "01",
    }  # fmt: skip
    return {"api_code": "2207", "org_code": ORG, "data": data, "request_id": f"run-settle-{i}"}


def query(i: int) -> dict:
    return {
        "api_code": "5301",
        "org_code": ORG,
        "data": {"psn_no": f"4401{i:016d}"},
        "request_id": f"run-q-{i}",
    }


@pytest.fixture
def store(tmp_path):
    with _sqlite_store(tmp_path) as store:
        yield store


def _sqlite_store(tmp_path) -> StatusStore:
    import sqlite3

    def connect():
        conn = sqlite3.connect(tmp_path / "status.db", timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    store = StatusStore(connect, "sqlite")
    store.create_schema()
    return store


@pytest.fixture
def registered(store, hook):
    """Register a batch of queries and settlements; return its id."""

    def register(requests: list[dict], batch_id: str = "b-run") -> str:
        plan = plan_batch(requests, batch_id=batch_id, catalog=hook.catalog, institutions=hook.institutions)
        store.register(plan.rows)
        store.put_batch(batch_id, BatchState.RUNNING, {})
        return batch_id

    return register


def runner(hook, store, **kwargs) -> ChunkRunner:
    return ChunkRunner(hook, store, concurrency=4, backoff_base=0.01, flush_seconds=0.1, **kwargs)


def test_a_chunk_sends_each_open_row_once_and_writes_every_outcome(hook, store, sandbox, registered):
    batch = registered([query(i) for i in range(20)] + [settlement(i) for i in range(10)])

    report = runner(hook, store).run(batch, 0)

    assert report.sent == 30
    assert store.counts(batch) == {"SUCCESS": 30}
    row = store.get("run-settle-3")
    assert row.attempts == 1 and row.msgid == row.data["msgids"][0]
    assert row.data["output"]["setlinfo"]["mdtrt_id"] == "RUN-MDT-3"


def test_a_rerun_sends_nothing_that_is_already_final(hook, store, sandbox, registered):
    batch = registered([query(i) for i in range(10)])
    runner(hook, store).run(batch, 0)
    received = sandbox.stats()["received"]

    report = runner(hook, store).run(batch, 0)

    assert report.found == 0 and report.sent == 0
    assert sandbox.stats()["received"] == received


def test_a_write_left_processing_by_a_dead_try_becomes_unknown_and_is_not_resent(
    hook, store, sandbox, registered
):
    batch = registered([settlement(1), query(1)])
    store.claim([("run-settle-1", f"{ORG}202612030800000001"), ("run-q-1", f"{ORG}202612030800000002")])

    report = runner(hook, store).run(batch, 0)

    assert store.get("run-settle-1").status == "UNKNOWN"
    assert "never send it again" in store.get("run-settle-1").error
    assert store.get("run-q-1").status == "SUCCESS"  # a query is safe to send again
    assert report.sent == 1
    assert sandbox.stats()["by_infno"].get("2207", 0) == 0


def test_transient_errors_wait_for_the_next_try_then_fail_on_the_last(hook, store, sandbox, registered):
    batch = registered([query(i) for i in range(5)])
    sandbox.set_faults(error_5xx=1.0)

    first = runner(hook, store, query_attempts=2).run(batch, 0, last_try=False)
    retry_states = store.counts(batch)
    last = runner(hook, store, query_attempts=2).run(batch, 0, last_try=True)

    assert first.left_open == 5 and retry_states == {"RETRY": 5}
    assert last.states == {"FAILURE": 5}
    row = store.get("run-q-0")
    assert row.attempts == 4 and len(row.data["msgids"]) == 4
    assert "transient errors did not clear after 4 attempts" in row.error


def test_a_transient_error_that_clears_ends_in_success(hook, store, sandbox, registered):
    batch = registered([query(i) for i in range(40)])
    sandbox.set_faults(error_5xx=0.2, drop=0.05)

    runner(hook, store, query_attempts=8).run(batch, 0)

    assert store.counts(batch) == {"SUCCESS": 40}
    assert sum(row.attempts for row in store.rows(batch)) > 40


def test_an_unanswered_write_becomes_unknown_at_once(hook, store, sandbox, registered):
    batch = registered([settlement(i) for i in range(4)])
    sandbox.set_faults(lost_reply=1.0)

    report = runner(hook, store).run(batch, 0)

    assert report.sent == 4 and store.counts(batch) == {"UNKNOWN": 4}
    assert sandbox.stats()["by_infno"]["2207"] == 4  # each sent once, never again


def test_the_soft_time_limit_leaves_unsent_rows_pending_for_the_next_try(hook, store, sandbox, registered):
    batch = registered([query(i) for i in range(10)])

    report = runner(hook, store).run(batch, 0, deadline=0.0)

    assert report.sent == 0 and report.left_open == 10
    assert report.stopped_early == "soft time limit reached"
    assert store.counts(batch) == {"PENDING": 10}


def test_a_cancelled_batch_starts_no_new_call(hook, store, sandbox, registered):
    batch = registered([query(i) for i in range(10)])
    store.put_batch(batch, BatchState.CANCELLED, {})

    report = ChunkRunner(hook, store, cancel_check_seconds=0.0).run(batch, 0)

    assert report.sent == 0 and report.stopped_early == "batch cancelled"


def test_rows_waiting_to_be_resent_when_the_batch_is_cancelled_end_cancelled(
    hook, store, sandbox, registered, tmp_path
):
    import threading
    import time

    batch = registered([query(i) for i in range(6)])
    sandbox.set_faults(error_5xx=1.0)

    def cancel_from_elsewhere() -> None:  # another process's connection, as the status API has
        time.sleep(0.5)
        with _sqlite_store(tmp_path) as other:
            other.cancel_batch(batch)

    thread = threading.Thread(target=cancel_from_elsewhere)
    thread.start()
    report = ChunkRunner(hook, store, concurrency=6, backoff_base=5.0, cancel_check_seconds=0.2).run(batch, 0)
    thread.join()

    assert report.stopped_early == "batch cancelled"
    assert store.counts(batch) == {"CANCELLED": 6}
    assert "cancelled by request" in store.get("run-q-0").error
