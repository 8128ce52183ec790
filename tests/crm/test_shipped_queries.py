"""Every shipped include/sql query runs, through crm.sources, on SQLite and on PostgreSQL.

The SQL files are written once for both engines the package supports: a SQLite-only idiom
(`+column` to steer the planner, `paid = 0` on a boolean) passes every SQLite test and breaks
every run against a PostgreSQL ERP. So each file runs here against the reference ERP/GP schemas
on both, with a few hand-made rows whose expected results are worked out below.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from crm.config import SQL_DIR
from crm.db import engine_from_url, erp_schema, gp_schema
from crm.sources import execute, load_query, read_frame

BD = dt.date(2026, 11, 22)
T0 = dt.datetime(2026, 11, 1, 8, 0)  # updated_at of every row not written "later"
LATER = dt.datetime(2026, 11, 21, 9, 30)
E = erp_schema


def rows(table: sa.Table, columns: str, *values: tuple) -> tuple[sa.Table, list[dict[str, Any]]]:
    """Rows of `table` given as tuples over a space-separated column list; other columns are null."""
    names = columns.split()
    return table, [{c.name: None for c in table.columns} | dict(zip(names, v, strict=True)) for v in values]


D = dt.date
ROWS = [
    rows(E.customer_group, "id name", (1, "Retail")),
    rows(E.representative, "id name email", (1, "Rep One", "rep@example.com")),
    rows(E.carrier, "id name", (1, "Transportes Sul")),
    rows(E.bearer, "id name bank_code", (1, "Banco Um", "001")),
    rows(E.payment_condition, "id name installments days_between", (1, "30 days", 1, 30)),
    rows(
        E.customer,
        "code company_code name short_name tax_id person_type email group_id representative_id carrier_id"
        " payment_condition_id bearer_id city country created_at updated_at",
        (
            10,
            "C1",
            "Alpha Ltda",
            "ALPHA",
            "11222333000181",
            "PJ",
            "alpha@example.com",
            1,
            1,
            1,
            1,
            1,
            "Curitiba",
            "BR",
            T0,
            T0,
        ),
        (20, "C2", "Beta Silva", None, None, "PF", None, None, None, None, None, None, None, None, T0, T0),
    ),
    rows(
        E.invoice,
        "id customer_code company_code series number issue_date total_value cancelled updated_at",
        # customer 10: one live invoice, one cancelled (written LATER), one after the business date
        (1, 10, "C1", "1", "101", D(2026, 1, 5), 100.0, False, T0),
        (2, 10, "C1", "1", "102", D(2026, 3, 1), 250.5, True, LATER),
        (4, 10, "C1", "1", "104", D(2026, 12, 1), 999.0, False, T0),
        # customer 20: two live invoices, the second dated two days before the business date
        (3, 20, "C2", "2", "201", D(2026, 2, 10), 80.25, False, T0),
        (5, 20, "C2", "2", "202", D(2026, 11, 20), 19.75, False, T0),
    ),
    rows(
        E.invoice_item,
        "invoice_id line product_code quantity unit_price",
        (1, 2, "P-2", 1.0, 40.0),
        (1, 1, "P-1", 2.0, 30.0),
        (3, 1, "P-3", 0.5, 160.5),
    ),
    rows(
        E.quote,
        "id customer_code quote_date total_value status updated_at",
        (1, 10, D(2026, 4, 1), 10.0, "open", T0),
        (2, 10, D(2026, 6, 1), 10.0, "open", T0),
        (3, 20, D(2026, 12, 30), 10.0, "open", T0),  # after the business date
        (4, 10, D(2026, 1, 2), 10.0, "open", LATER),  # an older quote, written LATER
    ),
    rows(
        E.receivable,
        "id customer_code company_code document_number invoice_id issue_date due_date amount paid_amount paid"
        " payment_method status bearer_id updated_at",
        (1, 10, "C1", "101/1", 1, D(2026, 1, 5), D(2026, 11, 1), 100.0, 20.0, False, "boleto", "open", 1, T0),
        (
            2,
            20,
            "C2",
            "201/1",
            None,
            D(2026, 2, 10),
            D(2026, 11, 25),
            80.25,
            0.0,
            False,
            "pix_carne",
            "in_progress",
            None,
            T0,
        ),
        (3, 10, "C1", "101/2", 1, D(2026, 1, 5), D(2026, 10, 1), 50.0, 50.0, True, "boleto", "paid", 1, T0),
    ),
    rows(
        E.credit_info,
        "customer_code credit_limit months_inactive updated_at",
        (10, 1000.0, 6, T0),
        (20, None, None, T0),
    ),
    rows(
        E.sales_order,
        "id customer_code company_code order_number channel total_value created_at updated_at",
        (1, 10, "C1", "SO-1", "omni", 300.0, T0, T0),
        (2, 20, "C2", "SO-2", "store", 50.0, T0, T0),
    ),
    rows(
        E.order_stage_event,
        "id order_id stage occurred_at",
        (1, 1, "shipped", dt.datetime(2026, 11, 21, 10, 0)),
        (2, 2, "shipped", dt.datetime(2026, 11, 21, 10, 0)),  # a store order: not notified
        (3, 1, "delivered", dt.datetime(2026, 11, 23, 10, 0)),  # after the window
    ),
    rows(
        gp_schema.contract,
        "id number status start_date end_date",
        (1, "CT-1", "active", D(2026, 1, 1), None),
        (2, "CT-2", "cancelled", D(2025, 1, 1), D(2025, 12, 31)),
    ),
    rows(
        gp_schema.beneficiary,
        "code contract_id name status",
        ("B1", 1, "Ana", "active"),
        ("B2", 2, "Rui", "suspended"),
    ),
]

# Parameters of every shipped read query; the test below fails when a file is added without a case here.
PARAMS: dict[str, dict[str, Any]] = {
    "erp/credit_months_inactive": {},
    "erp/customer_keys": {},
    "erp/customer_next_code": {},
    "erp/customer_reference": {},
    "erp/customers_by_code": {"codes": [10, 20, 99]},
    "erp/invoice_changes": {"since": LATER, "window_start": dt.date(2026, 11, 19), "business_date": BD},
    "erp/invoice_items": {"invoice_ids": [1, 3]},
    "erp/invoices": {"business_date": BD},
    "erp/invoices_by_customer": {"business_date": BD, "customer_codes": [10]},
    "erp/last_quotes": {"business_date": BD},
    "erp/last_quotes_by_customer": {"business_date": BD, "customer_codes": [10, 20]},
    "erp/open_receivables_by_id": {"receivable_ids": [1, 2, 3]},
    "erp/overdue_receivables": {"due_on_or_before": dt.date(2026, 11, 15)},
    "erp/purchase_changes": {"since": LATER, "window_start": dt.date(2026, 11, 19), "business_date": BD},
    "erp/purchase_watermark": {},
    "erp/purchases_in_windows": {
        "since": dt.date(2026, 1, 1),
        "recent_since": dt.date(2026, 2, 10),
        "business_date": BD,
    },
    "erp/purchases_since": {"since": dt.date(2026, 1, 1), "business_date": BD},
    "erp/whatsapp_due_receivables": {"due_date": dt.date(2026, 11, 25), "company_codes": ["C1", "C2"]},
    "erp/whatsapp_order_stage_events": {"since": dt.datetime(2026, 11, 20), "until": dt.datetime(2026, 11, 22)},
    "gp/beneficiary_status": {},
}
STATEMENTS = ["erp/customer_upsert"]


def seed(engine: sa.Engine) -> sa.Engine:
    """The reference ERP and GP schemas (in one database: their table names do not clash) with ROWS."""
    erp_schema.metadata.create_all(engine)
    gp_schema.metadata.create_all(engine)
    with engine.begin() as conn:
        for table, table_rows in ROWS:
            conn.execute(table.insert(), table_rows)
    return engine


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def source_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """An ERP/GP database on each supported engine (a file for SQLite, so the Arrow path runs too)."""
    if request.param == "sqlite":
        yield seed(engine_from_url(f"sqlite:///{tmp_path / 'erp.db'}"))
    else:
        yield seed(request.getfixturevalue("pg_engine"))


def shipped() -> list[str]:
    return sorted(str(p.relative_to(SQL_DIR).with_suffix("")) for p in SQL_DIR.rglob("*.sql"))


def test_should_have_a_case_for_every_shipped_query():
    assert sorted([*PARAMS, *STATEMENTS]) == shipped()


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_should_run_every_shipped_query_and_return_its_contract(source_db, name):
    frame = read_frame(source_db, name, PARAMS[name])
    assert list(frame.columns) == load_query(name).column_names
    assert len(frame) > 0, f"{name} returned no rows on the seeded ERP: the case proves nothing"


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Plain Python values (Timestamps as dates where they hold none), for readable comparisons."""
    out = []
    for row in frame.to_dict("records"):
        clean = {}
        for k, v in row.items():
            if isinstance(v, pd.Timestamp):
                v = v.date() if v == v.normalize() else v.to_pydatetime()
            clean[k] = None if v is None or (not isinstance(v, str) and pd.isna(v)) else v
        out.append(clean)
    return out


def test_should_read_the_invoices_of_the_asked_customers_up_to_the_business_date(source_db):
    got = read_frame(source_db, "erp/invoices_by_customer", PARAMS["erp/invoices_by_customer"])
    assert sorted(records(got), key=lambda r: r["invoice_id"]) == [
        {
            "invoice_id": 1,
            "customer_code": 10,
            "issue_date": dt.date(2026, 1, 5),
            "total_value": 100.0,
            "invoice_number": "101",
            "cancelled": False,
        },
        {
            "invoice_id": 2,
            "customer_code": 10,
            "issue_date": dt.date(2026, 3, 1),
            "total_value": 250.5,
            "invoice_number": "102",
            "cancelled": True,
        },
    ]


def test_should_find_changed_customers_and_the_watermark(source_db):
    changed = read_frame(source_db, "erp/purchase_changes", PARAMS["erp/purchase_changes"])
    # 10: invoice 2 and quote 4 written at LATER; 20: invoice 5 dated inside (2026-11-19, BD]
    assert sorted(records(changed), key=lambda r: (r["customer_code"], r["changed_quotes"])) == [
        {"customer_code": 10, "changed_invoices": 1, "changed_quotes": 0},
        {"customer_code": 10, "changed_invoices": 0, "changed_quotes": 1},
        {"customer_code": 20, "changed_invoices": 1, "changed_quotes": 0},
    ]
    rows = read_frame(source_db, "erp/invoice_changes", PARAMS["erp/invoice_changes"])
    assert sorted(rows["invoice_id"]) == [2, 5]  # the same invoices, whole
    assert bool(rows.set_index("invoice_id").loc[2, "cancelled"]) is True
    assert pd.Timestamp(rows.set_index("invoice_id").loc[2, "updated_at"]) == pd.Timestamp(LATER)
    none = read_frame(
        source_db,
        "erp/purchase_changes",
        {"since": LATER + dt.timedelta(seconds=1), "window_start": BD, "business_date": BD},
    )
    assert none.empty
    watermark = read_frame(source_db, "erp/purchase_watermark")["watermark"].iloc[0]
    assert pd.Timestamp(watermark).to_pydatetime() == LATER


def test_should_aggregate_purchases_and_last_quotes_in_the_erp(source_db):
    got = read_frame(source_db, "erp/purchases_since", PARAMS["erp/purchases_since"]).sort_values("customer_code")
    assert records(got) == [
        {"customer_code": 10, "purchase_count": 1, "purchase_value": 100.0, "last_purchase_date": dt.date(2026, 1, 5)},
        {
            "customer_code": 20,
            "purchase_count": 2,
            "purchase_value": 100.0,
            "last_purchase_date": dt.date(2026, 11, 20),
        },
    ]
    quotes = read_frame(source_db, "erp/last_quotes_by_customer", PARAMS["erp/last_quotes_by_customer"])
    assert records(quotes) == [{"customer_code": 10, "last_quote_date": dt.date(2026, 6, 1)}]


def test_should_count_two_nested_purchase_windows_in_one_query(source_db):
    # customer 10: 5 Jan is in the longer window only (the cancelled and the later invoice never count);
    # customer 20: 10 Feb is the shorter window's first day, so it counts, and the day after it does not
    params = PARAMS["erp/purchases_in_windows"]
    for recent_since, recent_20 in ((dt.date(2026, 2, 10), (2, 100.0)), (dt.date(2026, 2, 11), (1, 19.75))):
        got = read_frame(source_db, "erp/purchases_in_windows", {**params, "recent_since": recent_since})
        assert records(got.sort_values("customer_code")) == [
            {"customer_code": 10, "purchase_count": 1, "purchase_value": 100.0, "recent_count": 0, "recent_value": 0.0},
            {
                "customer_code": 20,
                "purchase_count": 2,
                "purchase_value": 100.0,
                "recent_count": recent_20[0],
                "recent_value": recent_20[1],
            },
        ]
    # the longer window's columns are purchases_since.sql's
    alone = read_frame(source_db, "erp/purchases_since", PARAMS["erp/purchases_since"]).sort_values("customer_code")
    assert records(got.sort_values("customer_code")[["customer_code", "purchase_count", "purchase_value"]]) == records(
        alone[["customer_code", "purchase_count", "purchase_value"]]
    )


def test_should_read_only_unpaid_receivables(source_db):
    overdue = read_frame(source_db, "erp/overdue_receivables", PARAMS["erp/overdue_receivables"])
    assert records(overdue) == [
        {
            "receivable_id": 1,
            "customer_code": 10,
            "document_number": "101/1",
            "invoice_number": "1-101",
            "invoice_id": 1,
            "issue_date": dt.date(2026, 1, 5),
            "due_date": dt.date(2026, 11, 1),
            "amount": 100.0,
            "paid_amount": 20.0,
            "payment_method": "boleto",
            "bearer": "Banco Um",
        },
    ]
    still_open = read_frame(source_db, "erp/open_receivables_by_id", PARAMS["erp/open_receivables_by_id"])
    assert still_open["receivable_id"].tolist() == [1, 2]
    due = read_frame(source_db, "erp/whatsapp_due_receivables", PARAMS["erp/whatsapp_due_receivables"])
    assert due[["receivable_id", "digitable_line", "pix_code"]].to_dict("records") == [
        {"receivable_id": 2, "digitable_line": None, "pix_code": "00020126BR.GOV.BCB.PIX-C2-2"}
    ]


def test_should_write_erp_customers_through_the_write_contract(source_db):
    row = {
        "code": 30,
        "company_code": "C1",
        "name": "Gama SA",
        "short_name": "GAMA",
        "tax_id": "45723174000110",
        "person_type": "PJ",
        "email": "gama@example.com",
        "group_id": 1,
        "representative_id": 1,
        "carrier_id": 1,
        "bearer_id": 1,
        "payment_condition_id": 1,
        "phone1": "4133334444",
        "phone2": None,
        "fax1": None,
        "fax2": None,
        "address": "Rua A, 1",
        "district": None,
        "city": "Curitiba",
        "state": "PR",
        "postal_code": None,
        "country": "BR",
        "notes": None,
        "written_at": LATER,
    }
    with source_db.begin() as conn:
        assert execute(conn, "erp/customer_upsert", [row, {**row, "code": 10, "short_name": "ALPHA2"}]) == 2
    got = read_frame(source_db, "erp/customers_by_code", {"codes": [10, 30]}).set_index("code")
    assert got.loc[30, "name"] == "Gama SA" and got.loc[30, "phone1"] == "4133334444"
    assert got.loc[10, "short_name"] == "ALPHA2" and got.loc[10, "name"] == "Gama SA"
    assert int(read_frame(source_db, "erp/customer_next_code")["next_code"].iloc[0]) == 31


def test_should_not_let_sqlite_walk_the_issue_date_index_for_a_batch_of_customers(tmp_path):
    """The incremental invoice read looks customers up (or scans): never the issue_date index over every row."""
    import crm.sources as sources

    engine = seed(engine_from_url(f"sqlite:///{tmp_path / 'erp.db'}"))
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
        # The shape of a demo ERP at 20,000 customers, where a bare `issue_date <= ?` took that index.
        conn.exec_driver_sql("DELETE FROM sqlite_stat1 WHERE tbl = 'invoice'")
        for idx, stat in [
            ("ix_invoice_customer_code", "200000 10"),
            ("ix_invoice_issue_date", "200000 18"),
            ("ix_invoice_updated_at", "200000 1"),
        ]:
            conn.exec_driver_sql("INSERT INTO sqlite_stat1 VALUES ('invoice', ?, ?)", (idx, stat))
    engine.dispose()
    query = load_query("erp/invoices_by_customer")
    with engine.connect() as conn:
        for n in (1, 100, sources._EXPANDING_BATCH):
            sql, params = sources._compiled(conn, query, {"business_date": BD, "customer_codes": list(range(n))})
            plan = " / ".join(r[3] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))
            assert "ix_invoice_issue_date" not in plan, f"{n} customers: {plan}"
            if n <= 100:
                assert "ix_invoice_customer_code" in plan, f"{n} customers: {plan}"
