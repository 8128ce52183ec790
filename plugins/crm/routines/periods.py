"""Calendar-month arithmetic shared by the account routines (status, class transition).

One definition of "within the last N months", so the status and the class rules agree:

- `months_before(day, N)` is `day - relativedelta(months=N)`: the same day number N calendar months
  earlier, clamped to the end of a shorter month (31 March - 1 month = 28 February, or 29 in a leap
  year; 29 February 2028 - 12 months = 28 February 2027).
- a date d is **within the last N months of day** when `months_before(day, N) <= d <= day`: the
  window's first day counts (bought on 22 October is within 1 month of 22 November).
- **whole months from start to day** is the largest M with `start <= months_before(day, M)`: a
  first purchase on 31 January is 0 whole months old on 28 February (28 February - 1 month =
  28 January, before the 31st) and 1 month old on 1 March (1 March - 1 month = 1 February).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from dateutil.relativedelta import relativedelta


def months_before(day: dt.date, months: int) -> dt.date:
    """`day` minus `months` calendar months, clamped to the last day of a shorter month."""
    return day - relativedelta(months=int(months))


def months_before_many(day: dt.date, months: np.ndarray) -> np.ndarray:
    """`months_before` for an array of month counts (few distinct values): datetime64[D] per element."""
    months = np.asarray(months, dtype=np.int64)
    if months.size == 0:
        return np.array([], dtype="datetime64[D]")
    distinct, inverse = np.unique(months, return_inverse=True)
    table = np.array([months_before(day, int(m)) for m in distinct], dtype="datetime64[D]")
    return table[inverse.reshape(months.shape)]


def whole_months_between(start: np.ndarray, day: dt.date) -> np.ndarray:
    """Largest M with `start <= months_before(day, M)`, per element; NaN where start is NaT or after `day`.

    Vectorised form of counting with relativedelta: M0 = the difference in (year, month); the date
    M0 months before `day` lies in start's month, on day min(day.day, days in that month); if start
    falls after it, one month less.
    """
    start = np.asarray(start, dtype="datetime64[D]")
    out = np.full(start.shape, np.nan)
    ok = ~np.isnat(start)
    s = start[ok]
    month = s.astype("datetime64[M]")
    ym = month.astype(np.int64)  # months since 1970-01
    dom = (s - month.astype("datetime64[D]")).astype(np.int64) + 1
    days_in_month = ((month + 1).astype("datetime64[D]") - month.astype("datetime64[D]")).astype(np.int64)
    m0 = (day.year - 1970) * 12 + (day.month - 1) - ym
    m = m0 - (dom > np.minimum(day.day, days_in_month)).astype(np.int64)
    out[ok] = np.where(m >= 0, m, np.nan)
    return out
