"""crm_task_reminders' plan and send steps over a small hand-made CRM, with the real ledger and dispatch.

Runs are simulated (plan -> ledger -> dispatch -> successful run recorded with its window end), so
weeks of schedule run in seconds; the DAG test covers the same path through Airflow.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import insert, select, update

from crm.db.crm_schema import (
    account,
    company,
    metadata,
    notification,
    phone,
    reminder_settings,
    task,
    user,
)
from crm.db.engines import engine_from_url
from crm.jobs import task_reminders as job
from crm.notify import ledger
from crm.notify.dispatch import dispatch
from crm.routines.reminders import Window
from crm.runs import record_run

GRACE = dt.timedelta(hours=24)
DEFAULTS = {
    "customer_defaults_enabled": True,
    "customer_default_channel": "sms",
    "customer_sms_template": "task_reminder",
    "customer_sms_offset_minutes": 120,
    "customer_email_template": "task_reminder",
    "customer_email_offset_minutes": 1440,
    "operator_defaults_enabled": True,
    "operator_default_channel": "email",
    "operator_email_template": "task_reminder_operator",
    "operator_email_offset_minutes": 30,
}


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


@pytest.fixture
def crm(tmp_path: Path):
    engine = engine_from_url(f"sqlite:///{tmp_path / 'crm.db'}")
    metadata.create_all(engine)
    with engine.begin() as c:
        each(
            c,
            (company),
            [
                {
                    "id": 1,
                    "code": "PL01",
                    "name": "Łódzka Hurtownia",
                    "email": "biuro@example.pl",
                    "phone": "+48422000100",
                    "timezone": "Europe/Warsaw",
                    "locale": "pl_PL",
                },
                {
                    "id": 2,
                    "code": "BR01",
                    "name": "Aurora Ltda.",
                    "email": "contato@example.com",
                    "phone": "+551130405060",
                    "timezone": "America/Sao_Paulo",
                    "locale": "pt_BR",
                },
                {
                    "id": 3,
                    "code": "BR02",
                    "name": "Desligada",
                    "email": "x@example.com",
                    "timezone": "America/Sao_Paulo",
                },
            ],
        )
        each(
            c,
            (user),
            [
                {
                    "id": 1,
                    "login": "anna",
                    "name": "Anna Nowak",
                    "email": "anna@example.pl",
                    "mobile_phone": "+48600100001",
                    "locale": "pl_PL",
                },
                {
                    "id": 2,
                    "login": "joao",
                    "name": "João Silva",
                    "email": "joao@example.com",
                    "mobile_phone": "+5511900000002",
                    "locale": "pt_BR",
                },
                {"id": 3, "login": "nomail", "name": "Sem Email", "email": None, "mobile_phone": None},
            ],
        )
        each(
            c,
            (account),
            [
                {
                    "id": 1,
                    "company_id": 1,
                    "person_type": "PF",
                    "name": "Łucja Wiśniewska",
                    "short_name": "Łucja",
                    "email": "lucja@example.pl",
                    "locale": "pl_PL",
                },
                {
                    "id": 2,
                    "company_id": 2,
                    "person_type": "PF",
                    "name": "Maria Souza",
                    "email": "maria@example.com",
                    "locale": "pt_BR",
                },
                {"id": 3, "company_id": 2, "person_type": "PF", "name": "Sem Telefone", "email": None},
                {
                    "id": 4,
                    "company_id": 2,
                    "person_type": "PF",
                    "name": "Não Quer",
                    "email": "nq@example.com",
                    "opt_out_sms": True,
                },
            ],
        )
        each(
            c,
            (phone),
            [
                {"account_id": 1, "phone_type": "mobile", "number": "600 100 999", "is_primary": False},
                {"account_id": 1, "phone_type": "mobile", "number": "+48 600 100 200", "is_primary": True},
                {"account_id": 2, "phone_type": "mobile", "number": "+5511987654321", "is_primary": True},
                {"account_id": 2, "phone_type": "landline", "number": "+551130000000", "is_primary": False},
                {"account_id": 4, "phone_type": "mobile", "number": "+5511911112222", "is_primary": True},
            ],
        )
        each(
            c,
            (reminder_settings),
            [
                {"company_id": 1, "sender_user_id": 1, "sender_email": "przypomnienia@example.pl", **DEFAULTS},
                {
                    "company_id": 2,
                    "sender_user_id": 2,
                    "sender_email": "lembretes@example.com",
                    **DEFAULTS,
                    "operator_defaults_enabled": False,
                },
                {"company_id": 3, "enabled": False, **DEFAULTS},
            ],
        )
    return engine


def each(conn, table, rows: list[dict]) -> None:
    for row in rows:  # one by one: the rows leave different columns to their defaults
        conn.execute(insert(table).values(**row))


def add_task(crm, **values) -> int:
    row = {"company_id": 2, "account_id": 2, "operator_id": 2, "title": "Visita técnica", "recipients": "customers"}
    with crm.begin() as c:
        return c.execute(insert(task).values(**(row | values))).inserted_primary_key[0]


class Runs:
    """Plays scheduled runs: each covers the time since the previous successful one, then sends."""

    def __init__(self, crm) -> None:
        self.crm = crm
        self.sent: list[tuple[dt.datetime, str, str, dict]] = []
        self.n = 0

    def run(self, end: dt.datetime, grace: dt.timedelta = GRACE) -> job.ReminderPlan:
        self.n += 1
        run_id = f"run-{self.n}"
        window = Window(end, job.latest_window_end(self.crm), grace)
        plan = job.plan_reminders(self.crm, window)
        job.write(self.crm, plan, job.ROUTINE, run_id=run_id, business_date=end.date())

        def send(row: ledger.Claimed, point_of_no_return) -> ledger.Outcome:
            point_of_no_return()
            self.sent.append((end, row.recipient, row.business_key, row.payload))
            return ledger.Outcome("sent")

        sender = job.routing_sender({"email": lambda: send, "sms": lambda: send}, cutoff=window.cutoff)  # as the DAG
        dispatch(self.crm, job.ROUTINE, sender, run_id=run_id, owner=f"t/{run_id}", try_number=1)
        record_run(
            self.crm,
            dag_id=job.ROUTINE,
            run_id=run_id,
            business_date=end.date(),
            status="success",
            started_at=end,
            finished_at=end,
            watermark=end,
        )
        return plan

    def every(self, start: dt.datetime, stop: dt.datetime, step: dt.timedelta) -> None:
        t = start
        while t <= stop:
            self.run(t)
            t += step


def rows(crm, task_id: int | None = None) -> list[dict]:
    stmt = select(notification).order_by(notification.c.id)
    if task_id is not None:
        stmt = stmt.where(notification.c.business_key.like(f"task {task_id} /%"))
    with crm.connect() as c:
        return [dict(r) for r in c.execute(stmt).mappings()]


def test_should_remind_each_occurrence_of_a_weekly_task_once_across_weeks_and_a_dst_change(crm):
    # Sundays 10:00 in Warsaw from 15 March; SMS 60 minutes before; DST starts on Sunday 29 March
    tid = add_task(
        crm,
        company_id=1,
        account_id=1,
        operator_id=1,
        title="Dostawa",
        starts_at=dt.datetime(2026, 3, 15, 10),
        recurrence_freq="weekly",
        customer_channel="sms",
        customer_offset_minutes=60,
    )
    runs = Runs(crm)
    runs.every(utc(2026, 3, 14, 1), utc(2026, 4, 12, 12), dt.timedelta(hours=3))  # runs at 01, 04, 07, 10... UTC
    mine = [(at, to, key) for at, to, key, _ in runs.sent if key.startswith(f"task {tid} /")]
    assert [key for _, _, key in mine] == [
        f"task {tid} / 2026-03-15T10:00+01:00 / customer",
        f"task {tid} / 2026-03-22T10:00+01:00 / customer",
        f"task {tid} / 2026-03-29T10:00+02:00 / customer",
        f"task {tid} / 2026-04-05T10:00+02:00 / customer",
        f"task {tid} / 2026-04-12T10:00+02:00 / customer",
    ]
    # due at 09:00 local: 08:00 UTC in winter (sent by the 10:00 UTC run), 07:00 UTC in summer (the 07:00 run)
    assert [at for at, _, _ in mine] == [
        utc(2026, 3, 15, 10),
        utc(2026, 3, 22, 10),
        utc(2026, 3, 29, 7),
        utc(2026, 4, 5, 7),
        utc(2026, 4, 12, 7),
    ]
    assert {to for _, to, _ in mine} == {"+48600100200"}  # the primary mobile, normalised
    assert len(rows(crm, tid)) == 5 and {r["state"] for r in rows(crm, tid)} == {"sent"}
    # running the same times again sends nothing more
    before = len(runs.sent)
    runs.run(utc(2026, 4, 12, 12))
    assert len(runs.sent) == before


def test_should_apply_recipients_mode_offsets_and_defaults_vs_task_settings(crm):
    start = dt.datetime(2026, 5, 6, 15, 0)  # São Paulo, 18:00 UTC
    customers = add_task(crm, starts_at=start)  # defaults: SMS, 120 min
    own = add_task(crm, starts_at=start, customer_channel="email", customer_offset_minutes=45)  # email, 45 min
    both = add_task(
        crm,
        starts_at=start,
        recipients="both",
        operator_channel="sms",
        operator_offset_minutes=15,
        operator_template="task_reminder_operator",
    )
    operators_no_defaults = add_task(crm, starts_at=start, recipients="operators")  # operator defaults off in BR01
    no_phone = add_task(crm, starts_at=start, account_id=3)
    opted_out = add_task(crm, starts_at=start, account_id=4)
    no_account = add_task(crm, starts_at=start, account_id=None)
    no_mail_operator = add_task(
        crm,
        starts_at=start,
        recipients="operators",
        operator_id=3,
        operator_channel="email",
        operator_offset_minutes=30,
        operator_template="task_reminder_operator",
    )
    done = add_task(crm, starts_at=start, status="completed")
    cancelled = add_task(crm, starts_at=start, status="cancelled", recipients="both")
    other_company = add_task(crm, company_id=3, starts_at=start)  # reminders disabled there
    runs = Runs(crm)
    runs.every(utc(2026, 5, 6, 12), utc(2026, 5, 6, 18), dt.timedelta(minutes=15))
    sent = {key: (at, to, payload) for at, to, key, payload in runs.sent}

    def one(tid: int, side: str = "customer") -> tuple:
        (hit,) = [v for k, v in sent.items() if k.startswith(f"task {tid} /") and k.endswith(side)]
        return hit

    at, to, payload = one(customers)
    assert (at, to, payload["channel"]) == (utc(2026, 5, 6, 16), "+5511987654321", "sms")
    assert payload["from"] == "+551130405060" and "06/05/2026 às 15:00" in payload["text"]
    at, to, payload = one(own)
    assert (at, to, payload["channel"]) == (utc(2026, 5, 6, 17, 15), "maria@example.com", "email")
    assert payload["from"] == "lembretes@example.com" and payload["reply_to"] == "joao@example.com"
    assert payload["subject"] == "Lembrete: Visita técnica em 06/05/2026 às 15:00"
    assert one(both)[:2] == (utc(2026, 5, 6, 16), "+5511987654321")
    at, to, payload = one(both, "operator")
    assert (at, to) == (utc(2026, 5, 6, 17, 45), "+5511900000002") and "Tarefa" in payload["text"]

    reasons = {(r["business_key"].split(" /")[0], r["reason"]) for r in rows(crm) if r["state"] == "skipped"}
    assert reasons == {
        (f"task {operators_no_defaults}", "no reminder channel for operators"),
        (f"task {no_phone}", "no mobile phone"),
        (f"task {opted_out}", "opted out of SMS"),
        (f"task {no_account}", "no account on the task"),
        (f"task {no_mail_operator}", "no e-mail address"),
    }
    planned_tasks = {int(r["business_key"].split()[1]) for r in rows(crm)}
    assert not planned_tasks & {done, cancelled, other_company}
    assert {r["company_id"] for r in rows(crm)} == {2}


def test_should_render_in_the_recipients_language_and_fail_a_too_long_sms(crm):
    tid = add_task(
        crm,
        company_id=1,
        account_id=1,
        operator_id=1,
        title="Dostawa towaru",
        recipients="both",
        starts_at=dt.datetime(2026, 5, 6, 10),
        customer_offset_minutes=60,
        operator_channel="email",
        operator_offset_minutes=60,
    )
    long_one = add_task(
        crm,
        company_id=1,
        account_id=1,
        title="ż" * 300,
        starts_at=dt.datetime(2026, 5, 6, 10),
        customer_offset_minutes=60,
    )
    runs = Runs(crm)
    runs.run(utc(2026, 5, 6, 7, 0))  # 09:00 Warsaw (CEST)
    by_key = {key: payload for _, _, key, payload in runs.sent}
    sms = by_key[f"task {tid} / 2026-05-06T10:00+02:00 / customer"]
    assert sms["text"].startswith("Łódzka Hurtownia: przypomnienie - Dostawa towaru, 06.05.2026 o 10:00")
    assert sms["encoding"] == "UCS-2" and sms["segments"] == 2
    mail = by_key[f"task {tid} / 2026-05-06T10:00+02:00 / operator"]
    assert mail["to"] == ["anna@example.pl"] and mail["subject"].startswith(f"[Zadanie {tid}] Dostawa towaru")
    (failed,) = [r for r in rows(crm, long_one)]
    assert failed["state"] == "failed" and "UCS-2 segments" in failed["last_error"] and not failed["retryable"]


def test_should_catch_up_after_3_hours_down_and_report_older_reminders_missed_after_3_days(crm):
    runs = Runs(crm)
    runs.run(utc(2026, 5, 4, 12))  # a successful run, then the scheduler stops
    # due at 13:00 UTC on the 4th (3 days before the next run), and at 10:00 UTC on the 7th (2 h before it)
    old = add_task(crm, starts_at=dt.datetime(2026, 5, 4, 12), customer_offset_minutes=60)
    recent = add_task(crm, starts_at=dt.datetime(2026, 5, 7, 9), customer_offset_minutes=120)
    plan = runs.run(utc(2026, 5, 7, 12))
    assert plan.kinds == {"due": 1, "catch_up": 0, "missed": 1}
    (missed,) = rows(crm, old)
    assert (
        missed["state"] == "skipped" and missed["reason"] == "missed" and "grace period (24 h)" in missed["last_error"]
    )
    assert [r["state"] for r in rows(crm, recent)] == ["sent"]
    assert [key for _, _, key, _ in runs.sent] == [f"task {recent} / 2026-05-07T09:00-03:00 / customer"]


def test_should_send_a_reminder_a_failed_run_left_pending_when_the_next_run_catches_up(crm):
    tid = add_task(crm, starts_at=dt.datetime(2026, 5, 6, 15), customer_offset_minutes=120)  # due 16:00 UTC
    runs = Runs(crm)
    runs.run(utc(2026, 5, 6, 15, 45))
    # a run whose send step died: planned (pending) but nothing sent and no success recorded
    window = Window(utc(2026, 5, 6, 16), job.latest_window_end(crm), GRACE)
    job.write(crm, job.plan_reminders(crm, window), job.ROUTINE, run_id="broken", business_date=dt.date(2026, 5, 6))
    assert [r["state"] for r in rows(crm, tid)] == ["pending"]
    runs.run(utc(2026, 5, 6, 16, 15))  # the window reopens from 15:45: due again, sent once
    assert [r["state"] for r in rows(crm, tid)] == ["sent"] and len(runs.sent) == 1
    # a later run inside the grace period, with a previous end past it: a catch-up that finds it sent
    with crm.begin() as c:
        c.execute(update(notification).values(state="failed", retryable=True))
    plan = runs.run(utc(2026, 5, 6, 16, 30))
    assert plan.kinds["catch_up"] == 1 and len(runs.sent) == 2  # a retryable failure is caught up
    plan = runs.run(utc(2026, 5, 6, 16, 45))
    assert plan.kinds["catch_up"] == 0 and len(runs.sent) == 2  # sent now: left alone


def test_should_report_missed_not_send_late_a_reminder_a_dead_run_left_in_the_hand_over(crm):
    tid = add_task(crm, starts_at=dt.datetime(2026, 5, 4, 12), customer_offset_minutes=60)  # due on the 4th
    window = Window(utc(2026, 5, 4, 18), None, GRACE)
    job.write(crm, job.plan_reminders(crm, window), job.ROUTINE, run_id="dead", business_date=dt.date(2026, 5, 4))
    # that run claimed its batch and died before the point of no return: the row stays 'sending', unattempted
    assert ledger.claim(crm, job.ROUTINE, run_id="dead", token="dead/send#1", limit=10)
    with crm.begin() as c:
        c.execute(update(notification).values(claimed_at=dt.datetime(2026, 5, 4, 18, 1)))
    runs = Runs(crm)

    runs.run(utc(2026, 5, 7, 12))  # three days later: the row is adopted (stale), but long past the grace period

    (row,) = rows(crm, tid)
    assert (row["state"], row["reason"]) == ("skipped", "missed") and "not sent late" in row["last_error"]
    assert runs.sent == []
