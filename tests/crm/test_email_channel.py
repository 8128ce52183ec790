"""The e-mail channel against a real SMTP server on loopback, with faults injected by the server."""

from __future__ import annotations

import json
import re
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from crm.demo.smtp_sink import FaultyMailboxHandler, MailSink
from crm.notify.email import Attachment, HeaderInjection, SmtpChannel, build_message


def smtp_env(monkeypatch: pytest.MonkeyPatch, sink: MailSink, timeout: int = 30) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DEFAULT",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": sink.host,
                "port": sink.port,
                "extra": {
                    "disable_tls": True,
                    "disable_ssl": True,
                    "from_email": "crm@example.com",
                    "timeout": timeout,
                },
            }
        ),
    )


def message(i: int = 0, **kw):
    args = {
        "sender": ("Łódzka Hurtownia", "biuro@example.pl"),
        "to": [f"r{i}@example.com"],
        "subject": f"Ofertă specială nr {i} — ção, żółć",
        "text": "Olá! Zażółć gęślą jaźń. Înțelegeți?",
        "html": "<p>Olá! <b>Zażółć</b> gęślą jaźń. Înțelegeți?</p>",
    }
    args.update(kw)
    return build_message(**args)


def test_should_keep_portuguese_polish_and_romanian_text_intact():
    msg, env_from, rcpts = message(
        cc=["fin@example.com"],
        bcc=["audit@example.com"],
        reply_to="sac@example.com",
        attachments=[Attachment("Factură ăîșț.pdf", b"%PDF-1.4 test", "application/pdf")],
    )
    parsed = message_from_bytes(msg.as_bytes(), policy=policy.default)
    assert parsed["Subject"] == "Ofertă specială nr 0 — ção, żółć"
    assert parsed["From"].addresses[0].display_name == "Łódzka Hurtownia"
    assert parsed.get_body(("plain",)).get_content().strip() == "Olá! Zażółć gęślą jaźń. Înțelegeți?"
    assert "<b>Zażółć</b>" in parsed.get_body(("html",)).get_content()
    (att,) = list(parsed.iter_attachments())
    assert att.get_filename() == "Factură ăîșț.pdf" and att.get_content() == b"%PDF-1.4 test"
    assert parsed["Cc"] == "fin@example.com" and parsed["Reply-To"] == "sac@example.com"
    assert "Bcc" not in parsed and "audit@example.com" not in msg.as_string()
    assert env_from == "biuro@example.pl"
    assert rcpts == ["r0@example.com", "fin@example.com", "audit@example.com"]


@pytest.mark.parametrize(
    "field",
    [
        {"subject": "Hi\r\nBcc: victim@example.com"},
        {"subject": "Hi\nX: y"},
        {"to": ["a@example.com\r\nBcc: victim@example.com"]},
        {"sender": ("Evil\r\nBcc: victim@example.com", "a@example.com")},
        {"headers": {"X-Note": "a\rb"}},
    ],
)
def test_should_refuse_cr_lf_in_any_header(field):
    with pytest.raises((HeaderInjection, ValueError)):
        message(**field)


def test_should_send_every_message_once_when_the_server_defers_every_third(tmp_path, monkeypatch):
    handler = FaultyMailboxHandler(tmp_path / "mail", tempfail_every=3)
    with MailSink(tmp_path / "mail", handler=handler) as sink, SmtpChannel(backoff=0.01) as channel:
        smtp_env(monkeypatch, sink)
        outcomes = [channel.send(*message(i)) for i in range(9)]
        got = sorted(m["To"] for m in sink.messages())
    assert [o.state for o in outcomes] == ["sent"] * 9
    assert got == sorted(f"r{i}@example.com" for i in range(9))
    assert handler.tempfailed >= 3
    assert channel.connects == 1  # one connection for the whole batch


def test_should_fail_a_refused_recipient_permanently_and_send_to_the_others(tmp_path, monkeypatch):
    handler = FaultyMailboxHandler(tmp_path / "mail", refuse={"r1@example.com"})
    with MailSink(tmp_path / "mail", handler=handler) as sink, SmtpChannel(backoff=0.01) as channel:
        smtp_env(monkeypatch, sink)
        outcomes = [channel.send(*message(i)) for i in range(3)]
        partial = channel.send(*message(5, cc=["r1@example.com"]))
        got = [m["X-Envelope-To"] for m in sink.messages()]
    assert [o.state for o in outcomes] == ["sent", "failed", "sent"]
    assert not outcomes[1].retryable and "550" in outcomes[1].error
    assert partial.state == "sent" and "refused r1@example.com: 550" in partial.error
    assert got == ["r0@example.com", "r2@example.com", "r5@example.com"]


def test_should_mark_unknown_when_the_server_goes_silent_after_data(tmp_path, monkeypatch):
    handler = FaultyMailboxHandler(tmp_path / "mail", stall_at_data=2)
    marks = []
    try:
        with MailSink(tmp_path / "mail", handler=handler) as sink, SmtpChannel(backoff=0.01) as channel:
            smtp_env(monkeypatch, sink, timeout=1)
            first = channel.send(*message(0), point_of_no_return=lambda: marks.append(0))
            second = channel.send(*message(1), point_of_no_return=lambda: marks.append(1))
            handler.release()
            third = channel.send(*message(2), point_of_no_return=lambda: marks.append(2))
    finally:
        handler.release()
    assert (first.state, second.state, third.state) == ("sent", "unknown", "sent")
    assert marks == [0, 1, 2]
    assert channel.connects == 2  # reconnected after the timeout


def test_should_reconnect_when_the_server_drops_the_connection(tmp_path, monkeypatch):
    mail = tmp_path / "mail"
    sink = MailSink(mail).start()
    port = sink.port
    smtp_env(monkeypatch, sink)
    with SmtpChannel(backoff=0.05) as channel:
        assert channel.send(*message(0)).state == "sent"
        sink.stop()  # the server goes away (idle timeout, restart) between two messages
        sink = MailSink(mail, port=port).start()
        try:
            assert channel.send(*message(1)).state == "sent"
        finally:
            sink.stop()
    assert sorted(m["To"] for m in sink.messages()) == ["r0@example.com", "r1@example.com"]
    assert channel.connects == 2


def test_should_send_nothing_and_keep_the_connection_usable_when_the_ledger_says_stop(tmp_path, monkeypatch):
    from crm.notify.ledger import ClaimLost

    def lost() -> None:
        raise ClaimLost("taken over")

    with MailSink(tmp_path / "mail") as sink, SmtpChannel() as channel:
        smtp_env(monkeypatch, sink)
        with pytest.raises(ClaimLost):
            channel.send(*message(0), point_of_no_return=lost)  # MAIL and RCPT went out, DATA must not
        assert channel.send(*message(1)).state == "sent"  # same connection: the aborted transaction was reset
        assert [m["To"] for m in sink.messages()] == ["r1@example.com"]
    assert channel.connects == 1


def test_should_give_up_with_a_retryable_failure_when_deferrals_persist(tmp_path, monkeypatch):
    handler = FaultyMailboxHandler(tmp_path / "mail", tempfail_every=1)
    with MailSink(tmp_path / "mail", handler=handler) as sink, SmtpChannel(transient_tries=3, backoff=0.01) as ch:
        smtp_env(monkeypatch, sink)
        outcome = ch.send(*message(0))
    assert outcome.state == "failed" and outcome.retryable and "451" in outcome.error
    assert handler.data_commands == 3 and sink.messages() == []


def test_sink_should_store_what_it_accepted(tmp_path: Path):
    import smtplib

    from crm.notify.email import _WIRE  # CRLF line ends, as on the wire

    msg, env_from, rcpts = message(7, cc=["fin@example.com"], bcc=["audit@example.com"])
    raw = msg.as_bytes(policy=_WIRE)
    with MailSink(tmp_path / "m") as sink:
        assert sink.messages() == []
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
            refused = smtp.sendmail(env_from, rcpts, raw)
        assert refused == {}
        (mail,) = sink.received()
    # the envelope as given, the data byte for byte after the envelope headers, one .eml file on disk
    assert (mail.mail_from, mail.rcpt_tos) == ("biuro@example.pl", ("r7@example.com", "fin@example.com",
                                                                    "audit@example.com"))  # fmt: skip
    assert mail.path.suffix == ".eml" and [p.name for p in (tmp_path / "m").iterdir()] == [mail.path.name]
    assert mail.path.read_bytes().endswith(raw)
    stored = mail.message
    assert stored["Subject"] == "Ofertă specială nr 7 — ção, żółć" and stored["Bcc"] is None
    assert stored.get_body(("plain",)).get_content().strip() == "Olá! Zażółć gęślą jaźń. Înțelegeți?"


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"html": None},
        {"html": "", "text": ""},
        {"text": "From here\nline\r\nwith trailing space \n.dot\n" + "é" * 300, "headers": {"X-Long": "a " * 60}},
        {"to": ["A Person <a@example.com>", "b@example.com"] * 6, "cc": ["Zoë <z@example.com>"], "bcc": ["x@e.com"]},
        {"subject": "  spaced   subject\t", "reply_to": ("Ștefan Bălan", "s@example.ro")},
        {"subject": "x" * 200, "message_id": "<m.1@example.com>", "headers": {"X-Note": "ção", "X-A": "b"}},
        {"sender": ("Very long company name, with a comma " * 3, "c@example.com"), "text": "no newline at the end"},
        {"attachments": [Attachment("Fatura-1.pdf", b"%PDF-1.4\n" * 500, "application/pdf")]},
        {"html": None, "attachments": [Attachment("a.txt", b"abc\n"), Attachment("empty.bin", b"")]},
        {
            "attachments": [
                Attachment("Factură ș — wyciąg zażółć gęślą jaźń, bardzo długa nazwa pliku.pdf", bytes(range(256)) * 9)
            ]
        },
        {"attachments": [Attachment('we"ird\\name with a rather long tail to force folding of it.csv', b"x" * 57)]},
    ],
)
def test_wire_bytes_should_equal_the_email_mime_message_byte_for_byte(kw):
    from crm.notify.email import _WIRE, build_wire

    args = {
        "sender": ("Łódzka Hurtownia", "biuro@example.pl"),
        "to": ["r@example.com"],
        "subject": "Ofertă specială — ção, żółć",
        "text": "Olá! Zażółć gęślą jaźń.\nÎnțelegeți?\n",
        "html": "<p>Olá! <b>Zażółć</b> gęślą jaźń. Înțelegeți?</p>\n",
        "message_id": "<fixed@example.pl>",
    }
    args.update(kw)
    boundary, mixed = "===============1234567890123456789==", "===============9876543210987654321=="
    msg, env_from, rcpts = build_message(**args)
    if args.get("attachments"):
        msg.set_boundary(mixed)
        if args["html"] is not None:
            msg.get_payload()[0].set_boundary(boundary)
    elif msg.is_multipart():
        msg.set_boundary(boundary)
    data, wire_from, wire_rcpts, message_id = build_wire(**args, boundary=boundary, mixed_boundary=mixed)
    date = re.search(rb"\r\nDate: ([^\r]*)\r\n", data).group(1).decode()
    msg.replace_header("Date", date)  # the one header that may differ: the clock moved between the two builds
    assert data == msg.as_bytes(policy=_WIRE)
    assert (wire_from, wire_rcpts) == (env_from, rcpts) and message_id == msg["Message-ID"]
