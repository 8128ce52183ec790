"""The account inactivity monitor (TOTVS CRM crm00356) as pure functions: window, selection, transfer, recipients.

Definitions, in one place so the job, the e-mails and the tests agree:

- the **window** of a profile on a business date is `[business_date - period_days, business_date]`, both days
  included: a movement exactly `period_days` days ago still counts (the account becomes inactive the day after);
- days are the routine's **timezone**'s (routines.yaml), like the business date: CRM timestamps are stored as
  naive UTC, so the window runs from local midnight of its first day to local midnight after its last day,
  converted to UTC (`window_instants`); a call at 22:30 in São Paulo on the window's last day (01:30 UTC the
  next day) counts, one at 23:30 the day before its first day (02:30 UTC on that first day) does not. An
  account's creation day is also its local day (`local_dates`);
- an account is **monitored** when it is active and existed for the whole window (created on or before its
  first day): an account opened last week is new, not idle;
- an account is **inactive** when it is monitored and has no counted movement in the window;
- **transfer**: with one target owner every inactive account goes to that user; with several, round-robin over
  the list *in the order the profile lists them*, accounts taken by ascending id, so a run is reproducible.
  Accounts already owned by one of the targets stay where they are (re-running a date moves nothing more).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from crm.routines.reminders import to_instant


def window(business_date: dt.date, period_days: int) -> tuple[dt.date, dt.date]:
    """First and last day (both inclusive) in which a movement keeps an account active."""
    if period_days <= 0:
        raise ValueError("period_days must be positive")
    return business_date - dt.timedelta(days=int(period_days)), business_date


def window_instants(window_start: dt.date, business_date: dt.date, timezone: str) -> tuple[dt.datetime, dt.datetime]:
    """The window as naive-UTC instants [lo, hi): local midnight of its first day to local midnight after its last.

    Naive UTC because that is how the CRM stores timestamps; a midnight that does not exist (a DST change at
    00:00) is the first instant of that day.
    """
    tz = ZoneInfo(timezone)
    lo = to_instant(dt.datetime.combine(window_start, dt.time()), tz)
    hi = to_instant(dt.datetime.combine(business_date + dt.timedelta(days=1), dt.time()), tz)
    return lo.replace(tzinfo=None), hi.replace(tzinfo=None)


def local_dates(naive_utc: pd.Series, timezone: str) -> pd.Series:
    """The local calendar day (a midnight Timestamp) of each naive-UTC timestamp, in `timezone`."""
    stamps = pd.to_datetime(naive_utc)
    return stamps.dt.tz_localize("UTC").dt.tz_convert(timezone).dt.tz_localize(None).dt.normalize()


def inactive_accounts(accounts: pd.DataFrame, moved: Iterable[int], window_start: dt.date) -> pd.DataFrame:
    """Monitored accounts (active, created on or before the window's first day) without movement, by id.

    `accounts`: account_id, active, created_on (date) and whatever else the listing shows.
    """
    created = pd.to_datetime(accounts["created_on"]).dt.normalize()
    monitored = accounts["active"].astype(bool) & (created <= pd.Timestamp(window_start))
    idle = monitored & ~accounts["account_id"].isin(list(set(moved)))
    return accounts[idle].sort_values("account_id").reset_index(drop=True)


def assign_owners(inactive: pd.DataFrame, targets: Sequence[int]) -> pd.Series:
    """The new owner of each inactive account (index aligned), or NA where it stays with its owner.

    Round-robin over `targets` in their listed order, over the accounts that actually move (by ascending id).
    """
    new_owner = pd.Series(pd.NA, index=inactive.index, dtype="Int64")
    if not len(targets) or inactive.empty:
        return new_owner
    owners = inactive["owner_id"]
    moving = inactive.index[~owners.isin(list(targets))]
    order = inactive.loc[moving].sort_values("account_id").index
    picks = np.asarray(list(targets), dtype=np.int64)[np.arange(len(order)) % len(targets)]
    new_owner.loc[order] = picks
    return new_owner


def accounts_for(listing: pd.DataFrame, user_id: int, is_supervisor: bool) -> pd.DataFrame:
    """What one notified user is told about: every account for a supervisor, else the accounts they owned or get."""
    if is_supervisor:
        return listing
    mine = (listing["previous_owner_id"] == user_id) | (listing["owner_id"] == user_id)
    return listing[mine.fillna(False).astype(bool)]
