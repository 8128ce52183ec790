"""Calendar-month arithmetic (crm.routines.periods): month ends, leap years, the window's first day.

Every expectation is worked out by hand on a calendar (no dateutil in the assertions).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from crm.routines import periods

D = dt.date


@pytest.mark.parametrize(
    ("day", "months", "expected"),
    [
        (D(2026, 11, 22), 1, D(2026, 10, 22)),  # same day number, one month back
        (D(2026, 11, 22), 12, D(2025, 11, 22)),
        (D(2026, 3, 31), 1, D(2026, 2, 28)),  # 31 March - 1 month: clamped to February's last day
        (D(2028, 3, 31), 1, D(2028, 2, 29)),  # ... which is the 29th in a leap year
        (D(2026, 2, 28), 1, D(2026, 1, 28)),  # not "the last day of January": the 28th
        (D(2028, 2, 29), 12, D(2027, 2, 28)),  # 29 Feb of a leap year, a year back: 28 Feb
        (D(2028, 2, 29), 48, D(2024, 2, 29)),  # four years back: a leap year again
        (D(2026, 5, 31), 3, D(2026, 2, 28)),
        (D(2026, 1, 15), 1, D(2025, 12, 15)),  # across the year
        (D(2026, 11, 22), 0, D(2026, 11, 22)),
    ],
)
def test_should_step_back_calendar_months_clamping_to_the_end_of_a_shorter_month(day, months, expected):
    assert periods.months_before(day, months) == expected


def test_should_step_back_many_month_counts_at_once_like_one_at_a_time():
    day = D(2028, 3, 31)
    got = periods.months_before_many(day, np.array([1, 13, 1, 0, 25]))
    assert got.tolist() == [D(2028, 2, 29), D(2027, 2, 28), D(2028, 2, 29), D(2028, 3, 31), D(2026, 2, 28)]
    assert periods.months_before_many(day, np.array([], dtype=np.int64)).size == 0


def _months(start: str | None, day: dt.date) -> float:
    value = np.array([start or "NaT"], dtype="datetime64[D]")
    return float(periods.whole_months_between(value, day)[0])


@pytest.mark.parametrize(
    ("start", "day", "expected"),
    [
        ("2026-01-31", D(2026, 2, 28), 0),  # 28 Feb - 1 month = 28 Jan, before the 31st: not a whole month yet
        ("2026-01-31", D(2026, 3, 1), 1),  # 1 Mar - 1 month = 1 Feb, on or after 31 Jan
        ("2028-01-31", D(2028, 2, 29), 0),  # leap year: 29 Feb - 1 month = 29 Jan, still before the 31st
        ("2028-01-29", D(2028, 2, 29), 1),  # 29 Feb - 1 month = 29 Jan: exactly one month
        ("2028-01-30", D(2028, 2, 29), 0),
        ("2024-02-29", D(2025, 2, 28), 11),  # 28 Feb 2025 - 12 months = 28 Feb 2024, a day before the start
        ("2024-02-29", D(2025, 3, 1), 12),  # 1 Mar 2025 - 12 months = 1 Mar 2024, after 29 Feb
        ("2024-02-29", D(2028, 2, 29), 48),  # leap day to leap day
        ("2026-11-22", D(2026, 11, 22), 0),  # first purchase on the business date
        ("2021-11-22", D(2026, 11, 22), 60),  # five years to the day
        ("2021-11-23", D(2026, 11, 22), 59),  # one day short of five years
    ],
)
def test_should_count_whole_months_from_the_first_purchase_to_the_business_date(start, day, expected):
    assert _months(start, day) == expected


def test_should_have_no_month_count_without_a_first_purchase_or_for_one_after_the_date():
    assert np.isnan(_months(None, D(2026, 11, 22)))
    assert np.isnan(_months("2026-11-23", D(2026, 11, 22)))


def test_should_agree_with_the_window_definition_for_every_day_of_a_leap_year():
    """`whole_months_between` is the largest M with start <= months_before(day, M): checked day by day."""
    day = D(2028, 2, 29)
    starts = np.arange(np.datetime64("2026-12-01"), np.datetime64("2028-03-01"), dtype="datetime64[D]")
    got = periods.whole_months_between(starts, day)
    for start, m in zip(starts.astype(object), got, strict=True):
        assert periods.months_before(day, int(m)) >= start > periods.months_before(day, int(m) + 1), start
