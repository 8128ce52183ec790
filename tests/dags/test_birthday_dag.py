"""crm_birthday_greetings end to end: dag.test() on a seeded demo, a real SMTP server on loopback, faults.

Who should be greeted is computed independently, in SQL over crm_account; a handful of accounts are
set up by hand for the cases the issue names (languages, opt-out, no e-mail, inactive, 29 February,
hostile name).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pendulum
import pytest

from crm.demo.smtp_sink import FaultyMailboxHandler, MailSink
from tests.dags.demo_env import smtp_conn, wire_demo

DAG_ID = "crm_birthday_greetings"
TZ = "America/Sao_Paulo"
BD = dt.date(2026, 11, 22)
HOSTILE = "{{ ''.__class__.__mro__ }}\r\nBcc: victim@evil.example"
# (locale, active, email, opt_out_email, birth_date, short_name) for hand-made accounts
SETUP = {
    "pt": ("pt_BR", 1, "joao.pt@example.com", 0, "1980-11-22", "João"),
    "pl": ("pl_PL", 1, "lucja.pl@example.pl", 0, "1975-11-22", "Łucja"),
    "ro": ("ro_RO", 1, "stefan.ro@example.ro", 0, "1990-11-22", "Ștefan"),
    "es": ("es_ES", 1, "ana.es@example.com", 0, "1991-11-22", "Ana"),
    "opted_out": ("pt_BR", 1, "nao.quero@example.com", 1, "1985-11-22", "Nuno"),
    "no_email": ("pt_BR", 1, None, 0, "1986-11-22", "Sem"),
    "inactive": ("pt_BR", 0, "inativo@example.com", 0, "1987-11-22", "Ivo"),
    "leap": ("pt_BR", 1, "bissexto@example.com", 0, "2000-02-29", "Bia"),
    "hostile": ("pt_BR", 1, "hostile@example.com", 0, "1970-11-22", HOSTILE),
}
EXPECTED_SQL = """
SELECT id, email FROM crm_account
WHERE birth_date IS NOT NULL AND strftime('%m-%d', birth_date) IN ({days})
  AND active = 1 AND email IS NOT NULL AND trim(email) <> '' AND opt_out_email = 0
ORDER BY id
"""


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crm.demo.generate import generate

    var = tmp_path_factory.mktemp("demo")
    generate(var, accounts=600, seed=5, business_date=BD)
    with sqlite3.connect(var / "crm.db") as conn:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM crm_account WHERE person_type = 'PF' AND birth_date IS NOT NULL "
                "AND strftime('%m-%d', birth_date) NOT IN ('11-22', '11-23', '02-28', '02-29', '03-01') "
                "ORDER BY id LIMIT ?",
                (len(SETUP),),
            )
        ]
        for account_id, (locale, active, email, opt_out, birth, short) in zip(ids, SETUP.values(), strict=True):
            conn.execute(
                "UPDATE crm_account SET locale = ?, active = ?, email = ?, opt_out_email = ?, birth_date = ?,"
                " short_name = ? WHERE id = ?",
                (locale, active, email, opt_out, birth, short, account_id),
            )
    return var


@pytest.fixture
def demo(seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtp_sink, airflow_db) -> Path:
    return wire_demo(monkeypatch, seeded, tmp_path, smtp_sink)


def expected(var: Path, day: dt.date = BD) -> dict[int, str]:
    days = [day.strftime("%m-%d")]
    if day.month == 2 and day.day == 28 and day.year % 4 != 0:
        days.append("02-29")
    with sqlite3.connect(var / "crm.db") as conn:
        sql = EXPECTED_SQL.format(days=", ".join("?" * len(days)))
        return dict(conn.execute(sql, days).fetchall())


SKIP_SQL = """
SELECT CASE WHEN active = 0 THEN 'inactive account'
            WHEN email IS NULL OR trim(email) = '' THEN 'no e-mail address'
            WHEN opt_out_email = 1 THEN 'opted out of e-mail' END AS reason, count(*)
FROM crm_account WHERE birth_date IS NOT NULL AND strftime('%m-%d', birth_date) = ?
GROUP BY reason HAVING reason IS NOT NULL
"""


def skip_reasons(var: Path, day: dt.date = BD) -> dict[str, int]:
    """How many of the day's birthday accounts must be skipped, per reason (in the job's order of checks)."""
    with sqlite3.connect(var / "crm.db") as conn:
        return dict(conn.execute(SKIP_SQL, (day.strftime("%m-%d"),)).fetchall())


def ledger_rows(var: Path) -> list[dict]:
    with sqlite3.connect(var / "crm.db") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM crm_notification ORDER BY id")]


def run_dag(dagbag, day: dt.date = BD, **conf):
    dag = dagbag.get_dag(DAG_ID)
    assert dag is not None, dagbag.import_errors
    # every Param explicitly: dag.test() keeps the previous run's conf in the DAG object's params
    conf = {
        "template": "birthday",
        "subject": "",
        "dry_run": False,
        "test_recipient": "",
        "notify_to": "ops@example.com",
    } | conf
    return dag.test(logical_date=pendulum.datetime(day.year, day.month, day.day, 8, 0, tz=TZ), run_conf=conf)


def greetings(sink: MailSink) -> list:
    return [m for m in sink.messages() if m["X-Envelope-To"] != "ops@example.com"]


def reports(sink: MailSink) -> list:
    return [m for m in sink.messages() if m["X-Envelope-To"] == "ops@example.com"]


def by_short_name(var: Path, key: str) -> int:
    with sqlite3.connect(var / "crm.db") as conn:
        return conn.execute("SELECT id FROM crm_account WHERE short_name = ?", (SETUP[key][5],)).fetchone()[0]


def test_should_greet_exactly_the_birthday_accounts_once_each_in_their_language(dagbag, demo, smtp_sink):
    want = expected(demo)
    assert len(want) >= 6
    run = run_dag(dagbag)
    assert run.state == "success"
    mails = greetings(smtp_sink)
    assert sorted(m["X-Envelope-To"] for m in mails) == sorted(want.values())
    subjects = {m["X-Envelope-To"]: m["Subject"] for m in mails}
    assert subjects["joao.pt@example.com"] == "Feliz aniversário, João!"
    assert subjects["lucja.pl@example.pl"] == "Wszystkiego najlepszego z okazji urodzin, Łucja!"
    assert subjects["stefan.ro@example.ro"] == "La mulți ani, Ștefan!"
    assert subjects["ana.es@example.com"] == "Happy birthday, Ana!"  # no Spanish files: the default
    pl = next(m for m in mails if m["X-Envelope-To"] == "lucja.pl@example.pl")
    company_name = pl["From"].addresses[0].display_name
    assert f"cały zespół {company_name} życzy" in pl.get_body(("plain",)).get_content()

    (report,) = reports(smtp_sink)
    assert "success" in report["Subject"] and f"{len(want)} sent" in report["Subject"]
    (csv_part,) = list(report.iter_attachments())
    assert csv_part.get_filename().endswith("-ledger.csv")
    csv_text = csv_part.get_content() if isinstance(csv_part.get_content(), str) else csv_part.get_content().decode()
    assert "nao.quero@example.com" in csv_text and "opted out of e-mail" in csv_text

    rows = ledger_rows(demo)
    sent = {r["account_id"] for r in rows if r["state"] == "sent"}
    assert sent == set(want)
    skipped = {r["account_id"]: r["reason"] for r in rows if r["state"] == "skipped"}
    assert skipped[by_short_name(demo, "opted_out")] == "opted out of e-mail"
    assert skipped[by_short_name(demo, "no_email")] == "no e-mail address"
    assert skipped[by_short_name(demo, "inactive")] == "inactive account"
    assert by_short_name(demo, "leap") not in {r["account_id"] for r in rows}

    with sqlite3.connect(demo / "crm.db") as conn:
        status, summary = conn.execute("SELECT status, summary FROM crm_routine_run").fetchone()
    summary = json.loads(summary)
    assert status == "success"
    assert summary["notifications"]["sent"] == len(want)
    # every skip reason counted, each exactly as the accounts say
    by_reason = skip_reasons(demo)
    assert set(by_reason) == {"opted out of e-mail", "no e-mail address", "inactive account"}
    assert summary["notifications"]["skipped_by_reason"] == by_reason
    assert summary["notifications"]["skipped"] == sum(by_reason.values())
    lines = report.get_body(("plain",)).get_content().splitlines()
    for reason, n in by_reason.items():
        assert f"  skipped, {reason}: {n}" in lines


def test_should_send_nothing_twice_when_rerun_cleared_or_backfilled(dagbag, demo, smtp_sink):
    assert run_dag(dagbag).state == "success"
    first = len(greetings(smtp_sink))
    assert run_dag(dagbag).state == "success"  # the same date again (a re-run / a cleared run)
    assert run_dag(dagbag, BD, template="birthday_card").state == "success"  # even with another template
    assert len(greetings(smtp_sink)) == first
    # a backfill of the previous day greets that day's accounts once, and once only
    day_before = BD - dt.timedelta(days=1)
    assert run_dag(dagbag, day_before).state == "success"
    assert run_dag(dagbag, day_before).state == "success"
    assert len(greetings(smtp_sink)) == first + len(expected(demo, day_before))
    assert len(reports(smtp_sink)) == 5  # every run reports


def test_should_use_the_subject_param_and_the_chosen_template(dagbag, demo, smtp_sink):
    run = run_dag(dagbag, template="birthday_card", subject="Parabéns, {{ first_name }} — {{ company_name }}")
    assert run.state == "success"
    mail = next(m for m in greetings(smtp_sink) if m["X-Envelope-To"] == "joao.pt@example.com")
    assert mail["Subject"] == "Parabéns, João — " + mail["From"].addresses[0].display_name
    assert "hoje o dia é seu" in mail.get_body(("plain",)).get_content()


def test_should_greet_29_february_birthdays_on_28_february_in_common_years(dagbag, demo, smtp_sink):
    assert run_dag(dagbag, dt.date(2027, 2, 28)).state == "success"
    assert "bissexto@example.com" in {m["X-Envelope-To"] for m in greetings(smtp_sink)}
    assert sorted(m["X-Envelope-To"] for m in greetings(smtp_sink)) == sorted(
        expected(demo, dt.date(2027, 2, 28)).values()
    )
    smtp_sink.clear()
    assert run_dag(dagbag, dt.date(2028, 2, 28)).state == "success"  # leap year: not yet
    assert "bissexto@example.com" not in {m["X-Envelope-To"] for m in greetings(smtp_sink)}


def test_should_complete_with_one_message_each_when_the_server_defers_every_third(dagbag, demo, tmp_path, monkeypatch):
    handler = FaultyMailboxHandler(tmp_path / "faulty", tempfail_every=3)
    with MailSink(tmp_path / "faulty", handler=handler) as sink:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_conn(sink.host, sink.port))
        assert run_dag(dagbag).state == "success"
        got = sorted(m["X-Envelope-To"] for m in greetings(sink))
    assert got == sorted(expected(demo).values())
    assert handler.tempfailed >= len(got) // 3


def test_should_fail_a_refused_recipient_and_report_it(dagbag, demo, tmp_path, monkeypatch):
    handler = FaultyMailboxHandler(tmp_path / "faulty", refuse={"lucja.pl@example.pl"})
    with MailSink(tmp_path / "faulty", handler=handler) as sink:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_conn(sink.host, sink.port))
        assert run_dag(dagbag).state == "success"
        got = sorted(m["X-Envelope-To"] for m in greetings(sink))
        (report,) = reports(sink)
    want = sorted(e for e in expected(demo).values() if e != "lucja.pl@example.pl")
    assert got == want
    (row,) = [r for r in ledger_rows(demo) if r["recipient"] == "lucja.pl@example.pl"]
    assert row["state"] == "failed" and "550" in row["last_error"] and not row["retryable"]
    assert "1 failed" in report["Subject"]
    assert "lucja.pl@example.pl" in report.get_body(("plain",)).get_content()


def test_should_send_hostile_names_literally_and_refuse_hostile_params(dagbag, demo, smtp_sink):
    assert run_dag(dagbag).state == "success"
    (mail,) = [m for m in greetings(smtp_sink) if m["X-Envelope-To"] == "hostile@example.com"]
    assert mail["Subject"] == "Feliz aniversário, {{ ''.__class__.__mro__ }} Bcc: victim@evil.example!"
    assert "{{ ''.__class__.__mro__ }}" in mail.get_body(("plain",)).get_content()
    assert "Bcc" not in mail
    every_rcpt = {r for m in smtp_sink.messages() for r in m["X-Envelope-To"].split(", ")}
    assert "victim@evil.example" not in every_rcpt

    # a subject Param reaching for Python internals: every message fails in the sandbox, none is sent
    smtp_sink.clear()
    run = run_dag(dagbag, BD + dt.timedelta(days=1), subject="{{ ''.__class__.__mro__ }}")
    assert run.state == "success"
    assert greetings(smtp_sink) == []
    rows = [r for r in ledger_rows(demo) if r["business_date"] == str(BD + dt.timedelta(days=1))]
    assert rows and all(r["state"] in ("failed", "skipped") for r in rows)
    assert any("sandbox" in (r["last_error"] or "") for r in rows)


def test_should_refuse_cr_lf_in_the_subject_param_before_anything_is_planned(dagbag, demo, smtp_sink):
    from crm.jobs.birthday import compile_subject
    from crm.notify.email import HeaderInjection
    from crm.notify.templates import Templates

    with pytest.raises(HeaderInjection):
        compile_subject(Templates("email"), "Hi\r\nBcc: victim@evil.example")
    with pytest.raises(Exception, match="does not match"):  # the trigger form's own check (Param pattern)
        run_dag(dagbag, subject="Hi\r\nBcc: victim@evil.example")
    assert smtp_sink.messages() == [] and ledger_rows(demo) == []


def test_should_only_render_and_report_in_a_dry_run_and_redirect_with_test_recipient(dagbag, demo, smtp_sink):
    assert run_dag(dagbag, dry_run=True).state == "success"
    assert greetings(smtp_sink) == [] and ledger_rows(demo) == []
    (report,) = reports(smtp_sink)
    assert "Sample renders" in report.get_body(("plain",)).get_content()

    smtp_sink.clear()
    assert run_dag(dagbag, test_recipient="qa@example.com").state == "success"
    tests = greetings(smtp_sink)
    assert {m["X-Envelope-To"] for m in tests} == {"qa@example.com"} and len(tests) == len(expected(demo))
    assert all(m["X-CRM-Test-Original-To"] for m in tests)
    # a real run afterwards still greets the real people: test sends are not recorded as theirs
    smtp_sink.clear()
    assert run_dag(dagbag).state == "success"
    real = greetings(smtp_sink)
    assert sorted(m["X-Envelope-To"] for m in real) == sorted(expected(demo).values())
    # ... under their own Message-IDs: a mail system that saw the test must not take the real one for it
    test_ids = {m["X-CRM-Business-Key"]: m["Message-ID"] for m in tests}
    real_ids = {m["X-CRM-Business-Key"]: m["Message-ID"] for m in real}
    assert test_ids.keys() == real_ids.keys()
    assert all(test_ids[k] != real_ids[k] for k in real_ids)
    account = by_short_name(demo, "pt")
    assert real_ids[f"account {account} / {BD}"].startswith(f"<birthday.{account}.{BD}@")


def test_should_fail_at_once_on_a_malformed_notify_to_and_mail_nobody(dagbag, demo, smtp_sink):
    with pytest.raises(Exception, match=r"Invalid input for param notify_to: 'ops@example\.com, ops-at-example\.com'"):
        run_dag(dagbag, notify_to="ops@example.com, ops-at-example.com")
    assert smtp_sink.messages() == [] and ledger_rows(demo) == []


SEND_SCRIPT = """
import sys
from crm.db import engine_from_url
from crm.notify.dispatch import dispatch, email_sender
from crm.notify.email import SmtpChannel
with SmtpChannel() as channel:
    dispatch(engine_from_url(sys.argv[1]), sys.argv[2], email_sender(channel), run_id=sys.argv[3],
             owner="crm_birthday_greetings/run/send_greetings/-1", try_number=int(sys.argv[4]), batch=50)
"""


@pytest.mark.parametrize("where", ["rcpt", "data"])
def test_should_never_send_twice_when_the_sender_is_killed_mid_batch(seeded, tmp_path, monkeypatch, where):
    """Kill -9 the sending process at message k+1, then retry: n messages in total (k+1 unknown if in DATA)."""
    from crm.db import engine_from_url
    from crm.jobs.birthday import plan_birthdays
    from crm.notify import ledger

    mail = tmp_path / "mail"
    k = 3
    handler = FaultyMailboxHandler(mail, **{f"stall_at_{where}": k + 1})
    with MailSink(mail, handler=handler) as sink:
        var = wire_demo(monkeypatch, seeded, tmp_path, sink)
        url = f"sqlite:///{var / 'crm.db'}"
        crm = engine_from_url(url)
        plan = plan_birthdays(crm, BD)
        n = sum(1 for it in plan.items if it.state == "pending")
        ledger.plan(crm, DAG_ID, "email", plan.items, run_id="run", business_date=BD)
        env = {**os.environ, "PYTHONPATH": str(Path(ledger.__file__).parents[2])}
        args = [sys.executable, "-c", SEND_SCRIPT, url, DAG_ID, "run"]
        proc = subprocess.Popen([*args, "1"], env=env)
        assert handler.stalled.wait(60), "the sender never reached the stall point"
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert len(sink.messages()) == k
        handler.release()
        retry = subprocess.run([*args, "2"], env=env, timeout=120)
        assert retry.returncode == 0
        got = [m["X-Envelope-To"] for m in sink.messages()]
    states = [r["state"] for r in ledger_rows(var) if r["state"] != "skipped"]
    assert len(got) == len(set(got))  # never twice
    if where == "rcpt":  # killed before DATA: the message never left, the retry sends it
        assert len(got) == n and states.count("sent") == n
    else:  # killed during DATA: it may have arrived; reported unknown, not resent
        assert len(got) == n - 1 and states.count("unknown") == 1 and states.count("sent") == n - 1


def test_should_keep_the_run_successful_when_only_its_report_is_refused(dagbag, demo, tmp_path, monkeypatch):
    """The greetings went out and the run's row is written; the report's 550 fails the report task, not the run."""
    handler = FaultyMailboxHandler(tmp_path / "faulty", refuse={"ops@example.com"})
    report_task = dagbag.get_dag(DAG_ID).get_task("send_run_report")
    monkeypatch.setattr(report_task, "retries", 0)  # dag.test() would otherwise wait for the retry delay
    with MailSink(tmp_path / "faulty", handler=handler) as sink:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_conn(sink.host, sink.port))
        run = run_dag(dagbag)
        got = sorted(m["X-Envelope-To"] for m in greetings(sink))
        assert reports(sink) == []
    assert run.state == "failed"  # Airflow shows the report task failed
    assert got == sorted(expected(demo).values())
    with sqlite3.connect(demo / "crm.db") as conn:
        status, summary = conn.execute("SELECT status, summary FROM crm_routine_run").fetchone()
    summary = json.loads(summary)
    assert status == "success" and "error" not in summary  # the failure callback did not turn it into a failure
    assert summary["report"].startswith("not delivered to ops@example.com") and "550" in summary["report"]
