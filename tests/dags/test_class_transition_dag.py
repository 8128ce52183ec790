"""crm_class_transition end to end: dag.test() on a seeded demo, against an independent per-account evaluation.

The purchase profile is loaded first (its job, as the Asset-triggering DAG would). The expected
class of every account is computed here, account by account, from the ERP invoices with dateutil
and the rules as stored: no pandas, no SQL file, no code of the routine.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import operator
import sqlite3
from pathlib import Path

import pendulum
import pytest
from dateutil.relativedelta import relativedelta

from tests.dags.demo_env import wire_demo

DAG_ID = "crm_class_transition"
TZ = "America/Sao_Paulo"
BD = dt.date(2026, 11, 22)
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "=": operator.eq, "!=": operator.ne}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crm.db import engine_from_url
    from crm.demo.generate import generate
    from crm.jobs import purchase_profile

    var = tmp_path_factory.mktemp("demo")
    generate(var, accounts=500, seed=31, business_date=BD)
    with sqlite3.connect(var / "crm.db") as conn:  # the fourth measure, end to end: long-time Bronze -> Silver
        conn.execute(
            "INSERT INTO crm_class_transition_rule (id, from_class_id, to_class_id, measure, operator, threshold,"
            " window_months, priority, active, description)"
            " VALUES (7, 1, 2, 'months_as_customer', '>=', 60, NULL, 35, 1, 'Bronze -> Silver after 5 years')"
        )
    crm, erp = engine_from_url(f"sqlite:///{var / 'crm.db'}"), engine_from_url(f"sqlite:///{var / 'erp.db'}")
    result = purchase_profile.compute(crm, erp, BD, full_refresh=True)
    now = dt.datetime(2026, 11, 22, 5, 30, tzinfo=dt.UTC)
    purchase_profile.load(crm, result, business_date=BD, run_id="profile", run_after=now, started_at=now)
    crm.dispose()
    erp.dispose()
    engine_from_url.cache_clear()
    return var


@pytest.fixture
def demo(seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtp_sink, airflow_db) -> Path:
    return wire_demo(monkeypatch, seeded, tmp_path, smtp_sink)


def expected(var: Path, day: dt.date = BD, audience: str | None = None) -> dict[int, int | None]:
    """New class per account in scope: the first satisfied rule by (priority, id), else the current class."""
    with sqlite3.connect(var / "crm.db") as crm, sqlite3.connect(var / "erp.db") as erp:
        accounts = crm.execute("SELECT id, class_id, erp_customer_code FROM crm_account").fetchall()
        if audience:
            members = {
                r[0]
                for r in crm.execute(
                    "SELECT account_id FROM crm_audience_member m JOIN crm_audience a ON a.id = m.audience_id"
                    " WHERE a.code = ?",
                    (audience,),
                )
            }
            accounts = [a for a in accounts if a[0] in members]
        rules = crm.execute(
            "SELECT id, from_class_id, to_class_id, measure, operator, threshold, window_months FROM"
            " crm_class_transition_rule WHERE active = 1 ORDER BY priority, id"
        ).fetchall()
        invoices: dict[int, list[tuple[dt.date, float]]] = {}
        for code, issued, value in erp.execute(
            "SELECT customer_code, issue_date, total_value FROM invoice WHERE cancelled = 0 AND issue_date <= ?",
            (day.isoformat(),),
        ):
            invoices.setdefault(code, []).append((dt.date.fromisoformat(issued), value))

    def measure(code: int | None, name: str, window: int | None) -> float | None:
        bought = invoices.get(code, []) if code is not None else []
        if window:
            start = day - relativedelta(months=window)
            bought = [(d, v) for d, v in bought if d >= start]
        if name == "accumulated_value":
            return round(sum(v for _, v in bought), 2)
        if name == "purchase_count":
            return len(bought)
        if not bought:
            return None
        if name == "days_since_last_purchase":
            return (day - max(d for d, _ in bought)).days
        first, months = min(d for d, _ in bought), 0
        while first <= day - relativedelta(months=months + 1):
            months += 1
        return months

    out = {}
    for account_id, class_id, code in accounts:
        new = class_id
        for _rid, from_class, to_class, name, op, threshold, window in rules:
            if from_class is not None and from_class != class_id:
                continue
            value = measure(code, name, window)
            if value is not None and OPS[op](value, threshold):
                new = to_class
                break
        out[account_id] = new
    return out


def classes(var: Path) -> dict[int, int | None]:
    with sqlite3.connect(var / "crm.db") as conn:
        return dict(conn.execute("SELECT id, class_id FROM crm_account").fetchall())


def history(var: Path) -> list[tuple]:
    with sqlite3.connect(var / "crm.db") as conn:
        return conn.execute(
            "SELECT account_id, field, old_value, new_value, routine, business_date "
            "FROM crm_account_history ORDER BY id"
        ).fetchall()


def last_summary(var: Path) -> dict:
    with sqlite3.connect(var / "crm.db") as conn:
        status, summary = conn.execute(
            "SELECT status, summary FROM crm_routine_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (DAG_ID,)
        ).fetchone()
    return {"status": status, **json.loads(summary)}


def csv_rows(mail) -> list[dict[str, str]]:
    (part,) = [p for p in mail.iter_attachments() if p.get_filename().endswith("-changes.csv")]
    return list(csv.DictReader(io.StringIO(part.get_payload(decode=True).decode("utf-8-sig"))))


def run_dag(dagbag, day: dt.date = BD, **conf):
    dag = dagbag.get_dag(DAG_ID)
    assert dag is not None, dagbag.import_errors
    conf = {"audience": "", "dry_run": False, "notify_to": "ops@example.com"} | conf
    return dag.test(logical_date=pendulum.datetime(day.year, day.month, day.day, 5, tz=TZ), run_conf=conf)


def test_should_be_scheduled_by_the_profile_asset_or_its_cron(dagbag, airflow_db):
    from airflow.sdk import AssetOrTimeSchedule

    dag = dagbag.get_dag(DAG_ID)
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert [a.uri for a in dag.timetable.asset_condition.objects] == ["crm://crm_db/crm_account_profile"]
    crons = [t.expression for t in dag.timetable.timetable.timetables]
    assert crons == ["0 5 * * *"]  # the fallback of routines.yaml


def test_should_move_accounts_as_the_rules_say_write_history_and_mail_the_changes(dagbag, demo, smtp_sink):
    before = classes(demo)
    want = expected(demo)
    run = run_dag(dagbag)
    assert run.state == "success"

    after = classes(demo)
    assert after == want
    moved = {k for k in want if want[k] != before[k]}
    assert len(moved) >= 10  # the demo's rules do move accounts

    rows = history(demo)
    assert {(r[0], r[2], r[3]) for r in rows} == {(k, str(before[k]), str(after[k])) for k in moved}
    assert {(r[1], r[4], r[5]) for r in rows} == {("class_id", DAG_ID, BD.isoformat())}

    summary = last_summary(demo)
    assert summary["status"] == "success" and summary["accounts changed"] == len(moved)
    assert sum(v for k, v in summary.items() if k.startswith("by rule ")) == len(moved)
    assert "by rule 7" in summary  # months_as_customer fired

    (mail,) = smtp_sink.messages()
    assert mail["To"] == "ops@example.com" and DAG_ID in mail["Subject"]
    attached = csv_rows(mail)
    assert {int(r["account_id"]) for r in attached} == moved
    codes = {1: "BRONZE", 2: "SILVER", 3: "GOLD", 4: "DIAMOND"}
    assert all(r["to_class"] == codes[after[int(r["account_id"])]] for r in attached)


def test_should_change_nothing_when_the_date_is_run_again(dagbag, demo, smtp_sink):
    assert run_dag(dagbag).state == "success"
    after, rows = classes(demo), history(demo)

    assert run_dag(dagbag).state == "success"
    assert classes(demo) == after and history(demo) == rows
    summary = last_summary(demo)
    assert summary["accounts changed"] == 0 and summary["already moved on this business date"] == len(rows)
    assert csv_rows(smtp_sink.messages()[-1]) == []


def test_should_fail_naming_each_bad_rule_before_changing_anything(dagbag, demo, smtp_sink):
    before = classes(demo)
    with sqlite3.connect(demo / "crm.db") as conn:
        conn.execute("UPDATE crm_class_transition_rule SET measure = 'purchase_cnt' WHERE id = 3")
        conn.execute("UPDATE crm_class_transition_rule SET operator = '=>' WHERE id = 4")
    run = run_dag(dagbag)
    assert run.state == "failed"
    assert classes(demo) == before and history(demo) == []
    summary = last_summary(demo)
    assert summary["status"] == "failed"
    assert "rule 3" in summary["error"] and "purchase_cnt" in summary["error"]
    assert "rule 4" in summary["error"] and "'=>'" in summary["error"]
    (mail,) = smtp_sink.messages()
    assert "failed" in mail["Subject"] and "purchase_cnt" in mail.get_body(("html",)).get_content()


def test_should_change_nothing_in_a_dry_run_but_report_what_would_change(dagbag, demo, smtp_sink):
    before = classes(demo)
    want = expected(demo)
    assert run_dag(dagbag, dry_run=True).state == "success"
    assert classes(demo) == before and history(demo) == []
    attached = csv_rows(smtp_sink.messages()[-1])
    assert {int(r["account_id"]) for r in attached} == {k for k in want if want[k] != before[k]}
    assert last_summary(demo)["dry_run"] is True


def test_should_move_only_the_members_of_the_audience(dagbag, demo):
    before = classes(demo)
    want = expected(demo, audience="VIP")
    assert run_dag(dagbag, audience="VIP").state == "success"
    after = classes(demo)
    moved = {k for k in after if after[k] != before[k]}
    assert moved == {k for k in want if want[k] != before[k]}
    assert moved <= set(want)
    assert last_summary(demo)["scope"] == "audience:VIP"


def test_should_fail_at_once_on_an_unknown_audience(dagbag, demo):
    before = classes(demo)
    assert run_dag(dagbag, audience="NO_SUCH").state == "failed"
    assert classes(demo) == before
    assert "audience 'NO_SUCH' does not exist" in last_summary(demo)["error"]


def test_should_reproduce_an_earlier_date_on_backfill_from_that_dates_purchases(dagbag, demo, smtp_sink):
    """The profile was computed for BD; a run for two months earlier must not see the later purchases."""
    earlier = BD - dt.timedelta(days=61)
    before = classes(demo)
    want = expected(demo, day=earlier)
    assert want != expected(demo)  # the two dates do give different classes on this demo
    assert run_dag(dagbag, day=earlier).state == "success"
    assert classes(demo) == want
    assert {r[5] for r in history(demo)} == {earlier.isoformat()}
    summary = last_summary(demo)
    assert summary["lifetime measures from the ERP (profile not for this date)"] > 0
    attached = csv_rows(smtp_sink.messages()[-1])
    assert {int(r["account_id"]) for r in attached} == {k for k in want if want[k] != before[k]}
    assert all(float(r["value"]) >= 0 for r in attached if r["measure"] == "days_since_last_purchase")
