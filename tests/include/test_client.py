"""The medins client without a running Airflow: request files, exports, the command line's errors.

Everything that needs the api-server is in tests/e2e/test_client_cli.py."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path

import pandas as pd
import pytest
from medins_client import InputError, MedicalInsuranceClient, ServerUnavailable
from medins_client.cli import ProgressBar, main, progress_line, summary
from medins_client.client import BATCH_ID, batch_finished, new_batch_id, new_request_id, run_id_for_batch
from medins_client.files import EXPORT_COLUMNS, read_requests, write_export

ROOT = Path(__file__).resolve().parents[2]
ORG = "H44010600001"
ID_NUMBER = "31010119430226403X"
LONG_ID = "440106199001011234"
REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")  # medins_batch's pattern
EXPORTED = [
    {"task_id": "r-1", "status": "SUCCESS", "api_code": "1101", "org_code": ORG, "attempts": 1, "infcode": 0,
     "request": {"psn_name": "任*", "mdtrt_cert_type": "02"}, "result": {"baseinfo": {"psn_name": "任*"}},
     "err_msg": None},
    {"task_id": "r-2", "status": "FAILURE", "api_code": "1101", "org_code": ORG, "attempts": 1, "infcode": -1,
     "request": {"mdtrt_cert_type": "02"}, "result": None, "err_msg": "身份证号码校验位错误"},
]  # fmt: skip
PROGRESS = {
    "batch_id": "b-1",
    "status": "RUNNING",
    "current": 150,
    "total": 300,
    "percentage": 50.0,
    "counts": {"PENDING": 140, "SUCCESS": 148, "PROCESSING": 10, "FAILURE": 2, "RETRY": 0},
}


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def write_xlsx(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_excel(path, index=False)
    return path


class TestJsonFiles:
    def test_a_list_of_requests_is_read_as_it_is(self, tmp_path):
        requests = [
            {"api_code": "1101", "org_code": ORG, "data": {"mdtrt_cert_type": "02", "psn_name": "张三"}},
            {"api_code": "1312", "data": {"query_date": "2026-12-01", "page_num": 1, "page_size": 100}},
        ]
        path = tmp_path / "batch.json"
        path.write_text(json.dumps(requests, ensure_ascii=False), encoding="utf-8")

        read = read_requests(path)

        assert read.requests == requests
        assert read.options == {}

    def test_a_batch_conf_gives_its_requests_and_its_options(self, tmp_path):
        conf = {
            "requests": [{"api_code": "5301", "org_code": ORG, "data": {"psn_no": "4401"}}],
            "batch_id": "night-1",
            "chunk_size": 100,
            "concurrency": None,
        }
        path = tmp_path / "conf.json"
        path.write_text(json.dumps(conf), encoding="utf-8")

        read = read_requests(path)

        assert read.requests == conf["requests"]
        assert read.options == {"batch_id": "night-1", "chunk_size": 100}

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            ("", "is empty"),
            ("[]", "holds no requests"),
            ('[{"api_code": "5301",\n "data": }]', "is not valid JSON: Expecting value at line 2, column 10"),
            ('{"api_code": "5301"}', 'must hold a list of requests or {"requests": [...]}'),
            ('{"requests": [], "chunks": 3}', "unknown keys: chunks"),
            ('{"requests": "5301"}', "the requests must be a JSON list, not a string"),
            ('[{"api_code": "5301", "data": {}}, "5301"]', "request 2 is a string, not an object"),
            ('[{"api_code": "9999", "data": {}}]', "request 1: interface '9999' is not in the catalog"),
            ('[{"data": {}}]', "request 1: api_code is empty"),
            ('[{"api_code": 5301, "data": {}}]', "request 1: interface 5301 is not in the catalog"),
            ('[{"api_code": "5301", "data": "psn_no=1"}]', "request 1: data must be an object"),
        ],
        ids=[
            "empty",
            "empty-list",
            "bad-json",
            "not-a-list",
            "unknown-key",
            "requests-not-a-list",
            "item-not-an-object",
            "unknown-interface",
            "no-api-code",
            "api-code-a-number",
            "data-not-an-object",
        ],
    )
    def test_a_bad_json_file_is_refused_with_the_reason(self, tmp_path, content, message):
        path = tmp_path / "batch.json"
        path.write_text(content, encoding="utf-8")

        with pytest.raises(InputError) as refused:
            read_requests(path)

        assert message in str(refused.value)
        assert str(path) in str(refused.value)


class TestCsvFiles:
    def test_codes_and_id_numbers_stay_text_and_chinese_is_kept(self, tmp_path):
        path = write_csv(
            tmp_path / "people.csv",
            "api_code,org_code,request_id,data.mdtrt_cert_type,data.mdtrt_cert_no,data.psn_name\n"
            f"1101,{ORG},r-1,02,{ID_NUMBER},任娜兰\n"
            f"1101,{ORG},r-2,01,{LONG_ID},欧阳 娜娜\n",
        )

        requests = read_requests(path).requests

        assert requests == [
            {"api_code": "1101", "org_code": ORG, "request_id": "r-1",
             "data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": ID_NUMBER, "psn_name": "任娜兰"}},
            {"api_code": "1101", "org_code": ORG, "request_id": "r-2",
             "data": {"mdtrt_cert_type": "01", "mdtrt_cert_no": LONG_ID, "psn_name": "欧阳 娜娜"}},
        ]  # fmt: skip

    def test_cells_become_numbers_only_for_fields_the_catalog_types_as_numbers(self, tmp_path):
        path = write_csv(
            tmp_path / "mixed.csv",
            "api_code,org_code,data.query_date,data.page_num,data.page_size,data.psn_no,data.medfee_sumamt,"
            "data.psn_setlway,data.insutype\n"
            f"1312,{ORG},2026-12-01,1,0100,,,,\n"
            f"2207,{ORG},,,,00012345,128.50,01,310\n"
            f"2207,{ORG},,,,00012346,3000,01,310\n",
        )

        requests = read_requests(path).requests

        assert requests[0]["data"] == {"query_date": "2026-12-01", "page_num": 1, "page_size": 100}
        assert requests[1]["data"] == {
            "psn_no": "00012345", "medfee_sumamt": 128.5, "psn_setlway": "01", "insutype": "310"
        }  # fmt: skip
        assert requests[2]["data"]["medfee_sumamt"] == 3000
        assert isinstance(requests[0]["data"]["page_num"], int)

    def test_empty_cells_and_blank_rows_are_left_out(self, tmp_path):
        path = write_csv(
            tmp_path / "gaps.csv",
            "api_code,org_code,request_id,insuplc_admdvs,data.psn_no\n"
            "\n"
            "5301,,,,4401\n"
            ",,,,\n"
            f"5301,{ORG}, r-9 ,440106,  4402 \n",
        )

        requests = read_requests(path).requests

        assert requests == [
            {"api_code": "5301", "data": {"psn_no": "4401"}},
            {"api_code": "5301", "org_code": ORG, "request_id": "r-9", "insuplc_admdvs": "440106",
             "data": {"psn_no": "4402"}},
        ]  # fmt: skip

    def test_a_data_column_holds_the_input_as_json(self, tmp_path):
        data = {"psn_no": "0044", "medfee_sumamt": 12.5, "psn_name": "张三"}
        path = tmp_path / "json-column.csv"
        pd.DataFrame(
            [{"api_code": "2207", "org_code": ORG, "data": json.dumps(data, ensure_ascii=False)}]
        ).to_csv(path, index=False)

        assert read_requests(path).requests == [{"api_code": "2207", "org_code": ORG, "data": data}]

    @pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030"])
    def test_a_csv_in_utf8_with_or_without_bom_or_in_gb18030_reads_chinese_text(self, tmp_path, encoding):
        path = write_csv(
            tmp_path / "names.csv",
            f"api_code,org_code,data.mdtrt_cert_type,data.mdtrt_cert_no,data.psn_name\n1101,{ORG},02,{ID_NUMBER},邓怡\n",
            encoding,
        )

        assert read_requests(path).requests[0]["data"]["psn_name"] == "邓怡"
        assert "api_code" in read_requests(path).requests[0]

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            ("api_code,data.psn_no\n5301,1\n", "missing column(s) org_code in the header (row 1)"),
            ("org_code\nH1\n", "missing column(s) api_code, data (or data.<field> columns)"),
            ("api_code,org_code,psn_no\n5301,H1,1\n", "unknown column(s) psn_no"),
            (
                "api_code,org_code,data,data.psn_no\n5301,H1,{},1\n",
                "as a data column or as data.<field> columns",
            ),
            ("api_code,org_code,data.psn_no,data.psn_no\n5301,H1,1,2\n", "names data.psn_no more than once"),
            ("api_code,org_code,,data.psn_no\n5301,H1,x,1\n", "column C has values but no name"),
            ("api_code,org_code,data.psn_no\n5301,H1,1\n\n9999,H1,1\n", "row 4: interface '9999' is not in"),
            ("api_code,org_code,data.psn_no\n5301,H1,1\n,H1,2\n", "row 3: api_code is empty"),
            (
                'api_code,org_code,data\n5301,H1,"{""psn_no"": 1,}"\n',
                "row 2: the data cell is not valid JSON",
            ),
            (
                'api_code,org_code,data\n5301,H1,"[1]"\n',
                "row 2: the data cell must hold a JSON object, not a list",
            ),
            ("api_code,org_code,data\n5301,H1,\n", "row 2: the data cell is empty"),
            (
                "api_code,org_code,data.page_num\n1312,H1,ten\n",
                "row 2: data.page_num must be an integer, got text that is not one (3 characters)",
            ),
            (
                "api_code,org_code,data.page_num\n1312,H1,1.5\n",
                "row 2: data.page_num must be an integer, got 1.5",
            ),
            ("api_code,org_code,data.medfee_sumamt\n2207,H1,一百元\n", "data.medfee_sumamt must be a number"),
            ("api_code,org_code,data.psn_no\n5301,H1,1\n5301,H1,2,3\n", "not a well-formed CSV file"),
            ("", "is empty"),
            ("\n\n", "is empty"),
            ("api_code,org_code,data.psn_no\n", "holds no requests"),
        ],
        ids=[
            "no-org-code",
            "no-api-code-no-data",
            "unknown-column",
            "data-and-fields",
            "twice",
            "unnamed",
            "unknown-interface-after-a-blank-line",
            "empty-api-code",
            "bad-json",
            "json-not-an-object",
            "empty-data",
            "not-an-integer",
            "fraction-for-an-integer",
            "not-a-number",
            "ragged",
            "zero-bytes",
            "blank-lines",
            "header-only",
        ],
    )
    def test_a_bad_csv_is_refused_naming_the_column_or_row(self, tmp_path, content, message):
        path = write_csv(tmp_path / "bad.csv", content)

        with pytest.raises(InputError) as refused:
            read_requests(path)

        assert message in str(refused.value)
        assert str(path) in str(refused.value)

    def test_a_name_in_a_number_column_is_not_quoted_in_the_refusal(self, tmp_path):
        path = write_csv(tmp_path / "shifted.csv", "api_code,org_code,data.medfee_sumamt\n2207,H1,张三丰\n")

        with pytest.raises(InputError) as refused:
            read_requests(path)

        assert "row 2: data.medfee_sumamt must be a number" in str(refused.value)
        assert "张三丰" not in str(refused.value)

    def test_bytes_that_are_not_text_are_refused(self, tmp_path):
        path = tmp_path / "binary.csv"
        path.write_bytes(b"\xff\xfe\xff\x00\xff" * 20)

        with pytest.raises(InputError, match="neither UTF-8 nor GB18030"):
            read_requests(path)


class TestExcelFiles:
    def test_text_cells_stay_text_numbers_become_numbers_and_dates_take_the_catalog_format(self, tmp_path):
        first = {"api_code": "1101", "org_code": ORG, "data.mdtrt_cert_type": "02", "data.psn_name": "邓怡"}
        first |= {"data.mdtrt_cert_no": LONG_ID, "data.begntime": datetime(2026, 12, 3, 8, 30)}
        second = {
            "api_code": 1312,
            "org_code": ORG,
            "data.query_date": datetime(2026, 12, 1),
            "data.page_num": 2,
        }
        path = write_xlsx(tmp_path / "sheet.xlsx", [first, second])

        requests = read_requests(path).requests

        assert requests == [
            {"api_code": "1101", "org_code": ORG,
             "data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": LONG_ID, "psn_name": "邓怡",
                      "begntime": "2026-12-03 08:30:00"}},
            {"api_code": "1312", "org_code": ORG, "data": {"query_date": "2026-12-01", "page_num": 2}},
        ]  # fmt: skip

    def test_a_whole_number_typed_in_a_text_field_loses_no_digit_it_had(self, tmp_path):
        path = write_xlsx(
            tmp_path / "numbers.xlsx", [{"api_code": "5301", "org_code": ORG, "data.psn_no": 4401}]
        )

        assert read_requests(path).requests[0]["data"] == {"psn_no": "4401"}

    def test_an_id_number_typed_as_a_number_is_refused_with_its_row(self, tmp_path):
        path = write_xlsx(
            tmp_path / "rounded.xlsx",
            [
                {
                    "api_code": "1101",
                    "org_code": ORG,
                    "data.mdtrt_cert_type": "02",
                    "data.mdtrt_cert_no": "1",
                },
                {
                    "api_code": "1101",
                    "org_code": ORG,
                    "data.mdtrt_cert_type": "02",
                    "data.mdtrt_cert_no": 4.4e17,
                },
            ],
        )

        with pytest.raises(InputError) as refused:
            read_requests(path)

        assert "row 3: data.mdtrt_cert_no is a 18-digit number in the sheet" in str(refused.value)
        assert "format the column as Text" in str(refused.value)

    def test_an_unknown_interface_names_the_sheet_row(self, tmp_path):
        rows = [{"api_code": "5301", "org_code": ORG, "data.psn_no": "1"}] * 3
        path = write_xlsx(
            tmp_path / "codes.xlsx", [*rows, {"api_code": "53O1", "org_code": ORG, "data.psn_no": "1"}]
        )

        with pytest.raises(InputError, match=r"row 5: interface '53O1' is not in the catalog"):
            read_requests(path)

    def test_an_empty_workbook_is_refused(self, tmp_path):
        path = tmp_path / "empty.xlsx"
        pd.DataFrame().to_excel(path, index=False)

        with pytest.raises(InputError, match="is empty"):
            read_requests(path)

    def test_a_file_that_is_not_a_workbook_is_refused(self, tmp_path):
        path = write_csv(tmp_path / "fake.xlsx", "api_code,org_code\n")

        with pytest.raises(InputError, match=r"is not a readable \.xlsx workbook"):
            read_requests(path)


class TestAnyFile:
    @pytest.mark.parametrize(
        ("name", "message"),
        [
            ("missing.csv", "does not exist"),
            ("folder.csv", "is a folder, not a file"),
            ("batch.txt", "cannot read .txt; give a .json, .csv or .xlsx file"),
            ("batch.xls", "save the workbook as .xlsx"),
            ("batch", "cannot read files without an extension"),
        ],
    )
    def test_a_file_that_cannot_be_read_is_refused(self, tmp_path, name, message):
        (tmp_path / "folder.csv").mkdir()
        for existing in ("batch.txt", "batch.xls", "batch"):
            (tmp_path / existing).write_text("[]", encoding="utf-8")

        with pytest.raises(InputError, match=re.escape(message)):
            read_requests(tmp_path / name)


class TestExport:
    def test_a_csv_export_has_a_bom_and_keeps_chinese_text(self, tmp_path):
        path = tmp_path / "out.csv"

        assert write_export(EXPORTED, path) == 2

        assert path.read_bytes().startswith(b"\xef\xbb\xbf")
        back = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        assert list(back.columns) == list(EXPORT_COLUMNS)
        assert back["err_msg"].tolist() == ["", "身份证号码校验位错误"]
        assert json.loads(back["request"][0]) == {"psn_name": "任*", "mdtrt_cert_type": "02"}
        assert back["result"][1] == ""

    def test_an_excel_export_keeps_chinese_text_and_codes(self, tmp_path):
        path = tmp_path / "out.xlsx"

        write_export(EXPORTED, path)

        back = pd.read_excel(path, dtype=str, keep_default_na=False)
        assert back["err_msg"][1] == "身份证号码校验位错误"
        assert json.loads(back["result"][0]) == {"baseinfo": {"psn_name": "任*"}}
        assert back["org_code"].tolist() == [ORG, ORG]

    @pytest.mark.parametrize(
        ("name", "message"), [("out.txt", "give a .csv or .xlsx file"), ("nowhere/out.csv", "does not exist")]
    )
    def test_an_export_path_that_cannot_be_written_is_refused(self, tmp_path, name, message):
        with pytest.raises(InputError, match=message):
            write_export(EXPORTED, tmp_path / name)


class TestCommandLine:
    @pytest.fixture(autouse=True)
    def _no_connection_settings(self, monkeypatch):
        for name in ("MEDINS_URL", "MEDINS_USER", "MEDINS_PASSWORD"):
            monkeypatch.delenv(name, raising=False)

    @pytest.fixture
    def good_csv(self, tmp_path) -> Path:
        return write_csv(tmp_path / "good.csv", f"api_code,org_code,data.psn_no\n5301,{ORG},4401\n")

    def test_without_a_command_it_shows_the_usage_and_exits_2(self, capsys):
        with pytest.raises(SystemExit) as exited:
            main([])

        assert exited.value.code == 2
        assert "usage: medins" in capsys.readouterr().err

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["submit", "x.csv", "--chunk-size", "0"], "argument --chunk-size: 0 must be at least 1"),
            (["submit", "x.csv", "--chunk-size", "many"], "'many' is not a whole number"),
            (["submit", "x.csv", "--timeout", "-5"], "argument --timeout: -5 must be more than 0"),
            (["stats", "--from", "yesterday"], "'yesterday' is not an ISO 8601 date or time"),
            (["export", "b-1"], "the following arguments are required: --out"),
            (["status"], "the following arguments are required: ID"),
            (["resubmit", "x.csv"], "invalid choice: 'resubmit'"),
        ],
        ids=["chunk-size-0", "chunk-size-text", "timeout-negative", "bad-from", "no-out", "no-id", "unknown"],
    )
    def test_a_bad_argument_exits_2_naming_it(self, capsys, argv, message):
        with pytest.raises(SystemExit) as exited:
            main(argv)

        assert exited.value.code == 2
        assert message in capsys.readouterr().err

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (None, "does not exist"),
            ("api_code,org_code\n5301,H1\n", "missing column(s) data (or data.<field> columns)"),
            ("api_code,org_code,data\n5301,H1,{psn_no: 1}\n", "row 2: the data cell is not valid JSON"),
            ("", "is empty"),
        ],
        ids=["missing", "missing-column", "bad-json", "empty"],
    )
    def test_submit_of_a_bad_file_exits_2_with_the_reason_and_no_traceback(
        self, tmp_path, capsys, content, message
    ):
        path = tmp_path / "batch.csv"
        if content is not None:
            write_csv(path, content)

        code = main(["submit", str(path), "--url", "http://127.0.0.1:9"])

        err = capsys.readouterr().err
        assert code == 2
        assert err.startswith("medins: error: ") and message in err
        assert "Traceback" not in err

    def test_the_file_is_checked_before_the_connection_settings(self, tmp_path, capsys, good_csv):
        code = main(["submit", str(good_csv)])

        assert code == 2
        assert "no Airflow URL: pass --url or set MEDINS_URL" in capsys.readouterr().err

    def test_a_missing_password_is_asked_for_only_on_a_terminal(self, capsys, good_csv, monkeypatch):
        monkeypatch.setattr(sys, "stdin", open(__file__, encoding="utf-8"))  # noqa: SIM115 - not a terminal

        code = main(["submit", str(good_csv), "--url", "http://127.0.0.1:9", "--user", "admin"])

        sys.stdin.close()
        assert code == 2
        assert "no Airflow password: set MEDINS_PASSWORD" in capsys.readouterr().err

    def test_an_export_to_an_unknown_format_exits_2_before_connecting(self, capsys):
        code = main(["export", "b-1", "--out", "rows.json"])

        assert code == 2
        assert "give a .csv or .xlsx file" in capsys.readouterr().err

    def test_the_installed_command_reports_a_bad_file_without_a_traceback(self, tmp_path):
        medins = Path(sys.executable).with_name("medins")
        path = write_csv(tmp_path / "bad.csv", "api_code,org_code,data.psn_no\n5301,H1,1\n1234,H1,1\n")

        result = subprocess.run(
            [str(medins), "submit", str(path)], capture_output=True, text=True, timeout=60
        )

        assert result.returncode == 2, result.stderr
        assert f"medins: error: {path}, row 3: interface '1234' is not in the catalog" in result.stderr
        assert "Traceback" not in result.stderr


class TestClient:
    def test_it_imports_without_airflow(self):
        blocker = (
            "import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'airflow' or name.startswith('airflow.'):\n"
            "            raise ImportError('airflow is not installed here')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import medins_client, medins_client.cli\n"
            "assert not any(m == 'airflow' or m.startswith('airflow.') for m in sys.modules)\n"
        )

        result = subprocess.run(
            [sys.executable, "-c", blocker],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PYTHONPATH": str(ROOT / "include"), "PATH": ""},
        )

        assert result.returncode == 0, result.stderr

    def test_an_unreachable_airflow_is_reported_after_the_retries(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
        client = MedicalInsuranceClient(f"http://127.0.0.1:{port}", "admin", "secret", timeout=2)
        client.max_tries, client.backoff = 2, 0.01

        with pytest.raises(ServerUnavailable) as failed:
            client.get_task_result("r-1")

        assert f"POST http://127.0.0.1:{port}/auth/token failed" in str(failed.value)
        assert "Gave up after 2 tries: check that the Airflow api-server runs" in str(failed.value)

    @pytest.mark.parametrize("url", ["127.0.0.1:8180", "", "ftp://host"])
    def test_a_url_without_http_is_refused(self, url):
        with pytest.raises(InputError, match="must start with http:// or https://"):
            MedicalInsuranceClient(url, "admin", "secret")

    def test_generated_ids_fit_the_dags_patterns(self):
        assert REQUEST_ID.match(new_request_id())
        assert BATCH_ID.match(new_batch_id())
        assert new_request_id() != new_request_id()

    def test_a_batch_id_with_an_at_sign_becomes_a_run_id_with_a_tilde(self):
        assert run_id_for_batch("clinic@2026-12-03") == "clinic~2026-12-03"
        assert run_id_for_batch("night-1") == "night-1"

    @pytest.mark.parametrize(
        ("progress", "finished"),
        [
            ({"status": "RUNNING", "current": 5, "total": 10, "finished_at": None}, False),
            ({"status": "RUNNING", "current": 10, "total": 10, "finished_at": None}, False),
            ({"status": "DONE", "current": 10, "total": 10, "finished_at": None}, True),
            ({"status": "RUNNING", "current": 8, "total": 10, "finished_at": "2026-12-03T08:00:00"}, True),
            ({"status": "CANCELLED", "current": 8, "total": 10, "finished_at": None}, False),
            ({"status": "CANCELLED", "current": 10, "total": 10, "finished_at": None}, True),
        ],
        ids=[
            "running",
            "all-final-before-summary",
            "done",
            "summarized-with-open-rows",
            "cancelling",
            "cancelled",
        ],
    )
    def test_a_batch_has_finished_when_done_summarized_or_cancelled_and_final(self, progress, finished):
        assert batch_finished(progress) is finished


class TestProgressOutput:
    def test_the_bar_shows_share_counts_and_states_in_order(self):
        assert progress_line(PROGRESS, width=10) == (
            "[#####-----]  50.0%  150/300  SUCCESS 148 · FAILURE 2 · PROCESSING 10 · PENDING 140"
        )

    def test_off_a_terminal_the_bar_prints_a_line_per_change_at_most_every_few_seconds_and_the_last(self):
        stream = io.StringIO()
        bar = ProgressBar(stream, every=60)
        ready = {**PROGRESS, "current": 300, "percentage": 100.0, "counts": {"SUCCESS": 300}}

        bar.update(PROGRESS)
        bar.update(ready)
        bar.update({**ready, "status": "DONE"})
        bar.close()

        assert stream.getvalue().splitlines() == [progress_line(PROGRESS), progress_line(ready)]

    def test_the_summary_lists_each_state_on_a_line(self):
        text = summary("b-1", {**PROGRESS, "status": "DONE"})

        assert text.splitlines() == [
            "Batch b-1: DONE, 150 of 300 requests final",
            "  SUCCESS        148",
            "  FAILURE          2",
            "  PROCESSING      10",
            "  PENDING        140",
        ]


def test_dates_in_requests_are_written_as_the_catalog_says(tmp_path):
    path = write_xlsx(
        tmp_path / "visits.xlsx",
        [{"api_code": "5201", "org_code": ORG, "data.psn_no": "44010000000000000001",
          "data.begntime": date(2026, 11, 1), "data.endtime": datetime(2026, 11, 1, 23, 59, 59)}],
    )  # fmt: skip

    data = read_requests(path).requests[0]["data"]

    assert data == {"psn_no": "44010000000000000001", "begntime": "2026-11-01 00:00:00",
                    "endtime": "2026-11-01 23:59:59"}  # fmt: skip


@pytest.mark.parametrize("requests_", ["1101", {"api_code": "1101"}, 1101], ids=["str", "dict", "int"])
def test_a_batch_that_is_not_a_list_is_refused_before_anything_is_sent(requests_):
    from medins_client import InputError, MedicalInsuranceClient

    client = MedicalInsuranceClient("http://127.0.0.1:9", "nobody", "nothing")

    with pytest.raises(InputError, match="requests must be a list of request objects"):
        client.call_batch_async(requests_)
