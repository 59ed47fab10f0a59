"""Planning a batch: every request checked, invalid ones rejected with the reason, chunks sized."""

from __future__ import annotations

import json

import pytest

from medins.batch import MAX_AUTO_CHUNK, MAX_CHUNKS, MIN_AUTO_CHUNK, auto_chunk_size, batch_id_for, plan_batch
from medins.catalog import load_catalog
from tests.conftest import INSTITUTIONS, ROOT

ORG = "H44010600001"
GOOD = {"api_code": "5301", "org_code": ORG, "data": {"psn_no": "44010000000000000001"}}


def plan(requests, **kwargs):
    return plan_batch(requests, batch_id="b1", catalog=load_catalog(), institutions=INSTITUTIONS, **kwargs)


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        ({**GOOD, "api_code": "9999"}, "unknown interface '9999'"),
        ({**GOOD, "api_code": "9001"}, "session call"),
        ({**GOOD, "api_code": None}, "api_code is required"),
        ({**GOOD, "org_code": "H99999999999"}, "is not configured"),
        ({**GOOD, "data": None}, "data is required"),
        ({**GOOD, "data": []}, "data must be an object"),
        ({**GOOD, "data": {}}, "missing required field psn_no"),
        ({**GOOD, "data": {"psn_no": 4401}}, "psn_no must be a string"),
        ({**GOOD, "data": {"psn_no": "1" * 31}}, "longer than 30"),
        ({**GOOD, "insuplc_admdvs": "4401"}, "insuplc_admdvs must be 6 digits"),
        ({**GOOD, "request_id": "has space"}, "request_id must be"),
        ({**GOOD, "extra": 1}, "unknown field(s) extra"),
        ("not an object", "must be an object"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_invalid_request_is_rejected_with_its_reason(request_, reason):
    result = plan([GOOD, request_])

    rejected = [row for row in result.rows if row.status == "REJECTED"]
    assert len(rejected) == 1 and reason in rejected[0].error
    assert rejected[0].chunk_no is None
    assert result.rows[0].status == "PENDING" and result.rows[0].chunk_no == 0


def test_duplicate_request_id_rejects_the_second_only():
    result = plan([{**GOOD, "request_id": "r1"}, {**GOOD, "request_id": "r1"}])

    assert [row.status for row in result.rows] == ["PENDING", "REJECTED"]
    assert result.rows[0].task_id == "r1"
    assert "duplicate request_id r1 (first at request #0)" in result.rows[1].error


def test_rows_without_request_id_are_named_after_the_batch():
    result = plan([GOOD, GOOD])

    assert [row.task_id for row in result.rows] == ["b1-000000", "b1-000001"]


def test_required_any_accepts_either_group():
    page = {
        "api_code": "1312",
        "org_code": ORG,
        "data": {"query_date": "2026-12-01", "page_num": 1, "page_size": 10},
    }
    code = {"api_code": "1312", "org_code": ORG, "data": {"query_date": "2026-12-01", "hilist_code": "X1"}}
    neither = {"api_code": "1312", "org_code": ORG, "data": {"query_date": "2026-12-01", "page_num": 1}}

    result = plan([page, code, neither])

    assert [row.status for row in result.rows] == ["PENDING", "PENDING", "REJECTED"]
    assert "needs hilist_code or page_num+page_size" in result.rows[2].error


def test_chunks_carry_descriptors_not_requests():
    result = plan([GOOD] * 25, chunk_size=10)

    assert [chunk["size"] for chunk in result.chunks] == [10, 10, 5]
    assert set(result.chunks[0]) == {"batch_id", "chunk_no", "size", "label"}
    assert result.chunks[2]["label"] == "#2 5 req: 5301×5"


def test_chunk_size_grows_so_a_batch_never_needs_more_than_the_map_limit():
    result = plan([GOOD] * (MAX_CHUNKS * 3 + 1), chunk_size=1)

    assert len(result.chunks) <= MAX_CHUNKS


@pytest.mark.parametrize(
    ("requests", "sizes"),
    [
        (1_000, [250] * 4),
        (10_000, [2_500] * 4),
        (20_000, [5_000] * 4),
        (50_000, [4_167] * 11 + [4_163]),
        (120, [MIN_AUTO_CHUNK, MIN_AUTO_CHUNK, 20]),
        (7, [7]),
    ],
    ids=["1k-one-wave", "10k-one-wave", "20k-largest-chunks", "50k-three-waves", "small", "tiny"],
)
def test_the_product_cuts_a_batch_into_waves_of_four_chunks_of_at_most_5000(requests, sizes):
    result = plan([GOOD] * requests)

    assert [chunk["size"] for chunk in result.chunks] == sizes
    assert max(sizes) <= MAX_AUTO_CHUNK


def test_a_chunk_size_chosen_by_the_caller_wins_over_the_products():
    assert [chunk["size"] for chunk in plan([GOOD] * 1_000, chunk_size=400).chunks] == [400, 400, 200]
    assert auto_chunk_size(1_000) == 250


def test_rejection_reasons_mask_personal_data():
    cert = "440106199001011234"
    result = plan([{**GOOD, "api_code": "1101", "data": {"mdtrt_cert_type": "99", "mdtrt_cert_no": cert}}])

    assert cert not in result.rows[0].error


def test_the_demo_batch_has_its_eight_invalid_requests():
    batch = json.loads((ROOT / "include/samples/demo_batch.json").read_text(encoding="utf-8"))

    result = plan(batch)

    assert result.rejected == 8
    assert len({row.api_code for row in result.rows if row.status == "PENDING"}) >= 5


@pytest.mark.parametrize(
    ("run_id", "requested", "expected"),
    [
        ("manual__2026-12-03T08:00:00+00:00", None, "manual__2026-12-03T08:00:00+00:00"),
        ("x", "night-1", "night-1"),
    ],
)
def test_batch_id_is_the_callers_or_the_run_id(run_id, requested, expected):
    assert batch_id_for(run_id, requested) == expected


def test_overlong_run_id_is_hashed_to_fit_the_column():
    assert len(batch_id_for("r" * 200)) <= 64


def test_batch_id_with_spaces_is_refused():
    with pytest.raises(ValueError, match="batch_id"):
        batch_id_for("x", "has space")
