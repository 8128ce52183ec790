"""crm_overdue_invoice_notices end to end: dag.test() on a seeded demo and a real SMTP server on loopback.

Who should be notified, and which contacts, is computed independently in SQL (LIKE over the
job-function names, the ERP attached); a few partners are set up by hand for the cases the issue
names (Conta vs Contabilidade, %Manage vs Manager/Management, a PF and an inactive partner with a
matching contact, a partner without one).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import sqlite3
from pathlib import Path

import pendulum
import pypdf
import pytest

from crm.demo.smtp_sink import MailSink
from tests.dags.demo_env import wire_demo

DAG_ID = "crm_overdue_invoice_notices"
TZ = "America/Sao_Paulo"
BD = dt.date(2026, 11, 22)  # a Sunday: ISO week 2026-W47
OPS = "ops@example.com"
FINANCE = "financeiro@example.com"
# hand-made contacts of the "functions" partner: (function, e-mail)
FUNCTION_CONTACTS = {
    "Conta": "conta@partner.example",
    "Contabilidade": "contabilidade@partner.example",
    "Gerente de Contas": "gerente@partner.example",
    "Manager": "manager@partner.example",
    "Management": "management@partner.example",
    "Director": "director@partner.example",
}


def _one(conn: sqlite3.Connection, sql: str, *args) -> int:
    return conn.execute(sql, args).fetchone()[0]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo with hand-made cases: ids of the special partners are stored in crm_audience 'TEST_*' rows."""
    from crm.demo.generate import generate

    var = tmp_path_factory.mktemp("overdue-demo")
    generate(var, accounts=600, seed=5, business_date=BD, log=None)
    with sqlite3.connect(var / "crm.db") as crm, sqlite3.connect(var / "erp.db") as erp:
        overdue_codes = {
            r[0]
            for r in erp.execute(
                "SELECT customer_code FROM receivable WHERE status IN ('open','in_progress') AND paid = 0 "
                "AND due_date <= ?",
                ((BD - dt.timedelta(days=3)).isoformat(),),
            )
        }
        pj = [
            r[0]
            for r in crm.execute(
                "SELECT id, erp_customer_code FROM crm_account WHERE person_type = 'PJ' AND active = 1 "
                "AND opt_out_email = 0 ORDER BY id"
            )
            if r[1] in overdue_codes
        ]
        functions_partner = pj[0]
        crm.execute("DELETE FROM crm_phone WHERE contact_id IN (SELECT id FROM crm_contact WHERE account_id = ?)",
                    (functions_partner,))  # fmt: skip
        crm.execute("DELETE FROM crm_contact WHERE account_id = ?", (functions_partner,))
        for name, email in FUNCTION_CONTACTS.items():
            fid = crm.execute("SELECT id FROM crm_job_function WHERE name = ?", (name,)).fetchone()
            fid = fid[0] if fid else crm.execute("INSERT INTO crm_job_function (name) VALUES (?)", (name,)).lastrowid
            crm.execute(
                "INSERT INTO crm_contact (account_id, name, email, job_function_id, locale, active, opt_out_email)"
                " VALUES (?, ?, ?, ?, 'pt_BR', 1, 0)",
                (functions_partner, f"Contato {name}", email, fid),
            )
        conta_id = _one(crm, "SELECT id FROM crm_job_function WHERE name = 'Conta'")
        # a person (PF) and an inactive partner, both with overdue bills and a matching contact: never e-mailed
        pf, pf_code = crm.execute(
            "SELECT id, erp_customer_code FROM crm_account WHERE person_type = 'PF' AND active = 1 "
            "AND erp_customer_code IS NOT NULL ORDER BY id LIMIT 1"
        ).fetchone()
        inactive, inactive_code = crm.execute(
            "SELECT id, erp_customer_code FROM crm_account WHERE person_type = 'PJ' AND active = 0 "
            "AND erp_customer_code IS NOT NULL ORDER BY id LIMIT 1"
        ).fetchone()
        for account_id, email in ((pf, "pf.conta@example.com"), (inactive, "inactive.conta@example.com")):
            crm.execute(
                "INSERT INTO crm_contact (account_id, name, email, job_function_id, locale, active, opt_out_email)"
                " VALUES (?, 'Never', ?, ?, 'pt_BR', 1, 0)",
                (account_id, email, conta_id),
            )
        next_id = _one(erp, "SELECT max(id) + 1 FROM receivable")
        for i, code in enumerate((pf_code, inactive_code)):
            erp.execute(
                "INSERT INTO receivable (id, customer_code, company_code, document_number, issue_date, due_date,"
                " amount, paid_amount, paid, payment_method, status, updated_at) VALUES"
                " (?, ?, 'BR01', ?, '2026-10-01', '2026-11-01', 100.0, 0, 0, 'boleto', 'open', '2026-10-01 10:00:00')",
                (next_id + i, code, f"NEVER-{i}"),
            )
        for code, name, account_id in (("TEST_FUNCTIONS", "t", functions_partner), ("TEST_PF", "t", pf),
                                       ("TEST_INACTIVE", "t", inactive)):  # fmt: skip
            aid = crm.execute("INSERT INTO crm_audience (code, name) VALUES (?, ?)", (code, name)).lastrowid
            crm.execute("INSERT INTO crm_audience_member (audience_id, account_id) VALUES (?, ?)", (aid, account_id))
    return var


@pytest.fixture
def demo(seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtp_sink, airflow_db) -> Path:
    return wire_demo(monkeypatch, seeded, tmp_path, smtp_sink)


def special(var: Path, code: str) -> int:
    with sqlite3.connect(var / "crm.db") as conn:
        return _one(
            conn,
            "SELECT m.account_id FROM crm_audience_member m JOIN crm_audience a ON a.id = m.audience_id "
            "WHERE a.code = ?",
            code,
        )


def expected(var: Path, day: dt.date = BD, days: int = 3) -> tuple[dict[int, set[str]], set[int]]:
    """(partner id -> contact addresses to notify, partners that are errors), by SQL LIKE over the demo."""
    with sqlite3.connect(var / "crm.db") as conn:
        conn.execute("ATTACH DATABASE ? AS erp", (str(var / "erp.db"),))
        partners = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT a.id, a.opt_out_email FROM crm_account a WHERE a.person_type = 'PJ' AND a.active = 1 "
                "AND a.erp_customer_code IN (SELECT customer_code FROM erp.receivable WHERE status IN "
                "('open', 'in_progress') AND paid = 0 AND due_date <= ?)",
                ((day - dt.timedelta(days=days)).isoformat(),),
            )
        }
        contacts: dict[int, list[tuple[str, int]]] = {}
        for account_id, email, opt_out in conn.execute(
            "SELECT c.account_id, c.email, c.opt_out_email FROM crm_contact c "
            "JOIN crm_job_function f ON f.id = c.job_function_id WHERE c.active = 1 AND c.email IS NOT NULL "
            "AND (lower(f.name) LIKE 'conta%' OR lower(f.name) LIKE '%manage%')"
        ):
            contacts.setdefault(account_id, []).append((email, opt_out))
    notify = {
        p: {e for e, o in contacts[p] if not o}
        for p, opt_out in partners.items()
        if not opt_out and any(not o for _, o in contacts.get(p, []))
    }
    errors = {p for p, opt_out in partners.items() if not opt_out and not contacts.get(p)}
    return notify, errors


def run_dag(dagbag, day: dt.date = BD, **conf):
    dag = dagbag.get_dag(DAG_ID)
    assert dag is not None, dagbag.import_errors
    conf = {
        "audience": "",
        "days_overdue": 3,
        "contact_functions": "Conta, %Manage",
        "template": "overdue_3_days",
        "sender": "company",
        "copy_to": FINANCE,
        "invoice_format": "simple",
        "attach_statement": False,
        "dry_run": False,
        "test_recipient": "",
        "notify_to": OPS,
    } | conf
    return dag.test(logical_date=pendulum.datetime(day.year, day.month, day.day, 7, 0, tz=TZ), run_conf=conf)


def notices(sink: MailSink) -> list:
    return [m for m in sink.messages() if m["X-CRM-Routine"] == DAG_ID]


def reports(sink: MailSink) -> list:
    return [m for m in sink.messages() if m["X-CRM-Routine"] is None]


def partner_of(msg) -> int:
    return int(re.match(r"partner (\d+) / ", msg["X-CRM-Business-Key"]).group(1))


def addresses(msg, header: str) -> set[str]:
    return {a.addr_spec.lower() for a in msg[header].addresses} if msg[header] else set()


def pdf_text(content: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(content))
    assert reader.pages, "a PDF without pages"
    text = "\n".join(page.extract_text() for page in reader.pages)
    return text.replace("\xa0", " ").replace("\u202f", " ")


def receivables_of(var: Path, partner_id: int) -> list[tuple[str, float]]:
    with sqlite3.connect(var / "crm.db") as conn:
        conn.execute("ATTACH DATABASE ? AS erp", (str(var / "erp.db"),))
        return conn.execute(
            "SELECT r.document_number, r.amount - r.paid_amount FROM erp.receivable r "
            "JOIN crm_account a ON a.erp_customer_code = r.customer_code WHERE a.id = ? "
            "AND r.status IN ('open', 'in_progress') AND r.paid = 0 AND r.due_date <= ?",
            (partner_id, (BD - dt.timedelta(days=3)).isoformat()),
        ).fetchall()


def assert_invoice_pdfs(bills: list[tuple[str, float]], attachments) -> None:
    """One valid PDF per bill plus the statement; each bill's number and open amount in its PDF and the statement."""
    pdfs = [a for a in attachments if a.get_content_type() == "application/pdf"]
    assert len(pdfs) == len(bills) + 1  # one per invoice + the statement
    texts = [pdf_text(a.get_content()) for a in pdfs]
    for number, amount in bills:
        own = [t for t in texts if re.search(rf"{re.escape(number)}(?!\d)", t)]
        assert len(own) == 2, number  # its invoice and the statement
        cents = f"{amount:.2f}".replace(".", "")
        assert all(cents in re.sub(r"\D", "", t) for t in own), (number, amount)


def company_email(var: Path, partner_id: int) -> str:
    with sqlite3.connect(var / "crm.db") as conn:
        return _one(
            conn,
            "SELECT c.email FROM crm_company c JOIN crm_account a ON a.company_id = c.id WHERE a.id = ?",
            partner_id,
        )


def test_should_notify_the_right_partners_and_contacts_with_cc_and_pdf_invoices(dagbag, demo, smtp_sink):
    want, errors = expected(demo)
    assert len(want) >= 5 and errors
    run = run_dag(dagbag, attach_statement=True)
    assert run.state == "success"
    mails = notices(smtp_sink)
    assert sorted(partner_of(m) for m in mails) == sorted(want)  # one e-mail per partner, the right ones
    for m in mails:
        p = partner_of(m)
        assert addresses(m, "To") == {e.lower() for e in want[p]}
        assert addresses(m, "Cc") == {FINANCE}
        assert addresses(m, "From") == {company_email(demo, p)}
        assert FINANCE in m["X-Envelope-To"]
        assert_invoice_pdfs(receivables_of(demo, p), m.iter_attachments())

    functions_partner = special(demo, "TEST_FUNCTIONS")
    (m,) = [m for m in mails if partner_of(m) == functions_partner]
    assert addresses(m, "To") == {
        "conta@partner.example",
        "contabilidade@partner.example",
        "manager@partner.example",
        "management@partner.example",
    }
    every_rcpt = {r for m in smtp_sink.messages() for r in m["X-Envelope-To"].split(", ")}
    assert "pf.conta@example.com" not in every_rcpt and "inactive.conta@example.com" not in every_rcpt
    assert {special(demo, "TEST_PF"), special(demo, "TEST_INACTIVE")}.isdisjoint(partner_of(m) for m in mails)

    (report,) = reports(smtp_sink)
    body = report.get_body(("plain",)).get_content()
    assert "no matching contact" in body
    files = {a.get_filename(): a.get_payload(decode=True) for a in report.iter_attachments()}
    partners_csv = files[f"{DAG_ID}-partners.csv"].decode("utf-8-sig")
    rows = {int(r["partner_id"]): r for r in csv.DictReader(io.StringIO(partners_csv))}
    assert {p for p, r in rows.items() if r["state"] == "error"} == errors
    assert all("no matching contact" in rows[p]["reason"] for p in errors)
    assert {p for p, r in rows.items() if r["state"] == "notified"} == set(want)
    assert "conta@partner.example" in rows[functions_partner]["contacts"]


def test_should_send_nothing_new_when_rerun_in_the_same_iso_week(dagbag, demo, smtp_sink):
    assert run_dag(dagbag).state == "success"
    first = len(notices(smtp_sink))
    assert first > 0
    assert run_dag(dagbag).state == "success"  # the same date again
    assert run_dag(dagbag, BD - dt.timedelta(days=2), invoice_format="detailed").state == "success"  # Friday, W47
    assert len(notices(smtp_sink)) == first
    assert run_dag(dagbag, BD + dt.timedelta(days=1)).state == "success"  # Monday: week 48
    assert len(notices(smtp_sink)) == first + len(expected(demo, BD + dt.timedelta(days=1))[0])


def test_should_send_as_the_requesting_user_and_report_to_the_sender(dagbag, demo, smtp_sink):
    with sqlite3.connect(demo / "crm.db") as conn:  # dag.test() runs as user 'dag_test'
        login, email = conn.execute("SELECT login, email FROM crm_user WHERE active = 1 ORDER BY id").fetchone()
        conn.execute("UPDATE crm_user SET login = 'dag_test' WHERE login = ?", (login,))
    run = run_dag(dagbag, sender="user", notify_to="", audience="TEST_FUNCTIONS")
    assert run.state == "success"
    (m,) = notices(smtp_sink)
    assert addresses(m, "From") == {email} and addresses(m, "Reply-To") == {email}
    (report,) = reports(smtp_sink)
    assert report["X-Envelope-To"] == email  # the execution report goes to the sender

    smtp_sink.clear()
    run = run_dag(dagbag, BD + dt.timedelta(days=7), notify_to="", audience="TEST_FUNCTIONS")
    assert run.state == "success"
    (m,) = notices(smtp_sink)
    company = company_email(demo, special(demo, "TEST_FUNCTIONS"))
    assert addresses(m, "From") == {company}
    (report,) = reports(smtp_sink)
    assert report["X-Envelope-To"] == company


@pytest.mark.parametrize(
    ("functions", "message"),
    [
        ("%", "contact_functions: pattern '%' is only wildcards and would match every contact"),
        (" % , Conta", "contact_functions: pattern '%' is only wildcards and would match every contact"),
        ("Conta,,Manager", "contact_functions: an empty pattern (two commas in a row, or a trailing comma)"),
        ("x" * 300, "contact_functions: a pattern is 300 characters long; job functions have at most 80"),
    ],
    ids=["wildcard", "wildcard-in-list", "empty", "300-chars"],
)
def test_should_refuse_filters_that_would_widen_the_match(dagbag, demo, smtp_sink, functions, message):
    run = run_dag(dagbag, contact_functions=functions)
    assert run.state == "failed"
    assert notices(smtp_sink) == []
    with sqlite3.connect(demo / "crm.db") as conn:
        assert _one(conn, "SELECT count(*) FROM crm_notification") == 0
        status, summary = conn.execute("SELECT status, summary FROM crm_routine_run").fetchone()
    summary = json.loads(summary)
    assert status == "failed" and summary["failed_task"] == "plan_notices"
    assert summary["error"] == f"AirflowFailException: {message}"
    (report,) = reports(smtp_sink)  # the requester learns why, in the report
    assert "failed" in report["Subject"] and message in report.get_body(("plain",)).get_content()


@pytest.mark.parametrize("functions", ["x' OR 1=1 --", "_", "Conta_"])
def test_should_match_nothing_with_hostile_patterns(dagbag, demo, smtp_sink, functions):
    run = run_dag(dagbag, contact_functions=functions)
    assert run.state == "success"
    assert notices(smtp_sink) == []
    with sqlite3.connect(demo / "crm.db") as conn:
        states = {r[0] for r in conn.execute("SELECT state FROM crm_notification")}
    assert states <= {"failed", "skipped"}


def test_should_only_render_and_report_with_sample_pdfs_in_a_dry_run(dagbag, demo, smtp_sink):
    assert run_dag(dagbag, dry_run=True, attach_statement=True).state == "success"
    assert notices(smtp_sink) == []
    (report,) = reports(smtp_sink)
    assert "Sample renders" in report.get_body(("plain",)).get_content()
    # the sample PDFs are the first notice's (the lowest partner id): its invoices, numbers and amounts
    want, _ = expected(demo)
    assert_invoice_pdfs(receivables_of(demo, min(want)), report.iter_attachments())
    with sqlite3.connect(demo / "crm.db") as conn:
        assert _one(conn, "SELECT count(*) FROM crm_notification") == 0


def test_should_leave_out_a_receivable_paid_between_planning_and_sending(seeded, tmp_path, monkeypatch):
    """Plan, then the ERP records payments, then send: the paid bills are in neither the text nor the PDFs."""
    from crm.db import engine_from_url
    from crm.jobs import overdue
    from crm.notify import ledger
    from crm.notify.dispatch import dispatch
    from crm.notify.email import SmtpChannel

    with MailSink(tmp_path / "mail") as sink:
        var = wire_demo(monkeypatch, seeded, tmp_path, sink)
        crm, erp = engine_from_url(f"sqlite:///{var / 'crm.db'}"), engine_from_url(f"sqlite:///{var / 'erp.db'}")
        plan = overdue.plan_notices(crm, erp, BD, overdue.Options(attach_statement=True, copy_to=[FINANCE]))
        ledger.plan(crm, DAG_ID, "email", plan.items, run_id="run", business_date=BD)
        pending = [it for it in plan.items if it.state == "pending"]
        several = next(it for it in pending if len(it.payload["overdue"]["receivable_ids"]) >= 2)
        single = next(it for it in pending if it is not several)
        paid_id = several.payload["overdue"]["receivable_ids"][0]
        paid_ids = [paid_id, *single.payload["overdue"]["receivable_ids"]]
        with sqlite3.connect(var / "erp.db") as conn:
            paid_number = _one(conn, "SELECT document_number FROM receivable WHERE id = ?", paid_id)
            conn.execute(
                f"UPDATE receivable SET paid = 1, status = 'paid', paid_amount = amount "
                f"WHERE id IN ({', '.join('?' * len(paid_ids))})",
                paid_ids,
            )
        with SmtpChannel() as channel:
            result = dispatch(crm, DAG_ID, overdue.OverdueSender(channel, erp), run_id="run", owner="t", try_number=1)
        mails = notices(sink)
    assert result.sent == len(pending) - 1 and result.skipped == 1
    assert single.account_id not in {partner_of(m) for m in mails}
    (m,) = [m for m in mails if partner_of(m) == several.account_id]
    pdfs = [pdf_text(a.get_content()) for a in m.iter_attachments()]
    assert len(pdfs) == len(several.payload["overdue"]["receivable_ids"])  # one invoice fewer, + the statement
    for text in [m.get_body(("plain",)).get_content(), m.get_body(("html",)).get_content(), *pdfs]:
        assert not re.search(rf"{re.escape(paid_number)}(?!\d)", text)
    rows = {r["account_id"]: r for r in ledger.rows_of_run(crm, DAG_ID, "run")}
    assert rows[single.account_id]["state"] == "skipped"
    assert rows[single.account_id]["reason"] == overdue.PAID_BEFORE_SENDING
    assert rows[several.account_id]["state"] == "sent" and paid_number in rows[several.account_id]["last_error"]

    # the execution report's partners CSV lists what was sent, not what was planned
    files, summary = overdue.report_attachments(crm, erp, DAG_ID, "run", {"summary": {}})
    (partners_csv,) = [f for f in files if f.filename == f"{DAG_ID}-partners.csv"]
    report = {int(r["partner_id"]): r for r in csv.DictReader(io.StringIO(partners_csv.content.decode("utf-8-sig")))}
    sent_numbers = report[several.account_id]["invoices"].split()
    assert paid_number not in sent_numbers
    with sqlite3.connect(var / "erp.db") as conn:
        still_open = conn.execute(
            f"SELECT document_number, amount - paid_amount FROM receivable WHERE id IN "
            f"({', '.join('?' * len(several.payload['overdue']['receivable_ids']))}) AND paid = 0",
            several.payload["overdue"]["receivable_ids"],
        ).fetchall()
    assert sorted(sent_numbers) == sorted(n for n, _ in still_open)
    assert float(report[several.account_id]["open_total"]) == pytest.approx(sum(a for _, a in still_open))
    assert report[single.account_id]["state"] == "skipped" and report[single.account_id]["invoices"] == ""
    assert summary["partners_notified"] == len(pending) - 1
