"""crm_account_purchase_profile end to end: dag.test() on a freshly seeded demo, checked against SQL.

The expected profile is an independent SQL aggregate (window functions) over the ERP tables,
attached to the CRM database; the summary must land in the SMTP sink and in crm_routine_run.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pandas as pd
import pendulum
import pytest

DAG_ID = "crm_account_purchase_profile"
TZ = "America/Sao_Paulo"
BD = dt.date(2026, 11, 22)
FIELDS = [
    "first_purchase_date",
    "first_purchase_value",
    "last_purchase_date",
    "last_purchase_value",
    "accumulated_value",
    "purchase_count",
    "last_quote_date",
    "days_since_last_purchase",
    "last_invoice_number",
]

EXPECTED_SQL = """
WITH live AS (
    SELECT * FROM erp.invoice WHERE NOT cancelled AND issue_date <= :bd
), ranked AS (
    SELECT customer_code, issue_date, total_value, number,
           ROW_NUMBER() OVER (PARTITION BY customer_code ORDER BY issue_date, id) AS first_rank,
           ROW_NUMBER() OVER (PARTITION BY customer_code ORDER BY issue_date DESC, id DESC) AS last_rank
    FROM live
), agg AS (
    SELECT customer_code, SUM(total_value) AS total, COUNT(*) AS n FROM live GROUP BY customer_code
), q AS (
    SELECT customer_code, MAX(quote_date) AS d FROM erp.quote WHERE quote_date <= :bd GROUP BY customer_code
)
SELECT a.id AS account_id,
       f.issue_date AS first_purchase_date, f.total_value AS first_purchase_value,
       l.issue_date AS last_purchase_date, l.total_value AS last_purchase_value,
       ROUND(COALESCE(agg.total, 0), 2) AS accumulated_value, COALESCE(agg.n, 0) AS purchase_count,
       q.d AS last_quote_date,
       CAST(julianday(:bd) - julianday(l.issue_date) AS INTEGER) AS days_since_last_purchase,
       l.number AS last_invoice_number
FROM crm_account a
LEFT JOIN ranked f ON f.customer_code = a.erp_customer_code AND f.first_rank = 1
LEFT JOIN ranked l ON l.customer_code = a.erp_customer_code AND l.last_rank = 1
LEFT JOIN agg ON agg.customer_code = a.erp_customer_code
LEFT JOIN q ON q.customer_code = a.erp_customer_code
WHERE a.erp_customer_code IS NOT NULL
ORDER BY a.id
"""


def expected_profiles(var: Path, bd: dt.date = BD) -> pd.DataFrame:
    with sqlite3.connect(var / "crm.db") as conn:
        conn.execute(f"ATTACH DATABASE '{var / 'erp.db'}' AS erp")
        return pd.read_sql_query(EXPECTED_SQL, conn, params={"bd": bd.isoformat()})


def actual_profiles(var: Path) -> pd.DataFrame:
    with sqlite3.connect(var / "crm.db") as conn:
        return pd.read_sql_query(
            f"SELECT account_id, {', '.join(FIELDS)} FROM crm_account_profile ORDER BY account_id", conn
        )


def assert_profiles_match(var: Path, bd: dt.date = BD) -> None:
    got, want = actual_profiles(var), expected_profiles(var, bd)
    assert len(got) == len(want) > 0
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def routine_runs(var: Path) -> list[dict]:
    with sqlite3.connect(var / "crm.db") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM crm_routine_run ORDER BY id")]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crm.demo.generate import generate

    var = tmp_path_factory.mktemp("demo")
    generate(var, accounts=400, seed=11, business_date=BD)
    return var


@pytest.fixture
def demo(seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtp_sink, airflow_db) -> Path:
    """A private copy of the seeded demo, wired to the task through AIRFLOW_CONN_* variables."""
    from tests.dags.demo_env import wire_demo

    return wire_demo(monkeypatch, seeded, tmp_path, smtp_sink)


def run_dag(dagbag, day: dt.date = BD, **conf):
    dag = dagbag.get_dag(DAG_ID)
    assert dag is not None, dagbag.import_errors
    conf = {"audience": "", "full_refresh": False, "notify_to": ""} | conf  # dag.test() keeps the last run's conf
    return dag.test(logical_date=pendulum.datetime(day.year, day.month, day.day, 2, 30, tz=TZ), run_conf=conf)


def test_should_match_an_independent_sql_aggregate_and_report_by_email(dagbag, demo, smtp_sink):
    run = run_dag(dagbag, notify_to="ops@example.com", full_refresh=False)
    assert run.state == "success"
    assert_profiles_match(demo)

    (run_row,) = routine_runs(demo)
    summary = json.loads(run_row["summary"])
    assert run_row["status"] == "success" and run_row["business_date"] == BD.isoformat()
    assert summary["mode"] == "full" and summary["inserted"] == len(actual_profiles(demo))
    with sqlite3.connect(demo / "crm.db") as conn:
        (no_code,) = conn.execute("SELECT COUNT(*) FROM crm_account WHERE erp_customer_code IS NULL").fetchone()
    assert no_code > 0, "the demo has leads without an ERP code"
    assert summary["skipped_no_erp_code"] == no_code

    (mail,) = smtp_sink.messages()
    assert mail["To"] == "ops@example.com"
    assert DAG_ID in mail["Subject"] and "2026-11-22" in mail["Subject"]
    body = mail.get_body(preferencelist=("html",)).get_content()
    assert f'<th align="left">inserted</th><td>{summary["inserted"]}</td>' in body
    assert not (Path(demo.parent / "staging") / DAG_ID).exists() or not any(
        (demo.parent / "staging" / DAG_ID).iterdir()
    )


def test_should_update_nothing_without_erp_changes_and_exactly_the_changed_account(dagbag, demo, smtp_sink):
    assert run_dag(dagbag, notify_to="ops@example.com").state == "success"
    before = actual_profiles(demo)

    assert run_dag(dagbag, notify_to="ops@example.com").state == "success"
    second = json.loads(routine_runs(demo)[-1]["summary"])
    assert second["mode"] == "incremental"
    assert (second["inserted"], second["updated"], second["days_refreshed"]) == (0, 0, 0)
    pd.testing.assert_frame_equal(actual_profiles(demo), before)

    # One customer buys again (entered in the ERP now, dated on the business date).
    with sqlite3.connect(demo / "crm.db") as conn:
        account_id, code = conn.execute(
            "SELECT id, erp_customer_code FROM crm_account WHERE erp_customer_code IS NOT NULL ORDER BY id LIMIT 1"
        ).fetchone()
    with sqlite3.connect(demo / "erp.db") as conn:
        conn.execute(
            "INSERT INTO invoice (customer_code, company_code, series, number, issue_date, total_value, cancelled,"
            " updated_at) VALUES (?, 'C1', '1', 'NF-NEW-1', ?, 1234.56, 0, '2099-01-01 00:00:00.000000')",
            (code, BD.isoformat()),
        )
    assert run_dag(dagbag, notify_to="ops@example.com").state == "success"
    third = json.loads(routine_runs(demo)[-1]["summary"])
    assert third["mode"] == "incremental"
    assert (third["inserted"], third["updated"]) == (0, 1)
    after = actual_profiles(demo)
    changed = after.compare(before)
    assert list(changed.index) == [before.index[before["account_id"] == account_id][0]]
    row = after.set_index("account_id").loc[account_id]
    assert row["last_invoice_number"] == "NF-NEW-1" and row["days_since_last_purchase"] == 0
    assert_profiles_match(demo)


def test_should_move_day_counts_to_the_next_business_date_incrementally(dagbag, demo):
    assert run_dag(dagbag, notify_to="ops@example.com").state == "success"
    next_day = BD + dt.timedelta(days=1)
    assert run_dag(dagbag, next_day, notify_to="ops@example.com").state == "success"
    summary = json.loads(routine_runs(demo)[-1]["summary"])
    assert summary["mode"] == "incremental" and summary["days_refreshed"] > 0
    assert_profiles_match(demo, next_day)


def test_should_fail_clearly_on_an_unknown_audience(dagbag, demo, smtp_sink):
    run = run_dag(dagbag, audience="NO_SUCH_AUDIENCE", notify_to="ops@example.com")
    assert run.state == "failed"
    assert actual_profiles(demo).empty
    (failed,) = routine_runs(demo)
    assert failed["status"] == "failed"
    assert "audience 'NO_SUCH_AUDIENCE' does not exist" in json.loads(failed["summary"])["error"]
    (mail,) = smtp_sink.messages()
    assert "failed" in mail["Subject"] and "NO_SUCH_AUDIENCE" in mail.get_body(("html",)).get_content()
