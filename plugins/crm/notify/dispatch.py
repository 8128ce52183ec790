"""The send step every notifying routine shares: settle leftovers, claim, send, record, repeat.

Channel-neutral: a channel turns a claimed row's payload into a delivery and reports an Outcome,
calling `point_of_no_return()` right before the irreversible step. The e-mail payload format is
defined here (`email_payload`), so plan steps of every routine build it the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Engine

from crm.notify import ledger
from crm.notify.email import (
    Attachment,
    HeaderInjection,
    SmtpChannel,
    address,
    build_wire,
    message_headers,
)

log = logging.getLogger(__name__)


class TransientFailures(RuntimeError):
    """Some messages are still failing with transient errors: raising lets Airflow retry the send task."""


@dataclass(frozen=True)
class DispatchResult:
    sent: int
    failed: int
    retryable: int
    unknown: int
    skipped: int
    claim_lost: int
    requeued_from_crash: int
    unknown_from_crash: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Sender(Protocol):
    def __call__(self, row: ledger.Claimed, point_of_no_return: Callable[[], None]) -> ledger.Outcome: ...


def email_payload(
    *,
    sender: str,
    sender_name: str | None,
    to: Sequence[str],
    subject: str,
    text: str,
    html: str | None,
    message_id: str,
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    reply_to: str | None = None,
    test_recipient: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ledger payload of one e-mail; with `test_recipient`, it goes there only (originals in a header).

    A test send is ledgered under `<routine>:test` and gets its own Message-ID: with the real
    message's id, mail systems that saw the test would thread the real one with it or drop it.
    """
    hdrs = dict(headers or {})
    if test_recipient:
        hdrs["X-CRM-Test-Original-To"] = ", ".join([*to, *cc, *bcc])
        to, cc, bcc = [test_recipient], [], []
        local, _, domain = message_id.strip().strip("<>").rpartition("@")
        message_id = f"<{local}.test@{domain}>" if local else f"<{domain}.test>"
    payload = {
        "from": sender,
        "from_name": sender_name,
        "to": list(to),
        "cc": list(cc),
        "bcc": list(bcc),
        "reply_to": reply_to,
        "subject": subject,
        "text": text,
        "html": html,
        "message_id": message_id,
        "headers": hdrs,
    }
    # validate now: a bad header or address fails the row at plan time, not at send time
    message_headers(**_header_args(payload))
    return payload


def _header_args(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "sender": address(payload["from"], payload.get("from_name")),
        "to": payload["to"],
        "cc": payload.get("cc") or (),
        "bcc": payload.get("bcc") or (),
        "reply_to": payload.get("reply_to"),
        "subject": payload["subject"],
        "message_id": payload.get("message_id"),
        "headers": payload.get("headers"),
    }


def wire_from_payload(
    payload: Mapping[str, Any], attachments: Sequence[Attachment] = ()
) -> tuple[bytes, str, list[str], str]:
    """The wire bytes of a payload's e-mail (plus attachments), the envelope and the Message-ID."""
    return build_wire(**_header_args(payload), text=payload["text"], html=payload.get("html"), attachments=attachments)


def email_sender(
    channel: SmtpChannel, attachments_for: Callable[[ledger.Claimed], Sequence[Attachment]] | None = None
) -> Sender:
    """A Sender that writes the MIME message from the payload (plus attachments) and sends it."""

    def send(row: ledger.Claimed, point_of_no_return: Callable[[], None]) -> ledger.Outcome:
        try:
            files = attachments_for(row) if attachments_for else ()
            data, env_from, rcpts, message_id = wire_from_payload(row.payload, files)
        except (HeaderInjection, ValueError, KeyError) as exc:
            return ledger.Outcome("failed", error=f"cannot build the message: {exc}")
        return channel.send(data, env_from, rcpts, point_of_no_return, message_id=message_id)

    return send


def dispatch(
    crm: Engine,
    routine: str,
    send: Sender | Sequence[Sender],
    *,
    run_id: str,
    owner: str,
    try_number: int,
    batch: int = 200,
    max_attempts: int = ledger.DEFAULT_MAX_ATTEMPTS,
    raise_on_transient: bool = True,
) -> DispatchResult:
    """Send every sendable row this run planned; returns the counts of this attempt.

    `owner` names the task (dag/run/task/map index); with `try_number` it makes the claim token,
    so a retry recognises rows its own crashed predecessor left `sending`.

    `send` may be several senders (each with its own connection): each then works in its own
    thread on the rows of the claimed batch, so one message's wait for the server (SMTP replies,
    an HTTP answer) overlaps another's preparation (rendering, PDFs). Every row keeps its own two
    commits (before the point of no return, after the outcome) on its thread's connection, so
    what a crash leaves behind is exactly as with one sender.
    """
    senders = [send] if callable(send) else list(send)
    if not senders:
        raise ValueError("dispatch needs at least one sender")
    token = f"{owner}#{try_number}"
    started = time.monotonic()
    recovered = ledger.recover(crm, routine, run_id=run_id, owner=owner, token=token)
    if recovered.unknown or recovered.requeued:
        log.warning(
            "a previous attempt stopped mid-batch: %d row(s) back to pending (never handed over), "
            "%d row(s) now 'unknown' (possibly delivered; not resent)",
            recovered.requeued,
            recovered.unknown,
        )
    writers = [ledger.OutcomeWriter(crm, token) for _ in senders]
    tally = {"sent": 0, "failed": 0, "retryable": 0, "unknown": 0, "skipped": 0, "claim_lost": 0}
    lock = threading.Lock()
    last_log = started

    def work(sender: Sender, writer: ledger.OutcomeWriter, rows: Iterator[ledger.Claimed]) -> None:
        for row in rows:
            try:
                outcome = sender(row, lambda row_id=row.id: writer.attempting(row_id))
            except ledger.ClaimLost as exc:  # another run adopted the row: it sends and records it
                log.warning("row %d (%s): not sent: %s", row.id, row.business_key, exc)
                with lock:
                    tally["claim_lost"] += 1
                continue
            writer.record(row.id, outcome)
            key = "retryable" if outcome.state == "failed" and outcome.retryable else outcome.state
            with lock:
                tally[key] += 1
            if outcome.state != "sent":
                log.info("row %d (%s, %s): %s: %s", row.id, row.recipient, row.business_key, key, outcome.error)

    try:
        while True:
            rows = ledger.claim(crm, routine, run_id=run_id, token=token, limit=batch, max_attempts=max_attempts)
            if not rows:
                break
            if len(senders) == 1:
                work(senders[0], writers[0], iter(rows))
            else:
                _in_threads(work, senders, writers, rows)
            now = time.monotonic()
            if now - last_log > 10:
                log.info("progress: %s, %.0f msg/s", tally, sum(tally.values()) / (now - started))
                last_log = now
    finally:
        for writer in writers:
            writer.close()
        ledger.release(crm, token)
    result = DispatchResult(
        **tally,
        requeued_from_crash=recovered.requeued,
        unknown_from_crash=recovered.unknown,
        seconds=round(time.monotonic() - started, 3),
    )
    log.info("dispatch finished: %s", result)
    if raise_on_transient and result.retryable:
        raise TransientFailures(
            f"{result.retryable} message(s) still failing with transient errors (last error in the ledger); "
            "a retry of this task sends only those"
        )
    return result


def _in_threads(
    work: Callable[[Sender, ledger.OutcomeWriter, Iterator[ledger.Claimed]], None],
    senders: Sequence[Sender],
    writers: Sequence[ledger.OutcomeWriter],
    rows: Sequence[ledger.Claimed],
) -> None:
    """One batch over one thread per sender, each taking the next row when it is free.

    The first error stops every thread before its next row and is raised here; the rows nobody
    took stay claimed but unattempted, which `ledger.release` gives back.
    """
    pending = iter(rows)
    take = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def next_rows() -> Iterator[ledger.Claimed]:
        while not stop.is_set():
            with take:
                row = next(pending, None)
            if row is None:
                return
            yield row

    def run(sender: Sender, writer: ledger.OutcomeWriter) -> None:
        try:
            work(sender, writer, next_rows())
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=run, args=pair, daemon=True) for pair in zip(senders, writers, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
