"""The purchase-profile steps over real databases: CRM on PostgreSQL (the production path) and on SQLite.

The SQLite tests use a hand-made CRM and ERP (six accounts, seven invoices) whose profiles are
worked out by hand below, so every mode switch is checked value by value.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from crm.db import engine_from_url, erp_schema, upsert
from crm.db.crm_schema import (
    account,
    account_class,
    account_profile,
    audience,
    audience_member,
    company,
    customer_type,
    profile_seen_invoice,
    user,
)
from crm.db.crm_schema import metadata as crm_metadata
from crm.jobs import purchase_profile as job
from crm.routines.purchase_profile import PROFILE_FIELDS

BD = dt.date(2026, 11, 22)
COPIED = (company, user, account_class, customer_type, account, audience, audience_member)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crm.demo.generate import generate

    var = tmp_path_factory.mktemp("demo")
    generate(var, accounts=300, seed=5, business_date=BD)
    return var


@pytest.fixture
def pg_crm(seeded: Path, pg_engine: sa.Engine) -> sa.Engine:
    """The demo's CRM accounts copied into a fresh PostgreSQL schema."""
    crm_metadata.create_all(pg_engine)
    lite = engine_from_url(f"sqlite:///{seeded / 'crm.db'}")
    for table in COPIED:
        with lite.connect() as conn:
            frame = pd.DataFrame(conn.execute(sa.select(table)).mappings().all())
        key = [c.name for c in table.primary_key.columns]
        upsert(pg_engine, table, frame, key)
    return pg_engine


def run(crm: sa.Engine, erp: sa.Engine, day: dt.date, run_id: str, **kw) -> dict:
    result = job.compute(crm, erp, day, **kw)
    now = dt.datetime(2026, 11, 22, 5, 30, tzinfo=dt.UTC)
    return job.load(
        crm,
        result,
        business_date=day,
        run_id=run_id,
        run_after=now,
        started_at=now,
        audience_code=kw.get("audience_code"),
    )


def expected(seeded: Path, day: dt.date) -> pd.DataFrame:
    from tests.dags.test_purchase_profile_dag import EXPECTED_SQL

    with sqlite3.connect(seeded / "crm.db") as conn:
        conn.execute(f"ATTACH DATABASE '{seeded / 'erp.db'}' AS erp")
        want = pd.read_sql_query(EXPECTED_SQL, conn, params={"bd": day.isoformat()})
    for col in ("first_purchase_date", "last_purchase_date", "last_quote_date"):
        want[col] = pd.to_datetime(want[col]).astype("datetime64[s]")
    return want


def actual(crm: sa.Engine) -> pd.DataFrame:
    t = account_profile
    with crm.connect() as conn:
        rows = conn.execute(sa.select(t.c.account_id, *[t.c[f] for f in PROFILE_FIELDS]).order_by(t.c.account_id))
        got = pd.DataFrame(rows.all(), columns=["account_id", *PROFILE_FIELDS])
    for col in ("first_purchase_date", "last_purchase_date", "last_quote_date"):
        got[col] = pd.to_datetime(got[col]).astype("datetime64[s]")
    return got


def test_should_load_profiles_into_postgresql_and_refresh_day_counts_there(seeded, pg_crm):
    erp = engine_from_url(f"sqlite:///{seeded / 'erp.db'}")
    first = run(pg_crm, erp, BD, "run-1")
    assert first["mode"] == "full" and first["inserted"] > 0
    pd.testing.assert_frame_equal(actual(pg_crm), expected(seeded, BD), check_dtype=False)

    same = run(pg_crm, erp, BD, "run-2")
    assert (same["mode"], same["inserted"], same["updated"], same["days_refreshed"]) == ("incremental", 0, 0, 0)

    nxt = BD + dt.timedelta(days=1)
    moved = run(pg_crm, erp, nxt, "run-3")
    buyers = int((actual(pg_crm)["purchase_count"] > 0).sum())
    assert moved["mode"] == "incremental" and moved["days_refreshed"] >= buyers > 0
    pd.testing.assert_frame_equal(actual(pg_crm), expected(seeded, nxt), check_dtype=False)


def test_should_extend_stored_profiles_with_new_invoices_in_postgresql(seeded, pg_crm, tmp_path):
    for name in ("crm.db", "erp.db"):
        shutil.copy(seeded / name, tmp_path / name)
    erp = engine_from_url(f"sqlite:///{tmp_path / 'erp.db'}")
    assert run(pg_crm, erp, BD, "run-1")["mode"] == "full"
    with pg_crm.connect() as conn:
        code = conn.execute(
            sa.select(account.c.erp_customer_code).where(account.c.erp_customer_code.is_not(None)).limit(1)
        ).scalar_one()
    with sqlite3.connect(tmp_path / "erp.db") as conn:
        company, series, latest = conn.execute("SELECT company_code, series, MAX(updated_at) FROM invoice").fetchone()
        conn.execute(
            "INSERT INTO invoice (customer_code, company_code, series, number, issue_date, total_value, cancelled,"
            " updated_at) VALUES (?, ?, ?, 'PG-NEW', ?, 42.5, 0, ?)",
            (code, company, series, BD.isoformat(), latest),
        )

    summary = run(pg_crm, erp, BD, "run-2")

    assert summary["mode"] == "incremental" and summary["accounts_recomputed"] == 0
    assert summary["accounts_extended"] >= 1 and summary["updated"] >= 1
    pd.testing.assert_frame_equal(actual(pg_crm), expected(tmp_path, BD), check_dtype=False)
    with pg_crm.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(profile_seen_invoice)).scalar_one() > 0


def test_should_touch_only_the_audience_members(seeded, pg_crm):
    erp = engine_from_url(f"sqlite:///{seeded / 'erp.db'}")
    with pg_crm.connect() as conn:
        members = set(
            conn.execute(
                sa.select(audience_member.c.account_id)
                .join(audience, audience.c.id == audience_member.c.audience_id)
                .join(account, account.c.id == audience_member.c.account_id)
                .where(audience.c.code == "VIP", account.c.erp_customer_code.is_not(None))
            ).scalars()
        )
    assert members
    summary = run(pg_crm, erp, BD, "run-vip", audience_code="VIP")
    assert summary["inserted"] == len(members)
    assert set(actual(pg_crm)["account_id"]) == members
    with pytest.raises(job.AudienceNotFound, match="NOPE"):
        job.compute(pg_crm, erp, BD, audience_code="NOPE")


# --- SQLite: a hand-made CRM and ERP -------------------------------------------------------------

CHANGED = "2099-01-01 00:00:00.000000"  # a change written after every run's watermark
# account id -> ERP customer code; 4 and 5 are leads without a code. VIP members: 1, 3, 4.
ACCOUNTS = {1: 10, 2: 20, 3: 30, 4: None, 5: None, 6: 40}
VIP = (1, 3, 4)
INVOICES = [  # id, customer, issue date, value, number, cancelled
    (1, 10, dt.date(2026, 1, 10), 100.0, "A-1", False),
    (2, 10, dt.date(2026, 6, 1), 50.0, "A-2", False),
    (3, 10, dt.date(2026, 6, 1), 25.0, "A-3", False),  # same day as A-2, entered later: the last purchase
    (4, 10, dt.date(2026, 7, 1), 999.0, "A-4", True),
    (5, 20, dt.date(2026, 10, 1), 80.0, "B-1", False),
    (6, 20, dt.date(2026, 11, 25), 70.0, "B-2", False),  # after the business date
    (7, 40, dt.date(2026, 11, 1), 40.0, "D-1", False),
]
QUOTES = [(1, 10, dt.date(2026, 5, 1)), (2, 30, dt.date(2026, 3, 3))]
D = dt.date
# account -> (first date, first value, last date, last value, accumulated, count, last quote, days since, last number)
AT_BD = {
    1: (D(2026, 1, 10), 100.0, D(2026, 6, 1), 25.0, 175.0, 3, D(2026, 5, 1), 174, "A-3"),
    2: (D(2026, 10, 1), 80.0, D(2026, 10, 1), 80.0, 80.0, 1, None, 52, "B-1"),
    3: (None, None, None, None, 0.0, 0, D(2026, 3, 3), None, None),
    6: (D(2026, 11, 1), 40.0, D(2026, 11, 1), 40.0, 40.0, 1, None, 21, "D-1"),
}
BACKFILL = dt.date(2026, 9, 23)  # before B-1 and D-1
AT_BACKFILL = {
    1: (D(2026, 1, 10), 100.0, D(2026, 6, 1), 25.0, 175.0, 3, D(2026, 5, 1), 114, "A-3"),
    2: (None, None, None, None, 0.0, 0, None, None, None),
    3: (None, None, None, None, 0.0, 0, D(2026, 3, 3), None, None),
    6: (None, None, None, None, 0.0, 0, None, None, None),
}


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[sa.Engine, sa.Engine]:
    """(crm, erp): SQLite files with ACCOUNTS, the VIP audience, INVOICES and QUOTES."""
    crm = engine_from_url(f"sqlite:///{tmp_path / 'crm.db'}")
    erp = engine_from_url(f"sqlite:///{tmp_path / 'erp.db'}")
    crm_metadata.create_all(crm)
    erp_schema.metadata.create_all(erp)
    with crm.begin() as conn:
        conn.execute(company.insert(), [{"id": 1, "code": "C1", "name": "Company One"}])
        conn.execute(
            account.insert(),
            [
                {
                    "id": i,
                    "company_id": 1,
                    "person_type": "PJ",
                    "name": f"Account {i}",
                    "erp_customer_code": code,
                    # days apart and long before any run: no account looks recently edited in the CRM
                    "created_at": dt.datetime(2026, 1, i, 12, 0),
                    "updated_at": dt.datetime(2026, 1, i, 12, 0),
                }
                for i, code in ACCOUNTS.items()
            ],
        )
        conn.execute(audience.insert(), [{"id": 1, "code": "VIP", "name": "VIP"}])
        conn.execute(audience_member.insert(), [{"audience_id": 1, "account_id": a} for a in VIP])
    with erp.begin() as conn:
        conn.execute(
            erp_schema.invoice.insert(),
            [
                dict(zip(("id", "customer_code", "issue_date", "total_value", "number", "cancelled"), r, strict=True))
                # entered in the ERP on their issue day at 08:00: their updated_at until a test changes one
                | {"company_code": "C1", "series": "1", "updated_at": dt.datetime.combine(r[2], dt.time(8))}
                for r in INVOICES
            ],
        )
        conn.execute(
            erp_schema.quote.insert(),
            [
                {
                    "id": i,
                    "customer_code": c,
                    "quote_date": d,
                    "total_value": 1.0,
                    "status": "open",
                    "updated_at": dt.datetime.combine(d, dt.time(8)),
                }
                for i, c, d in QUOTES
            ],
        )
    return crm, erp


def profiles(crm: sa.Engine) -> dict[int, tuple]:
    """account_id -> the nine fields as plain Python values, as AT_BD writes them."""
    t = account_profile
    with crm.connect() as conn:
        rows = conn.execute(sa.select(t.c.account_id, *[t.c[f] for f in PROFILE_FIELDS]).order_by(t.c.account_id))
        return {r[0]: tuple(r[1:]) for r in rows}


def business_dates(crm: sa.Engine) -> dict[int, dt.date]:
    with crm.connect() as conn:
        return dict(conn.execute(sa.select(account_profile.c.account_id, account_profile.c.business_date)).all())


def test_should_compute_hand_checked_profiles_and_count_accounts_without_an_erp_code(tiny):
    crm, erp = tiny
    summary = run(crm, erp, BD, "run-1")
    assert (summary["mode"], summary["inserted"], summary["skipped_no_erp_code"]) == ("full", 4, 2)  # leads 4, 5
    assert profiles(crm) == AT_BD
    vip = job.compute(crm, erp, BD, audience_code="VIP", full_refresh=True)
    assert vip.stats["skipped_no_erp_code"] == 1  # lead 4 is in VIP, lead 5 is not
    assert sorted(vip.profiles["account_id"]) == [1, 3]


def test_should_recompute_every_account_when_full_refresh_is_asked_after_a_run(tiny):
    crm, erp = tiny
    run(crm, erp, BD, "run-1")
    # A hard delete leaves no trace an incremental run can see (purchase_changes.sql): A-3 goes unnoticed...
    with erp.begin() as conn:
        conn.execute(erp_schema.invoice.delete().where(erp_schema.invoice.c.id == 3))
    quiet = run(crm, erp, BD, "run-2")
    assert (quiet["mode"], quiet["updated"]) == ("incremental", 0)
    assert profiles(crm) == AT_BD  # account 1 still counts A-3
    # ...until a full refresh recomputes every account with a code, and changes exactly the one that moved.
    full = run(crm, erp, BD, "run-3", full_refresh=True)
    assert (full["mode"], full["mode_reason"]) == ("full", "full_refresh requested")
    assert (full["accounts_recomputed"], full["inserted"], full["updated"], full["unchanged"]) == (4, 0, 1, 3)
    assert profiles(crm) == AT_BD | {
        1: (D(2026, 1, 10), 100.0, D(2026, 6, 1), 50.0, 150.0, 2, D(2026, 5, 1), 174, "A-2")
    }


def test_should_backfill_in_full_and_let_the_next_run_restore_the_current_profiles(tiny):
    crm, erp = tiny
    run(crm, erp, BD, "run-1")
    back = run(crm, erp, BACKFILL, "backfill")
    assert back["mode"] == "full" and "later business date" in back["mode_reason"]
    assert profiles(crm) == AT_BACKFILL
    assert set(business_dates(crm).values()) == {BACKFILL}
    # The next scheduled run is incremental from the backfill: it picks up what was issued since.
    current = run(crm, erp, BD, "run-2")
    assert current["mode"] == "incremental"
    assert profiles(crm) == AT_BD
    assert set(business_dates(crm).values()) == {BD}


def test_should_run_in_full_after_a_run_for_another_audience(tiny):
    crm, erp = tiny
    vip = run(crm, erp, BD, "run-vip", audience_code="VIP")
    assert (vip["mode"], vip["inserted"]) == ("full", 2)
    assert profiles(crm) == {a: AT_BD[a] for a in (1, 3)}
    everyone = run(crm, erp, BD, "run-all")
    assert everyone["mode"] == "full" and everyone["mode_reason"] == "previous run covered audience:VIP"
    assert (everyone["inserted"], everyone["unchanged"]) == (2, 2)
    assert profiles(crm) == AT_BD
    # a run over all accounts covers any audience: the next audience run may be incremental
    assert run(crm, erp, BD, "run-vip-2", audience_code="VIP")["mode"] == "incremental"


def test_should_leave_the_day_counts_of_non_members_alone_in_an_audience_run(tiny):
    crm, erp = tiny
    run(crm, erp, BD, "run-1")
    next_day = BD + dt.timedelta(days=1)
    summary = run(crm, erp, next_day, "run-vip", audience_code="VIP")
    assert summary["mode"] == "incremental"
    got = profiles(crm)
    assert got[1][7] == 175 and got[3][7] is None  # members: moved to the next day
    assert got[2] == AT_BD[2] and got[6] == AT_BD[6]  # non-members: untouched, still 52 and 21 days
    assert business_dates(crm) == {1: next_day, 2: BD, 3: next_day, 6: BD}


def test_should_update_exactly_the_account_whose_invoice_was_cancelled(tiny):
    crm, erp = tiny
    run(crm, erp, BD, "run-1")
    with erp.begin() as conn:
        conn.execute(
            erp_schema.invoice.update()
            .where(erp_schema.invoice.c.id == 5)
            .values(cancelled=True, updated_at=dt.datetime.fromisoformat(CHANGED))
        )
    summary = run(crm, erp, BD, "run-2")
    assert (summary["mode"], summary["inserted"], summary["updated"]) == ("incremental", 0, 1)
    assert profiles(crm) == AT_BD | {2: (None, None, None, None, 0.0, 0, None, None, None)}


@pytest.fixture
def demo_copy(seeded: Path, tmp_path: Path) -> Path:
    for name in ("crm.db", "erp.db"):
        shutil.copy(seeded / name, tmp_path / name)
    return tmp_path


def test_should_update_exactly_the_demo_account_whose_last_invoice_was_cancelled(demo_copy):
    crm = engine_from_url(f"sqlite:///{demo_copy / 'crm.db'}")
    erp = engine_from_url(f"sqlite:///{demo_copy / 'erp.db'}")
    run(crm, erp, BD, "run-1")
    before = actual(crm).set_index("account_id")
    with sqlite3.connect(demo_copy / "crm.db") as conn:
        conn.execute(f"ATTACH DATABASE '{demo_copy / 'erp.db'}' AS erp")
        # the latest live invoice of an account with at least two purchases: its last purchase changes
        account_id, invoice_id = conn.execute(
            "SELECT a.id, MAX(i.id) FROM crm_account a JOIN erp.invoice i ON i.customer_code = a.erp_customer_code"
            " WHERE NOT i.cancelled AND i.issue_date <= ? GROUP BY a.id HAVING COUNT(*) >= 2 ORDER BY a.id LIMIT 1",
            (BD.isoformat(),),
        ).fetchone()
    with sqlite3.connect(demo_copy / "erp.db") as conn:
        conn.execute("UPDATE invoice SET cancelled = 1, updated_at = ? WHERE id = ?", (CHANGED, invoice_id))
    summary = run(crm, erp, BD, "run-2")
    assert (summary["mode"], summary["inserted"], summary["updated"]) == ("incremental", 0, 1)
    after = actual(crm).set_index("account_id")
    changed = after.compare(before)
    assert list(changed.index) == [account_id]
    assert after.loc[account_id, "purchase_count"] == before.loc[account_id, "purchase_count"] - 1
    pd.testing.assert_frame_equal(actual(crm), expected(demo_copy, BD), check_dtype=False)
