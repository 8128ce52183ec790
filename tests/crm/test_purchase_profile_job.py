"""The purchase-profile steps with the CRM on PostgreSQL (the production path) and the ERP on SQLite."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from crm.db import engine_from_url, upsert
from crm.db.crm_schema import (
    account,
    account_class,
    account_profile,
    audience,
    audience_member,
    company,
    customer_type,
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
