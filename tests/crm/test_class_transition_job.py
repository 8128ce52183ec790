"""crm_class_transition over real databases: a backfill uses the measures of its own date, not the profile's.

A hand-made CRM and ERP (SQLite): the purchase profile is computed for 22 Nov, then the routine is
planned for 30 Sep (a backfill). Expected classes and measure values worked out by hand.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from crm.db import engine_from_url
from crm.db.crm_schema import account, account_class, account_profile, class_transition_rule, company
from crm.db.crm_schema import metadata as crm_metadata
from crm.db.erp_schema import invoice
from crm.db.erp_schema import metadata as erp_metadata
from crm.jobs import class_transition as job
from crm.jobs import purchase_profile
from crm.routines import class_transition as ct

LATER = dt.date(2026, 11, 22)  # the profile's date
EARLIER = dt.date(2026, 9, 30)  # the backfill
BRONZE, SILVER, GOLD, DIAMOND = 1, 2, 3, 4
# account id -> (ERP code, class, [(issue date, value)])
ACCOUNTS = {
    1: (100, SILVER, [("2026-01-10", 500.0), ("2026-11-10", 800.0)]),
    2: (200, BRONZE, [("2026-09-20", 300.0), ("2026-10-15", 200.0)]),
    3: (300, BRONZE, [("2026-10-20", 150.0)]),  # first purchase after the backfill's date
    4: (400, BRONZE, [("2025-09-15", 100.0), ("2026-06-01", 100.0)]),
    5: (None, BRONZE, []),  # a lead
}
RULES = [  # id, from, to, measure, operator, threshold, priority
    (1, None, GOLD, "accumulated_value", ">=", 1000, 1),
    (2, SILVER, BRONZE, "days_since_last_purchase", ">=", 60, 2),
    (3, BRONZE, SILVER, "days_since_last_purchase", "<", 30, 3),
    (4, None, DIAMOND, "months_as_customer", ">=", 12, 4),
]


@pytest.fixture
def dbs(tmp_path):
    engine_from_url.cache_clear()
    crm = engine_from_url(f"sqlite:///{tmp_path / 'crm.db'}")
    erp = engine_from_url(f"sqlite:///{tmp_path / 'erp.db'}")
    crm_metadata.create_all(crm)
    erp_metadata.create_all(erp)
    stamp = dt.datetime(2025, 1, 1)
    with crm.begin() as conn:
        conn.execute(sa.insert(company), [{"id": 1, "code": "BR01", "name": "Aurora"}])
        conn.execute(sa.insert(account_class), [
            {"id": i, "code": c, "name": c.title(), "rank": i} for i, c in
            ((BRONZE, "BRONZE"), (SILVER, "SILVER"), (GOLD, "GOLD"), (DIAMOND, "DIAMOND"))
        ])  # fmt: skip
        conn.execute(sa.insert(account), [
            {"id": a, "company_id": 1, "person_type": "PJ", "name": f"A{a}", "erp_customer_code": code,
             "class_id": cls, "created_at": stamp, "updated_at": stamp} for a, (code, cls, _) in ACCOUNTS.items()
        ])  # fmt: skip
        conn.execute(sa.insert(class_transition_rule), [
            {"id": i, "from_class_id": f, "to_class_id": t, "measure": m, "operator": o, "threshold": th,
             "priority": p} for i, f, t, m, o, th, p in RULES
        ])  # fmt: skip
    rows, n = [], 0
    for code, _, bought in ACCOUNTS.values():
        for day, value in bought:
            n += 1
            rows.append({"id": n, "customer_code": code, "company_code": "BR01", "series": "1", "number": f"N{n}",
                         "issue_date": dt.date.fromisoformat(day), "total_value": value, "cancelled": False,
                         "updated_at": stamp})  # fmt: skip
    with erp.begin() as conn:
        conn.execute(sa.insert(invoice), rows)
    when = dt.datetime(2026, 11, 22, 8, tzinfo=dt.UTC)
    result = purchase_profile.compute(crm, erp, LATER, full_refresh=True)
    purchase_profile.load(crm, result, business_date=LATER, run_id="profile", run_after=when, started_at=when)
    yield crm, erp
    crm.dispose()
    erp.dispose()


def moves(plan: job.TransitionPlan) -> dict[int, tuple[str, str, int, float]]:
    """account -> (from class, to class, rule, value that fired it)."""
    return {
        int(r["account_id"]): (r["from_class"], r["to_class"], int(r["rule_id"]), float(r["value"]))
        for r in plan.report.to_dict("records")
    }


def test_should_use_the_measures_of_the_backfilled_date_not_the_later_profile(dbs):
    crm, erp = dbs
    plan = job.plan(crm, erp, EARLIER)
    # 1: 500 by 30 Sep (the 800 came in November), last bought 10 Jan: 263 days -> Silver to Bronze
    # 2: last bought 20 Sep, 10 days before -> Bronze to Silver (its 15 Oct purchase does not exist yet)
    # 3: no purchase yet on 30 Sep: no days at all (the later profile would say -20, and fire rule 3)
    # 4: customer since 15 Sep 2025: 12 whole months on 30 Sep 2026 -> Diamond
    assert moves(plan) == {
        1: ("SILVER", "BRONZE", 2, 263.0),
        2: ("BRONZE", "SILVER", 3, 10.0),
        4: ("BRONZE", "DIAMOND", 4, 12.0),
    }
    assert plan.summary["lifetime measures from the ERP (profile not for this date)"] == 4
    assert plan.summary["profiles computed for another date"] == 4

    accounts = job.read_accounts(crm)
    measures, _ = job.measures_for(accounts, job.read_profiles(crm), erp, job.check(crm), EARLIER)
    days = measures["days_since_last_purchase"]
    assert days.isna().tolist() == [False, False, True, False, True]  # 3 had not bought, 5 is a lead
    assert (days.dropna() >= 0).all()
    assert measures["accumulated_value"].tolist() == [500.0, 300.0, 0.0, 200.0, 0.0]

    job.apply(crm, plan, run_id="backfill", changed_at=dt.datetime(2026, 11, 23, 9, tzinfo=dt.UTC))
    with crm.connect() as conn:
        classes = dict(conn.execute(sa.select(account.c.id, account.c.class_id)).all())
    assert classes == {1: BRONZE, 2: SILVER, 3: BRONZE, 4: DIAMOND, 5: BRONZE}


def test_should_use_the_profile_rows_that_are_for_the_run_date(dbs):
    crm, erp = dbs
    plan = job.plan(crm, erp, LATER)
    # 1: 1,300 in all -> Gold; 2: last bought 15 Oct, 38 days: no rule; 4: 14 months -> Diamond
    assert moves(plan) == {1: ("SILVER", "GOLD", 1, 1300.0), 4: ("BRONZE", "DIAMOND", 4, 14.0)}
    assert plan.summary["lifetime measures from the profile"] == 4
    assert "lifetime measures from the ERP (profile not for this date)" not in plan.summary

    with crm.begin() as conn:  # the profile is the source for its date: what it says decides, not the ERP
        conn.execute(sa.update(account_profile).where(account_profile.c.account_id == 1).values(accumulated_value=5))
    assert 1 not in moves(job.plan(crm, erp, LATER))


def test_should_read_the_erp_for_an_account_whose_profile_is_missing(dbs):
    crm, erp = dbs
    with crm.begin() as conn:
        conn.execute(sa.delete(account_profile).where(account_profile.c.account_id == 1))
    plan = job.plan(crm, erp, LATER)
    assert moves(plan)[1] == ("SILVER", "GOLD", 1, 1300.0)
    assert plan.summary["lifetime measures from the ERP (profile not for this date)"] == 1
    assert plan.summary["lifetime measures from the profile"] == 3


def window_rule(rule_id: int, measure: str, months: int) -> ct.Rule:
    return ct.Rule(rule_id, None, GOLD, measure, ">=", 1e9, months, rule_id)


@pytest.mark.parametrize("windows", [[12], [6, 12], [3, 6, 12]])
def test_should_read_two_windows_per_erp_scan_with_the_values_of_one_query_each(dbs, monkeypatch, windows):
    crm, erp = dbs
    reads = []
    original = job.read_frame
    monkeypatch.setattr(job, "read_frame", lambda db, name, *a, **k: reads.append(name) or original(db, name, *a, **k))
    rules = [window_rule(i, m, w) for i, (m, w) in enumerate(
        ((m, w) for w in windows for m in ("accumulated_value", "purchase_count")), 1
    )]  # fmt: skip
    measures, facts = job.measures_for(job.read_accounts(crm), job.read_profiles(crm), erp, rules, LATER)
    # on 22 Nov: 3 months from 22 Aug, 6 from 22 May, 12 from 22 Nov 2025 (account 4's 15 Sep 2025 is out)
    want = {
        3: ([800.0, 500.0, 150.0, 0.0, 0.0], [1, 2, 1, 0, 0]),
        6: ([800.0, 500.0, 150.0, 100.0, 0.0], [1, 2, 1, 1, 0]),
        12: ([1300.0, 500.0, 150.0, 100.0, 0.0], [2, 2, 1, 1, 0]),
    }
    for w in windows:
        assert measures[f"accumulated_value@{w}"].tolist() == want[w][0]
        assert measures[f"purchase_count@{w}"].tolist() == want[w][1]
        assert facts[f"window {w} months customers"] == sum(1 for c in want[w][1] if c)
    assert [k for k in facts if k.startswith("window ")] == [
        f"window {w} months {what}" for w in windows for what in ("since", "customers")
    ]
    pairs, odd = divmod(len(windows), 2)
    assert sorted(reads) == sorted(["erp/purchases_in_windows"] * pairs + ["erp/purchases_since"] * odd)


def test_should_give_zero_window_measures_when_nobody_bought_in_the_windows(dbs):
    crm, erp = dbs
    rules = [window_rule(1, "accumulated_value", 1), window_rule(2, "purchase_count", 2)]
    later = dt.date(2030, 1, 1)  # every invoice is years before
    measures, facts = job.measures_for(job.read_accounts(crm), job.read_profiles(crm), erp, rules, later)
    assert measures["accumulated_value@1"].tolist() == [0.0] * 5 and measures["purchase_count@2"].tolist() == [0.0] * 5
    assert facts["window 1 months customers"] == facts["window 2 months customers"] == 0
