"""The run report: every routine's last word, e-mailed to whoever asked and kept in crm_routine_run.

Counts come from the ledger rows of this run (planned, sent, skipped by reason, failed, unknown),
plus what the routine's own steps reported; the first few errors are quoted; every ledger row of
the run is attached as CSV so the requester can answer "did Maria get hers?" without SQL.
The report itself is not a ledger notification: a re-run of the report task sends it again.

The run's row is written before the e-mail goes out, with the run's own status; how the e-mail
fared is noted apart (`summary.report`: "sent to ...", or "not delivered ..."). A report that
cannot be e-mailed fails the report task (`ReportNotDelivered`, so Airflow shows it and retries
it) but does not turn a run whose data and watermark were committed into a failed one.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine

from crm.notify import ledger
from crm.notify.email import Attachment, SmtpChannel, build_wire
from crm.notify.templates import Templates, render
from crm.runs import finish_run, note_report

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "id",
    "routine",
    "channel",
    "recipient",
    "business_key",
    "business_date",
    "state",
    "reason",
    "attempts",
    "last_error",
    "provider_message_id",
    "account_id",
    "company_id",
    "claimed_at",
    "attempted_at",
    "sent_at",
)
MAX_ERRORS = 5
FALLBACK_SENDER = "crm-batch@localhost"


class ReportNotDelivered(RuntimeError):
    """The run is recorded (its data committed), but its report e-mail did not go out."""

    # the run's row already says so: the failure callback must not mark the run itself failed
    crm_run_recorded = True


def ledger_section(crm: Engine, routines: Sequence[str], run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Counts and rows of this run in the ledger, over the routine's ledger names."""
    states: dict[str, int] = {}
    skipped: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    for routine in routines:
        c = ledger.counts(crm, routine, run_id)
        for k, v in c["states"].items():
            states[k] = states.get(k, 0) + v
        for k, v in c["skipped_by_reason"].items():
            skipped[k] = skipped.get(k, 0) + v
        rows += [dict(r) for r in ledger.rows_of_run(crm, routine, run_id, CSV_COLUMNS)]
    counts = {
        "planned": sum(states.values()),
        "sent": states.get("sent", 0),
        "skipped": states.get("skipped", 0),
        "skipped_by_reason": skipped,
        "failed": states.get("failed", 0),
        "unknown": states.get("unknown", 0),
        "pending": states.get("pending", 0) + states.get("sending", 0),
    }
    return counts, rows


def ledger_csv(rows: Sequence[Mapping[str, Any]]) -> bytes:
    return csv_bytes(rows, CSV_COLUMNS)


def csv_bytes(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    """Rows as a CSV attachment (UTF-8 with BOM: Excel then opens accented names right)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return out.getvalue().encode("utf-8-sig")


def first_errors(rows: Sequence[Mapping[str, Any]], limit: int = MAX_ERRORS) -> list[str]:
    errs = [
        f"{r['state']}: {r['recipient'] or '-'} ({r['business_key']}): {r['last_error']}"
        for r in rows
        if r["state"] in ("failed", "unknown") and r.get("last_error")
    ]
    return errs[:limit]


def run_report(
    crm: Engine,
    *,
    dag_id: str,
    run_id: str,
    business_date: dt.date,
    status: str,
    started_at: dt.datetime,
    finished_at: dt.datetime,
    to: Sequence[str],
    requested_by: str | None = None,
    ledger_routines: Sequence[str] = (),
    summary: Mapping[str, Any] | None = None,
    samples: Sequence[Mapping[str, Any]] = (),
    attachments: Sequence[Attachment] = (),
    smtp_conn_id: str = "smtp_default",
) -> dict[str, Any]:
    """Write the run's final row and e-mail the report; returns the summary as stored.

    `attachments`: the routine's own CSVs (changes made, violations found) next to the ledger's.
    """
    section: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    if ledger_routines:
        section, rows = ledger_section(crm, ledger_routines, run_id)
    merged_in = dict(summary or {})
    if ledger_routines:
        merged_in["notifications"] = section
        errors = first_errors(rows)
        if errors:
            merged_in["first_errors"] = errors
    merged_in["duration_seconds"] = round((finished_at - started_at).total_seconds(), 1)
    stored = finish_run(
        crm,
        dag_id=dag_id,
        run_id=run_id,
        business_date=business_date,
        status=status,
        started_at=started_at,
        finished_at=finished_at,
        requested_by=requested_by,
        notify_to=list(to),
        summary=merged_in,
    )
    if not to:
        log.warning("run report: no recipient (notify_to Param, requester's e-mail, routines.yaml notify_to)")
        stored["report"] = "not delivered: no recipient (notify_to Param, requester's e-mail, routines.yaml)"
        note_report(crm, dag_id=dag_id, run_id=run_id, note=stored["report"])
        return stored
    fields = {
        "dag_id": dag_id,
        "run_id": run_id,
        "business_date": business_date.isoformat(),
        "status": status,
        "summary": {k: v for k, v in stored.items() if k not in ("notifications", "first_errors", "samples")},
        "notifications": stored.get("notifications"),
        "errors": [e for e in [stored.get("error")] if e] + list(stored.get("first_errors") or []),
        "samples": list(samples),
    }
    try:
        subject = _email_report(fields, dag_id, business_date, to, rows, attachments, smtp_conn_id)
    except Exception as exc:
        stored["report"] = f"not delivered to {', '.join(to)}: {type(exc).__name__}: {exc}"
        note_report(crm, dag_id=dag_id, run_id=run_id, note=stored["report"])
        raise ReportNotDelivered(
            f"the run report could not be e-mailed to {', '.join(to)}: {exc} (the run itself is recorded as "
            f"{status!r} in crm_routine_run)"
        ) from exc
    stored["report"] = f"sent to {', '.join(to)}"
    note_report(crm, dag_id=dag_id, run_id=run_id, note=stored["report"])
    log.info("run report sent to %s: %s", ", ".join(to), subject)
    return stored


def _email_report(
    fields: Mapping[str, Any],
    dag_id: str,
    business_date: dt.date,
    to: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    attachments: Sequence[Attachment],
    smtp_conn_id: str,
) -> str:
    """Render and send the report e-mail; returns its subject, raises if it did not go out."""
    templates = Templates("email")
    subject = " ".join(render(templates.load("run_report", "subject", None)[0], fields).split())
    text = render(templates.load("run_report", "txt", None)[0], fields)
    html = render(templates.load("run_report", "html", None)[0], fields)
    files = list(attachments)
    if rows:
        files.append(Attachment(f"{dag_id}-{business_date.isoformat()}-ledger.csv", ledger_csv(rows), "text/csv"))
    with SmtpChannel(smtp_conn_id) as channel:
        sender = channel.default_sender or FALLBACK_SENDER
        data, env_from, rcpts, message_id = build_wire(
            sender=sender, to=list(to), subject=subject, text=text, html=html, attachments=files
        )
        outcome = channel.send(data, env_from, rcpts, message_id=message_id)
    if outcome.state != "sent":
        raise RuntimeError(outcome.error or outcome.state)
    return subject
