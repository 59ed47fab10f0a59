"""The nightly jobs: expanding the jobs file for a day, and reading the settlement summary."""

from __future__ import annotations

import json
from datetime import date, datetime

import pendulum
import pytest

from medins.nightly import (
    DEFAULT_JOBS_FILE,
    Night,
    NightlyJobError,
    expand_jobs,
    load_jobs,
    night_before,
)

NIGHT = Night(date(2026, 12, 2))
SUMMARY_HEADER = "机构编码,险种类型,医疗费总额,基金支付总额,个人账户支付,结算笔数\n"
RECONCILE = {
    "name": "reconcile",
    "api_code": "3201",
    "institutions": {"H1": {"setl_optins": "440106"}},
    "input": {"insutype": "310", "clr_type": "11", "stmt_begndate": "{ds}", "stmt_enddate": "{ds}"},
    "totals": {
        "file": "summary_{ds_nodash}.csv",
        "match": {"机构编码": "{org_code}", "险种类型": "310"},
        "sum": {
            "medfee_sumamt": "医疗费总额",
            "fund_pay_sumamt": "基金支付总额",
            "acct_pay": "个人账户支付",
            "fixmedins_setl_cnt": "结算笔数",
        },
    },
}


def write_jobs(tmp_path, *jobs):
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"jobs": list(jobs)}, ensure_ascii=False), encoding="utf-8")
    return path


def expand(tmp_path, *jobs):
    return expand_jobs(load_jobs(write_jobs(tmp_path, *jobs)), NIGHT, base_dir=tmp_path).requests


class TestNight:
    def test_a_run_at_2am_china_time_works_on_the_day_before(self):
        assert night_before(pendulum.datetime(2026, 12, 3, 2, tz="Asia/Shanghai")).day == date(2026, 12, 2)

    def test_the_day_is_taken_in_china_time_not_utc(self):
        # 18:00 UTC on 2 December is 02:00 on 3 December in China.
        assert night_before(pendulum.datetime(2026, 12, 2, 18, tz="UTC")).day == date(2026, 12, 2)

    def test_a_naive_moment_is_refused(self):
        with pytest.raises(ValueError, match="timezone-aware"):
            night_before(datetime(2026, 12, 3, 2))

    def test_placeholders_are_the_day_and_its_bounds_in_platform_formats(self):
        values = NIGHT.placeholders("H1")

        assert values == {
            "ds": "2026-12-02",
            "ds_nodash": "20261202",
            "data_interval_start": "2026-12-02 00:00:00",
            "data_interval_end": "2026-12-03 00:00:00",
            "org_code": "H1",
        }
        assert NIGHT.batch_id == "nightly-2026-12-02"


class TestExpandJobs:
    def test_one_request_per_institution_with_placeholders_filled_and_ids_from_job_day_institution(
        self, tmp_path
    ):
        job = {"name": "catalog-sync", "api_code": "1312", "institutions": ["H1", "H2"],
               "input": {"query_date": "{ds}", "page_num": 1,
                         "note": "since {data_interval_start}"}}  # fmt: skip

        requests = expand(tmp_path, job)

        assert requests == [
            {"request_id": f"catalog-sync-2026-12-02-{org}", "api_code": "1312", "org_code": org,
             "data": {"query_date": "2026-12-02", "page_num": 1, "note": "since 2026-12-02 00:00:00"}}
            for org in ("H1", "H2")
        ]  # fmt: skip

    def test_a_list_of_inputs_gives_one_indexed_request_each(self, tmp_path):
        job = {"name": "pages", "api_code": "1312", "institutions": ["H1"],
               "input": [{"query_date": "{ds}", "page_num": n} for n in (1, 2)]}  # fmt: skip

        ids = [request["request_id"] for request in expand(tmp_path, job)]

        assert ids == ["pages-2026-12-02-H1-0", "pages-2026-12-02-H1-1"]

    def test_reconciliation_carries_the_summed_totals_of_the_institutions_rows(self, tmp_path):
        (tmp_path / "summary_20261202.csv").write_text(
            SUMMARY_HEADER
            + "H1,310,100.10,70.07,10.00,3\nH1,310,50.25,35.18,5.00,2\nH1,390,999,999,0,9\nH2,310,1,1,0,1\n",
            encoding="utf-8",
        )

        (request,) = expand(tmp_path, RECONCILE)

        assert request["data"] == {
            "insutype": "310", "clr_type": "11", "stmt_begndate": "2026-12-02", "stmt_enddate": "2026-12-02",
            "setl_optins": "440106",
            "medfee_sumamt": 150.35, "fund_pay_sumamt": 105.25, "acct_pay": 15.0, "fixmedins_setl_cnt": 5,
        }  # fmt: skip

    def test_an_institution_without_rows_reconciles_zero_totals(self, tmp_path):
        (tmp_path / "summary_20261202.csv").write_text(SUMMARY_HEADER + "H2,310,1,1,0,1\n", encoding="utf-8")

        (request,) = expand(tmp_path, RECONCILE)

        assert request["data"]["medfee_sumamt"] == 0 and request["data"]["fixmedins_setl_cnt"] == 0

    def test_a_summary_missing_a_column_is_refused_naming_the_file_and_column(self, tmp_path):
        (tmp_path / "summary_20261202.csv").write_text(
            "机构编码,险种类型,医疗费总额,基金支付总额,结算笔数\nH1,310,1,1,1\n", encoding="utf-8"
        )

        with pytest.raises(NightlyJobError, match=r"summary_20261202\.csv has no column 个人账户支付"):
            expand(tmp_path, RECONCILE)

    def test_a_value_that_is_not_a_number_is_refused_naming_file_column_and_line(self, tmp_path):
        (tmp_path / "summary_20261202.csv").write_text(
            SUMMARY_HEADER + "H1,310,100,70,10,3\nH1,310,12O.5,70,10,3\n", encoding="utf-8"
        )

        with pytest.raises(
            NightlyJobError, match=r"summary_20261202\.csv, column 医疗费总额, line 3: '12O\.5'"
        ):
            expand(tmp_path, RECONCILE)

    def test_a_missing_summary_is_refused_naming_the_file(self, tmp_path):
        with pytest.raises(NightlyJobError, match=r"summary_20261202\.csv does not exist"):
            expand(tmp_path, RECONCILE)

    def test_an_unknown_placeholder_is_refused_naming_the_job_and_the_placeholders(self, tmp_path):
        job = {"name": "bad", "api_code": "1312", "institutions": ["H1"], "input": {"query_date": "{day}"}}

        with pytest.raises(NightlyJobError, match=r"job bad, input: template '\{day\}'.*\{ds\}"):
            expand(tmp_path, job)


class TestLoadJobs:
    @pytest.mark.parametrize(
        ("job", "reason"),
        [
            ({"name": "a b", "api_code": "1312", "institutions": ["H1"], "input": {}}, "name must be"),
            ({"name": "a", "institutions": ["H1"], "input": {}}, "api_code is required"),
            ({"name": "a", "api_code": "1312", "institutions": [], "input": {}}, "institutions must be"),
            ({"name": "a", "api_code": "1312", "institutions": ["H1"], "input": "x"}, "input must be"),
            (
                {"name": "a", "api_code": "1312", "institutions": ["H1"], "input": {}, "extra": 1},
                "unknown field",
            ),
            ({**RECONCILE, "totals": {"file": "x.csv"}}, "totals.sum must be"),
        ],
        ids=["bad-name", "no-api-code", "no-institutions", "input-not-object", "unknown-field", "no-sums"],
    )
    def test_a_bad_job_is_refused_naming_the_file_and_the_reason(self, tmp_path, job, reason):
        with pytest.raises(NightlyJobError, match=rf"jobs\.json, job .*{reason}"):
            load_jobs(write_jobs(tmp_path, job))

    def test_repeated_job_names_are_refused(self, tmp_path):
        job = {"name": "a", "api_code": "1312", "institutions": ["H1"], "input": {}}

        with pytest.raises(NightlyJobError, match="repeated: a"):
            load_jobs(write_jobs(tmp_path, job, job))

    def test_a_missing_jobs_file_names_the_variable_that_points_elsewhere(self, tmp_path):
        with pytest.raises(NightlyJobError, match=r"nope\.json does not exist.*medins_nightly_jobs"):
            load_jobs(tmp_path / "nope.json")

    def test_the_sample_jobs_file_expands_for_its_sample_summary_into_valid_requests(self):
        from medins.batch import plan_batch
        from medins.catalog import load_catalog

        requests = expand_jobs(
            load_jobs(DEFAULT_JOBS_FILE), NIGHT, base_dir=DEFAULT_JOBS_FILE.parent
        ).requests
        plan = plan_batch(
            requests,
            batch_id=NIGHT.batch_id,
            catalog=load_catalog(),
            institutions={"H44010600001": {}, "H44010400002": {}},
        )

        assert plan.rejected == 0, [row.error for row in plan.rows]
        reconcile = {r["org_code"]: r["data"] for r in requests if r["api_code"] == "3201"}
        assert reconcile["H44010600001"]["medfee_sumamt"] == 19270.40
        assert reconcile["H44010600001"]["fixmedins_setl_cnt"] == 78
        assert reconcile["H44010400002"]["acct_pay"] == 931.08
