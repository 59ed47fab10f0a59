"""``medins_nightly`` end to end with ``dag.test()``: nights backfilled and run again, UNKNOWN settlements."""

from __future__ import annotations

import json
from datetime import timedelta

import pendulum
import pytest

from tests.conftest import ROOT, gateway_connection

ORGS = ("H44010600001", "H44010400002")
NIGHTS = {  # logical date (02:00 China time) -> the day it works on
    pendulum.datetime(2026, 11, 29, 2, tz="Asia/Shanghai"): "2026-11-28",
    pendulum.datetime(2026, 11, 30, 2, tz="Asia/Shanghai"): "2026-11-29",
    pendulum.datetime(2026, 12, 1, 2, tz="Asia/Shanghai"): "2026-11-30",
}
CATALOG_SYNC = {
    "name": "catalog-sync",
    "api_code": "1312",
    "institutions": list(ORGS),
    "input": {"query_date": "{ds}", "page_num": 1, "page_size": 20},
}
RECONCILE = {
    "name": "reconcile-310",
    "api_code": "3201",
    "institutions": {"H44010600001": {"setl_optins": "440106"}, "H44010400002": {"setl_optins": "440104"}},
    "input": {"insutype": "310", "clr_type": "11", "stmt_begndate": "{ds}", "stmt_enddate": "{ds}"},
    "totals": {
        "file": "summaries/{ds}.csv",
        "match": {"org": "{org_code}"},
        "sum": {"medfee_sumamt": "medfee", "fund_pay_sumamt": "fund", "acct_pay": "acct",
                "fixmedins_setl_cnt": "count"},
    },
}  # fmt: skip


def daily_totals(day: str, org: str) -> tuple[float, float, float, int]:
    """Return made-up totals that differ by day and institution."""
    n = int(day[-2:]) + ORGS.index(org) * 100
    return (1000 + n + 0.25, 700 + n + 0.1, 100.0 + n, n)


@pytest.fixture
def status_store(tmp_path, monkeypatch):
    """Point ``medins_status_default`` at a fresh SQLite file."""
    from medins.store import StatusStore

    connection = {"conn_type": "sqlite", "host": str(tmp_path / "status.db")}
    monkeypatch.setenv("AIRFLOW_CONN_MEDINS_STATUS_DEFAULT", json.dumps(connection))
    with StatusStore.from_conn_id("medins_status_default") as store:
        store.create_schema()
    return lambda: StatusStore.from_conn_id("medins_status_default")


@pytest.fixture
def gateway(sandbox, monkeypatch):
    connection = gateway_connection(sandbox.port, orgs=len(ORGS))
    monkeypatch.setenv("AIRFLOW_CONN_MEDINS_GATEWAY_DEFAULT", json.dumps(connection))
    return sandbox


@pytest.fixture
def jobs_file(tmp_path, monkeypatch):
    """Write a jobs file and the settlement summaries of the nights; point the Variable at it."""

    def write(*jobs: dict) -> None:
        path = tmp_path / "nightly" / "jobs.json"
        (path.parent / "summaries").mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"jobs": list(jobs)}), encoding="utf-8")
        for day in NIGHTS.values():
            lines = ["org,dept,medfee,fund,acct,count"]
            for org in ORGS:
                medfee, fund, acct, count = daily_totals(day, org)
                lines.append(f"{org},A,{medfee - 0.25},{fund},{acct},{count - 1}")
                lines.append(f"{org},B,0.25,0,0,1")
            (path.parent / "summaries" / f"{day}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        monkeypatch.setenv("AIRFLOW_VAR_MEDINS_NIGHTLY_JOBS", str(path))

    return write


def dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags")).dags[dag_id]


def run_night(logical_date, **conf):
    return dag("medins_nightly").test(logical_date=logical_date, run_conf=conf or None)


def sent(gateway, infno: str) -> int:
    return gateway.stats()["by_infno"].get(infno, 0)


@pytest.mark.e2e
def test_three_nights_backfilled_store_and_send_one_set_of_requests_each(
    airflow_db, gateway, status_store, jobs_file
):
    jobs_file(CATALOG_SYNC, RECONCILE)

    runs = [run_night(logical_date) for logical_date in NIGHTS]

    with status_store() as store:
        for run, day in zip(runs, NIGHTS.values(), strict=True):
            rows = store.rows(f"nightly-{day}")
            assert str(run.state) == "success"
            assert sorted(row.task_id for row in rows) == sorted(
                f"{job}-{day}-{org}" for job in ("catalog-sync", "reconcile-310") for org in ORGS
            )
            assert {row.status for row in rows} == {"SUCCESS"}, [row.error for row in rows]
            assert store.get_batch(f"nightly-{day}").status == "DONE"
    assert sent(gateway, "1312") == sent(gateway, "3201") == 2 * len(NIGHTS)


@pytest.mark.e2e
def test_reconciliations_carry_the_settlement_summarys_totals(airflow_db, gateway, status_store, jobs_file):
    jobs_file(RECONCILE)
    logical_date, day = next(iter(NIGHTS.items()))

    run_night(logical_date)

    with status_store() as store:
        for org in ORGS:
            row = store.get(f"reconcile-310-{day}-{org}")
            medfee, fund, acct, count = daily_totals(day, org)
            assert row.status == "SUCCESS"
            assert row.data["request"]["data"] == {
                "insutype": "310", "clr_type": "11", "stmt_begndate": day, "stmt_enddate": day,
                "setl_optins": {"H44010600001": "440106", "H44010400002": "440104"}[org],
                "medfee_sumamt": medfee, "fund_pay_sumamt": fund, "acct_pay": acct,
                "fixmedins_setl_cnt": count,
            }  # fmt: skip
            assert row.data["output"]["stmtinfo"]["stmt_rslt"] == "0"


@pytest.mark.e2e
def test_running_a_night_again_stores_and_sends_nothing(airflow_db, gateway, status_store, jobs_file):
    jobs_file(CATALOG_SYNC, RECONCILE)
    logical_date, day = next(iter(NIGHTS.items()))
    run_night(logical_date)
    with status_store() as store:
        before = {row.task_id: (row.status, row.msgid) for row in store.rows(f"nightly-{day}")}
    received = gateway.stats()["received"]

    again = run_night(logical_date)

    with status_store() as store:
        after = {row.task_id: (row.status, row.msgid) for row in store.rows(f"nightly-{day}")}
        batch = store.get_batch(f"nightly-{day}")
    assert str(again.state) == "success"
    assert after == before and len(after) == 4
    assert batch.status == "DONE" and batch.data["already_stored"] == 4
    assert gateway.stats()["received"] == received


@pytest.fixture
def inbox(tmp_path, monkeypatch):
    """Point the Variable ``medins_inbox_dir`` at an empty folder of the test's own."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    monkeypatch.setenv("AIRFLOW_VAR_MEDINS_INBOX_DIR", str(folder))
    return folder


@pytest.mark.e2e
def test_inbox_files_join_the_nights_batch_and_a_broken_one_is_filed_as_failed(
    airflow_db, gateway, status_store, jobs_file, inbox
):
    jobs_file(CATALOG_SYNC, RECONCILE)
    logical_date, day = next(iter(NIGHTS.items()))
    (inbox / "outpatient.csv").write_text(
        "api_code,org_code,data.query_date,data.page_num,data.page_size\n"
        + "".join(f"1312,{org},{day},2,20\n" for org in ORGS),
        encoding="utf-8",
    )
    (inbox / "pharmacy.json").write_text('[{"api_code": "1312",', encoding="utf-8")

    run = run_night(logical_date)

    with status_store() as store:
        rows = {row.task_id: row for row in store.rows(f"nightly-{day}")}
        batch = store.get_batch(f"nightly-{day}")
    inbox_ids = [f"inbox-{day}-outpatient-2", f"inbox-{day}-outpatient-3"]
    assert str(run.state) == "success"
    assert sorted(rows) == sorted(
        [*inbox_ids, *(f"{job}-{day}-{org}" for job in ("catalog-sync", "reconcile-310") for org in ORGS)]
    )
    assert {rows[request_id].status for request_id in inbox_ids} == {"SUCCESS"}
    assert batch.status == "DONE" and batch.data["total"] == 6
    assert sent(gateway, "1312") == 4
    assert (inbox / "processed" / day / "outpatient.csv").exists()
    assert (inbox / "failed" / day / "pharmacy.json").exists()
    failed = json.loads((inbox / "failed" / day / "pharmacy.json.report.json").read_text(encoding="utf-8"))
    assert failed["message"].startswith("pharmacy.json is not valid JSON")
    assert sorted(path.name for path in inbox.iterdir()) == ["failed", "processed"]


def settle_request(request_id: str) -> dict:
    return {
        "request_id": request_id,
        "api_code": "2207",
        "org_code": ORGS[0],
        "data": {"psn_no": "44010000000000000001", "mdtrt_cert_type": "02", "mdtrt_id": f"MDT-{request_id}",
                 "chrg_bchno": "CB1", "insutype": "310", "medfee_sumamt": 99.5, "psn_setlway": "01"},
    }  # fmt: skip


def tonight():
    """Return the logical date of the night that works on today (China time)."""
    today = pendulum.now("Asia/Shanghai").start_of("day")
    return today + timedelta(days=1, hours=2)


@pytest.mark.e2e
def test_a_settlement_whose_reply_was_lost_is_resolved_by_5203_and_never_sent_again(
    airflow_db, gateway, status_store, jobs_file
):
    jobs_file(CATALOG_SYNC)
    gateway.set_faults(lost_reply=1.0)
    dag("medins_batch").test(run_conf={"requests": [settle_request("lost-reply-1")]})
    with status_store() as store:
        assert store.get("lost-reply-1").status == "UNKNOWN"
    gateway.set_faults(lost_reply=0.0)

    run = run_night(tonight())

    with status_store() as store:
        row = store.get("lost-reply-1")
    assert str(run.state) == "success"
    assert row.status == "SUCCESS"
    assert row.error.startswith("resolved by 5203")
    assert row.data["output"]["setlinfo"]["mdtrt_id"] == "MDT-lost-reply-1"
    assert [note["api_code"] for note in row.data["resolution"]] == ["5203"]
    assert sent(gateway, "2207") == 1 and sent(gateway, "2601") == 0
    assert gateway.stats()["double_settlements"] == 0


def unknown_never_applied(store, request_id: str) -> None:
    """Store a 2207 as UNKNOWN whose message never reached the gateway (its connection dropped)."""
    from medins.batch import plan_batch
    from medins.hooks.gateway import MedicalInsuranceHook

    hook = MedicalInsuranceHook()
    (row,) = plan_batch(
        [settle_request(request_id)], batch_id="day", catalog=hook.catalog, institutions=hook.institutions
    ).rows
    row.status, row.msgid, row.error = "UNKNOWN", hook.new_msgid(ORGS[0]), "2207: connection dropped"
    store.register([row])


@pytest.mark.e2e
def test_a_settlement_5203_does_not_find_stays_unknown_by_default(
    airflow_db, gateway, status_store, jobs_file
):
    jobs_file(CATALOG_SYNC)
    with status_store() as store:
        unknown_never_applied(store, "dropped-1")

    run_night(tonight())

    with status_store() as store:
        row = store.get("dropped-1")
    assert row.status == "UNKNOWN"
    assert "5203" in row.error and "found no settlement" in row.error and "reverse_unresolved" in row.error
    assert sent(gateway, "2601") == 0 and sent(gateway, "2207") == 0


@pytest.mark.e2e
def test_with_reverse_unresolved_a_settlement_5203_does_not_find_is_reversed_by_its_msgid(
    airflow_db, gateway, status_store, jobs_file
):
    jobs_file(CATALOG_SYNC)
    with status_store() as store:
        unknown_never_applied(store, "dropped-2")

    run_night(tonight(), reverse_unresolved=True)

    with status_store() as store:
        row = store.get("dropped-2")
    assert row.status == "FAILURE"
    assert row.error.startswith("not found by 5203, reversed by 2601")
    assert [note["api_code"] for note in row.data["resolution"]] == ["5203", "2601"]
    assert sent(gateway, "2601") == 1 and sent(gateway, "2207") == 0


class TestShape:
    def test_runs_at_2am_china_time_without_catchup(self):
        nightly = dag("medins_nightly")

        assert nightly.timetable.expression == "0 2 * * *"
        assert str(nightly.timetable.timezone.name) == "Asia/Shanghai"
        assert nightly.catchup is False
        assert nightly.params["reverse_unresolved"] is False

    def test_uses_the_same_chunked_fan_out_as_medins_batch(self):
        from medins.operators.chunk import MedicalInsuranceChunkOperator

        for dag_id in ("medins_batch", "medins_nightly"):
            send = dag(dag_id).get_task("send_chunk")
            summarize = dag(dag_id).get_task("summarize")
            assert send.operator_class is MedicalInsuranceChunkOperator, dag_id
            assert send.queue == "medical_batch" and summarize.trigger_rule == "all_done"
            assert "send_chunk" in summarize.upstream_task_ids, dag_id
            assert send.upstream_task_ids == {"register"}, dag_id

    def test_resolution_runs_on_the_interface_queue_beside_the_batch(self):
        task = dag("medins_nightly").get_task("resolve_unknown_settlements")

        assert task.queue == "medical_interface" and task.upstream_task_ids == set()
