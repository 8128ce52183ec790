"""crm_erp_account_sync end to end: dag.test() on a seeded demo with hand-made accounts for each rule.

Asserts what landed in the ERP customer table (through include/sql/erp/customer_upsert.sql), the ERP
codes written back with their history, the violations CSV of the run report, and that a re-run of the
date writes nothing more.
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

DAG_ID = "crm_erp_account_sync"
TZ = "America/Sao_Paulo"
BD = dt.date(2026, 11, 22)
REPORT_TO = "ops@example.com"
VALID_CNPJ = ("11444777000161", "04252011000110", "19131243000197")
# name -> (short_name, tax_id, person_type)
SETUP = {
    "new": ("ZZ NOVA LTDA", VALID_CNPJ[0], "PJ"),
    "new2": ("ZZ SEGUNDA", VALID_CNPJ[1], "PJ"),
    "bad_cpf": ("ZZ CPF RUIM", "52998224726", "PF"),
    "dup_a": ("ZZ DUPLICADA", VALID_CNPJ[2], "PJ"),
    "dup_b": ("zz duplicada ", "11144477735", "PF"),
    "no_delivery": ("ZZ SEM ENTREGA", "52998224725", "PF"),
}


def _complete(conn: sqlite3.Connection, account_id: int) -> None:
    for kind in ("correspondence", "billing", "delivery"):
        conn.execute("DELETE FROM crm_address WHERE account_id = ? AND address_type = ?", (account_id, kind))
        conn.execute(
            "INSERT INTO crm_address (account_id, address_type, street, number, district, city, state, postal_code,"
            " country) VALUES (?, ?, 'Rua Augusta', '100', 'Consolação', 'São Paulo', 'SP', '01304-000', 'BR')",
            (account_id, kind),
        )


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crm.demo.generate import generate

    var = tmp_path_factory.mktemp("demo")
    generate(var, accounts=400, seed=13, business_date=BD, log=None)
    with sqlite3.connect(var / "crm.db") as conn:
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM crm_account WHERE customer_type_id = 1 AND erp_customer_code IS NULL ORDER BY id"
        )]  # fmt: skip
        more = [r[0] for r in conn.execute(
            "SELECT id FROM crm_account WHERE customer_type_id = 4 ORDER BY id LIMIT ?", (len(SETUP),)
        )]  # fmt: skip
        ids = (ids + more)[: len(SETUP)]
        for account_id, (short, tax, ptype) in zip(ids, SETUP.values(), strict=True):
            conn.execute(
                "UPDATE crm_account SET customer_type_id = 1, erp_customer_code = NULL, short_name = ?, tax_id = ?,"
                " person_type = ?, email = 'compras@example.com', name = 'Cliente ' || ?, erp_group_id = 1,"
                " erp_representative_id = 2, erp_carrier_id = 3, erp_bearer_id = 4, erp_payment_condition_id = 5"
                " WHERE id = ?",
                (short, tax, ptype, short, account_id),
            )
            _complete(conn, account_id)
        new = ids[0]
        conn.execute("DELETE FROM crm_address WHERE account_id = ? AND address_type = 'delivery'", (ids[5],))
        conn.execute("DELETE FROM crm_phone WHERE account_id = ?", (new,))
        conn.execute("DELETE FROM crm_observation WHERE account_id = ?", (new,))
        for kind, number in (("mobile", "+5511999990000"), ("TELEFONE_ERP1", "+551130000001"),
                             ("FAX_ERP2", "+551130000009"), ("commercial", "+551130000002")):  # fmt: skip
            conn.execute(
                "INSERT INTO crm_phone (account_id, phone_type, number, is_primary, created_at, updated_at)"
                " VALUES (?, ?, ?, 0, '2026-11-01 10:00:00.000000', '2026-11-01 10:00:00.000000')",
                (new, kind, number),
            )
        types = dict(conn.execute("SELECT name, id FROM crm_observation_type"))
        for kind, text in (("Geral", "só no CRM"), ("Integração", "Entregar na doca 3")):
            conn.execute(
                "INSERT INTO crm_observation (account_id, observation_type_id, text, created_at, updated_at)"
                " VALUES (?, ?, ?, '2026-11-01 10:00:00.000000', '2026-11-01 10:00:00.000000')",
                (new, types[kind], text),
            )
        (var / "ids.json").write_text(json.dumps(dict(zip(SETUP, ids, strict=True))))
    return var


@pytest.fixture
def demo(seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtp_sink, airflow_db) -> Path:
    return wire_demo(monkeypatch, seeded, tmp_path, smtp_sink)


def ids(var: Path) -> dict[str, int]:
    return json.loads((var / "ids.json").read_text())


def rows(var: Path, db: str, sql: str, params: tuple = ()) -> list[dict]:
    with sqlite3.connect(var / db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, params)]


def run_dag(dagbag, **conf):
    dag = dagbag.get_dag(DAG_ID)
    assert dag is not None, dagbag.import_errors
    conf = {"full_check": False, "dry_run": False, "notify_to": REPORT_TO} | conf
    return dag.test(logical_date=pendulum.datetime(BD.year, BD.month, BD.day, 9, 0, tz=TZ), run_conf=conf)


def report_csv(sink, name: str, index: int = -1) -> list[dict]:
    report = [m for m in sink.messages() if m["X-Envelope-To"] == REPORT_TO][index]
    (part,) = [p for p in report.iter_attachments() if p.get_filename() == f"{DAG_ID}-{name}.csv"]
    return list(csv.DictReader(io.StringIO(part.get_payload(decode=True).decode("utf-8-sig"))))


def test_should_push_valid_accounts_write_codes_back_and_report_every_violation(dagbag, demo, smtp_sink):
    acc = ids(demo)
    erp_before = rows(demo, "erp.db", "SELECT max(code) AS m, count(*) AS n FROM customer")[0]
    run = run_dag(dagbag)
    assert run.state == "success"

    codes = {
        r["id"]: r["erp_customer_code"] for r in rows(demo, "crm.db", "SELECT id, erp_customer_code FROM crm_account")
    }
    new_code, new2_code = codes[acc["new"]], codes[acc["new2"]]
    assert new_code and new2_code and new_code > erp_before["m"] and new2_code == new_code + 1
    (customer,) = rows(demo, "erp.db", "SELECT * FROM customer WHERE code = ?", (new_code,))
    assert customer["short_name"] == "ZZ NOVA LTDA" and customer["tax_id"] == VALID_CNPJ[0]
    assert (customer["group_id"], customer["representative_id"], customer["carrier_id"], customer["bearer_id"],
            customer["payment_condition_id"]) == (1, 2, 3, 4, 5)  # fmt: skip
    assert (customer["phone1"], customer["phone2"], customer["fax1"], customer["fax2"]) == (
        "+551130000001",
        None,
        None,
        "+551130000009",
    )  # mobile and commercial numbers are not sent
    assert customer["mobile_phone"] is None
    assert customer["notes"] == "Entregar na doca 3"  # only the 'Integração' observation
    assert customer["address"] == "Rua Augusta, 100" and customer["city"] == "São Paulo"
    history = rows(demo, "crm.db", "SELECT * FROM crm_account_history WHERE routine = ?", (DAG_ID,))
    by_account = {h["account_id"]: h for h in history}
    assert by_account[acc["new"]]["field"] == "erp_customer_code"
    assert by_account[acc["new"]]["old_value"] is None and by_account[acc["new"]]["new_value"] == str(new_code)
    for key in ("bad_cpf", "dup_a", "dup_b", "no_delivery"):
        assert codes[acc[key]] is None, key
        assert acc[key] not in by_account

    violations = {(int(v["account_id"]), v["rule"], v["field"]) for v in report_csv(smtp_sink, "violations")}
    assert (acc["bad_cpf"], "invalid_cpf", "tax_id") in violations
    assert (acc["dup_a"], "short_name_duplicate_in_batch", "short_name") in violations
    assert (acc["dup_b"], "short_name_duplicate_in_batch", "short_name") in violations
    assert (acc["no_delivery"], "address_required", "delivery_address") in violations
    assert not [v for v in violations if v[0] in (acc["new"], acc["new2"])]
    pushed = {int(p["account_id"]): p["action"] for p in report_csv(smtp_sink, "pushed")}
    assert pushed[acc["new"]] == "inserted"
    # every account the report says was pushed is in the ERP under the code the CRM now holds
    erp_codes = {r["code"] for r in rows(demo, "erp.db", "SELECT code FROM customer")}
    assert all(codes[a] in erp_codes for a in pushed)
    summary = json.loads(rows(demo, "crm.db", "SELECT summary FROM crm_routine_run")[0]["summary"])
    assert summary["mode"] == "full" and summary["accounts_invalid"] >= 4

    # The same date again: nothing is written to the ERP or the CRM.
    erp_dump = rows(demo, "erp.db", "SELECT * FROM customer ORDER BY code")
    crm_dump = rows(demo, "crm.db", "SELECT * FROM crm_account ORDER BY id")
    run = run_dag(dagbag)
    assert run.state == "success"
    assert rows(demo, "erp.db", "SELECT * FROM customer ORDER BY code") == erp_dump
    assert rows(demo, "crm.db", "SELECT * FROM crm_account ORDER BY id") == crm_dump
    assert len(rows(demo, "crm.db", "SELECT id FROM crm_account_history WHERE routine = ?", (DAG_ID,))) == len(history)
    again = json.loads(rows(demo, "crm.db", "SELECT summary FROM crm_routine_run ORDER BY id DESC")[0]["summary"])
    assert again["mode"] == "incremental" and again["erp_inserted"] == 0 and again["erp_updated"] == 0


def test_should_send_a_fixed_account_in_the_next_run(dagbag, demo, smtp_sink):
    acc = ids(demo)
    assert run_dag(dagbag).state == "success"
    with sqlite3.connect(demo / "crm.db") as conn:
        conn.execute(
            "UPDATE crm_account SET tax_id = '52998224725', updated_at = '2026-11-22 12:00:00.000000' WHERE id = ?",
            (acc["bad_cpf"],),
        )
    assert run_dag(dagbag).state == "success"
    (row,) = rows(demo, "crm.db", "SELECT erp_customer_code FROM crm_account WHERE id = ?", (acc["bad_cpf"],))
    assert row["erp_customer_code"] is not None
    summary = json.loads(rows(demo, "crm.db", "SELECT summary FROM crm_routine_run ORDER BY id DESC")[0]["summary"])
    assert summary["mode"] == "incremental" and summary["erp_inserted"] == 1


def test_should_write_nothing_on_a_dry_run(dagbag, demo, smtp_sink):
    erp_dump = rows(demo, "erp.db", "SELECT * FROM customer ORDER BY code")
    assert run_dag(dagbag, dry_run=True).state == "success"
    assert rows(demo, "erp.db", "SELECT * FROM customer ORDER BY code") == erp_dump
    assert rows(demo, "crm.db", "SELECT count(*) AS n FROM crm_account_history")[0]["n"] == 0
    pushed = report_csv(smtp_sink, "pushed")
    assert any(p["action"] == "inserted" for p in pushed)  # what a real run would do
    assert report_csv(smtp_sink, "violations")


def test_should_resume_from_the_last_real_run_after_a_dry_run(dagbag, demo, smtp_sink):
    assert run_dag(dagbag).state == "success"  # the first real run: full, records its watermark
    assert run_dag(dagbag, dry_run=True).state == "success"
    runs = rows(demo, "crm.db", "SELECT status, watermark, summary FROM crm_routine_run ORDER BY id")
    assert [(r["status"], r["watermark"] is None) for r in runs] == [("success", False), ("success", True)]
    assert json.loads(runs[1]["summary"])["mode"] == "incremental"

    assert run_dag(dagbag).state == "success"  # after the dry run: still incremental from the real run's watermark
    last = json.loads(rows(demo, "crm.db", "SELECT summary FROM crm_routine_run ORDER BY id DESC")[0]["summary"])
    first = json.loads(runs[0]["summary"])
    assert last["mode"] == "incremental" and last["accounts_checked"] < first["accounts_checked"]
    watermark = rows(demo, "crm.db", "SELECT watermark FROM crm_routine_run ORDER BY id")[0]["watermark"]
    assert dt.datetime.fromisoformat(last["since"]) == dt.datetime.fromisoformat(watermark)
