"""The WhatsApp channel (RD Conversas client + sandbox), its pure rules, and the CRM tables it relies on."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math

import pytest
import sqlalchemy as sa

from crm.demo.rd_conversas import RdConversasSandbox, template_dicts
from crm.notify.ledger import Claimed
from crm.notify.whatsapp import RdConversas, idempotency_key, outcome, whatsapp_sender
from crm.routines import whatsapp as rules

TOKEN = "tok-UNIT-9c1e77b2-SECRET"


@pytest.fixture
def api(monkeypatch):
    with RdConversasSandbox(token=TOKEN, not_on_whatsapp={"+5511900000001"}, blocked={"+5511900000002"},
                            max_per_page=3, stall=1.0) as sandbox:  # fmt: skip
        conn = sandbox.connection(chip="+5511999990000", page_size=3)
        monkeypatch.setenv("AIRFLOW_CONN_RD_CONVERSAS", json.dumps(conn))
        yield sandbox


def client(waits: list[float] | None = None, **kw) -> RdConversas:
    return RdConversas(sleep=(waits if waits is not None else []).append, backoff=0.25, timeout=0.5, **kw)


@pytest.fixture
def token_log():
    """Everything logged at any level while the test runs, formatted (the logging plugin is off in `make test`)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def row(payload: dict, row_id: int = 1, key: str = "k / 1") -> Claimed:
    return Claimed(id=row_id, recipient="account:7", business_key=key, payload=payload, attempts=0, account_id=7)


MESSAGE = {"kind": "message", "to": "+5511987654321", "template": "pedido_entregue", "language": "pt_BR",
           "parameters": ["Ana", "PV1"], "chip": None, "contact_id": "ct_1",
           "message_type": "order_stage:delivered"}  # fmt: skip


def test_should_create_a_contact_with_the_bearer_token_and_return_its_id(api):
    with client() as c:
        result = c.create_contact(name="Ana Lima", phone="+5511987654321", reference="account:7", idempotency_key="k1")
    assert result.status == 201 and result.body["id"] in api.contacts
    (req,) = api.server.requests("/v1/contacts")
    assert req.headers["authorization"] == f"Bearer {TOKEN}" and req.headers["idempotency-key"] == "k1"
    assert req.body == {"name": "Ana Lima", "phone": "+5511987654321", "reference": "account:7"}
    assert "crm" not in req.headers  # the package's settings are not sent as headers


def test_should_resolve_the_connection_once_per_batch_however_many_requests(api, monkeypatch):
    from airflow.providers.http.hooks.http import HttpHook

    lookups: list[str] = []
    real = HttpHook.get_connection.__func__
    monkeypatch.setattr(HttpHook, "get_connection", classmethod(lambda cls, cid: lookups.append(cid) or real(cls, cid)))
    with client() as c:
        opened = len(lookups)
        list(c.templates())  # several pages
        for i in range(3):
            c.create_contact(name=f"C{i}", phone=f"+551198765432{i}", reference=f"account:{i}")
    assert len(lookups) == opened <= 2
    sent = api.server.requests()
    assert len(sent) >= 8 and all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in sent)


def test_should_page_through_the_template_catalogue(api):
    catalogue = template_dicts()
    with client() as c:
        got = list(c.templates())
    assert [t["name"] for t in got] == [t["name"] for t in catalogue]
    pages = [r.query["page"][0] for r in api.server.requests("/v1/templates")]
    assert pages == [str(p) for p in range(1, math.ceil(len(catalogue) / 3) + 1)]


def test_should_honour_retry_after_on_429_then_send_once(api):
    api.server.inject("/v1/messages", (429, {"Retry-After": "2"}))
    waits: list[float] = []
    with client(waits) as c:
        out = whatsapp_sender(c, "r")(row(MESSAGE), lambda: None)
    assert out.state == "sent" and out.provider_message_id == api.messages[0]["id"]
    assert waits == [2.0] and len(api.server.requests("/v1/messages")) == 2
    assert len(api.server.deliveries("/v1/messages")) == 1 and api.messages[0]["chip"] == "+5511999990000"


def test_should_retry_500_twice_then_succeed_and_not_retry_other_4xx(api):
    api.server.inject("/v1/messages", 500, 500)
    waits: list[float] = []
    with client(waits) as c:
        send = whatsapp_sender(c, "r")
        ok = send(row(MESSAGE), lambda: None)
        api.server.inject("/v1/messages", 400)
        bad = send(row(MESSAGE, 2, "k / 2"), lambda: None)
    assert ok.state == "sent" and waits == [0.25, 0.5]
    assert bad.state == "failed" and not bad.retryable and "HTTP 400" in bad.error
    assert len(api.server.requests("/v1/messages")) == 4 and len(api.messages) == 1


def test_should_skip_numbers_not_on_whatsapp_or_blocked_with_the_reason(api):
    with client() as c:
        send = whatsapp_sender(c, "r")
        absent = send(row({**MESSAGE, "to": "+5511900000001"}), lambda: None)
        blocked = send(row({**MESSAGE, "to": "+5511900000002"}, 2, "k / 2"), lambda: None)
        contact = send(row({"kind": "contact_create", "name": "X", "phone": "+5511900000001", "reference": "a"}, 3),
                       lambda: None)  # fmt: skip
    assert (absent.state, absent.reason) == ("skipped", "not on WhatsApp")
    assert (blocked.state, blocked.reason) == ("skipped", "blocked")
    assert (contact.state, contact.reason) == ("skipped", "not on WhatsApp") and not api.contacts
    assert len(api.server.requests("/v1/messages")) == 2  # one try each: an answer, not a fault


def test_should_store_the_contact_id_only_after_the_api_said_yes_and_update_changed_numbers(api):
    stored: list[tuple] = []
    with client() as c:
        send = whatsapp_sender(c, "r", on_contact=lambda r, cid, phone: stored.append((r.account_id, cid, phone)))
        created = send(row({"kind": "contact_create", "name": "Ana", "phone": "+5511987654321", "reference": "a7"}),
                       lambda: None)  # fmt: skip
        cid = created.provider_message_id
        updated = send(row({"kind": "contact_update", "contact_id": cid, "name": "Ana", "phone": "+5511912345678"}, 2,
                           "account 7 / phone +5511912345678"), lambda: None)  # fmt: skip
    assert created.state == updated.state == "sent"
    assert stored == [(7, cid, "+5511987654321"), (7, cid, "+5511912345678")]
    assert api.contacts[cid]["phone"] == "+5511912345678" and len(api.contacts) == 1
    (patch,) = api.server.requests(f"/v1/contacts/{cid}")
    assert patch.method == "PATCH"


def test_should_send_one_idempotency_key_per_ledger_row_across_retries(api):
    api.server.inject("/v1/messages", "timeout")
    with client() as c:
        out = whatsapp_sender(c, "routine-x")(row(MESSAGE, 99, "order 5 / shipped"), lambda: None)
    keys = {r.headers["idempotency-key"] for r in api.server.requests("/v1/messages")}
    assert out.state == "sent" and keys == {idempotency_key("routine-x", "account:7", "order 5 / shipped")}
    assert len(api.messages) == 1  # the lost answer's request was acted on once
    assert idempotency_key("a", "b", "c") != idempotency_key("a", "b", "d")


def test_should_refuse_a_wrong_token_and_never_log_the_token(api, monkeypatch, token_log, capfd):
    api.server.inject("/v1/messages", (429, {"Retry-After": "1"}), 500)
    with client() as c:
        sent = whatsapp_sender(c, "r")(row(MESSAGE), lambda: None)
    bad = dict(api.connection(), password=TOKEN + "-wrong")
    monkeypatch.setenv("AIRFLOW_CONN_RD_CONVERSAS", json.dumps(bad))
    with client() as c:
        refused = whatsapp_sender(c, "r")(row(MESSAGE, 2, "k2"), lambda: None)
    assert sent.state == "sent"
    assert refused.state == "failed" and "token was refused" in refused.error and TOKEN not in refused.error
    logged = token_log.getvalue()
    assert "try 2 of 5" in logged  # the retries were logged (so the check below looked at real lines)
    out, err = capfd.readouterr()
    assert TOKEN not in logged and TOKEN not in out and TOKEN not in err


def test_should_map_api_answers_to_ledger_outcomes():
    from crm.notify.http import HttpResult

    assert outcome(HttpResult(422, {"error": {"code": "not_on_whatsapp"}})).reason == "not on WhatsApp"
    assert outcome(HttpResult(422, {"error": "blocked"})).reason == "blocked"
    assert outcome(HttpResult(422, {"error": {"code": "invalid_parameters"}})).state == "failed"
    assert outcome(HttpResult(503, "down", attempts=5)).retryable
    assert outcome(HttpResult(201, {"id": "m1"}), "m1").provider_message_id == "m1"


# -- pure rules --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "status", "expected"),
    [("boleto", "open", "due_boleto"), ("boleto", "in_progress", "due_boleto"), ("pix_carne", "in_progress",
     "due_carne"), ("pix_carne", "open", None), ("boleto", "paid", None), ("other", "open", None)],
)  # fmt: skip
def test_should_pick_the_message_type_of_a_receivable(method, status, expected):
    assert rules.message_type_of(method, status) == expected


def test_should_normalise_numbers_to_e164_or_refuse_them():
    assert rules.normalize_phone("+55 (11) 98765-4321") == "+5511987654321"
    assert rules.normalize_phone("(11) 98765-4321", "pt_BR") == "+5511987654321"
    assert rules.normalize_phone("600 100 200", "pl_PL") == "+48600100200"
    assert rules.normalize_phone("(11) 98765-4321", None) is None  # no country to complete it
    assert rules.normalize_phone("123", "pt_BR") is None and rules.normalize_phone("  ") is None


def test_should_fill_template_parameters_from_the_configured_fields_in_order():
    values = {"customer_name": "Ana", "amount": "R$ 10,00", "pix_code": None}
    assert rules.template_parameters(["amount", "customer_name"], values) == ["R$ 10,00", "Ana"]
    with pytest.raises(rules.ParameterError, match="unknown field 'cpf'"):
        rules.template_parameters(["cpf"], values)
    with pytest.raises(rules.ParameterError, match="'pix_code' has no value"):
        rules.template_parameters(["pix_code"], values)
    rules.check_template({"status": "APPROVED", "parameter_count": 2}, ["a", "b"], "t")
    with pytest.raises(rules.ParameterError, match="takes 3 parameter"):
        rules.check_template({"status": "APPROVED", "parameter_count": 3}, ["a", "b"], "t")
    with pytest.raises(rules.ParameterError, match="not approved"):
        rules.check_template({"status": "REJECTED", "parameter_count": 2}, ["a", "b"], "t")


def test_should_look_days_ahead_and_group_companies():
    from crm.jobs.whatsapp import company_groups, order_window

    assert rules.due_date_for(dt.date(2024, 5, 23), 2) == dt.date(2024, 5, 25)  # the seed document's example
    assert company_groups(["BR01", "BR02"], False) == [["BR01"], ["BR02"]]
    assert company_groups(["BR01", "BR02"], True) == [["BR01", "BR02"]] and company_groups([], True) == []
    now = dt.datetime(2026, 11, 22, 15, 0)
    kw = {"overlap": dt.timedelta(minutes=15), "first_lookback": dt.timedelta(hours=1)}
    assert order_window(now, None, since_param=None, **kw) == (dt.datetime(2026, 11, 22, 14, 0), now)
    assert order_window(now, dt.datetime(2026, 11, 22, 14, 55), since_param=None, **kw)[0] == dt.datetime(
        2026, 11, 22, 14, 40
    )
    assert order_window(now, None, since_param="2026-11-22T10:00:00-03:00", **kw)[0] == dt.datetime(2026, 11, 22, 13)
    with pytest.raises(ValueError, match="empty window"):
        order_window(now, None, since_param="2026-11-23T00:00:00", **kw)


# -- the CRM tables ------------------------------------------------------------------------------------
def _crm(engine: sa.Engine) -> sa.Engine:
    from crm.db.crm_schema import metadata

    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO crm_company (id, code, name) VALUES (1, 'BR01', 'A'), (2, 'BR02', 'B'), "
                             "(3, 'PL01', 'C')"))  # fmt: skip
    return engine


@pytest.fixture
def crm_sqlite(tmp_path) -> sa.Engine:
    from crm.db.engines import engine_from_url

    return _crm(engine_from_url(f"sqlite:///{tmp_path / 'crm.db'}"))  # foreign keys on, as in production


def _check_config_constraints(crm: sa.Engine) -> None:
    from crm.jobs.whatsapp import replicate_config, store_templates

    store_templates(crm, template_dicts())
    insert = sa.text("INSERT INTO crm_whatsapp_config (company_id, message_type, template_name, parameter_fields) "
                     "VALUES (:c, :t, :n, '[\"customer_name\"]')")  # fmt: skip
    with crm.begin() as conn:
        conn.execute(insert, {"c": 1, "t": "due_boleto", "n": "aviso_boleto_vencimento"})
        conn.execute(insert, {"c": 1, "t": "order_stage:shipped", "n": "pedido_enviado"})
    with pytest.raises(sa.exc.IntegrityError), crm.begin() as conn:  # two configurations of one type: refused
        conn.execute(insert, {"c": 1, "t": "due_boleto", "n": "aviso_carne_pix"})
    with pytest.raises(sa.exc.IntegrityError), crm.begin() as conn:  # a template the catalogue does not have
        conn.execute(insert, {"c": 2, "t": "due_boleto", "n": "no_such_template"})
    result = replicate_config(crm, "BR01", ["BR02", "PL01"], ["due_boleto"])
    assert result["written"] == 2
    replicate_config(crm, "BR01", ["BR02"])  # again, all types: the existing one is overwritten, not doubled
    with crm.connect() as conn:
        rows = conn.execute(sa.text("SELECT company_id, message_type FROM crm_whatsapp_config ORDER BY 1, 2")).all()
    assert rows == [(1, "due_boleto"), (1, "order_stage:shipped"), (2, "due_boleto"), (2, "order_stage:shipped"),
                    (3, "due_boleto")]  # fmt: skip
    with pytest.raises(ValueError, match="unknown company code"):
        replicate_config(crm, "BR01", ["XX99"])
    # the API drops a template: kept (configurations point at it) but marked, so its notices fail visibly
    counts = store_templates(crm, [t for t in template_dicts() if t["name"] != "pedido_enviado"])
    assert counts["removed"] == 1
    with crm.connect() as conn:
        status = conn.execute(sa.text("SELECT status FROM crm_whatsapp_template WHERE name = 'pedido_enviado'"))
        assert status.scalar() == "REMOVED"


def test_should_enforce_one_configuration_per_type_and_catalogue_templates_on_sqlite(crm_sqlite):
    _check_config_constraints(crm_sqlite)


def test_should_enforce_one_configuration_per_type_and_catalogue_templates_on_postgresql(pg_engine):
    _check_config_constraints(_crm(pg_engine))
