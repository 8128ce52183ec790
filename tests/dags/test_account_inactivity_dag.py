"""crm_account_inactivity end to end: dag.test() on a seeded demo, a real SMTP server on loopback.

Which accounts are idle is computed independently, in SQL over the demo tables (and the ERP invoices),
and compared with what the routine listed, moved, recorded in the history and e-mailed.
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

from tests.dags.demo_env import wire_demo

DAG_ID = "crm_account_inactivity"
TZ = "America/Sao_Paulo"
BD = dt.date(2026, 11, 22)
REPORT_TO = "ops@example.com"
# CRM timestamps are naive UTC; the routine counts days in America/Sao_Paulo, UTC-3 all year (no DST since 2019)
IDLE_SQL = """
SELECT a.id FROM crm_account a
WHERE a.active = 1 AND date(a.created_at, '-3 hours') <= :start
  AND NOT EXISTS (SELECT 1 FROM crm_activity x WHERE x.account_id = a.id
                  AND date(x.occurred_at, '-3 hours') BETWEEN :start AND :bd)
  AND NOT EXISTS (SELECT 1 FROM crm_opportunity x WHERE x.account_id = a.id
                  AND (date(x.opened_at, '-3 hours') BETWEEN :start AND :bd
                       OR date(x.closed_at, '-3 hours') BETWEEN :start AND :bd))
  AND (:tickets = 0 OR NOT EXISTS (SELECT 1 FROM crm_ticket x WHERE x.account_id = a.id
                  AND (date(x.opened_at, '-3 hours') BETWEEN :start AND :bd
                       OR date(x.closed_at, '-3 hours') BETWEEN :start AND :bd)))
  AND NOT EXISTS (SELECT 1 FROM erp.invoice i WHERE i.customer_code = a.erp_customer_code AND NOT i.cancelled
                  AND i.issue_date BETWEEN :start AND :bd)
ORDER BY a.id
"""


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crm.demo.generate import generate

    var = tmp_path_factory.mktemp("demo")
    generate(var, accounts=500, seed=11, business_date=BD, log=None)
    return var


@pytest.fixture
def demo(seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtp_sink, airflow_db) -> Path:
    return wire_demo(monkeypatch, seeded, tmp_path, smtp_sink)


def query(var: Path, sql: str, params: dict | tuple = ()) -> list[tuple]:
    with sqlite3.connect(var / "crm.db") as conn:
        conn.execute("ATTACH DATABASE ? AS erp", (str(var / "erp.db"),))
        return conn.execute(sql, params).fetchall()


def expected_idle(var: Path, period: int, tickets: bool) -> list[int]:
    start = (BD - dt.timedelta(days=period)).isoformat()
    rows = query(var, IDLE_SQL, {"start": start, "bd": BD.isoformat(), "tickets": int(tickets)})
    return [r[0] for r in rows]


def profile(var: Path, code: str) -> dict:
    with sqlite3.connect(var / "crm.db") as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute("SELECT * FROM crm_inactivity_profile WHERE code = ?", (code,)).fetchone())


def run_dag(dagbag, **conf):
    dag = dagbag.get_dag(DAG_ID)
    assert dag is not None, dagbag.import_errors
    conf = {"profile": "90_DAYS_NOTIFY", "dry_run": False, "test_recipient": "", "notify_to": REPORT_TO} | conf
    return dag.test(logical_date=pendulum.datetime(BD.year, BD.month, BD.day, 6, 0, tz=TZ), run_conf=conf)


def notices(sink) -> list:
    return [m for m in sink.messages() if m["X-Envelope-To"] != REPORT_TO]


def reports(sink) -> list:
    return [m for m in sink.messages() if m["X-Envelope-To"] == REPORT_TO]


def csv_of(message) -> list[dict]:
    (part,) = [p for p in message.iter_attachments() if p.get_filename().startswith("inactive-accounts")]
    return list(csv.DictReader(io.StringIO(part.get_payload(decode=True).decode("utf-8-sig"))))


def test_should_transfer_idle_accounts_round_robin_with_history_and_notify_once(dagbag, demo, smtp_sink):
    p = profile(demo, "180_DAYS_TRANSFER")
    targets = json.loads(p["transfer_to_user_ids"])
    (supervisor,) = json.loads(p["notify_user_ids"])
    idle = expected_idle(demo, 180, tickets=True)
    owners_before = dict(query(demo, "SELECT id, owner_id FROM crm_account"))
    moving = [a for a in idle if owners_before[a] not in targets]
    assert len(moving) > 10 and len(targets) == 2

    run = run_dag(dagbag, profile="180_DAYS_TRANSFER")
    assert run.state == "success"

    owners_after = dict(query(demo, "SELECT id, owner_id FROM crm_account"))
    assert {a: owners_after[a] for a in moving} == {a: targets[i % 2] for i, a in enumerate(sorted(moving))}
    unchanged = {a for a in owners_before if a not in moving}
    assert all(owners_after[a] == owners_before[a] for a in unchanged)
    history = query(
        demo,
        "SELECT account_id, old_value, new_value, business_date FROM crm_account_history"
        " WHERE routine = ? AND field = 'owner_id' ORDER BY account_id",
        (DAG_ID,),
    )
    assert [h[0] for h in history] == sorted(moving)
    assert all(h[1] == (str(owners_before[h[0]]) if owners_before[h[0]] else None) for h in history)
    assert all(h[2] == str(owners_after[h[0]]) and h[3] == BD.isoformat() for h in history)

    (mail,) = notices(smtp_sink)  # one supervisor, one e-mail listing every idle account
    sup_email = query(demo, "SELECT email FROM crm_user WHERE id = ?", (supervisor,))[0][0]
    assert mail["X-Envelope-To"] == sup_email
    assert "transferida" in mail["Subject"]
    rows = csv_of(mail)
    assert sorted(int(r["account_id"]) for r in rows) == idle
    assert {int(r["account_id"]) for r in rows if r["transferred"] == "True"} == set(moving)
    (report,) = reports(smtp_sink)
    assert "success" in report["Subject"]
    names = [p.get_filename() for p in report.iter_attachments()]
    assert any(n.endswith("inactive-accounts.csv") for n in names) and any(n.endswith("-ledger.csv") for n in names)

    # The same date again: nothing moves, nothing is sent, the history does not grow.
    run = run_dag(dagbag, profile="180_DAYS_TRANSFER")
    assert run.state == "success"
    assert dict(query(demo, "SELECT id, owner_id FROM crm_account")) == owners_after
    assert len(query(demo, "SELECT id FROM crm_account_history WHERE routine = ?", (DAG_ID,))) == len(history)
    assert len(notices(smtp_sink)) == 1
    summary = json.loads(query(demo, "SELECT summary FROM crm_routine_run ORDER BY id DESC LIMIT 1")[0][0])
    assert summary["owner_changes_this_run"] == 0 and summary["transferred_on_this_date"] == len(moving)


def test_should_send_supervisors_everything_and_operators_only_their_accounts(dagbag, demo, smtp_sink):
    p = profile(demo, "90_DAYS_NOTIFY")
    notified = json.loads(p["notify_user_ids"])
    users = {u: (e, s) for u, e, s in query(demo, "SELECT id, email, is_supervisor FROM crm_user")}
    idle = expected_idle(demo, 90, tickets=False)
    owners = dict(query(demo, "SELECT id, owner_id FROM crm_account"))

    run = run_dag(dagbag)
    assert run.state == "success"
    mails = {m["X-Envelope-To"]: m for m in notices(smtp_sink)}
    operators = [u for u in notified if not users[u][1]]
    assert operators, "the demo profile notifies an operator too"
    for uid in notified:
        email, is_supervisor = users[uid]
        want = idle if is_supervisor else [a for a in idle if owners[a] == uid]
        if not want:
            assert email not in mails
            continue
        assert sorted(int(r["account_id"]) for r in csv_of(mails[email])) == want
    assert len(mails) == len(notified)
    # nothing transferred by a notify-only profile
    assert query(demo, "SELECT count(*) FROM crm_account_history WHERE routine = ?", (DAG_ID,))[0][0] == 0
    assert dict(query(demo, "SELECT id, owner_id FROM crm_account")) == owners


def test_should_change_and_send_nothing_on_a_dry_run(dagbag, demo, smtp_sink):
    owners = dict(query(demo, "SELECT id, owner_id FROM crm_account"))
    run = run_dag(dagbag, profile="180_DAYS_TRANSFER", dry_run=True)
    assert run.state == "success"
    assert dict(query(demo, "SELECT id, owner_id FROM crm_account")) == owners
    assert query(demo, "SELECT count(*) FROM crm_account_history")[0][0] == 0
    assert query(demo, "SELECT count(*) FROM crm_notification")[0][0] == 0
    assert notices(smtp_sink) == []
    (report,) = reports(smtp_sink)
    summary = json.loads(query(demo, "SELECT summary FROM crm_routine_run")[0][0])
    assert summary["dry_run_would_change_owners"] > 0 and summary["dry_run_would_send"] == 1
    assert "transferida" in report.get_body(("plain",)).get_content()  # a sample render


def test_should_fail_at_once_without_retries_on_an_unknown_profile(dagbag, demo, smtp_sink):
    run = run_dag(dagbag, profile="NO_SUCH_PROFILE")
    assert run.state == "failed"
    ti = next(t for t in run.get_task_instances() if t.task_id == "find_and_transfer")
    assert ti.state == "failed" and ti.try_number == 1
    summary = json.loads(query(demo, "SELECT summary FROM crm_routine_run")[0][0])
    assert "NO_SUCH_PROFILE" in summary["error"] and "90_DAYS_NOTIFY" in summary["error"]
    (report,) = reports(smtp_sink)
    assert "failed" in report["Subject"]
