"""The WhatsApp routines end to end: dag.test() on a seeded demo against the sandbox RD Conversas API.

What is expected is computed independently (SQL over the demo databases, or cases set up by hand);
the assertions are on what the API received, the ledger and the CRM tables.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import sqlite3
from pathlib import Path

import pendulum
import pytest

from crm.demo.rd_conversas import RdConversasSandbox, known_contacts
from tests.dags.demo_env import wire_demo

TZ = "America/Sao_Paulo"
BD = dt.date(2026, 11, 22)
DUE = BD + dt.timedelta(days=3)
TOKEN = "tok-E2E-5d2c81f0-SECRET"
SETTINGS = {"chip": "+5511999990000", "additional_field": "rd_conversas", "days_before_due": 3,
            "mobile_phone_type": "mobile", "page_size": 4}  # fmt: skip
PRIMARY_MOBILE = """
SELECT p.account_id, p.number FROM crm_phone p
WHERE p.phone_type = 'mobile' AND p.account_id IS NOT NULL
  AND p.id = (SELECT q.id FROM crm_phone q WHERE q.account_id = p.account_id AND q.phone_type = 'mobile'
              ORDER BY q.is_primary DESC, q.id LIMIT 1)
"""


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crm.demo.generate import generate

    var = tmp_path_factory.mktemp("wa-demo")
    generate(var, accounts=200, seed=11, business_date=BD)
    return var


@pytest.fixture
def api():
    with RdConversasSandbox(token=TOKEN, stall=1.0, max_per_page=4) as sandbox:
        yield sandbox


@pytest.fixture
def token_log():
    """Every log record of the test, formatted (the logging plugin is off in `make test`)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def wire(monkeypatch, seeded: Path, tmp_path: Path, sink, api: RdConversasSandbox) -> Path:
    var = wire_demo(monkeypatch, seeded, tmp_path, sink)
    monkeypatch.setenv("AIRFLOW_CONN_RD_CONVERSAS", json.dumps(api.connection(**SETTINGS)))
    api.contacts.update(known_contacts(var / "crm.db"))  # the contacts the demo CRM already sent exist in the API
    return var


@pytest.fixture
def demo(seeded, tmp_path, monkeypatch, smtp_sink, api, airflow_db) -> Path:
    return wire(monkeypatch, seeded, tmp_path, smtp_sink, api)


PARAMS = {
    "crm_whatsapp_contact_sync": {"mode": "incremental", "dry_run": False, "notify_to": ""},
    "crm_whatsapp_due_notices": {"companies": [], "group_companies": False, "days_before_due": None,
                                 "dry_run": False, "test_phone": "", "notify_to": "ops@example.com"},
    "crm_whatsapp_order_stages": {"since": "", "dry_run": False, "test_phone": "", "notify_to": ""},
    "crm_whatsapp_config": {"fetch_templates": True, "replicate_from": "", "replicate_to": [], "message_types": [],
                            "notify_to": "ops@example.com"},
}  # fmt: skip


def run_dag(dagbag, dag_id: str, when: dt.datetime, **conf):
    dag = dagbag.get_dag(dag_id)
    assert dag is not None, dagbag.import_errors
    # every Param explicitly: dag.test() keeps the previous run's conf in the DAG object's params
    return dag.test(logical_date=pendulum.instance(when, tz=TZ), run_conf=PARAMS[dag_id] | conf)


def at(hour: int, minute: int = 0, day: dt.date = BD) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, minute)


def query(var: Path, sql: str, params: tuple = (), db: str = "crm.db") -> list[tuple]:
    with sqlite3.connect(var / db) as conn:
        return conn.execute(sql, params).fetchall()


def execute(var: Path, sql: str, params: tuple = (), db: str = "crm.db") -> None:
    with sqlite3.connect(var / db) as conn:
        conn.execute(sql, params)


def ledger(var: Path, routine_like: str) -> dict[str, tuple]:
    rows = query(var, "SELECT business_key, state, reason, last_error FROM crm_notification WHERE routine LIKE ?",
                 (routine_like,))  # fmt: skip
    return {r[0]: r[1:] for r in rows}


def assert_token_nowhere(token_log, capfd, airflow_db: Path, var: Path, *, dag_id: str, logged: str) -> None:
    """The token is in no log line (ours or Airflow's, stdout/stderr), no XCom, no rendered field, no table.

    `logged`: a line this run is known to have logged, so the scan provably looked where the logs are.
    XCom and rendered template fields live in the Airflow metadata DB: this DAG must have rows there.
    """
    out, err = capfd.readouterr()
    logs = token_log.getvalue() + out + err
    assert logged in logs, f"{logged!r} was not logged where the scan looks"
    assert TOKEN not in logs
    for db in (Path(airflow_db), var / "crm.db"):
        with sqlite3.connect(db) as conn:
            tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for r in conn.execute(f'SELECT * FROM "{table}"'):
                    assert TOKEN not in repr(r), f"the token is stored in {db.name}.{table}"
    with sqlite3.connect(airflow_db) as conn:
        (xcoms,) = conn.execute("SELECT count(*) FROM xcom WHERE dag_id = ?", (dag_id,)).fetchone()
        (rendered,) = conn.execute(
            "SELECT count(*) FROM rendered_task_instance_fields WHERE dag_id = ?", (dag_id,)
        ).fetchone()
    assert xcoms > 0 and rendered > 0, (xcoms, rendered)


# --------------------------------------------------------------------------------------------------
# crm_whatsapp_contact_sync
# --------------------------------------------------------------------------------------------------
def test_should_send_each_contact_once_store_ids_and_update_changed_numbers(
    dagbag, demo, api, token_log, capfd, airflow_db
):
    mobiles = dict(query(demo, PRIMARY_MOBILE))
    synced = dict(query(demo, "SELECT account_id, phone_number FROM crm_external_id WHERE system = 'rd_conversas'"))
    to_create = {a: n for a, n in mobiles.items() if a not in synced}
    to_update = {a: n for a, n in mobiles.items() if a in synced and synced[a] != n}
    assert len(to_create) > 50 and to_update
    absent_account = min(to_create)
    api.not_on_whatsapp.add(to_create[absent_account])

    seeded_ids = set(api.contacts)
    api.server.inject("/v1/contacts", (429, {"Retry-After": "0"}))  # one retry: a logged line the token scan sees
    run = run_dag(dagbag, "crm_whatsapp_contact_sync", at(10), mode="batch")
    assert run.state == "success"
    created = {int(c["reference"].split(":")[1]): c for i, c in api.contacts.items() if i not in seeded_ids}
    assert {a: c["phone"] for a, c in created.items()} == {a: n for a, n in to_create.items() if a != absent_account}
    posts = [r.body["reference"] for r in api.server.deliveries("/v1/contacts")]
    assert len(posts) == len(set(posts)) == len(to_create)  # one creation per account (the absent one answered 422)
    stored = dict(query(demo, "SELECT account_id, external_id FROM crm_external_id WHERE system = 'rd_conversas'"))
    assert all(stored[a] == c["id"] for a, c in created.items()) and absent_account not in stored
    patched = {r.path.rsplit("/", 1)[1]: r.body["phone"] for r in api.server.deliveries() if r.method == "PATCH"}
    assert patched == {stored[a]: n for a, n in to_update.items()}
    now_synced = dict(query(demo, "SELECT account_id, phone_number FROM crm_external_id"))
    assert all(now_synced[a] == n for a, n in to_update.items())
    assert ledger(demo, "crm_whatsapp_contact_sync")[f"account {absent_account} / contact"][:2] == (
        "skipped",
        "not on WhatsApp",
    )

    # 10 minutes later, nothing changed: the incremental run sends nothing
    seen = len(api.server.requests())
    assert run_dag(dagbag, "crm_whatsapp_contact_sync", at(10, 10)).state == "success"
    assert len(api.server.requests()) == seen

    # one account changes its number, a new account is saved with a mobile: exactly those two go out
    changed_account = max(created)
    execute(demo, "UPDATE crm_phone SET number = '+5511955554444', updated_at = '2026-11-22 13:12:00.000000' "
                  "WHERE account_id = ? AND phone_type = 'mobile'", (changed_account,))  # fmt: skip
    execute(demo, "INSERT INTO crm_account (id, company_id, person_type, name, created_at, updated_at) "
                  "VALUES (99001, 1, 'PF', 'Nova Cliente', '2026-11-22 13:13:00', '2026-11-22 13:13:00')")  # fmt: skip
    execute(demo, "INSERT INTO crm_phone (account_id, phone_type, number, is_primary, created_at, updated_at) "
                  "VALUES (99001, 'mobile', '+5511944443333', 1, "
                  "'2026-11-22 13:13:00', '2026-11-22 13:13:00')")  # fmt: skip
    assert run_dag(dagbag, "crm_whatsapp_contact_sync", at(10, 20)).state == "success"
    new = api.server.requests()[seen:]
    assert sorted((r.method, r.body["phone"]) for r in new) == [("PATCH", "+5511955554444"), ("POST", "+5511944443333")]
    assert api.contacts[stored[changed_account]]["phone"] == "+5511955554444"
    assert query(demo, "SELECT phone_number FROM crm_external_id WHERE account_id = ?", (changed_account,)) == [
        ("+5511955554444",)
    ]
    assert query(demo, "SELECT count(*) FROM crm_external_id WHERE account_id = 99001") == [(1,)]

    # a batch run later: nobody is created twice; only the number that was not on WhatsApp is tried again
    before = len(api.server.requests())
    assert run_dag(dagbag, "crm_whatsapp_contact_sync", at(10, 30), mode="batch").state == "success"
    again = api.server.requests()[before:]
    assert [r.body["phone"] for r in again] == [to_create[absent_account]]
    assert_token_nowhere(token_log, capfd, airflow_db, demo, dag_id="crm_whatsapp_contact_sync",
                         logged="POST /v1/contacts: HTTP 429")  # fmt: skip


def test_should_send_nothing_in_a_dry_run_and_show_sample_contacts_in_the_report(dagbag, demo, api, smtp_sink):
    mobiles = dict(query(demo, PRIMARY_MOBILE))
    run = run_dag(dagbag, "crm_whatsapp_contact_sync", at(10), mode="batch", dry_run=True, notify_to="ops@example.com")
    assert run.state == "success"
    assert api.server.requests() == [] and ledger(demo, "crm_whatsapp_contact_sync") == {}
    (report,) = [m for m in smtp_sink.messages() if m["X-Envelope-To"] == "ops@example.com"]
    text = next(part for part in report.walk() if part.get_content_type() == "text/plain").get_content()
    shown = [line.removeprefix("To: ") for line in text.splitlines() if line.startswith("To: ")]
    assert shown and set(shown) <= set(mobiles.values())
    assert "contact_create: account:" in text


# --------------------------------------------------------------------------------------------------
# crm_whatsapp_due_notices
# --------------------------------------------------------------------------------------------------
def due_cases(var: Path) -> dict[str, dict]:
    """Hand-made receivables due on DUE (and one the day after); returns the customers by role."""
    rows = query(var, f"""
        SELECT a.id, a.erp_customer_code, c.code, m.number, a.name FROM crm_account a
        JOIN crm_company c ON c.id = a.company_id JOIN ({PRIMARY_MOBILE}) m ON m.account_id = a.id
        WHERE a.erp_customer_code IS NOT NULL AND a.opt_out_whatsapp = 0 AND m.number LIKE '+%'
        ORDER BY a.id""")  # fmt: skip
    by_company: dict[str, list] = {}
    for r in rows:
        by_company.setdefault(r[2], []).append(r)
    pick = iter(by_company["BR01"])
    roles = {k: next(pick) for k in ("A", "C", "D", "E", "F")}
    roles |= {"B": by_company["BR02"][0], "H": by_company["BR03"][0], "G": by_company["PL01"][0]}
    people = {
        k: {"account": r[0], "code": r[1], "company": r[2], "phone": r[3], "name": r[4]} for k, r in roles.items()
    }
    execute(var, "UPDATE crm_account SET opt_out_whatsapp = 1 WHERE id = ?", (people["E"]["account"],))
    execute(var, "DELETE FROM crm_external_id WHERE account_id = ?", (people["D"]["account"],))
    for k, p in people.items():
        if k != "D":
            execute(var, "INSERT OR REPLACE INTO crm_external_id VALUES (?, 'rd_conversas', ?, ?, '2026-11-01')",
                    (p["account"], f"ct_seed_{k}", p["phone"]))  # fmt: skip
    execute(var, "DELETE FROM receivable WHERE due_date = ?", (DUE.isoformat(),), db="erp.db")
    cases = [  # id, role, method, status, due, paid
        (900001, "A", "boleto", "open", DUE, 0), (900002, "B", "boleto", "in_progress", DUE, 0),
        (900003, "A", "pix_carne", "in_progress", DUE, 0), (900004, "C", "pix_carne", "open", DUE, 0),
        (900005, "C", "boleto", "paid", DUE, 1), (900006, "C", "boleto", "open", DUE + dt.timedelta(days=1), 0),
        (900007, "D", "boleto", "open", DUE, 0), (900008, "E", "boleto", "open", DUE, 0),
        (900009, "F", "boleto", "open", DUE, 0), (900010, "H", "pix_carne", "in_progress", DUE, 0),
        (900011, "G", "boleto", "open", DUE, 0), (900012, "H", "boleto", "open", DUE, 0),
    ]  # fmt: skip
    with sqlite3.connect(var / "erp.db") as conn:
        for rid, role, method, status, due, paid in cases:
            p = people[role]
            conn.execute(
                "INSERT INTO receivable (id, customer_code, company_code, document_number, issue_date, due_date, "
                "amount, paid_amount, paid, payment_method, status, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, '2026-11-01 10:00:00.000000')",
                (rid, p["code"], p["company"], f"DOC-{rid}", "2026-10-25", due.isoformat(), 123.45,
                 123.45 if paid else 0.0, paid, method, status),
            )  # fmt: skip
    return people


EXPECTED_DUE = {  # receivable -> (role, template)
    900001: ("A", "aviso_boleto_vencimento"),
    900002: ("B", "aviso_boleto_vencimento"),
    900003: ("A", "aviso_carne_pix"),
    900011: ("G", "faktura_termin_platnosci"),
    900012: ("H", "aviso_boleto_vencimento"),
}


def notices(api: RdConversasSandbox) -> set[tuple]:
    return {(m["to"], m["template"]["name"], tuple(m["template"]["parameters"]), m["chip"]) for m in api.messages}


def test_should_notify_exactly_the_bills_due_in_n_days_per_company_with_retries(
    dagbag, demo, api, smtp_sink, token_log, capfd, airflow_db
):
    people = due_cases(demo)
    api.not_on_whatsapp.add(people["F"]["phone"])
    api.server.inject("/v1/messages", (429, {"Retry-After": "1"}), 500, 500)

    run = run_dag(dagbag, "crm_whatsapp_due_notices", at(9))
    assert run.state == "success"
    sent = {int(m["template"]["parameters"][1].removeprefix("DOC-")): m for m in api.messages}
    assert {rid: (m["to"], m["template"]["name"]) for rid, m in sent.items()} == {
        rid: (people[role]["phone"], tpl) for rid, (role, tpl) in EXPECTED_DUE.items()
    }
    a = sent[900001]["template"]["parameters"]
    assert a[0] == people["A"]["name"] and a[3] == DUE.strftime("%d/%m/%Y") and "123,45" in a[2]
    assert a[4].startswith("34191.") and sent[900003]["template"]["parameters"][4].startswith("00020126")
    assert sent[900011]["template"]["parameters"][3] == DUE.strftime("%d.%m.%Y")  # Polish company, Polish date
    assert sent[900001]["chip"] == "+5511999990001" and sent[900012]["chip"] == SETTINGS["chip"]  # config, else conn
    assert sent[900001]["contact_id"] == "ct_seed_A"
    # 429 (Retry-After honoured) and 500 twice: retried, each notice delivered once
    assert len(api.server.requests("/v1/messages")) == len(api.server.deliveries("/v1/messages")) + 3
    first, retried = api.server.requests("/v1/messages")[:2]  # the 429, then the same notice again
    assert first.headers["idempotency-key"] == retried.headers["idempotency-key"]
    assert retried.received_at - first.received_at >= 0.95  # Retry-After: 1 was honoured
    assert len(api.messages) == len(EXPECTED_DUE)

    rows = ledger(demo, "crm_whatsapp_due_notices/%")
    due = DUE.isoformat()
    assert {k for k, v in rows.items() if v[0] == "sent"} == {f"receivable {r} / due {due}" for r in EXPECTED_DUE}
    assert rows[f"receivable 900007 / due {due}"][:2] == ("skipped", "no RD Conversas contact")
    assert rows[f"receivable 900008 / due {due}"][:2] == ("skipped", "opted out of WhatsApp")
    assert rows[f"receivable 900009 / due {due}"][:2] == ("skipped", "not on WhatsApp")
    assert not any(f"receivable {r} /" in k for r in (900004, 900005, 900006, 900010) for k in rows)

    (summary,) = query(demo, "SELECT summary FROM crm_routine_run WHERE dag_id = 'crm_whatsapp_due_notices'")
    companies = json.loads(summary[0])["companies"]
    assert companies["BR01"]["ledger"]["sent"] == 2 and companies["BR01"]["ledger"]["skipped"] == 3
    assert companies["PL01"]["ledger"] == {"sent": 1} and companies["BR02"]["ledger"] == {"sent": 1}
    (report,) = [m for m in smtp_sink.messages() if m["X-Envelope-To"] == "ops@example.com"]
    assert "success" in report["Subject"]

    # the same date again: nothing new goes out
    before = len(api.server.requests("/v1/messages"))
    assert run_dag(dagbag, "crm_whatsapp_due_notices", at(9, 30)).state == "success"
    assert len(api.server.requests("/v1/messages")) == before + 1  # only the not-on-WhatsApp bill is asked again

    assert_token_nowhere(token_log, capfd, airflow_db, demo, dag_id="crm_whatsapp_due_notices", logged="try 2 of 5")


def test_should_send_the_same_notices_grouped_or_per_company(
    dagbag, seeded, tmp_path, monkeypatch, smtp_sink, airflow_db
):
    outcomes = []
    for grouped in (False, True):
        with RdConversasSandbox(token=TOKEN, stall=1.0) as sandbox:
            var = wire(monkeypatch, seeded, tmp_path / f"g{int(grouped)}", smtp_sink, sandbox)
            due_cases(var)
            run = run_dag(dagbag, "crm_whatsapp_due_notices", at(9), group_companies=grouped)
            assert run.state == "success"
            maps = {ti.map_index for ti in run.get_task_instances() if ti.task_id == "plan_notices"}
            outcomes.append((notices(sandbox), ledger(var, "crm_whatsapp_due_notices/%"), len(maps)))
    (per_company, rows_a, maps_a), (grouped_, rows_b, maps_b) = outcomes
    assert per_company == grouped_
    # F is on WhatsApp here (the test above answers "not on WhatsApp" for F's number): its bill goes too
    assert {n[2][1] for n in per_company} == {f"DOC-{r}" for r in (*EXPECTED_DUE, 900009)}
    assert rows_a == rows_b
    assert maps_a == 5 and maps_b == 1  # BR01, BR02, BR03, PL01, RO01 have a due configuration


# --------------------------------------------------------------------------------------------------
# crm_whatsapp_order_stages
# --------------------------------------------------------------------------------------------------
EXPECTED_EVENTS = """
SELECT e.id, o.id, o.order_number, e.stage, m.number FROM order_stage_event e
JOIN sales_order o ON o.id = e.order_id
JOIN crm.crm_account a ON a.erp_customer_code = o.customer_code
JOIN crm.crm_company c ON c.id = a.company_id AND c.code = o.company_code
JOIN crm.crm_whatsapp_config w ON w.company_id = c.id AND w.message_type = 'order_stage:' || e.stage AND w.active = 1
JOIN ({mobile}) m ON m.account_id = a.id
WHERE o.channel IN ('infinite_shelf', 'omni') AND e.occurred_at > ? AND e.occurred_at <= ? AND a.opt_out_whatsapp = 0
"""


def sync_order_customers(var: Path) -> None:
    """Every customer with an order has a synced contact and a carrier (so that every configured stage can go)."""
    execute(var, "UPDATE customer SET carrier_id = 1 WHERE carrier_id IS NULL", db="erp.db")
    codes = [c for (c,) in query(var, "SELECT DISTINCT customer_code FROM sales_order", db="erp.db")]
    with sqlite3.connect(var / "crm.db") as conn:
        for account_id, number in conn.execute(
            f"SELECT a.id, m.number FROM crm_account a JOIN ({PRIMARY_MOBILE}) m ON m.account_id = a.id "
            f"WHERE a.erp_customer_code IN ({','.join('?' * len(codes))})", codes
        ).fetchall():  # fmt: skip
            conn.execute("INSERT OR IGNORE INTO crm_external_id VALUES (?, 'rd_conversas', ?, ?, '2026-11-01')",
                         (account_id, f"ct_o{account_id}", number))  # fmt: skip


def expected_events(var: Path, since: str, until: str) -> dict[tuple[int, str], tuple[str, str]]:
    with sqlite3.connect(var / "erp.db") as conn:
        conn.execute("ATTACH DATABASE ? AS crm", (str(var / "crm.db"),))
        rows = conn.execute(EXPECTED_EVENTS.format(mobile=PRIMARY_MOBILE.replace("crm_phone", "crm.crm_phone")),
                            (since, until)).fetchall()  # fmt: skip
    return {(order_id, stage): (number, phone) for _, order_id, number, stage, phone in rows}


def test_should_notify_configured_order_stages_once_each(dagbag, demo, api, token_log, capfd, airflow_db):
    sync_order_customers(demo)
    until = "2026-11-22 15:00:00.000000"  # 12:00 in São Paulo
    want = expected_events(demo, "2026-11-01 00:00:00", until)
    stages = {s for _, s in want}
    assert len(want) >= 3 and "shipped" in stages

    api.server.inject("/v1/messages", 500)  # one retry: a logged line the token scan sees
    run = run_dag(dagbag, "crm_whatsapp_order_stages", at(12), since="2026-11-01T00:00:00")
    assert run.state == "success"
    got = {(m["template"]["parameters"][1], m["to"]) for m in api.messages}
    assert got == {(number, phone) for number, phone in want.values()}
    assert len(api.messages) == len(want)
    rows = ledger(demo, "crm_whatsapp_order_stages")
    assert {k for k, v in rows.items() if v[0] == "sent"} == {f"order {o} / {s}" for o, s in want}
    assert not any(k.endswith(("/ created", "/ cancelled", "/ invoiced")) for k in rows)  # not configured (active)

    # 5 minutes later: the window overlaps the last one, but nothing is notified twice
    assert run_dag(dagbag, "crm_whatsapp_order_stages", at(12, 5)).state == "success"
    assert len(api.messages) == len(want)

    # a shipped order reaches 'delivered' (configured for BR01) and another is 'created' (not configured)
    shipped = sorted(o for o, s in want if s == "shipped")
    order_id, customer_code = query(
        demo,
        "SELECT o.id, o.customer_code FROM sales_order o WHERE o.company_code = 'BR01' AND o.channel = 'omni' "
        f"AND o.id IN ({','.join('?' * len(shipped))}) AND NOT EXISTS (SELECT 1 FROM order_stage_event e "
        "WHERE e.order_id = o.id AND e.stage = 'delivered') ORDER BY o.id LIMIT 1",
        tuple(shipped),
        db="erp.db",
    )[0]
    for stage in ("delivered", "created"):
        execute(demo, "INSERT INTO order_stage_event (order_id, stage, occurred_at) VALUES (?, ?, ?)",
                (order_id, stage, "2026-11-22 15:07:00.000000"), db="erp.db")  # fmt: skip
    execute(demo, "DELETE FROM crm_notification WHERE business_key = ?", (f"order {order_id} / created",))
    assert run_dag(dagbag, "crm_whatsapp_order_stages", at(12, 10)).state == "success"
    new = api.messages[len(want) :]
    phone = dict(query(demo, "SELECT a.erp_customer_code, m.number FROM crm_account a JOIN "
                             f"({PRIMARY_MOBILE}) m ON m.account_id = a.id"))[customer_code]  # fmt: skip
    assert [(m["template"]["name"], m["to"]) for m in new] == [("pedido_entregue", phone)]
    assert ledger(demo, "crm_whatsapp_order_stages")[f"order {order_id} / delivered"][0] == "sent"
    assert_token_nowhere(token_log, capfd, airflow_db, demo, dag_id="crm_whatsapp_order_stages",
                         logged="POST /v1/messages: HTTP 500")  # fmt: skip


# --------------------------------------------------------------------------------------------------
# crm_whatsapp_config
# --------------------------------------------------------------------------------------------------
def test_should_fetch_the_catalogue_page_by_page_and_replicate_a_configuration(
    dagbag, demo, api, token_log, capfd, airflow_db
):
    import math

    api.server.inject("/v1/templates", 503)  # one retry: a logged line the token scan sees
    run = run_dag(dagbag, "crm_whatsapp_config", at(8), replicate_from="BR01", replicate_to=["BR03", "RO01"],
                  message_types=["due_carne", "order_stage:shipped"])  # fmt: skip
    assert run.state == "success"
    pages = [r.query["page"][0] for r in api.server.deliveries("/v1/templates")]
    assert len(api.server.requests("/v1/templates")) == len(pages) + 1
    assert pages == [str(p) for p in range(1, math.ceil(len(api.catalogue) / 4) + 1)]
    names = {n for (n,) in query(demo, "SELECT name FROM crm_whatsapp_template")}
    assert names == {t["name"] for t in api.catalogue}
    configs = query(demo, "SELECT c.code, w.message_type, w.template_name FROM crm_whatsapp_config w JOIN crm_company c"
                          " ON c.id = w.company_id WHERE c.code IN ('BR03', 'RO01') ORDER BY 1, 2")  # fmt: skip
    assert configs == [
        ("BR03", "due_boleto", "aviso_boleto_vencimento"),
        ("BR03", "due_carne", "aviso_carne_pix"),
        ("BR03", "order_stage:shipped", "pedido_enviado"),
        ("RO01", "due_boleto", "factura_scadenta"),
        ("RO01", "due_carne", "aviso_carne_pix"),
        ("RO01", "order_stage:delivered", "comanda_livrata"),
        ("RO01", "order_stage:shipped", "pedido_enviado"),
    ]
    bad = run_dag(dagbag, "crm_whatsapp_config", at(8, 5), fetch_templates=False, replicate_from="BR01",
                  replicate_to=["ZZ99"])  # fmt: skip
    assert bad.state == "failed"
    assert_token_nowhere(token_log, capfd, airflow_db, demo, dag_id="crm_whatsapp_config",
                         logged="GET /v1/templates: HTTP 503")  # fmt: skip
