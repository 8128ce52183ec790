"""The incremental purchase-profile run follows CRM-side changes too: codes gained, changed, lost; new audience members.

Each test runs a full refresh on a small demo, changes the CRM the way a user (or crm_erp_account_sync)
would — the account's row and its `updated_at` — then runs incrementally and compares every profile
with an independent SQL aggregate over the ERP (tests.dags.test_purchase_profile_dag.EXPECTED_SQL).
"""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from crm.db import engine_from_url
from tests.crm.test_purchase_profile_job import run as run_job
from tests.dags.test_purchase_profile_dag import assert_profiles_match

BD = dt.date(2026, 11, 22)
EDITED = "2026-11-22 10:00:00.000000"  # later than every stamp of the generated demo


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crm.demo.generate import generate

    var = tmp_path_factory.mktemp("demo")
    generate(var, accounts=300, seed=11, business_date=BD)
    return var


@pytest.fixture
def var(seeded: Path, tmp_path: Path) -> Path:
    for name in ("crm.db", "erp.db"):
        shutil.copy(seeded / name, tmp_path / name)
    return tmp_path


def run(var: Path, day: dt.date, run_id: str, **kw) -> dict:
    crm = engine_from_url(f"sqlite:///{var / 'crm.db'}")
    erp = engine_from_url(f"sqlite:///{var / 'erp.db'}")
    try:
        return run_job(crm, erp, day, run_id, **kw)
    finally:
        crm.dispose()
        erp.dispose()


def sql(var: Path, statement: str, *params) -> list[tuple]:
    with sqlite3.connect(var / "crm.db") as conn:
        return conn.execute(statement, params).fetchall()


def unclaimed_erp_codes(var: Path) -> list[int]:
    """ERP customers with purchases that no CRM account points at yet."""
    with sqlite3.connect(var / "crm.db") as conn:
        conn.execute(f"ATTACH DATABASE '{var / 'erp.db'}' AS erp")
        return [
            r[0]
            for r in conn.execute(
                "SELECT customer_code FROM erp.invoice WHERE NOT cancelled GROUP BY customer_code"
                " HAVING customer_code NOT IN (SELECT erp_customer_code FROM crm_account"
                " WHERE erp_customer_code IS NOT NULL) ORDER BY customer_code"
            )
        ]


def profiled(var: Path) -> dict[int, int]:
    return dict(sql(var, "SELECT account_id, erp_customer_code FROM crm_account_profile"))


def test_should_recompute_an_account_whose_erp_code_was_set_or_changed_and_nothing_else(var):
    run(var, BD, "full", full_refresh=True)
    lead = sql(var, "SELECT id FROM crm_account WHERE erp_customer_code IS NULL ORDER BY id LIMIT 1")[0][0]
    moved = sql(var, "SELECT id FROM crm_account WHERE erp_customer_code IS NOT NULL ORDER BY id LIMIT 1")[0][0]
    new_code, other_code = unclaimed_erp_codes(var)[:2]
    sql(var, "UPDATE crm_account SET erp_customer_code = ?, updated_at = ? WHERE id = ?", new_code, EDITED, lead)
    sql(var, "UPDATE crm_account SET erp_customer_code = ?, updated_at = ? WHERE id = ?", other_code, EDITED, moved)

    summary = run(var, BD, "incremental")

    assert summary["mode"] == "incremental"
    # Recomputed: those two, plus whatever the watermark overlap re-reads (unchanged, so not rewritten).
    assert (summary["inserted"], summary["updated"]) == (1, 1)
    assert summary["unchanged"] == summary["accounts_considered"] - 2
    assert profiled(var)[lead] == new_code and profiled(var)[moved] == other_code
    assert_profiles_match(var)


def test_should_drop_the_profile_of_an_account_that_lost_its_erp_code(var):
    run(var, BD, "full", full_refresh=True)
    unlinked = sql(var, "SELECT id FROM crm_account WHERE erp_customer_code IS NOT NULL ORDER BY id DESC LIMIT 1")[0][0]
    sql(var, "UPDATE crm_account SET erp_customer_code = NULL, updated_at = ? WHERE id = ?", EDITED, unlinked)

    summary = run(var, BD, "incremental")

    assert (summary["mode"], summary["dropped_no_erp_code"]) == ("incremental", 1)
    assert (summary["inserted"], summary["updated"]) == (0, 0)
    assert unlinked not in profiled(var)
    assert_profiles_match(var)  # every account with a code still has exactly its profile


def test_should_drop_profiles_of_accounts_without_code_in_a_full_run_too(var):
    run(var, BD, "full", full_refresh=True)
    unlinked = sql(var, "SELECT id FROM crm_account WHERE erp_customer_code IS NOT NULL ORDER BY id LIMIT 2")
    for (account_id,) in unlinked:  # changed without touching updated_at: only a full run can see it
        sql(var, "UPDATE crm_account SET erp_customer_code = NULL WHERE id = ?", account_id)

    assert run(var, BD, "incremental")["dropped_no_erp_code"] == 0
    summary = run(var, BD, "full-again", full_refresh=True)

    assert summary["dropped_no_erp_code"] == 2
    assert_profiles_match(var)


def test_should_give_a_new_audience_member_its_profile_in_an_incremental_audience_run(var):
    run(var, BD, "vip-1", audience_code="VIP")
    outsider = sql(
        var,
        "SELECT a.id FROM crm_account a WHERE a.erp_customer_code IS NOT NULL AND a.id NOT IN"
        " (SELECT account_id FROM crm_audience_member m JOIN crm_audience au ON au.id = m.audience_id"
        " WHERE au.code = 'VIP') ORDER BY a.id LIMIT 1",
    )[0][0]
    assert outsider not in profiled(var)
    vip = sql(var, "SELECT id FROM crm_audience WHERE code = 'VIP'")[0][0]
    sql(var, "INSERT INTO crm_audience_member (audience_id, account_id) VALUES (?, ?)", vip, outsider)

    summary = run(var, BD, "vip-2", audience_code="VIP")

    assert (summary["mode"], summary["inserted"], summary["updated"]) == ("incremental", 1, 0)
    assert outsider in profiled(var)


def test_should_see_erp_rows_committed_late_with_a_stamp_just_before_the_watermark(var):
    run(var, BD, "full", full_refresh=True)
    customer = sql(var, "SELECT erp_customer_code FROM crm_account WHERE erp_customer_code IS NOT NULL LIMIT 1")[0][0]
    with sqlite3.connect(var / "erp.db") as erp:
        watermark = erp.execute("SELECT MAX(updated_at) FROM invoice").fetchone()[0]
        late = (dt.datetime.fromisoformat(watermark) - dt.timedelta(minutes=20)).strftime("%Y-%m-%d %H:%M:%S.%f")
        erp.execute(  # written by a long ERP transaction that began before the previous run read the watermark
            "UPDATE invoice SET cancelled = 1, updated_at = ? WHERE id ="
            " (SELECT id FROM invoice WHERE customer_code = ? AND NOT cancelled ORDER BY id LIMIT 1)",
            (late, customer),
        )

    summary = run(var, BD, "incremental")

    assert summary["mode"] == "incremental" and summary["updated"] >= 1
    assert_profiles_match(var)


def test_should_fall_back_to_a_full_run_after_a_run_that_recorded_no_crm_watermark(var):
    run(var, BD, "full", full_refresh=True)
    engine = engine_from_url(f"sqlite:///{var / 'crm.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE crm_routine_run SET summary = '{}'"))
    engine.dispose()

    summary = run(var, BD, "after-upgrade")

    assert summary["mode"] == "full" and "no CRM watermark" in summary["mode_reason"]


# --- new invoices are added to the stored profile; edited ones make the account recomputed -------------


def erp(var: Path, statement: str, *params) -> list[tuple]:
    with sqlite3.connect(var / "erp.db") as conn:
        return conn.execute(statement, params).fetchall()


def linked_customers(var: Path, n: int) -> list[int]:
    """ERP customers with purchases and a CRM account (the account's profile counts some invoices)."""
    codes = {r[0] for r in sql(var, "SELECT erp_customer_code FROM crm_account WHERE erp_customer_code IS NOT NULL")}
    bought = [r[0] for r in erp(var, "SELECT DISTINCT customer_code FROM invoice WHERE NOT cancelled ORDER BY 1")]
    return [c for c in bought if c in codes][:n]


def after_every_stamp(var: Path) -> str:
    """A stamp later than every ERP row's (written after the previous run read the watermark)."""
    (latest,) = erp(
        var, "SELECT MAX(m) FROM (SELECT MAX(updated_at) AS m FROM invoice UNION ALL SELECT MAX(updated_at) FROM quote)"
    )[0]
    return (dt.datetime.fromisoformat(latest) + dt.timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S.%f")


def counted_invoices(var: Path, code: int) -> int:
    return erp(var, "SELECT COUNT(*) FROM invoice WHERE customer_code = ? AND NOT cancelled", code)[0][0]


def new_invoice(var: Path, code: int, day: dt.date, value: float, written: str = EDITED, number: str = "NEW") -> int:
    with sqlite3.connect(var / "erp.db") as conn:
        company, series = conn.execute("SELECT company_code, series FROM invoice LIMIT 1").fetchone()
        cur = conn.execute(
            "INSERT INTO invoice (customer_code, company_code, series, number, issue_date, total_value, cancelled,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
            (code, company, series, number, day.isoformat(), value, written),
        )
        return int(cur.lastrowid)


def quiet_watermark(var: Path) -> None:
    """Move every ERP stamp out of the watermark overlap, so the next run sees only the test's own changes."""
    for table in ("invoice", "quote"):
        erp(var, f"UPDATE {table} SET updated_at = '2026-01-01 00:00:00.000000'")
    # The watermark: one invoice of a customer no account points at, written months after the others.
    erp(
        var,
        "UPDATE invoice SET updated_at = '2026-06-01 00:00:00.000000' WHERE id ="
        " (SELECT MIN(id) FROM invoice WHERE customer_code = ?)",
        unclaimed_erp_codes(var)[0],
    )


@pytest.mark.parametrize("lookup_batch", [None, 2], ids=["one lookup", "lookups in batches of 2"])
def test_should_add_new_invoices_to_the_stored_profiles_without_rereading_those_customers(
    var, lookup_batch, monkeypatch
):
    if lookup_batch:  # the changed customers' accounts looked up a few codes per statement: the same outcome
        monkeypatch.setattr("crm.jobs.purchase_profile._LOOKUP_BATCH", lookup_batch)
    quiet_watermark(var)
    run(var, BD, "full", full_refresh=True)
    first, tie, other = linked_customers(var, 3)
    last_day = dt.date.fromisoformat(
        erp(var, "SELECT MAX(issue_date) FROM invoice WHERE customer_code = ? AND NOT cancelled", tie)[0][0]
    )
    new_invoice(var, first, BD, 10.0)
    new_invoice(var, tie, last_day, 20.0, number="TIE")  # same day as its last purchase, entered later: now the last
    new_invoice(var, other, dt.date(2000, 1, 1), 30.0)  # backdated: now its first purchase

    summary = run(var, BD, "incremental")

    assert (summary["accounts_extended"], summary["accounts_recomputed"]) == (3, 0)
    # read: the three new invoices and the watermark's own row (no account points at it), nothing else
    assert (summary["updated"], summary["invoices_read"]) == (3, 4)
    assert_profiles_match(var)
    tie_account = sql(var, "SELECT id FROM crm_account WHERE erp_customer_code = ?", tie)[0][0]
    assert sql(var, "SELECT last_invoice_number FROM crm_account_profile WHERE account_id = ?", tie_account) == [
        ("TIE",)
    ]


def test_should_recompute_a_customer_whose_counted_invoice_was_edited(var):
    quiet_watermark(var)
    run(var, BD, "full", full_refresh=True)
    edited, added = linked_customers(var, 2)
    erp(
        var,
        "UPDATE invoice SET total_value = total_value + 1000, updated_at = ? WHERE id ="
        " (SELECT MIN(id) FROM invoice WHERE customer_code = ? AND NOT cancelled)",
        EDITED,
        edited,
    )
    new_invoice(var, added, BD, 5.0)

    summary = run(var, BD, "incremental")

    assert (summary["accounts_recomputed"], summary["accounts_extended"], summary["updated"]) == (1, 1, 2)
    assert_profiles_match(var)


def test_should_recompute_a_customer_whose_invoice_below_the_high_water_appears_late(var):
    late_customer = next(c for c in linked_customers(var, 50) if counted_invoices(var, c) >= 2)
    # An invoice the ERP had not committed when the full run read (lower id than invoices already read).
    late = erp(
        var, "SELECT * FROM invoice WHERE customer_code = ? AND NOT cancelled ORDER BY id LIMIT 1", late_customer
    )
    erp(var, "DELETE FROM invoice WHERE id = ?", late[0][0])
    quiet_watermark(var)
    run(var, BD, "full", full_refresh=True)
    columns = [r[1] for r in erp(var, "PRAGMA table_info(invoice)")]
    row = dict(zip(columns, late[0], strict=True)) | {"updated_at": EDITED}
    erp(var, f"INSERT INTO invoice ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", *row.values())

    summary = run(var, BD, "incremental")

    assert (summary["accounts_recomputed"], summary["accounts_extended"]) == (1, 0)
    assert_profiles_match(var)


def test_should_count_invoices_dated_in_the_days_the_business_date_moved_over(var):
    """An invoice entered ahead of its date is seen on the day it falls due, above or below the high water."""
    above, below = linked_customers(var, 2)
    next_day = BD + dt.timedelta(days=1)
    new_invoice(var, above, next_day, 7.0, written="2026-01-01 00:00:00.000000")  # its latest invoice
    new_invoice(var, below, next_day, 8.0, written="2026-01-01 00:00:00.000000")
    new_invoice(var, below, BD, 9.0, written="2026-01-01 00:00:00.000000")  # a later one, counted now
    quiet_watermark(var)
    run(var, BD, "full", full_refresh=True)

    summary = run(var, next_day, "next-day")

    assert summary["mode"] == "incremental"
    assert (summary["accounts_extended"], summary["accounts_recomputed"]) == (1, 1)
    assert_profiles_match(var, next_day)


def test_should_read_the_last_quote_again_when_a_quote_changed(var):
    quiet_watermark(var)
    run(var, BD, "full", full_refresh=True)
    code, last_quote = erp(
        var,
        "SELECT customer_code, MAX(quote_date) FROM quote WHERE quote_date <= ? AND customer_code IN"
        " (SELECT customer_code FROM quote GROUP BY customer_code HAVING COUNT(*) = 1) GROUP BY customer_code LIMIT 1",
        BD.isoformat(),
    )[0]
    erp(var, "UPDATE quote SET quote_date = '2020-02-02', updated_at = ? WHERE customer_code = ?", EDITED, code)

    summary = run(var, BD, "incremental")

    linked = sql(var, "SELECT 1 FROM crm_account WHERE erp_customer_code = ?", code)
    assert summary["accounts_recomputed"] == 0 and summary["accounts_extended"] == len(linked)
    assert summary["updated"] == len(linked) and last_quote > "2020-02-02"
    assert_profiles_match(var)


# --- the watermark overlap: invoices the previous run read unchanged are not a reason to re-read -------


def seen_rows(var: Path) -> list[tuple]:
    return sql(var, "SELECT invoice_id, run_id FROM crm_profile_seen_invoice ORDER BY invoice_id")


def overlap_invoice_ids(var: Path) -> list[int]:
    return [
        r[0]
        for r in erp(
            var,
            "SELECT id FROM invoice WHERE updated_at >= (SELECT datetime(MAX(updated_at), '-1 hour') FROM invoice)"
            " ORDER BY id",
        )
    ]


def test_should_record_the_overlap_invoices_and_not_reread_their_customers_when_unchanged(var):
    run(var, BD, "full", full_refresh=True)
    overlap = overlap_invoice_ids(var)
    assert overlap and [i for i, _ in seen_rows(var)] == overlap
    assert {r for _, r in seen_rows(var)} == {"full"}

    summary = run(var, BD, "incremental")

    assert summary["mode"] == "incremental"
    assert summary["accounts_recomputed"] == 0 and summary["accounts_extended"] > 0
    assert (summary["inserted"], summary["updated"]) == (0, 0)
    assert {r for _, r in seen_rows(var)} == {"incremental"}  # replaced by this run's
    assert_profiles_match(var)


def test_should_recompute_a_customer_whose_overlap_invoice_changed_without_a_new_stamp(var):
    run(var, BD, "full", full_refresh=True)
    linked = {r[0] for r in sql(var, "SELECT erp_customer_code FROM crm_account WHERE erp_customer_code IS NOT NULL")}
    invoice_id, code = next(
        (i, c)
        for i in overlap_invoice_ids(var)
        for (c, cancelled) in erp(var, "SELECT customer_code, cancelled FROM invoice WHERE id = ?", i)
        if c in linked and not cancelled
    )
    # An ERP writer that forgot to move updated_at: the digest covers the value too.
    erp(var, "UPDATE invoice SET total_value = total_value + 500 WHERE id = ?", invoice_id)

    summary = run(var, BD, "incremental")

    accounts = sql(var, "SELECT 1 FROM crm_account WHERE erp_customer_code = ?", code)
    assert summary["accounts_recomputed"] == len(accounts) and summary["updated"] == len(accounts)
    assert_profiles_match(var)


def test_should_recompute_a_customer_whose_seen_invoice_falls_due_in_the_days_moved_over(var):
    next_day = BD + dt.timedelta(days=1)
    (code,) = linked_customers(var, 1)
    with sqlite3.connect(var / "erp.db") as conn:
        latest = conn.execute("SELECT MAX(updated_at) FROM invoice").fetchone()[0]
    new_invoice(var, code, next_day, 7.0, written=latest)  # entered ahead of its date, inside the overlap
    new_invoice(var, code, BD, 9.0, written=latest)  # a later id, counted now: the high water passes the first
    run(var, BD, "full", full_refresh=True)

    summary = run(var, next_day, "next-day")

    linked = sql(var, "SELECT 1 FROM crm_account WHERE erp_customer_code = ?", code)
    assert summary["mode"] == "incremental" and summary["accounts_recomputed"] == len(linked)
    assert_profiles_match(var, next_day)


def test_should_run_in_full_when_more_invoices_changed_than_an_incremental_run_holds(var, monkeypatch):
    from crm.jobs import purchase_profile as job

    run(var, BD, "full", full_refresh=True)
    (code,) = linked_customers(var, 1)
    new_invoice(var, code, BD, 10.0, written=after_every_stamp(var))
    new_invoice(var, code, BD, 11.0, written=after_every_stamp(var))
    monkeypatch.setattr(job, "MAX_CHANGED_INVOICES", 1)

    summary = run(var, BD, "bulk")

    assert summary["mode"] == "full" and "a full run is cheaper" in summary["mode_reason"], summary
    assert_profiles_match(var)
