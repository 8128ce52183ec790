"""The SMS channel: segment counting, the gateway request and its faults, against the sandbox gateway."""

from __future__ import annotations

import json

import pytest

from crm.demo.sms_gateway import SmsGateway
from crm.notify.ledger import Claimed
from crm.notify.sms import (
    SmsChannel,
    SmsTooLong,
    normalise_phone,
    sms_length,
    sms_payload,
    sms_sender,
)


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("€" * 80, "GSM-7", 160, 1),  # extension table: two septets each
        ("a" * 159 + "€", "GSM-7", 161, 2),
        ("€" + "a" * 304, "GSM-7", 306, 2),
        ("a" * 152 + "€" + "a" * 152, "GSM-7", 306, 3),  # the escape pair never straddles: 152 | 2+151 | 1
        ("Joao às 10:00 Ñü§¿ÉÆ", "GSM-7", 20, 1),  # à, É, ü... are in the basic table
        ("João às 10:00", "UCS-2", 13, 1),  # ã is not
        ("ç" * 70, "UCS-2", 70, 1),  # lower-case ç is not GSM-7
        ("ç" * 71, "UCS-2", 71, 2),
        ("ł" * 134, "UCS-2", 134, 2),
        ("ł" * 135, "UCS-2", 135, 3),
        ("😀" * 35, "UCS-2", 70, 1),  # outside the BMP: a surrogate pair each
        ("a" * 69 + "😀", "UCS-2", 71, 2),
        ("a" * 66 + "😀" + "a" * 66, "UCS-2", 134, 3),  # the pair is never split: 66 | 2+65 | 1
    ],
)
def test_should_count_gsm7_and_ucs2_segments(text, encoding, units, segments):
    got = sms_length(text)
    assert (got.encoding, got.units, got.segments) == (encoding, units, segments)


def test_should_refuse_too_long_a_text_and_report_its_length():
    payload = sms_payload(to="+48600100200", sender=None, text="Zażółć gęślą jaźń", max_segments=1)
    assert payload["encoding"] == "UCS-2" and payload["segments"] == 1 and payload["channel"] == "sms"
    with pytest.raises(SmsTooLong, match="3 UCS-2 segments"):
        sms_payload(to="+48600100200", sender=None, text="ż" * 140, max_segments=2)
    test = sms_payload(to="+48600100200", sender=None, text="x", max_segments=1, test_phone="+5511999990000")
    assert test["to"] == "+5511999990000" and test["original_to"] == "+48600100200"


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+55 (11) 98765-4321", "+5511987654321"),
        ("0048 600 100 200", "+48600100200"),
        ("+40.720.123.456", "+40720123456"),
        ("(11) 98765-4321", None),  # no country code
        ("+1234", None),
        ("", None),
    ],
)
def test_should_normalise_phone_numbers_to_e164(raw, e164):
    assert normalise_phone(raw) == e164


@pytest.fixture
def gateway(monkeypatch):
    with SmsGateway(stall=1.5) as gw:
        monkeypatch.setenv(
            "AIRFLOW_CONN_SMS_GATEWAY",
            json.dumps({"conn_type": "http", "host": gw.host, "port": gw.port, "schema": "http"}),
        )
        yield gw


def row(n: int, to: str = "+48600100200", text: str = "Przypomnienie") -> Claimed:
    payload = {"channel": "sms", "to": to, "from": "+48422000100", "text": text}
    return Claimed(id=n, recipient=to, business_key=f"task {n}", payload=payload, attempts=0)


def channel(waits: list[float], **kw) -> SmsChannel:
    return SmsChannel(sleep=waits.append, backoff=0.25, timeout=0.5, **kw)


def test_should_post_to_from_and_text_once_with_the_rows_idempotency_key(gateway):
    waits: list[float] = []
    calls: list[int] = []
    with channel(waits) as ch:
        outcome = sms_sender(ch)(row(7), lambda: calls.append(7))
    assert outcome.state == "sent" and outcome.provider_message_id == "sms-1" and calls == [7]
    (req,) = gateway.requests("/sms")
    assert req.body == {"to": "+48600100200", "from": "+48422000100", "text": "Przypomnienie"}
    assert req.headers["idempotency-key"] == "crm-notification-7" and waits == []


def test_should_wait_retry_after_on_429_then_send_one_sms(gateway):
    gateway.inject("/sms", (429, {"Retry-After": "2"}))
    waits: list[float] = []
    with channel(waits) as ch:
        outcome = sms_sender(ch)(row(1), lambda: None)
    assert outcome.state == "sent" and waits == [2.0]
    assert len(gateway.requests("/sms")) == 2 and len(gateway.messages()) == 1


def test_should_retry_500_twice_then_send_one_sms(gateway):
    gateway.inject("/sms", 500, 500)
    waits: list[float] = []
    with channel(waits) as ch:
        outcome = sms_sender(ch)(row(2), lambda: None)
    assert outcome.state == "sent" and waits == [0.25, 0.5]
    assert len(gateway.requests("/sms")) == 3 and len(gateway.messages()) == 1
    assert {r.headers["idempotency-key"] for r in gateway.requests("/sms")} == {"crm-notification-2"}


def test_should_fail_a_400_without_retrying(gateway):
    gateway.inject("/sms", 400)
    waits: list[float] = []
    with channel(waits) as ch:
        outcome = sms_sender(ch)(row(3), lambda: None)
        invalid = sms_sender(ch)(row(4, to="12"), lambda: None)  # the gateway's own 400
    assert outcome.state == "failed" and not outcome.retryable and "HTTP 400" in outcome.error
    assert invalid.state == "failed" and "E.164" in invalid.error
    assert len(gateway.requests("/sms")) == 2 and gateway.messages() == [] and waits == []


def test_should_fail_retryably_when_the_gateway_keeps_answering_5xx(gateway):
    gateway.inject("/sms", 503, 503, 503)
    with channel([], tries=3) as ch:
        outcome = sms_sender(ch)(row(5), lambda: None)
    assert outcome.state == "failed" and outcome.retryable and gateway.messages() == []


def test_should_use_the_path_and_field_names_of_the_connection(monkeypatch):
    with SmsGateway(path="/api/v2/send") as gw:
        settings = {
            "paths": {"send": "/api/v2/send"},
            "fields": {"to": "to", "from": "sender", "text": "text"},
            "body": {"route": "premium"},
            "from": "ACME",
            "token_header": "Authorization",
            "token_prefix": "Bearer ",
        }
        monkeypatch.setenv(
            "AIRFLOW_CONN_MY_SMS",
            json.dumps(
                {
                    "conn_type": "http",
                    "host": gw.host,
                    "port": gw.port,
                    "schema": "http",
                    "password": "tok3n",
                    "extra": {"crm": settings},
                }
            ),
        )
        with SmsChannel("my_sms", sleep=lambda s: None) as ch:
            outcome = ch.send(row(9).payload, idempotency_key="k9")
        (req,) = gw.requests("/api/v2/send")
    assert outcome.state == "sent"
    assert req.body == {"route": "premium", "to": "+48600100200", "sender": "ACME", "text": "Przypomnienie"}
    assert req.headers["authorization"] == "Bearer tok3n" and "crm" not in req.headers


def test_should_answer_429_every_nth_request_and_store_accepted_sms_in_the_sandbox(tmp_path, monkeypatch):
    with SmsGateway(directory=tmp_path / "sms", tempfail_every=2, refuse={"+48600999999"}) as gw:
        monkeypatch.setenv(
            "AIRFLOW_CONN_SMS_GATEWAY", json.dumps({"conn_type": "http", "host": gw.host, "port": gw.port})
        )
        waits: list[float] = []
        with channel(waits) as ch:
            send = sms_sender(ch)
            outcomes = [send(row(n), lambda: None) for n in (1, 2)] + [send(row(3, to="+48600999999"), lambda: None)]
    assert [o.state for o in outcomes] == ["sent", "sent", "failed"] and waits == [1.0, 1.0]
    assert len(gw.requests("/sms")) == 5  # 1 | 429, 2 | 429, refused
    files = sorted((tmp_path / "sms").glob("*.json"))
    assert len(files) == 2 and json.loads(files[0].read_text())["encoding"] == "GSM-7"


def test_should_offer_the_gateway_as_a_demo_command():
    from crm.demo.__main__ import build_parser

    args = build_parser(["sms-gateway", "--port", "8126", "--tempfail-every", "3"]).parse_args(
        ["sms-gateway", "--port", "8126", "--tempfail-every", "3"]
    )
    assert args.port == 8126 and args.tempfail_every == 3 and args.dir == "var/sms"
    assert args.func.__name__ == "_sms_gateway"
