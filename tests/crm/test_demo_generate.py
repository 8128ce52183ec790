"""The demo data generator: deterministic, schema-valid, and carrying every edge case the routines handle.

Why: the end-to-end DAG tests and the benchmarks run against these databases; an edge case missing
from the demo is an untested branch, and data that changes between runs makes failures unrepeatable.
"""

from __future__ import annotations

import datetime as dt
import itertools
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import sqlalchemy as sa

from crm.demo.generate import BUSINESS_DATE, generate

ACCOUNTS = 300
SEED = 7
BD = BUSINESS_DATE.isoformat()
DATABASES = ("crm.db", "erp.db", "gp.db")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("demo")
    return out, generate(out, ACCOUNTS, seed=SEED, log=None)


@pytest.fixture(scope="module")
def crm(demo: tuple[Path, dict[str, int]]) -> Iterator[sqlite3.Connection]:
    """The CRM database with erp.db and gp.db attached as `erp` and `gp`."""
    out, _ = demo
    with closing(sqlite3.connect(out / "crm.db")) as con:
        con.execute("ATTACH DATABASE ? AS erp", (str(out / "erp.db"),))
        con.execute("ATTACH DATABASE ? AS gp", (str(out / "gp.db"),))
        yield con


def one(con: sqlite3.Connection, sql: str, *params: object) -> object:
    return con.execute(sql, params).fetchone()[0]


def dump(out: Path) -> dict[str, list[str]]:
    result = {}
    for name in DATABASES:
        with closing(sqlite3.connect(out / name)) as con:
            result[name] = list(con.iterdump())
    return result


def cpf_is_valid(cpf: str) -> bool:
    if len(cpf) != 11 or not cpf.isdigit() or len(set(cpf)) == 1:
        return False
    d = [int(c) for c in cpf]
    return all(sum(d[i] * (n + 1 - i) for i in range(n)) * 10 % 11 % 10 == d[n] for n in (9, 10))


def cnpj_is_valid(cnpj: str) -> bool:
    if len(cnpj) != 14 or not cnpj.isdigit():
        return False
    d = [int(c) for c in cnpj]
    for n, weights in ((12, [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]), (13, [6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2])):
        r = sum(x * w for x, w in zip(d[:n], weights, strict=True)) % 11
        if (0 if r < 2 else 11 - r) != d[n]:
            return False
    return True


# --- determinism -------------------------------------------------------------------------------------


def test_should_write_identical_databases_for_the_same_seed(demo: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    out, counts = demo
    again = generate(tmp_path, ACCOUNTS, seed=SEED, log=None)
    assert again == counts
    assert dump(tmp_path) == dump(out)


def test_should_write_different_data_for_another_seed(demo: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    out, _ = demo
    generate(tmp_path, ACCOUNTS, seed=SEED + 1, log=None)
    first, other = dump(out), dump(tmp_path)
    for name in DATABASES:
        assert first[name] != other[name], name


def test_should_write_the_same_data_when_the_erp_database_is_written_by_a_second_process(tmp_path: Path) -> None:
    generate(tmp_path / "serial", 120, seed=3, log=None, parallel=False)
    generate(tmp_path / "parallel", 120, seed=3, log=None, parallel=True)
    assert dump(tmp_path / "serial") == dump(tmp_path / "parallel")


def test_should_replace_existing_databases_even_with_an_engine_open_on_them(tmp_path: Path) -> None:
    from crm.db import engine_from_url

    generate(tmp_path, 50, seed=1, log=None)
    engine = engine_from_url(f"sqlite:///{tmp_path / 'crm.db'}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from crm_account")).scalar() == 50
    generate(tmp_path, 80, seed=1, log=None)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from crm_account")).scalar() == 80
    engine.dispose()  # its WAL connection is what keeps crm.db-wal/-shm around
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(DATABASES)


# --- schema ------------------------------------------------------------------------------------------


def test_should_return_the_row_count_of_every_table(demo: tuple[Path, dict[str, int]]) -> None:
    out, counts = demo
    seen = {}
    for name in DATABASES:
        with closing(sqlite3.connect(out / name)) as con:
            tables = [r[0] for r in con.execute("select name from sqlite_master where type = 'table'")]
            seen |= {t: one(con, f'select count(*) from "{t}"') for t in tables if not t.startswith("sqlite_")}
    assert counts == seen
    assert counts["crm_account"] == ACCOUNTS
    assert counts["crm_account_profile"] == 0  # computed by crm_account_purchase_profile, not seeded


def test_should_satisfy_check_and_foreign_key_constraints(demo: tuple[Path, dict[str, int]]) -> None:
    out, _ = demo
    for name in DATABASES:
        with closing(sqlite3.connect(out / name)) as con:
            assert con.execute("pragma integrity_check").fetchall() == [("ok",)], name  # includes CHECKs
            assert con.execute("pragma foreign_key_check").fetchall() == [], name


def test_should_keep_the_schema_indexes(demo: tuple[Path, dict[str, int]]) -> None:
    from crm.db import crm_schema, erp_schema

    out, _ = demo
    for name, metadata in (("crm.db", crm_schema.metadata), ("erp.db", erp_schema.metadata)):
        expected = {ix.name for table in metadata.tables.values() for ix in table.indexes}
        with closing(sqlite3.connect(out / name)) as con:
            present = {r[0] for r in con.execute("select name from sqlite_master where type = 'index'")}
        assert expected <= present, name


def test_should_store_dates_that_sqlalchemy_reads_back_as_date_objects(demo: tuple[Path, dict[str, int]]) -> None:
    from crm.db import crm_schema, erp_schema, gp_schema

    out, _ = demo
    checks = [
        ("crm.db", crm_schema.account, ["birth_date", "created_at", "updated_at"]),
        ("crm.db", crm_schema.task, ["starts_at", "recurrence_until"]),
        ("erp.db", erp_schema.invoice, ["issue_date", "updated_at"]),
        ("erp.db", erp_schema.receivable, ["issue_date", "due_date", "paid_at"]),
        ("erp.db", erp_schema.order_stage_event, ["occurred_at"]),
        ("gp.db", gp_schema.contract, ["start_date", "end_date"]),
    ]
    for db, table, columns in checks:
        engine = sa.create_engine(f"sqlite:///{out / db}")
        with engine.connect() as conn:
            rows = conn.execute(sa.select(*(table.c[c] for c in columns))).all()
        engine.dispose()
        for i, column in enumerate(columns):
            values = [r[i] for r in rows if r[i] is not None]
            assert values, (table.name, column)
            expected = dt.datetime if isinstance(table.c[column].type, sa.DateTime) else dt.date
            assert all(type(v) is expected for v in values), (table.name, column)
            assert max(v if expected is dt.date else v.date() for v in values) <= BUSINESS_DATE + dt.timedelta(
                days=4 * 366
            )


# --- shapes and edge cases ---------------------------------------------------------------------------


def test_should_have_several_companies_with_their_timezones_and_locales(crm: sqlite3.Connection) -> None:
    rows = set(crm.execute("select timezone, locale from crm_company"))
    assert {("America/Sao_Paulo", "pt_BR"), ("Europe/Warsaw", "pl_PL"), ("Europe/Bucharest", "ro_RO")} <= rows
    assert one(crm, "select count(*) from crm_company where name like '%sp. z o.o.%'") == 1
    assert one(crm, "select count(*) from crm_company where name like '%S.R.L.%'") == 1
    users = crm.execute(
        "select count(*), sum(is_supervisor), sum(email is null), sum(mobile_phone is null) from crm_user"
    )
    count, supervisors, no_email, no_mobile = users.fetchone()
    assert 20 <= count <= 50 and supervisors >= 2 and no_email == 0 and no_mobile == 0


def test_should_only_use_example_domains_in_email_addresses(crm: sqlite3.Connection) -> None:
    for table in ("crm_account", "crm_contact", "crm_user", "crm_company", "erp.customer", "erp.representative"):
        bad = crm.execute(
            f"select email from {table} where email is not null and lower(email) not like '%@example.com'"
            " and lower(email) not like '%@example.pl' and lower(email) not like '%@example.ro'"
        ).fetchall()
        assert bad == [], table


def test_should_generate_valid_cpf_and_cnpj_for_brazilian_accounts(crm: sqlite3.Connection) -> None:
    rows = crm.execute(
        "select a.person_type, a.tax_id from crm_account a join crm_company c on c.id = a.company_id"
        " where c.code like 'BR%' and a.tax_id is not null"
    ).fetchall()
    cpfs = [t for p, t in rows if p == "PF"]
    cnpjs = [t for p, t in rows if p == "PJ"]
    assert cpfs and cnpjs
    assert all(map(cpf_is_valid, cpfs))
    assert all(map(cnpj_is_valid, cnpjs))
    assert len(set(cpfs + cnpjs)) == len(cpfs) + len(cnpjs)


def test_should_have_names_with_portuguese_polish_and_romanian_diacritics(crm: sqlite3.Connection) -> None:
    names = "".join(r[0] for r in crm.execute("select name from crm_account union all select name from crm_contact"))
    assert set("ãçéíóúâêô") & set(names)
    assert set("łżśąęńź") & set(names.lower())
    assert set("șțăîâ") & set(names.lower())


def test_should_have_29_february_birthdays_and_birthdays_on_the_business_date(crm: sqlite3.Connection) -> None:
    assert one(crm, "select count(*) from crm_account where strftime('%m-%d', birth_date) = '02-29'") >= 5
    assert one(crm, "select count(*) from crm_account where strftime('%m-%d', birth_date) = ?", BD[5:]) >= 3
    assert one(crm, "select count(*) from crm_account where person_type = 'PJ' and birth_date is not null") == 0


def test_should_leave_leads_and_some_accounts_without_erp_code(crm: sqlite3.Connection) -> None:
    without = one(crm, "select count(*) from crm_account where erp_customer_code is null")
    assert 0.08 * ACCOUNTS <= without <= 0.25 * ACCOUNTS
    leads, leads_without = crm.execute(
        "select count(*), sum(erp_customer_code is null) from crm_account where kind = 'lead'"
    ).fetchone()
    assert leads > 0 and leads_without >= 0.9 * leads


def test_should_have_an_erp_customer_for_every_crm_code_and_erp_only_customers(crm: sqlite3.Connection) -> None:
    assert (
        one(
            crm,
            "select count(*) from crm_account a where a.erp_customer_code is not null"
            " and not exists (select 1 from erp.customer c where c.code = a.erp_customer_code)",
        )
        == 0
    )
    assert (
        one(
            crm,
            "select count(*) from erp.customer c where not exists"
            " (select 1 from crm_account a where a.erp_customer_code = c.code)",
        )
        > 0
    )


def test_should_have_customers_without_invoices(crm: sqlite3.Connection) -> None:
    customers = one(crm, "select count(*) from erp.customer")
    without = one(
        crm,
        "select count(*) from erp.customer c"
        " where not exists (select 1 from erp.invoice i where i.customer_code = c.code)",
    )
    assert 0.05 * customers <= without <= 0.3 * customers


def test_should_have_skewed_invoice_counts_with_the_requested_mean(crm: sqlite3.Connection) -> None:
    total = one(crm, "select count(*) from erp.invoice")
    assert 0.8 * ACCOUNTS * 10 <= total <= 1.25 * ACCOUNTS * 10
    counts = sorted(r[0] for r in crm.execute("select count(*) from erp.invoice group by customer_code"))
    assert counts[len(counts) // 2] <= 5  # the median customer buys little
    assert counts[-1] >= 50  # a few buy a lot


def test_should_have_same_day_and_cancelled_invoices(crm: sqlite3.Connection) -> None:
    same_day = one(
        crm,
        "select count(*) from (select customer_code, issue_date from erp.invoice group by 1, 2 having count(*) > 1)",
    )
    assert same_day >= 2
    total, cancelled = crm.execute("select count(*), sum(cancelled) from erp.invoice").fetchone()
    assert 1 <= cancelled <= 0.05 * total


def test_should_number_invoices_mostly_in_issue_date_order_over_ten_years(crm: sqlite3.Connection) -> None:
    dates = [r[0] for r in crm.execute("select issue_date from erp.invoice order by id")]
    inversions = sum(b < a for a, b in itertools.pairwise(dates))
    assert 0 < inversions < 0.2 * len(dates)
    assert dates[-1] <= BD and min(dates) >= str(BUSINESS_DATE.year - 11)
    assert one(crm, "select max(updated_at) from erp.invoice") < (BUSINESS_DATE + dt.timedelta(days=1)).isoformat()
    numbers = crm.execute(
        "select count(*), count(distinct company_code || '/' || series || '/' || number) from erp.invoice"
    )
    assert len(set(numbers.fetchone())) == 1


def test_should_have_open_receivables_overdue_and_not_yet_due_for_boleto_and_pix_carne(crm: sqlite3.Connection) -> None:
    for method in ("boleto", "pix_carne"):
        overdue = one(
            crm,
            "select count(*) from erp.receivable where status = 'open' and not paid and payment_method = ?"
            " and due_date between date(?, '-60 days') and date(?, '-1 day')",
            method,
            BD,
            BD,
        )
        due_soon = one(
            crm,
            "select count(*) from erp.receivable where status = 'open' and not paid and payment_method = ?"
            " and due_date between ? and date(?, '+10 days')",
            method,
            BD,
            BD,
        )
        assert overdue > 0 and due_soon > 0, method
    assert (
        one(crm, "select count(*) from erp.receivable where status = 'open' and due_date < date(?, '-60 days')", BD)
        == 0
    )
    assert one(crm, "select count(*) from erp.receivable where paid and paid_at is not null") > 0
    assert one(crm, "select count(*) from erp.receivable where payment_method = 'other'") > 0


def test_should_have_contacts_with_the_listed_job_functions(crm: sqlite3.Connection) -> None:
    functions = {
        r[0]
        for r in crm.execute("select j.name from crm_contact c join crm_job_function j on j.id = c.job_function_id")
    }
    listed = {"Conta", "Contabilidade", "Manager", "Management", "Director", "Financeiro", "Compras", "Vendas"}
    assert listed <= functions
    assert one(crm, "select count(*) from crm_contact where job_function_id is null") > 0
    assert (
        one(
            crm,
            "select count(*) from crm_contact c join crm_account a on a.id = c.account_id where a.person_type = 'PF'",
        )
        == 0
    )


def test_should_have_pj_partners_without_a_contact_matching_the_dunning_patterns(crm: sqlite3.Connection) -> None:
    unmatched = one(
        crm,
        "select count(*) from crm_account a where a.person_type = 'PJ'"
        " and exists (select 1 from crm_contact c where c.account_id = a.id)"
        " and not exists (select 1 from crm_contact c join crm_job_function j on j.id = c.job_function_id"
        "   where c.account_id = a.id and (j.name like 'Conta%' or j.name like '%Manage%'))",
    )
    assert unmatched >= 3


def test_should_have_inactive_pj_partners_with_overdue_receivables(crm: sqlite3.Connection) -> None:
    partners = one(
        crm,
        "select count(distinct a.id) from crm_account a join erp.receivable r on r.customer_code = a.erp_customer_code"
        " where not a.active and a.person_type = 'PJ' and r.status = 'open' and r.due_date < ?",
        BD,
    )
    assert partners >= 3


def test_should_have_typed_phones_and_accounts_without_mobile(crm: sqlite3.Connection) -> None:
    types = {r[0] for r in crm.execute("select distinct phone_type from crm_phone")}
    assert {"mobile", "landline", "commercial"} <= types
    no_mobile = one(
        crm,
        "select count(*) from crm_account a where not exists"
        " (select 1 from crm_phone p where p.account_id = a.id and p.phone_type = 'mobile')",
    )
    assert 0 < no_mobile < ACCOUNTS
    assert one(crm, "select count(*) from crm_phone where contact_id is not null") > 0


def test_should_have_opt_outs_missing_emails_and_inactive_accounts(crm: sqlite3.Connection) -> None:
    row = crm.execute(
        "select sum(email is null), sum(opt_out_email), sum(opt_out_sms), sum(opt_out_whatsapp), sum(not active)"
        " from crm_account"
    ).fetchone()
    assert all(v > 0 for v in row), row


def test_should_have_gp_contracts_of_every_status_for_the_beneficiary_codes(crm: sqlite3.Connection) -> None:
    assert {r[0] for r in crm.execute("select distinct status from gp.contract")} == {
        "active",
        "suspended",
        "cancelled",
    }
    with_code = one(crm, "select count(*) from crm_account where gp_beneficiary_code is not null")
    known = one(
        crm,
        "select count(*) from crm_account a join gp.beneficiary b on b.code = a.gp_beneficiary_code",
    )
    assert with_code > 0 and known >= 0.9 * with_code


def test_should_have_movement_for_some_accounts_and_none_for_others(crm: sqlite3.Connection) -> None:
    idle = one(
        crm,
        "select count(*) from crm_account a where not exists (select 1 from crm_activity x where x.account_id = a.id)"
        " and not exists (select 1 from crm_opportunity x where x.account_id = a.id)"
        " and not exists (select 1 from crm_ticket x where x.account_id = a.id)",
    )
    assert 0 < idle < ACCOUNTS
    oldest = one(crm, "select min(occurred_at) from crm_activity")
    assert oldest >= (BUSINESS_DATE - dt.timedelta(days=731)).isoformat()


def test_should_configure_classes_rules_profiles_audiences_tasks_and_whatsapp(crm: sqlite3.Connection) -> None:
    assert one(crm, "select count(*) from crm_class") >= 4
    measures = {r[0] for r in crm.execute("select distinct measure from crm_class_transition_rule")}
    assert measures == {"accumulated_value", "purchase_count", "days_since_last_purchase"}
    profiles = dict(crm.execute("select code, transfer from crm_inactivity_profile"))
    assert profiles == {"90_DAYS_NOTIFY": 0, "180_DAYS_TRANSFER": 1}
    members = dict(crm.execute("select a.code, count(m.account_id) from crm_audience a left join crm_audience_member m"
                               " on m.audience_id = a.id group by a.code"))  # fmt: skip
    assert members["VIP"] > 0 and members["SP_CAPITAL"] > 0 and members["B2B"] > 0
    assert one(crm, "select count(*) from crm_reminder_settings") == one(crm, "select count(*) from crm_company")
    statuses = {r[0] for r in crm.execute("select distinct status from crm_task")}
    assert statuses == {"open", "completed", "cancelled"}
    freqs = {r[0] for r in crm.execute("select distinct recurrence_freq from crm_task")}
    assert {None, "weekly", "monthly"} <= freqs
    assert {r[0] for r in crm.execute("select distinct recipients from crm_task")} == {"customers", "operators", "both"}
    types = {r[0] for r in crm.execute("select message_type from crm_whatsapp_config")}
    assert {"due_boleto", "due_carne", "order_stage:shipped", "order_stage:delivered"} <= types
    assert one(crm, "select count(*) from crm_external_id") > 0


def test_should_have_recent_sales_orders_with_stage_events(crm: sqlite3.Connection) -> None:
    stages = {r[0] for r in crm.execute("select distinct stage from erp.order_stage_event")}
    assert {"created", "invoiced", "shipped", "delivered"} <= stages
    channels = {r[0] for r in crm.execute("select distinct channel from erp.sales_order")}
    assert {"infinite_shelf", "omni", "store"} <= channels
    first, last = crm.execute("select min(occurred_at), max(occurred_at) from erp.order_stage_event").fetchone()
    assert (
        first >= (BUSINESS_DATE - dt.timedelta(days=11)).isoformat()
        and last < (BUSINESS_DATE + dt.timedelta(days=1)).isoformat()
    )


def test_should_seed_through_the_demo_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crm.demo.__main__ import main

    assert main(["seed", "--accounts", "40", "--seed", "5", "--out", str(tmp_path), "--invoices-per-account", "3"]) == 0
    assert "crm_account" in capsys.readouterr().out
    with closing(sqlite3.connect(tmp_path / "crm.db")) as con:
        assert one(con, "select count(*) from crm_account") == 40
