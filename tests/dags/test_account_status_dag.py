"""crm_account_status end to end: dag.test() on a seeded demo, checked against an independent per-account computation.

The expected statuses are computed here account by account with dateutil (no pandas, no SQL
files), from the ERP tables themselves; a handful of customers are set up by hand for the month
boundary (bought exactly on the cutoff, one day before it), the default months inactive, a
cancelled purchase and the labels' languages.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sqlite3
from pathlib import Path

import pendulum
import pytest
from dateutil.relativedelta import relativedelta

from tests.dags.demo_env import wire_demo

DAG_ID = "crm_account_status"
TZ = "America/Sao_Paulo"
BD = dt.date(2026, 11, 22)
DEFAULT_MONTHS = 12
LABELS = {
    "erp": {
        "pt": {"active": "Ativo ERP", "inactive": "Inativo ERP", "not_integrated": "Não integrado ERP"},
        "pl": {"active": "Aktywny ERP", "inactive": "Nieaktywny ERP", "not_integrated": "Niezintegrowany z ERP"},
        "ro": {"active": "Activ ERP", "inactive": "Inactiv ERP", "not_integrated": "Neintegrat ERP"},
        "en": {"active": "Active ERP", "inactive": "Inactive ERP", "not_integrated": "Not integrated ERP"},
    },
    "gp": {
        "pt": {"active": "Ativo GP", "inactive": "Inativo GP", "not_integrated": "Não integrado GP"},
        "pl": {"active": "Aktywny GP", "inactive": "Nieaktywny GP", "not_integrated": "Niezintegrowany z GP"},
        "ro": {"active": "Activ GP", "inactive": "Inactiv GP", "not_integrated": "Neintegrat GP"},
        "en": {"active": "Active GP", "inactive": "Inactive GP", "not_integrated": "Not integrated GP"},
    },
}
# case -> (months_inactive in credit info or None, [(issue_date, cancelled)], account locale)
CASES = {
    "on_cutoff": (6, [("2026-05-22", 0)], "pt_BR"),  # 22 Nov - 6 months = 22 May: the first day that counts
    "day_before_cutoff": (6, [("2026-05-21", 0)], "pl_PL"),
    "default_months": (None, [("2025-11-22", 0)], "ro_RO"),  # no credit info value: 12 months
    "zero_months": (0, [("2025-11-21", 0)], "en_US"),  # 0 = unset: the default, and this is a day too early
    "only_cancelled": (24, [("2026-11-22", 1)], "es_ES"),  # no label in Spanish: the default labels
    "after_business_date": (24, [("2026-11-23", 0)], None),  # bought after the business date: ignored
}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crm.demo.generate import generate

    var = tmp_path_factory.mktemp("demo")
    generate(var, accounts=400, seed=23, business_date=BD)
    with sqlite3.connect(var / "crm.db") as crm, sqlite3.connect(var / "erp.db") as erp:
        picked = crm.execute(
            "SELECT id, erp_customer_code FROM crm_account WHERE erp_customer_code IS NOT NULL ORDER BY id LIMIT ?",
            (len(CASES),),
        ).fetchall()
        for (account_id, code), (months, invoices, locale) in zip(picked, CASES.values(), strict=True):
            crm.execute("UPDATE crm_account SET locale = ? WHERE id = ?", (locale, account_id))
            erp.execute("DELETE FROM receivable WHERE customer_code = ?", (code,))
            erp.execute(
                "DELETE FROM invoice_item WHERE invoice_id IN (SELECT id FROM invoice WHERE customer_code = ?)", (code,)
            )
            erp.execute("DELETE FROM invoice WHERE customer_code = ?", (code,))
            erp.execute("DELETE FROM credit_info WHERE customer_code = ?", (code,))
            erp.execute(
                "INSERT INTO credit_info (customer_code, months_inactive, updated_at) "
                "VALUES (?, ?, '2026-01-01 00:00:00')",
                (code, months),
            )
            for k, (day, cancelled) in enumerate(invoices):
                erp.execute(
                    "INSERT INTO invoice (customer_code, company_code, series, number, issue_date, total_value,"
                    " cancelled, updated_at) VALUES (?, 'BR01', '9', ?, ?, 100.0, ?, ?)",
                    (code, f"T-{code}-{k}", day, cancelled, f"{day} 10:00:00.000000"),
                )
    return var


@pytest.fixture
def demo(seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtp_sink, airflow_db) -> Path:
    return wire_demo(monkeypatch, seeded, tmp_path, smtp_sink)


def case_accounts(var: Path) -> dict[str, int]:
    with sqlite3.connect(var / "crm.db") as conn:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM crm_account WHERE erp_customer_code IS NOT NULL ORDER BY id LIMIT ?", (len(CASES),)
            )
        ]
    return dict(zip(CASES, ids, strict=True))


def label(source: str, code: str, locale: str | None, company_locale: str) -> str:
    for loc in (locale, company_locale):
        if loc:
            lang = loc.split("_")[0]
            if lang in LABELS[source]:
                return LABELS[source][lang][code]
            return LABELS[source]["en"][code]  # a locale without labels: the default ones
    return LABELS[source]["en"][code]


def expected_erp(var: Path, day: dt.date = BD) -> dict[int, tuple[str, str]]:
    """(erp_status, status_label) per account, account by account."""
    with sqlite3.connect(var / "crm.db") as crm, sqlite3.connect(var / "erp.db") as erp:
        accounts = crm.execute(
            "SELECT a.id, a.erp_customer_code, a.locale, c.locale FROM crm_account a JOIN crm_company c"
            " ON c.id = a.company_id"
        ).fetchall()
        months = dict(erp.execute("SELECT customer_code, months_inactive FROM credit_info").fetchall())
        purchases: dict[int, list[dt.date]] = {}
        for code, issued in erp.execute("SELECT customer_code, issue_date FROM invoice WHERE cancelled = 0"):
            purchases.setdefault(code, []).append(dt.date.fromisoformat(issued))
    out = {}
    for account_id, code, locale, company_locale in accounts:
        if code is None:
            status = "not_integrated"
        else:
            n = months.get(code)
            n = n if n and n >= 1 else DEFAULT_MONTHS
            cutoff = day - relativedelta(months=n)
            bought = any(cutoff <= d <= day for d in purchases.get(code, []))
            status = "active" if bought else "inactive"
        out[account_id] = (status, label("erp", status, locale, company_locale))
    return out


def expected_gp(var: Path, day: dt.date = BD) -> dict[int, str]:
    with sqlite3.connect(var / "crm.db") as crm, sqlite3.connect(var / "gp.db") as gp:
        accounts = crm.execute("SELECT id, gp_beneficiary_code FROM crm_account").fetchall()
        known = {
            code: (b_status, c_status, dt.date.fromisoformat(start), end and dt.date.fromisoformat(end))
            for code, b_status, c_status, start, end in gp.execute(
                "SELECT b.code, b.status, c.status, c.start_date, c.end_date FROM beneficiary b"
                " JOIN contract c ON c.id = b.contract_id"
            )
        }
    out = {}
    for account_id, code in accounts:
        if code is None or code not in known:
            out[account_id] = "not_integrated"
            continue
        b_status, c_status, start, end = known[code]
        covers = start <= day and (end is None or end >= day)
        out[account_id] = "active" if b_status == c_status == "active" and covers else "inactive"
    return out


def actual(var: Path, field: str = "erp_status") -> dict[int, tuple[str, str]]:
    with sqlite3.connect(var / "crm.db") as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(f"SELECT id, {field}, status_label FROM crm_account")}


def history(var: Path) -> list[tuple]:
    with sqlite3.connect(var / "crm.db") as conn:
        return conn.execute(
            "SELECT account_id, field, old_value, new_value, routine, run_id, business_date FROM crm_account_history"
            " ORDER BY id"
        ).fetchall()


def routine_runs(var: Path) -> list[dict]:
    with sqlite3.connect(var / "crm.db") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM crm_routine_run WHERE dag_id = ? ORDER BY id", (DAG_ID,))]


def csv_rows(mail) -> list[dict[str, str]]:
    (part,) = [p for p in mail.iter_attachments() if p.get_filename().endswith("-changes.csv")]
    return list(csv.DictReader(io.StringIO(part.get_payload(decode=True).decode("utf-8-sig"))))


def run_dag(dagbag, day: dt.date = BD, **conf):
    dag = dagbag.get_dag(DAG_ID)
    assert dag is not None, dagbag.import_errors
    conf = {"source": "erp", "default_months_inactive": DEFAULT_MONTHS, "dry_run": False, "notify_to": ""} | conf
    return dag.test(logical_date=pendulum.datetime(day.year, day.month, day.day, 4, tz=TZ), run_conf=conf)


def test_should_set_every_erp_status_and_label_write_history_and_mail_the_changes(dagbag, demo, smtp_sink):
    run = run_dag(dagbag, notify_to="ops@example.com")
    assert run.state == "success"

    want = expected_erp(demo)
    assert actual(demo) == want
    statuses = [s for s, _ in want.values()]
    assert {"active", "inactive", "not_integrated"} <= set(statuses)
    cases = case_accounts(demo)
    got = actual(demo)
    assert got[cases["on_cutoff"]] == ("active", "Ativo ERP")
    assert got[cases["day_before_cutoff"]] == ("inactive", "Nieaktywny ERP")
    assert got[cases["default_months"]] == ("active", "Activ ERP")
    assert got[cases["zero_months"]][0] == "inactive"
    assert got[cases["only_cancelled"]] == ("inactive", "Inactive ERP")
    assert got[cases["after_business_date"]][0] == "inactive"

    rows = history(demo)
    # one row per account: its status, from null (the label that follows it has no history row of its own)
    assert len(rows) == len(want) and {r[1] for r in rows} == {"erp_status"}
    status_rows = {r[0]: r for r in rows if r[1] == "erp_status"}
    assert {k: v[3] for k, v in status_rows.items()} == {k: v[0] for k, v in want.items()}
    assert {(r[2], r[4], r[6]) for r in rows} == {(None, DAG_ID, BD.isoformat())}

    (run_row,) = routine_runs(demo)
    summary = json.loads(run_row["summary"])
    assert run_row["status"] == "success"
    assert summary["status active"] == statuses.count("active")
    assert summary["change (none) -> inactive"] == statuses.count("inactive")
    assert summary["history rows"] == len(rows)

    (mail,) = smtp_sink.messages()
    assert mail["To"] == "ops@example.com" and DAG_ID in mail["Subject"] and "2026-11-22" in mail["Subject"]
    attached = csv_rows(mail)
    assert len(attached) == len(want)
    on_cutoff = next(r for r in attached if int(r["account_id"]) == cases["on_cutoff"])
    assert on_cutoff["new_status"] == "active" and on_cutoff["months_inactive"] == "6"
    assert on_cutoff["window_start"] == on_cutoff["last_purchase_date"] == "2026-05-22"


def test_should_change_nothing_when_the_date_is_run_again(dagbag, demo, smtp_sink):
    assert run_dag(dagbag, notify_to="ops@example.com").state == "success"
    before, rows = actual(demo), history(demo)

    assert run_dag(dagbag, notify_to="ops@example.com").state == "success"
    assert actual(demo) == before and history(demo) == rows
    second = json.loads(routine_runs(demo)[-1]["summary"])
    assert second["accounts changed"] == 0 and second["history rows"] == 0
    assert csv_rows(smtp_sink.messages()[-1]) == []


def test_should_audit_a_label_that_moved_alone_when_the_account_changed_language(dagbag, demo):
    assert run_dag(dagbag, notify_to="ops@example.com").state == "success"
    with sqlite3.connect(demo / "crm.db") as conn:
        (account_id,) = conn.execute(
            "SELECT id FROM crm_account WHERE locale = 'pt_BR' AND erp_status = 'active' ORDER BY id LIMIT 1"
        ).fetchone()
        conn.execute("UPDATE crm_account SET locale = 'pl_PL' WHERE id = ?", (account_id,))
    before = history(demo)

    assert run_dag(dagbag, notify_to="ops@example.com").state == "success"

    added = history(demo)[len(before) :]
    assert [(r[0], r[1], r[2], r[3]) for r in added] == [(account_id, "status_label", "Ativo ERP", "Aktywny ERP")]
    assert actual(demo)[account_id] == ("active", "Aktywny ERP")


def test_should_write_only_the_accounts_whose_status_moved_on_a_later_date(dagbag, demo):
    assert run_dag(dagbag, notify_to="ops@example.com").state == "success"
    first = actual(demo)
    later = dt.date(2027, 6, 1)
    assert run_dag(dagbag, later, notify_to="ops@example.com").state == "success"
    want = expected_erp(demo, later)
    assert actual(demo) == want
    moved = {k for k in want if want[k] != first[k]}
    assert moved  # six months on, some customers went inactive
    new_rows = [r for r in history(demo) if r[6] == later.isoformat()]
    assert {r[0] for r in new_rows} == moved
    assert all(r[2] == first[r[0]][0] for r in new_rows if r[1] == "erp_status")  # old value kept in the history


def test_should_change_nothing_in_a_dry_run_but_report_what_would_change(dagbag, demo, smtp_sink):
    run = run_dag(dagbag, dry_run=True, notify_to="ops@example.com")
    assert run.state == "success"
    assert set(actual(demo).values()) == {(None, None)} and history(demo) == []
    summary = json.loads(routine_runs(demo)[-1]["summary"])
    assert summary["dry_run"] is True and summary["accounts changed"] == len(expected_erp(demo))
    attached = csv_rows(smtp_sink.messages()[-1])
    assert {int(r["account_id"]): r["new_status"] for r in attached} == {k: v[0] for k, v in expected_erp(demo).items()}


def test_should_take_the_status_from_the_gp_when_asked(dagbag, demo, smtp_sink):
    run = run_dag(dagbag, source="gp", notify_to="ops@example.com")
    assert run.state == "success"
    want = expected_gp(demo)
    got = actual(demo, "gp_status")
    assert {k: v[0] for k, v in got.items()} == want
    assert {"active", "inactive", "not_integrated"} <= set(want.values())
    with sqlite3.connect(demo / "crm.db") as conn:
        assert conn.execute("SELECT count(*) FROM crm_account WHERE erp_status IS NOT NULL").fetchone() == (0,)
        labels = dict(conn.execute("SELECT id, status_label FROM crm_account WHERE locale = 'pt_BR'").fetchall())
    assert {labels[k] for k in labels} <= set(LABELS["gp"]["pt"].values())
    assert {r[1] for r in history(demo)} == {"gp_status"}
    assert json.loads(routine_runs(demo)[-1]["summary"])["source"] == "gp"
