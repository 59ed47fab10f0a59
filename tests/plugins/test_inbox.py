"""The nightly inbox: request files read into the night's batch, then filed with a report."""

from __future__ import annotations

import json
from datetime import date

import pytest

from medins.inbox import is_partial, read_inbox, request_id_for
from medins.nightly import Night, register_night
from tests.conftest import gateway_connection

NIGHT = Night(date(2026, 12, 2))
DS = NIGHT.ds
ORGS = ("H44010600001", "H44010400002")
CERT_NO = "440106199001011234"
CATALOG_HEADER = "api_code,org_code,data.query_date,data.page_num,data.page_size\n"
CATALOG_SYNC = {
    "name": "catalog-sync",
    "api_code": "1312",
    "institutions": [ORGS[0]],
    "input": {"query_date": "{ds}", "page_num": 1, "page_size": 20},
}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """Point the status and gateway Connections at a fresh SQLite file and two institutions."""
    from medins.store import StatusStore

    status = {"conn_type": "sqlite", "host": str(tmp_path / "status.db")}
    monkeypatch.setenv("AIRFLOW_CONN_MEDINS_STATUS_DEFAULT", json.dumps(status))
    monkeypatch.setenv("AIRFLOW_CONN_MEDINS_GATEWAY_DEFAULT", json.dumps(gateway_connection(1, orgs=2)))
    with StatusStore.from_conn_id("medins_status_default") as opened:
        opened.create_schema()
    return lambda: StatusStore.from_conn_id("medins_status_default")


@pytest.fixture
def inbox(tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


def night(tmp_path, inbox, *jobs, run_id="scheduled__2026-12-03"):
    """Register the night with the given recurring jobs and the inbox; return its chunks."""
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps({"jobs": list(jobs)}), encoding="utf-8")
    return register_night(jobs_file, NIGHT, run_id=run_id, dag_id="medins_nightly", inbox_dir=inbox)


def report(inbox, outcome: str, name: str) -> dict:
    return json.loads((inbox / outcome / DS / f"{name}.report.json").read_text(encoding="utf-8"))


def catalog_rows(*orgs: str) -> str:
    return CATALOG_HEADER + "".join(f"1312,{org},{DS},1,20\n" for org in orgs)


def write_xlsx(path, rows) -> None:
    from openpyxl import Workbook

    workbook = Workbook()
    for row in rows:
        workbook.active.append(row)
    workbook.save(path)


class TestGoodFiles:
    def test_a_csv_files_requests_join_the_nights_batch_with_ids_of_day_file_and_row(
        self, tmp_path, inbox, store
    ):
        (inbox / "dept-a.csv").write_text(catalog_rows(*ORGS), encoding="utf-8")

        chunks = night(tmp_path, inbox, CATALOG_SYNC)

        with store() as opened:
            rows = {row.task_id: row for row in opened.rows(NIGHT.batch_id)}
        assert sorted(rows) == sorted(
            [f"catalog-sync-{DS}-{ORGS[0]}", f"inbox-{DS}-dept-a-2", f"inbox-{DS}-dept-a-3"]
        )
        assert {row.status for row in rows.values()} == {"PENDING"}
        assert rows[f"inbox-{DS}-dept-a-3"].org_code == ORGS[1]
        assert [chunk["batch_id"] for chunk in chunks] == [NIGHT.batch_id]
        assert not (inbox / "dept-a.csv").exists()
        assert (inbox / "processed" / DS / "dept-a.csv").exists()
        assert report(inbox, "processed", "dept-a.csv") | {"at": None} == {
            "file": "dept-a.csv", "night": DS, "outcome": "processed", "batch_id": NIGHT.batch_id,
            "requests": 2, "accepted": 2, "rejected": 0, "stored_by_an_earlier_batch": 0,
            "states": {"PENDING": 2}, "rejected_rows": [], "moved_to": f"processed/{DS}/dept-a.csv",
            "at": None,
        }  # fmt: skip

    def test_an_excel_files_ids_carry_the_spreadsheet_rows_past_a_blank_row(self, tmp_path, inbox, store):
        write_xlsx(
            inbox / "dept-b.xlsx",
            [
                ["api_code", "org_code", "data.mdtrt_cert_type", "data.mdtrt_cert_no"],
                ["1101", ORGS[0], "02", CERT_NO],
                [None, None, None, None],
                ["1101", ORGS[1], "03", "S1234567"],
            ],
        )

        night(tmp_path, inbox)

        with store() as opened:
            rows = {row.task_id: row for row in opened.rows(NIGHT.batch_id)}
        assert sorted(rows) == [f"inbox-{DS}-dept-b-2", f"inbox-{DS}-dept-b-4"]
        assert rows[f"inbox-{DS}-dept-b-2"].data["request"]["data"] == {
            "mdtrt_cert_type": "02",
            "mdtrt_cert_no": CERT_NO,
        }
        assert report(inbox, "processed", "dept-b.xlsx")["accepted"] == 2

    def test_a_json_files_own_request_ids_are_kept(self, tmp_path, inbox, store):
        requests = [
            {"request_id": "pharmacy-001", "api_code": "1312", "org_code": ORGS[0],
             "data": {"query_date": DS, "page_num": 1, "page_size": 10}},
            {"api_code": "1312", "org_code": ORGS[1],
             "data": {"query_date": DS, "page_num": 2, "page_size": 10}},
        ]  # fmt: skip
        (inbox / "pharmacy.json").write_text(json.dumps(requests), encoding="utf-8")

        night(tmp_path, inbox)

        with store() as opened:
            ids = sorted(row.task_id for row in opened.rows(NIGHT.batch_id))
        assert ids == sorted(["pharmacy-001", f"inbox-{DS}-pharmacy-2"])
        assert (inbox / "processed" / DS / "pharmacy.json").exists()

    def test_files_are_taken_in_name_order(self, tmp_path, inbox, store):
        (inbox / "b.csv").write_text(catalog_rows(ORGS[0]), encoding="utf-8")
        (inbox / "a.csv").write_text(catalog_rows(ORGS[0]), encoding="utf-8")

        files = read_inbox(inbox, DS).files

        assert [entry.path.name for entry in files] == ["a.csv", "b.csv"]


class TestBadRows:
    def test_a_file_with_rejected_rows_is_processed_and_its_report_names_the_rows_masked(
        self, tmp_path, inbox, store
    ):
        (inbox / "mixed.csv").write_text(
            "api_code,org_code,data.mdtrt_cert_type,data.mdtrt_cert_no\n"
            f"1101,{ORGS[0]},02,{CERT_NO}\n"
            f"1101,{ORGS[0]},02,\n"
            f"1101,H99999999999,02,{CERT_NO}\n",
            encoding="utf-8",
        )

        night(tmp_path, inbox)

        with store() as opened:
            states = {row.task_id: row.status for row in opened.rows(NIGHT.batch_id)}
        text = (inbox / "processed" / DS / "mixed.csv.report.json").read_text(encoding="utf-8")
        filed = json.loads(text)
        assert states == {
            f"inbox-{DS}-mixed-2": "PENDING",
            f"inbox-{DS}-mixed-3": "REJECTED",
            f"inbox-{DS}-mixed-4": "REJECTED",
        }
        assert (filed["requests"], filed["accepted"], filed["rejected"]) == (3, 1, 2)
        assert [row["row"] for row in filed["rejected_rows"]] == [3, 4]
        assert "mdtrt_cert_no" in filed["rejected_rows"][0]["reason"]
        assert "is not configured in the gateway Connection" in filed["rejected_rows"][1]["reason"]
        assert CERT_NO not in text

    def test_rows_whose_ids_were_refused_are_reported_rejected_with_the_reason(self, tmp_path, inbox, store):
        from medins.states import BatchState

        with store() as opened:
            opened.put_batch("nightly-2026-12-01", BatchState.DONE)
        query = {
            "api_code": "1312",
            "org_code": ORGS[0],
            "data": {"query_date": DS, "page_num": 1, "page_size": 10},
        }
        ids = ["pharmacy-001", "pharmacy-001", "nightly-2026-12-01", "not an id"]
        requests = [{**query, "request_id": request_id} for request_id in ids]
        (inbox / "pharmacy.json").write_text(json.dumps(requests), encoding="utf-8")

        night(tmp_path, inbox)

        filed = report(inbox, "processed", "pharmacy.json")
        with store() as opened:
            earlier = opened.get_batch("nightly-2026-12-01")
        assert (filed["requests"], filed["accepted"], filed["rejected"]) == (4, 1, 3)
        assert [row["row"] for row in filed["rejected_rows"]] == [2, 3, 4]
        reasons = [row["reason"] for row in filed["rejected_rows"]]
        assert "duplicate request_id pharmacy-001" in reasons[0]
        assert "is the id of another batch" in reasons[1]
        assert "request_id must be" in reasons[2]
        assert earlier.status == "DONE" and earlier.kind == "batch"


class TestUnreadableFiles:
    def test_a_file_that_is_not_json_goes_to_failed_with_the_readers_message(self, tmp_path, inbox, store):
        (inbox / "broken.json").write_text('[{"api_code": "1312",', encoding="utf-8")

        night(tmp_path, inbox, CATALOG_SYNC)

        filed = report(inbox, "failed", "broken.json")
        assert (inbox / "failed" / DS / "broken.json").exists() and not (inbox / "broken.json").exists()
        assert filed["outcome"] == "failed"
        assert filed["message"].startswith("broken.json is not valid JSON")
        with store() as opened:
            assert [row.task_id for row in opened.rows(NIGHT.batch_id)] == [f"catalog-sync-{DS}-{ORGS[0]}"]

    def test_a_file_with_a_missing_column_goes_to_failed_naming_the_column(self, tmp_path, inbox, store):
        (inbox / "no-org.csv").write_text(f"api_code,data.query_date\n1312,{DS}\n", encoding="utf-8")

        night(tmp_path, inbox)

        assert "missing column(s) org_code" in report(inbox, "failed", "no-org.csv")["message"]

    def test_a_file_that_is_not_a_workbook_goes_to_failed(self, tmp_path, inbox, store):
        (inbox / "fake.xlsx").write_bytes(b"not a zip file")

        night(tmp_path, inbox)

        assert "is not a readable .xlsx workbook" in report(inbox, "failed", "fake.xlsx")["message"]

    def test_the_readers_message_is_masked(self, tmp_path, inbox, store):
        (inbox / "cells.csv").write_text(
            f"api_code,org_code,data.mdtrt_cert_type,data.mdtrt_cert_no\n9999,{ORGS[0]},02,{CERT_NO}\n",
            encoding="utf-8",
        )

        night(tmp_path, inbox)

        message = report(inbox, "failed", "cells.csv")["message"]
        assert "interface '9999' is not in the catalog" in message and CERT_NO not in message


class TestRunningAgain:
    def test_a_file_registered_by_an_earlier_try_adds_nothing_and_is_not_overwritten(
        self, tmp_path, inbox, store
    ):
        (inbox / "dept-a.csv").write_text(catalog_rows(*ORGS), encoding="utf-8")
        night(tmp_path, inbox)
        # An earlier try registered the file but died before moving it.
        (inbox / "dept-a.csv").write_text(catalog_rows(*ORGS), encoding="utf-8")

        night(tmp_path, inbox)

        with store() as opened:
            assert len(opened.rows(NIGHT.batch_id)) == 2
            assert opened.get_batch(NIGHT.batch_id).data["already_stored"] == 2
        assert sorted(path.name for path in (inbox / "processed" / DS).iterdir()) == [
            "dept-a-2.csv", "dept-a-2.csv.report.json", "dept-a.csv", "dept-a.csv.report.json",
        ]  # fmt: skip

    def test_open_requests_of_files_gone_since_keep_their_chunk(self, tmp_path, inbox, store):
        (inbox / "dept-a.csv").write_text(catalog_rows(*ORGS), encoding="utf-8")
        first = night(tmp_path, inbox, CATALOG_SYNC)

        again = night(tmp_path, inbox, CATALOG_SYNC)

        assert [chunk["chunk_no"] for chunk in again] == [chunk["chunk_no"] for chunk in first] == [0]
        with store() as opened:
            assert len(opened.rows(NIGHT.batch_id)) == 3


class TestFilesBeingWritten:
    @pytest.mark.parametrize("name", [".dept-a.csv", "dept-a.csv.part", "dept-a.csv.tmp", "x.TMP"])
    def test_hidden_and_partial_names_are_left_in_the_inbox(self, tmp_path, inbox, store, name):
        (inbox / name).write_text(catalog_rows(ORGS[0]), encoding="utf-8")

        night(tmp_path, inbox)

        assert is_partial(inbox / name)
        assert (inbox / name).exists()
        assert not (inbox / "processed").exists() and not (inbox / "failed").exists()
        with store() as opened:
            assert opened.rows(NIGHT.batch_id) == []

    def test_folders_in_the_inbox_are_not_read(self, tmp_path, inbox, store):
        (inbox / "processed" / "2026-12-01").mkdir(parents=True)

        assert read_inbox(inbox, DS).files == []

    def test_a_missing_inbox_is_created(self, tmp_path):
        assert read_inbox(tmp_path / "new" / "inbox", DS).files == []
        assert (tmp_path / "new" / "inbox").is_dir()


class TestRequestIds:
    def test_a_plain_stem_is_kept(self):
        assert request_id_for(DS, "dept_a.2", 7) == f"inbox-{DS}-dept_a.2-7"

    def test_names_that_are_not_plain_get_distinct_valid_ids(self):
        from medins.batch import REQUEST_ID

        ids = {request_id_for(DS, stem, 2) for stem in ("门诊", "住院", "门诊 A" * 30)}

        assert len(ids) == 3
        assert all(REQUEST_ID.match(request_id) for request_id in ids)
