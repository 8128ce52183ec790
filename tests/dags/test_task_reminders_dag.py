"""crm_task_reminders end to end: dag.test() on a seeded demo, a real SMTP server and the sandbox SMS gateway.

A few tasks are added by hand (known account, phone and operator) next to the seeded ones; the
assertions look at what the gateway and the mailbox received and at the ledger, for those tasks
exactly and for the seeded ones as a whole (nothing for closed tasks, every sent row delivered once).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pendulum
import pytest

from crm.demo.sms_gateway import SmsGateway
from tests.dags.demo_env import wire_demo

DAG_ID = "crm_task_reminders"
BD = dt.date(2026, 3, 27)
T0 = dt.datetime(2026, 3, 27, 12, 0, tzinfo=dt.UTC)  # 09:00 in São Paulo
PHONE = "+5511955550001"
EMAIL = "cliente.lembrete@example.com"


def local_sp(t: dt.datetime) -> str:
    """A UTC instant as São Paulo wall-clock text (UTC-3, no DST), how crm_task stores times."""
    return (t - dt.timedelta(hours=3)).replace(tzinfo=None).isoformat(sep=" ")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crm.demo.generate import generate

    var = tmp_path_factory.mktemp("demo")
    generate(var, accounts=300, seed=11, business_date=BD)
    with sqlite3.connect(var / "crm.db") as conn:
        conn.execute(
            "INSERT INTO crm_account (id, company_id, person_type, name, short_name, email, locale) "
            "VALUES (90001, 1, 'PF', 'Beatriz Lembrada', 'Bia', ?, 'pt_BR')",
            (EMAIL,),
        )
        conn.execute(
            "INSERT INTO crm_phone (account_id, phone_type, number, is_primary) VALUES (90001, 'mobile', ?, 1)",
            (PHONE,),
        )
    return var


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch):
    with SmsGateway() as gw:
        monkeypatch.setenv(
            "AIRFLOW_CONN_SMS_GATEWAY",
            json.dumps(
                {
                    "conn_type": "http",
                    "host": gw.host,
                    "port": gw.port,
                    "schema": "http",
                    "extra": {"crm": {"paths": {"send": "/sms"}}},
                }
            ),
        )
        yield gw


@pytest.fixture
def demo(seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtp_sink, gateway, airflow_db) -> Path:
    return wire_demo(monkeypatch, seeded, tmp_path, smtp_sink)


def add_task(var: Path, starts_at: dt.datetime, **values) -> int:
    """A task of company BR01 for the hand-made account; times given in UTC, stored as local wall-clock."""
    row = {
        "company_id": 1,
        "account_id": 90001,
        "operator_id": 1,
        "title": "Entrega agendada",
        "recipients": "customers",
        "customer_channel": "sms",
        "customer_offset_minutes": 60,
        "starts_at": local_sp(starts_at),
    } | values
    with sqlite3.connect(var / "crm.db") as conn:
        cols = ", ".join(row)
        cur = conn.execute(f"INSERT INTO crm_task ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
        return cur.lastrowid


def run_dag(dagbag, when: dt.datetime, **conf):
    dag = dagbag.get_dag(DAG_ID)
    assert dag is not None, dagbag.import_errors
    conf = {
        "grace_hours": 24,
        "dry_run": False,
        "test_recipient": "",
        "test_phone": "",
        "notify_to": "ops@example.com",
    } | conf
    return dag.test(logical_date=pendulum.instance(when), run_conf=conf)


def ledger(var: Path, task_id: int | None = None) -> list[dict]:
    with sqlite3.connect(var / "crm.db") as conn:
        conn.row_factory = sqlite3.Row
        sql = "SELECT * FROM crm_notification"
        args: tuple = ()
        if task_id is not None:
            sql, args = sql + " WHERE business_key LIKE ?", (f"task {task_id} /%",)
        return [dict(r) for r in conn.execute(sql + " ORDER BY id", args)]


def reports(sink) -> list:
    return [m for m in sink.messages() if m["X-Envelope-To"] == "ops@example.com"]


def reminders(sink) -> list:
    return [m for m in sink.messages() if m["X-Envelope-To"] != "ops@example.com"]


def sms_to(gateway: SmsGateway, number: str) -> list[dict]:
    return [b for b in gateway.messages() if b["to"] == number]


def test_should_send_email_and_sms_reminders_of_the_window_once_each(dagbag, demo, smtp_sink, gateway):
    both = add_task(
        demo,
        T0 + dt.timedelta(hours=1),
        recipients="both",
        operator_channel="email",
        operator_offset_minutes=60,
        operator_template="task_reminder_operator",
    )
    later = add_task(demo, T0 + dt.timedelta(hours=3))  # due at T0 + 2 h: not yet
    run = run_dag(dagbag, T0)
    assert run.state == "success"

    (sms,) = sms_to(gateway, PHONE)
    assert sms["text"].startswith("Aurora Distribuidora de Alimentos Ltda.: lembrete de Entrega agendada em 27/03/2026")
    assert sms["from"] == "+551130405060"
    with sqlite3.connect(demo / "crm.db") as conn:
        operator_email = conn.execute("SELECT email FROM crm_user WHERE id = 1").fetchone()[0]
    (mail,) = [m for m in reminders(smtp_sink) if m["X-CRM-Business-Key"].startswith(f"task {both} /")]
    assert mail["X-Envelope-To"] == operator_email and mail["Subject"].startswith(f"[Tarefa {both}] Entrega agendada")
    assert {(r["channel"], r["state"]) for r in ledger(demo, both)} == {("sms", "sent"), ("email", "sent")}
    assert ledger(demo, later) == []

    # the seeded tasks, as a whole: closed ones get nothing, every sent row arrived exactly once
    rows = ledger(demo)
    with sqlite3.connect(demo / "crm.db") as conn:
        closed = {r[0] for r in conn.execute("SELECT id FROM crm_task WHERE status <> 'open' OR company_id = 3")}
    assert not {int(r["business_key"].split()[1]) for r in rows} & closed
    sent_sms = sorted(r["recipient"] for r in rows if r["channel"] == "sms" and r["state"] == "sent")
    assert sent_sms == sorted(b["to"] for b in gateway.messages())
    sent_mail = sorted(r["recipient"] for r in rows if r["channel"] == "email" and r["state"] == "sent")
    assert sent_mail == sorted(m["X-Envelope-To"] for m in reminders(smtp_sink))
    # exactly: company 1 through the hand-made task, 4 (Warsaw) and 5 (Bucharest) through the seeded tasks due in
    # this window (demo seed 11); company 3 has reminders disabled, company 2 has nothing due
    assert {r["company_id"] for r in rows} == {1, 4, 5}
    with sqlite3.connect(demo / "crm.db") as conn:
        assert conn.execute("SELECT enabled FROM crm_reminder_settings WHERE company_id = 3").fetchone() == (0,)

    (report,) = reports(smtp_sink)
    body = report.get_body(("plain",)).get_content()
    assert "reminders: {'sent': " in body and "'missed': 0" in body
    with sqlite3.connect(demo / "crm.db") as conn:
        status, watermark = conn.execute("SELECT status, watermark FROM crm_routine_run").fetchone()
    assert status == "success" and watermark.startswith("2026-03-27 12:00:00")

    # the same run again (cleared / re-run): nothing new goes out
    assert run_dag(dagbag, T0).state == "success"
    assert len(sms_to(gateway, PHONE)) == 1 and len(reminders(smtp_sink)) == len(sent_mail)


def test_should_catch_up_after_3_hours_down_and_report_missed_after_3_days(dagbag, demo, smtp_sink, gateway):
    assert run_dag(dagbag, T0).state == "success"
    caught = add_task(demo, T0 + dt.timedelta(hours=2))  # due T0 + 1 h, while no run happens
    stale = add_task(demo, T0 + dt.timedelta(hours=5), title="Reunião antiga")  # due T0 + 4 h
    fresh = add_task(demo, T0 + dt.timedelta(days=3, hours=4), title="Reunião nova")  # due 1 h before run 3
    second = T0 + dt.timedelta(hours=3, minutes=15)  # 12 runs of 15 minutes missed
    assert run_dag(dagbag, second).state == "success"
    assert [r["state"] for r in ledger(demo, caught)] == ["sent"]
    assert len(sms_to(gateway, PHONE)) == 1 and ledger(demo, stale) == []

    third = T0 + dt.timedelta(days=3, hours=3, minutes=15)  # down for 3 days
    assert run_dag(dagbag, third).state == "success"
    (missed,) = ledger(demo, stale)
    assert missed["state"] == "skipped" and missed["reason"] == "missed" and missed["recipient"] == PHONE
    assert [r["state"] for r in ledger(demo, fresh)] == ["sent"]
    assert [b["text"].split(": ")[1].split(" em ")[0] for b in sms_to(gateway, PHONE)] == [
        "lembrete de Entrega agendada",
        "lembrete de Reunião nova",
    ]
    report = reports(smtp_sink)[-1]
    body = report.get_body(("plain",)).get_content()
    assert "skipped, missed: " in body and "'missed': " in body and "'previous_run_end': '2026-03-27T15:15:00" in body


def attempts_for(gateway: SmsGateway, number: str) -> list[tuple[float, str]]:
    return [(t, r.headers["idempotency-key"]) for t, r in gateway.received if r.body and r.body.get("to") == number]


@pytest.mark.parametrize(
    ("faults", "state", "tries", "min_gap"),
    [
        ([(429, {"Retry-After": "2"})], "sent", 2, 2.0),
        ([500, 500], "sent", 3, 0.5),
        ([400], "failed", 1, 0.0),
    ],
    ids=["429-retry-after", "500-twice", "400"],
)
def test_should_handle_gateway_faults_with_one_sms_at_most(
    dagbag, demo, smtp_sink, gateway, faults, state, tries, min_gap
):
    with sqlite3.connect(demo / "crm.db") as conn:  # only our reminder in this window: the faults are its
        conn.execute("UPDATE crm_task SET status = 'cancelled'")
    tid = add_task(demo, T0 + dt.timedelta(minutes=30))
    gateway.inject("/sms", *faults)
    assert run_dag(dagbag, T0).state == "success"
    (row,) = ledger(demo, tid)
    tried = attempts_for(gateway, PHONE)
    assert row["state"] == state and len(tried) == tries
    assert len({key for _, key in tried}) == 1 and tried[0][1] == f"crm-notification-{row['id']}"
    assert len(sms_to(gateway, PHONE)) == (1 if state == "sent" else 0)
    if tries > 1:
        assert tried[-1][0] - tried[0][0] >= min_gap  # the pause really happened
    if state == "failed":
        assert not row["retryable"] and "HTTP 400" in row["last_error"]
        assert "1 failed" in reports(smtp_sink)[-1]["Subject"]


def test_should_send_only_to_the_test_phone_and_keep_the_window_in_a_test_run(dagbag, demo, smtp_sink, gateway):
    tid = add_task(demo, T0 + dt.timedelta(minutes=30))
    assert run_dag(dagbag, T0, test_phone="+48 600 000 111", test_recipient="qa@example.com").state == "success"
    assert {b["to"] for b in gateway.messages()} == {"+48600000111"} and sms_to(gateway, PHONE) == []
    mails = reminders(smtp_sink)
    test_rows = ledger(demo)
    assert {r["routine"] for r in test_rows} == {f"{DAG_ID}:test"}
    assert mails and {m["X-Envelope-To"] for m in mails} == {"qa@example.com"}
    assert len(mails) == sum(1 for r in test_rows if r["channel"] == "email" and r["state"] == "sent")
    with sqlite3.connect(demo / "crm.db") as conn:
        assert conn.execute("SELECT watermark FROM crm_routine_run").fetchone()[0] is None
    assert run_dag(dagbag, T0).state == "success"  # the real run still reminds the real people
    assert len(sms_to(gateway, PHONE)) == 1 and [
        r["state"] for r in ledger(demo, tid) if "test" not in r["routine"]
    ] == ["sent"]


def segments_of(text: str) -> tuple[str, int]:
    """The encoding and segment count of an SMS, worked out here (no extension characters in these texts)."""
    gsm7 = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿"
    gsm7 += "abcdefghijklmnopqrstuvwxyzäöñüà"
    if all(c in gsm7 for c in text):
        return "GSM-7", 1 if len(text) <= 160 else -(-len(text) // 153)
    units = len(text.encode("utf-16-le")) // 2
    return "UCS-2", 1 if units <= 70 else -(-units // 67)


def test_should_total_the_sms_segments_in_the_report(dagbag, demo, smtp_sink, gateway):
    with sqlite3.connect(demo / "crm.db") as conn:  # only these reminders in this window
        conn.execute("UPDATE crm_task SET status = 'cancelled'")
    add_task(demo, T0 + dt.timedelta(minutes=30), title="Visita")
    add_task(demo, T0 + dt.timedelta(minutes=45), title="Instalação do equipamento de refrigeração na filial Centro")
    assert run_dag(dagbag, T0).state == "success"
    texts = [b["text"] for b in sms_to(gateway, PHONE)]
    assert len(texts) == 2
    counted = [segments_of(t) for t in texts]
    assert counted == [("UCS-2", 2), ("UCS-2", 3)]  # 'ú' and 'ç' are not GSM-7: 67 UTF-16 units a segment
    with sqlite3.connect(demo / "crm.db") as conn:
        summary = json.loads(conn.execute("SELECT summary FROM crm_routine_run").fetchone()[0])
    assert summary["sms_planned"] == {"messages": 2, "segments": 5, "UCS-2": 2}
    (report,) = reports(smtp_sink)
    assert "sms_planned: {'messages': 2, 'segments': 5, 'UCS-2': 2}" in report.get_body(("plain",)).get_content()
