"""The run report and crm_routine_run: reruns, undelivered reports, unknown rows, who gets the report.

Against a real SMTP server on loopback and a CRM database on SQLite; the failure callback is called
the way the task runner calls it (a context with the exception), the report step through run_report.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace

import pendulum
import pytest
import sqlalchemy as sa

from crm.dag_helpers import notify_to, record_failure, resolve_recipients
from crm.db import engine_from_url
from crm.db.crm_schema import metadata, routine_run, user
from crm.demo.smtp_sink import FaultyMailboxHandler, MailSink
from crm.notify import ledger
from crm.notify.report import ReportNotDelivered, run_report
from crm.runs import last_successful_run
from tests.dags.demo_env import smtp_conn

DAG_ID = "crm_birthday_greetings"  # a real routine: the failure callback reads its routines.yaml settings
RUN_ID = "manual__2026-11-22T11:00:00+00:00"
BD = dt.date(2026, 11, 22)
OPS = "ops@example.com"
STARTED = dt.datetime(2026, 11, 22, 11, 0, tzinfo=dt.UTC)


@pytest.fixture
def crm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> sa.Engine:
    db = tmp_path / "crm.db"
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", json.dumps({"conn_type": "sqlite", "schema": str(db)}))
    engine_from_url.cache_clear()
    eng = engine_from_url(f"sqlite:///{db}")
    metadata.create_all(eng)
    return eng


@pytest.fixture
def sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with MailSink(tmp_path / "mail") as s:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_conn(s.host, s.port))
        yield s


def fail_task(task_id: str, error: BaseException) -> None:
    """What the task runner does when a task fails for good: the on_failure_callback with the exception."""
    run = SimpleNamespace(
        run_id=RUN_ID, run_after=pendulum.instance(STARTED), start_date=STARTED, triggering_user_name=None
    )
    record_failure(
        {
            "dag": SimpleNamespace(dag_id=DAG_ID),
            "dag_run": run,
            "logical_date": pendulum.instance(STARTED),
            "task_instance": SimpleNamespace(task_id=task_id),
            "exception": error,
        }
    )


def report(crm: sa.Engine, status: str, **kw) -> dict:
    args = {
        "dag_id": DAG_ID,
        "run_id": RUN_ID,
        "business_date": BD,
        "status": status,
        "started_at": STARTED,
        "finished_at": STARTED + dt.timedelta(minutes=1),
        "to": [OPS],
    }
    return run_report(crm, **(args | kw))


def run_row(crm: sa.Engine) -> tuple[str, dict]:
    with crm.connect() as conn:
        (row,) = conn.execute(sa.select(routine_run.c.status, routine_run.c.summary)).all()
    return row.status, json.loads(row.summary)


def body(msg) -> str:
    return msg.get_body(("plain",)).get_content()


def test_should_record_a_failed_run_that_was_cleared_and_rerun_successfully_as_success(crm, sink):
    # attempt 1: the plan step fails for good, the report (trigger rule all_done) says so
    fail_task("plan_greetings", ValueError("the CRM database was locked"))
    report(crm, "failed", summary={"failed_steps": ["plan_greetings"]})
    status, summary = run_row(crm)
    assert status == "failed" and "the CRM database was locked" in summary["error"]
    assert "failed" in sink.messages()[0]["Subject"]

    # attempt 2: cleared and re-run, every step succeeds
    report(crm, "success", summary={"planned": 3})
    status, summary = run_row(crm)
    assert status == "success"
    assert "error" not in summary and "failed_task" not in summary and "failed_steps" not in summary
    (earlier,) = summary["earlier_attempts"]
    assert earlier["status"] == "failed" and earlier["failed_task"] == "plan_greetings"
    assert "the CRM database was locked" in earlier["error"]
    second = sink.messages()[1]
    assert "success" in second["Subject"] and "failed" not in second["Subject"]
    assert "Errors:" not in body(second)
    assert last_successful_run(crm, DAG_ID).run_id == RUN_ID

    # attempt 3: cleared again, and fails with another error: that one is the run's error now
    fail_task("send_greetings", RuntimeError("SMTP server unreachable"))
    report(crm, "failed")
    status, summary = run_row(crm)
    assert status == "failed" and "SMTP server unreachable" in summary["error"]
    assert summary["failed_task"] == "send_greetings"
    assert [e["status"] for e in summary["earlier_attempts"]] == ["failed"]  # the clean attempt 2 adds no line


def test_should_not_mark_a_committed_run_failed_when_only_its_report_was_not_delivered(crm, tmp_path, monkeypatch):
    handler = FaultyMailboxHandler(tmp_path / "refusing", refuse={OPS})
    with MailSink(tmp_path / "refusing", handler=handler) as refusing:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_conn(refusing.host, refusing.port))
        with pytest.raises(ReportNotDelivered, match=r"could not be e-mailed to ops@example\.com") as raised:
            report(crm, "success", summary={"loaded": 10})
        fail_task("send_run_report", raised.value)  # the report task failed for good: the callback runs
        assert refusing.messages() == []
    status, summary = run_row(crm)
    assert status == "success"  # the data and the watermark were committed
    assert "error" not in summary and summary["loaded"] == 10
    assert summary["report"].startswith("not delivered to ops@example.com") and "550" in summary["report"]
    assert last_successful_run(crm, DAG_ID) is not None


def test_should_note_a_delivered_report_on_the_run(crm, sink):
    stored = report(crm, "success")
    assert stored["report"] == f"sent to {OPS}"
    assert run_row(crm)[1]["report"] == f"sent to {OPS}"


def test_should_show_an_unknown_notification_in_the_report_email(crm, sink):
    items = [ledger.Planned(recipient=f"p{i}@example.com", business_key=f"k{i}", payload={}) for i in range(3)]
    ledger.plan(crm, DAG_ID, "email", items, run_id=RUN_ID, business_date=BD)
    rows = ledger.claim(crm, DAG_ID, run_id=RUN_ID, token="send#1", limit=3)
    with ledger.OutcomeWriter(crm, "send#1") as writer:
        writer.record(rows[0].id, ledger.Outcome("sent"))
        writer.record(rows[1].id, ledger.Outcome("sent"))
        writer.attempting(rows[2].id)  # the worker dies handing p2's message over
    ledger.recover(crm, DAG_ID, run_id=RUN_ID, owner="send", token="send#2")
    report(crm, "success", ledger_routines=[DAG_ID])
    (msg,) = sink.messages()
    assert "2 sent" in msg["Subject"] and "1 unknown" in msg["Subject"]
    text = body(msg)
    assert "unknown 1" in text
    assert "unknown: p2@example.com (k2): the task stopped while this message was being handed over" in text
    (csv_part,) = list(msg.iter_attachments())
    csv_text = csv_part.get_payload(decode=True).decode("utf-8-sig")
    (line,) = [x for x in csv_text.splitlines() if "p2@example.com" in x]
    assert ",unknown," in line


def test_should_send_the_report_to_notify_to_else_the_requesters_crm_email_else_routines_yaml(crm):
    from crm.config import routine_settings

    with crm.begin() as conn:
        conn.execute(user.insert(), [{"login": "mfaria", "name": "Marta Faria", "email": "marta@example.com"},
                                     {"login": "nomail", "name": "Sem E-mail", "email": None}])  # fmt: skip
    configured = list(routine_settings(DAG_ID)["notify_to"])
    assert configured  # routines.yaml gives every routine a default recipient
    assert resolve_recipients(DAG_ID, "a@example.com; b@example.com", "mfaria", crm) == [
        "a@example.com",
        "b@example.com",
    ]
    assert resolve_recipients(DAG_ID, "", "mfaria", crm) == ["marta@example.com"]  # crm_user.login = the trigger's user
    assert resolve_recipients(DAG_ID, "", "someone@example.org", crm) == ["someone@example.org"]
    assert resolve_recipients(DAG_ID, "", "nomail", crm) == configured  # a CRM user without an e-mail
    assert resolve_recipients(DAG_ID, "", "unknown-login", crm) == configured
    assert resolve_recipients(DAG_ID, "", None, crm) == configured  # a scheduled run


def test_should_refuse_a_malformed_notify_to_instead_of_mailing_someone_else(crm):
    with pytest.raises(ValueError, match=r"notify_to: not an e-mail address: ops-at-example\.com"):
        resolve_recipients(DAG_ID, "boss@example.com, ops-at-example.com", None, crm)
    with pytest.raises(ValueError, match="notify_to: not an e-mail address: x@y"):
        notify_to({"notify_to": "x@y"})
    assert notify_to({"notify_to": " a@example.com,b@example.com "}) == ["a@example.com", "b@example.com"]
    assert notify_to({"notify_to": ""}) == []


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("", True),
        ("ops@example.com", True),
        (" a@example.com, b@example.co.uk;c@example.pl ", True),
        ("ops-at-example.com", False),
        ("a@example.com b@example", False),
        ("a@example.comb@example.com", False),
        ("Boss <boss@example.com>", False),
        ("a@example.com\r\nBcc: victim@evil.example", False),
    ],
)
def test_should_validate_notify_to_in_the_trigger_forms_schema(value, valid):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    from crm.dag_helpers import common_params

    params = ParamsDict(common_params())
    if valid:
        params["notify_to"] = value
        assert params.validate() == {"notify_to": value}
    else:
        with pytest.raises(ParamValidationError, match=r"Invalid input for param notify_to: .* does not match"):
            params["notify_to"] = value
