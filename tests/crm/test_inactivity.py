"""Inactivity monitor: window boundary, monitored accounts, round-robin transfer, who sees what, profiles."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
import sqlalchemy as sa

from crm.db.crm_schema import account, activity, company, inactivity_profile, metadata, notification, user
from crm.jobs import account_inactivity as job
from crm.routines import inactivity

BD = dt.date(2026, 11, 22)


def test_should_count_a_movement_exactly_period_days_ago_and_not_one_day_earlier():
    start, end = inactivity.window(BD, 90)
    assert (start, end) == (dt.date(2026, 8, 24), BD)
    with pytest.raises(ValueError):
        inactivity.window(BD, 0)


@pytest.mark.parametrize(
    ("business_date", "days", "first_day"),
    [
        (dt.date(2028, 3, 1), 30, dt.date(2028, 1, 31)),  # leap year: February has 29 days
        (dt.date(2027, 3, 1), 30, dt.date(2027, 1, 30)),
        (dt.date(2028, 3, 1), 1, dt.date(2028, 2, 29)),
        (dt.date(2029, 3, 1), 365, dt.date(2028, 3, 1)),  # no 29 Feb in between: 365 days is a year
        (dt.date(2029, 3, 1), 366, dt.date(2028, 2, 29)),  # ... one more lands on the leap day
        (dt.date(2029, 1, 1), 366, dt.date(2028, 1, 1)),  # over 29 Feb 2028: 366 days is exactly a year
    ],
)
def test_should_count_the_period_in_calendar_days_across_leap_years(business_date, days, first_day):
    assert inactivity.window(business_date, days) == (first_day, business_date)


@pytest.mark.parametrize(
    ("zone", "first_day", "last_day", "expected"),
    [
        # São Paulo, UTC-3 all year: local midnights are 03:00 UTC
        ("America/Sao_Paulo", dt.date(2026, 8, 24), BD, (dt.datetime(2026, 8, 24, 3), dt.datetime(2026, 11, 23, 3))),
        # Warsaw: the window opens on the day summer time starts (midnight still CET, UTC+1) and ends on the
        # day it ends (the next midnight is CET again)
        ("Europe/Warsaw", dt.date(2026, 3, 29), dt.date(2026, 10, 25),
         (dt.datetime(2026, 3, 28, 23), dt.datetime(2026, 10, 25, 23))),
        # Santiago skips 00:00 on 6 Sep 2026 (-04 -> -03 at midnight): the day starts at 01:00 -03 = 04:00 UTC
        ("America/Santiago", dt.date(2026, 9, 6), dt.date(2026, 9, 6),
         (dt.datetime(2026, 9, 6, 4), dt.datetime(2026, 9, 7, 3))),
        ("UTC", dt.date(2026, 8, 24), BD, (dt.datetime(2026, 8, 24), dt.datetime(2026, 11, 23))),
    ],
)  # fmt: skip
def test_should_bound_the_window_by_local_midnights_in_utc(zone, first_day, last_day, expected):
    assert inactivity.window_instants(first_day, last_day, zone) == expected


def test_should_date_naive_utc_timestamps_in_the_local_day():
    stamps = pd.Series(["2026-08-24 02:59:59", "2026-08-24 03:00:00", "2026-11-23 01:30:00"])
    got = inactivity.local_dates(stamps, "America/Sao_Paulo")
    assert [d.date() for d in got] == [dt.date(2026, 8, 23), dt.date(2026, 8, 24), dt.date(2026, 11, 22)]


def test_should_monitor_only_active_accounts_that_existed_for_the_whole_window():
    accounts = pd.DataFrame({
        "account_id": [4, 1, 2, 3],
        "active": [True, True, False, True],
        "created_on": ["2020-01-01", "2026-08-24", "2020-01-01", "2026-08-25"],
        "owner_id": [7, 7, 7, 7],
    })  # fmt: skip
    idle = inactivity.inactive_accounts(accounts, moved=[4], window_start=dt.date(2026, 8, 24))
    assert idle["account_id"].tolist() == [1]


def test_should_round_robin_in_the_listed_order_over_accounts_by_id_skipping_those_already_with_a_target():
    idle = pd.DataFrame({"account_id": [30, 10, 20, 40, 50], "owner_id": pd.array([1, 2, 9, None, 3], dtype="Int64")})
    got = inactivity.assign_owners(idle, [9, 5])
    # by id: 10 -> 9, 20 stays (already with target 9), 30 -> 5, 40 -> 9, 50 -> 5
    assert dict(zip(idle["account_id"], got.fillna(0).tolist(), strict=True)) == {10: 9, 20: 0, 30: 5, 40: 9, 50: 5}
    one = inactivity.assign_owners(idle, [5])
    assert one.tolist() == [5, 5, 5, 5, 5]


def test_should_give_supervisors_every_account_and_operators_what_they_owned_or_received():
    listing = pd.DataFrame({
        "account_id": [1, 2, 3],
        "previous_owner_id": pd.array([7, 8, 7], dtype="Int64"),
        "owner_id": pd.array([9, 7, None], dtype="Int64"),
    })  # fmt: skip
    assert inactivity.accounts_for(listing, 99, True)["account_id"].tolist() == [1, 2, 3]
    assert inactivity.accounts_for(listing, 7, False)["account_id"].tolist() == [1, 2, 3]
    assert inactivity.accounts_for(listing, 9, False)["account_id"].tolist() == [1]
    assert inactivity.accounts_for(listing, 8, False)["account_id"].tolist() == [2]


def _crm(engine: sa.Engine, *, transfer_to: list[int], notify: list[int]) -> None:
    metadata.create_all(engine)
    old = dt.datetime(2024, 1, 1)
    with engine.begin() as conn:
        conn.execute(sa.insert(company), [{"id": 1, "code": "BR01", "name": "Aurora"}])
        users = [
            (1, "sup", "pt_BR", True),
            (2, "op", "pl_PL", False),
            (3, "t1", "pt_BR", False),
            (4, "t2", "pt_BR", False),
        ]
        conn.execute(sa.insert(user), [
            {"id": i, "login": login, "name": login.title(), "email": f"{login}@example.com", "locale": loc,
             "is_supervisor": sup} for i, login, loc, sup in users
        ])  # fmt: skip
        conn.execute(sa.insert(account), [
            {"id": i, "company_id": 1, "person_type": "PF", "name": f"A{i}", "owner_id": 2, "created_at": old,
             "updated_at": old} for i in range(1, 6)
        ])  # fmt: skip
        conn.execute(sa.insert(activity), [
            {"account_id": 1, "kind": "call", "occurred_at": dt.datetime(2026, 8, 24, 23, 59)},  # first day: counts
            {"account_id": 2, "kind": "call", "occurred_at": dt.datetime(2026, 8, 23, 12, 0)},  # one day too early
            {"account_id": 3, "kind": "call", "occurred_at": dt.datetime(2026, 11, 23, 0, 0)},  # after the date
        ])  # fmt: skip
        conn.execute(sa.insert(inactivity_profile), [
            {"id": 1, "code": "P90", "name": "90", "period_days": 90, "count_purchases": False, "transfer": True,
             "transfer_to_user_ids": json.dumps(transfer_to), "notify_user_ids": json.dumps(notify),
             "email_template": "account_inactivity_transfer"},
        ])  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def crm(request, tmp_path):
    if request.param == "sqlite":
        from crm.db import engine_from_url

        engine = engine_from_url(f"sqlite:///{tmp_path / 'crm.db'}")
        yield engine
        engine.dispose()
    else:
        yield request.getfixturevalue("pg_engine")


def test_should_transfer_with_history_and_plan_one_email_per_user_in_one_transaction(crm):
    _crm(crm, transfer_to=[3, 4], notify=[1, 2, 3])
    plan = job.plan(crm, None, BD, "P90", sender="crm@example.com", timezone="UTC")
    assert plan.listing["account_id"].tolist() == [2, 3, 4, 5]  # 1 moved on the window's first day
    assert plan.changes["new_value"].tolist() == [3, 4, 3, 4]
    states = {it.recipient: (it.state, it.reason) for it in plan.items}
    assert states == {"sup@example.com": ("pending", None), "op@example.com": ("pending", None),
                      "t1@example.com": ("pending", None)}  # fmt: skip
    op = next(it for it in plan.items if it.recipient == "op@example.com")
    assert "przeniesiono" in op.payload["subject"]  # the operator's language
    assert len(job.attachments_of(type("Row", (), {"payload": op.payload})())) == 1

    job.apply(crm, plan, routine=job.DAG_ID, run_id="r1", changed_at=dt.datetime(2026, 11, 22, 9))
    with crm.connect() as conn:
        owners = dict(conn.execute(sa.select(account.c.id, account.c.owner_id)).all())
        hist = conn.execute(
            sa.text("select account_id, old_value, new_value from crm_account_history order by account_id")
        ).all()
        ledger_rows = conn.execute(sa.select(notification.c.recipient, notification.c.business_key)).all()
    assert owners == {1: 2, 2: 3, 3: 4, 4: 3, 5: 4}
    assert [tuple(h) for h in hist] == [(2, "2", "3"), (3, "2", "4"), (4, "2", "3"), (5, "2", "4")]
    assert {r[1] for r in ledger_rows} == {"inactivity P90 / 2026-11-22"} and len(ledger_rows) == 3

    again = job.plan(crm, None, BD, "P90", sender="crm@example.com", timezone="UTC")  # a re-run of the date
    assert again.changes.empty and again.listing["transferred"].all()
    assert again.listing["previous_owner_id"].tolist() == [2, 2, 2, 2]
    result = job.apply(crm, again, routine=job.DAG_ID, run_id="r2", changed_at=dt.datetime(2026, 11, 22, 10))
    assert result["owners_changed"] == 0


def test_should_refuse_unknown_inactive_or_misconfigured_profiles(crm):
    _crm(crm, transfer_to=[3, 99], notify=[1])
    with pytest.raises(job.ProfileNotFound, match="'NOPE' does not exist; active profiles: P90"):
        job.load_profile(crm, "NOPE")
    with pytest.raises(job.ProfileInvalid, match=r"\[99\] are not active"):
        job.load_profile(crm, "P90")
    with crm.begin() as conn:
        conn.execute(sa.update(inactivity_profile).values(active=False))
    with pytest.raises(job.ProfileNotFound, match="is inactive"):
        job.load_profile(crm, "P90")


def test_should_skip_users_without_email_or_without_accounts(crm):
    _crm(crm, transfer_to=[3], notify=[1, 4, 77])
    with crm.begin() as conn:
        conn.execute(sa.update(user).where(user.c.id == 1).values(email=None))
    plan = job.plan(crm, None, BD, "P90", sender="crm@example.com", timezone="UTC")
    assert sorted((it.recipient, it.state, it.reason) for it in plan.items) == [
        ("t2@example.com", "skipped", "no accounts concerned"),
        ("user 1", "skipped", "no e-mail address"),
        ("user 77", "skipped", "unknown user"),
    ]


def test_should_count_movement_by_the_local_day_of_the_routine_timezone(crm):
    """São Paulo is UTC-3: the 90-day window of 22 Nov is 24 Aug 03:00 UTC .. 23 Nov 03:00 UTC (exclusive)."""
    _crm(crm, transfer_to=[3], notify=[1])
    with crm.begin() as conn:
        conn.execute(sa.delete(activity))
        conn.execute(sa.insert(account), [
            {"id": 6, "company_id": 1, "person_type": "PF", "name": "A6", "owner_id": 2,  # 23 Aug 23:00 local
             "created_at": dt.datetime(2026, 8, 24, 2, 0), "updated_at": dt.datetime(2026, 8, 24, 2, 0)},
            {"id": 7, "company_id": 1, "person_type": "PF", "name": "A7", "owner_id": 2,  # 24 Aug 22:00 local
             "created_at": dt.datetime(2026, 8, 25, 1, 0), "updated_at": dt.datetime(2026, 8, 25, 1, 0)},
        ])  # fmt: skip
        conn.execute(sa.insert(activity), [
            {"account_id": 1, "kind": "call", "occurred_at": dt.datetime(2026, 11, 23, 1, 30)},  # 22 Nov 22:30: in
            {"account_id": 2, "kind": "call", "occurred_at": dt.datetime(2026, 11, 23, 3, 0)},  # 23 Nov 00:00: out
            {"account_id": 3, "kind": "call", "occurred_at": dt.datetime(2026, 8, 24, 2, 30)},  # 23 Aug 23:30: out
            {"account_id": 4, "kind": "call", "occurred_at": dt.datetime(2026, 8, 24, 3, 0)},  # 24 Aug 00:00: in
            {"account_id": 5, "kind": "call", "occurred_at": dt.datetime(2026, 11, 23, 2, 59, 59)},  # 23:59:59: in
        ])  # fmt: skip
    plan = job.plan(crm, None, BD, "P90", sender="crm@example.com", timezone="America/Sao_Paulo")
    # 6 was created on 23 Aug local (monitored); 7 on 24 Aug local, the window's first day (monitored too)
    assert plan.listing["account_id"].tolist() == [2, 3, 6, 7]
    assert plan.monitored == 7
    utc = job.plan(crm, None, BD, "P90", sender="crm@example.com", timezone="UTC")
    # the same rows read in UTC days: 1 and 5 moved on 23 Nov, 3 on 24 Aug; 7 was created on 25 Aug
    assert utc.listing["account_id"].tolist() == [1, 2, 5, 6] and utc.monitored == 6
