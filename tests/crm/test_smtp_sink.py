"""The sandbox SMTP sink stores exactly what an SMTP client delivered, envelope included.

Why: end-to-end tests assert on the mailbox, so the sink itself must be trustworthy: one file per
message, Bcc visible only in the envelope, attachments and non-ASCII intact, loopback only.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from crm.demo.smtp_sink import MailSink, read_mailbox

ROOT = Path(__file__).resolve().parents[2]


def _message(to: str, subject: str = "Feliz aniversário, João!") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "CRM <crm-batch@example.com>"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Olá João,\nparabéns!\n")
    msg.add_alternative("<p>Olá <b>João</b>, parabéns!</p>", subtype="html")
    msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="boleto.pdf")
    return msg


def test_should_store_each_message_with_its_envelope(smtp_sink: MailSink) -> None:
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as client:
        client.send_message(
            _message("ana@example.com"),
            from_addr="bounces@example.com",
            to_addrs=["ana@example.com", "hidden-bcc@example.com"],
        )
        client.send_message(_message("bia@example.com", subject="second"))

    [first, second] = smtp_sink.received()
    assert first.mail_from == "bounces@example.com"
    assert first.rcpt_tos == ("ana@example.com", "hidden-bcc@example.com")
    assert "hidden-bcc" not in str(first.message["To"])
    assert first.message["Subject"] == "Feliz aniversário, João!"
    assert "parabéns" in first.message.get_body(preferencelist=("plain",)).get_content()
    assert "<b>João</b>" in first.message.get_body(preferencelist=("html",)).get_content()
    [attachment] = list(first.message.iter_attachments())
    assert attachment.get_filename() == "boleto.pdf"
    assert attachment.get_content() == b"%PDF-1.4 fake"
    assert second.rcpt_tos == ("bia@example.com",)
    assert [p.suffix for p in smtp_sink.directory.iterdir()] == [".eml", ".eml"]  # no temp files left


def test_should_receive_mail_sent_through_airflows_smtp_hook(
    smtp_sink: MailSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = {"disable_tls": True, "disable_ssl": True, "from_email": "crm-batch@example.com", "timeout": 30}
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DEFAULT",
        json.dumps({"conn_type": "smtp", "host": smtp_sink.host, "port": smtp_sink.port, "extra": extra}),
    )
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook() as hook:
        hook.send_email_smtp(to="ops@example.com", subject="Resumo da rotina", html_content="<p>ok</p>")

    [mail] = smtp_sink.wait_for(1)
    assert mail["X-Envelope-From"] == "crm-batch@example.com"
    assert mail["X-Envelope-To"] == "ops@example.com"
    assert mail["Subject"] == "Resumo da rotina"


def test_should_listen_only_on_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        MailSink(tmp_path, host="0.0.0.0")


def test_should_clear_and_time_out_waiting(smtp_sink: MailSink) -> None:
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as client:
        client.send_message(_message("ana@example.com"))
    assert len(smtp_sink.wait_for(1)) == 1
    smtp_sink.clear()
    assert smtp_sink.messages() == []
    with pytest.raises(TimeoutError):
        smtp_sink.wait_for(1, timeout=0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_should_run_from_the_command_line_until_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "crm.demo", "smtp-sink", "--port", str(port), "--dir", str(tmp_path / "mail")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert "listening on 127.0.0.1" in proc.stdout.readline()
        deadline = time.monotonic() + 10
        while True:
            try:
                client = smtplib.SMTP("127.0.0.1", port, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with client:
            client.send_message(_message("ana@example.com"))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    [mail] = read_mailbox(tmp_path / "mail")
    assert mail.rcpt_tos == ("ana@example.com",)
