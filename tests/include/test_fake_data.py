"""The sandbox's made-up answers: deterministic, and valid for every person."""

from __future__ import annotations

from datetime import date

from sandbox import fake_data


def test_a_filing_that_begins_on_29_february_ends_on_28_february_five_years_on():
    # Filings begin on one of 2,000 days from 2019: find a person whose first one is 29 February 2020.
    psn_no = next(
        f"4401{n:016d}"
        for n in range(200_000)
        if fake_data.number("chronic_count", f"4401{n:016d}") % 3
        and fake_data.number("chronic_date", f"4401{n:016d}", 0) % 2000
        == (date(2020, 2, 29) - date(2019, 1, 1)).days
    )

    (first, *_) = fake_data.chronic_filings(psn_no)

    assert first["begndate"] == "2020-02-29"
    assert first["enddate"] == "2025-02-28"


def test_years_later_keeps_every_other_day_as_it_is():
    assert fake_data.years_later(date(2021, 3, 1), 5) == date(2026, 3, 1)
    assert fake_data.years_later(date(2020, 2, 29), 4) == date(2024, 2, 29)
