"""What every routine's DAG shares: default_args, common Params, the business date, recipients, staging.

Everything here that touches a connection or the database is called inside a
task; at parse time only routines.yaml is read.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

import pendulum

from crm.config import VAR_DIR, routine_settings

EMAIL_RE = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$")
# The notify_to Param's schema: empty, or addresses as EMAIL_RE has them, separated by commas, semicolons or spaces
ADDRESS_LIST_PATTERN = r"^[\s,;]*([^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+([\s,;]+|$))*$"
# An exception carrying this attribute (true) was raised after the run's row was written: nothing to add
RECORDED_ATTR = "crm_run_recorded"


def default_args(dag_id: str) -> dict[str, Any]:
    """Owner, retries and the RPW pool from routines.yaml."""
    s = routine_settings(dag_id)
    return {
        "owner": "crm",
        "retries": int(s.get("retries", 2)),
        "retry_delay": pendulum.duration(minutes=int(s.get("retry_delay_minutes", 1))),
        "retry_exponential_backoff": True,
        "pool": s["pool"],
        "on_failure_callback": record_failure,
    }


def start_date(dag_id: str) -> pendulum.DateTime:
    return pendulum.datetime(2026, 1, 1, tz=routine_settings(dag_id)["timezone"])


def common_params() -> dict[str, Any]:
    """Params every routine's trigger form shows."""
    from airflow.sdk import Param

    return {
        "notify_to": Param(
            "",
            type="string",
            title="Send the run summary to",
            description="E-mail address(es), comma-separated. Empty: the triggering user's CRM e-mail, "
            "else the routine's recipients from routines.yaml. A malformed address is refused.",
            maxLength=1000,
            pattern=ADDRESS_LIST_PATTERN,
        ),
    }


def business_date(context: Mapping[str, Any], timezone: str) -> dt.date:
    """The run's business date: its logical date (or run_after for a manual run without one) in the routine's zone."""
    when = context.get("logical_date") or context["dag_run"].run_after
    day = pendulum.instance(when).in_tz(timezone)
    # A plain datetime.date: DB-API drivers (sqlite3) adapt by exact type and reject pendulum.Date.
    return dt.date(day.year, day.month, day.day)


def run_facts(context: Mapping[str, Any]) -> dict[str, Any]:
    """Small facts of the run a task passes on through XCom."""
    run = context["dag_run"]
    started = run.start_date or run.run_after
    return {
        "run_id": run.run_id,
        "run_after": pendulum.instance(run.run_after).in_tz("UTC"),
        "started_at": pendulum.instance(started).in_tz("UTC"),
        "requested_by": getattr(run, "triggering_user_name", None),
        "run_type": str(getattr(run, "run_type", "")),
    }


def parse_addresses(value: str | list[str] | None, param: str | None = None) -> list[str]:
    """Addresses from a Param: a comma/semicolon separated string or a list; a malformed one is an error."""
    if not value:
        return []
    items = value if isinstance(value, list) else re.split(r"[,;\s]+", value)
    out = [a.strip() for a in items if a and a.strip()]
    bad = [a for a in out if not EMAIL_RE.match(a)]
    if bad:
        raise ValueError(f"{param + ': ' if param else ''}not an e-mail address: {', '.join(bad)}")
    return out


def notify_to(params: Mapping[str, Any]) -> list[str]:
    """The notify_to Param's addresses. Malformed: ValueError, for the run's first task to fail on at once,
    rather than the report silently going to someone else at the end."""
    return parse_addresses(params.get("notify_to"), "notify_to")


def resolve_recipients(dag_id: str, notify_to: str | list[str] | None, requested_by: str | None, crm: Any) -> list[str]:
    """Who gets the run summary: the notify_to Param, else the requester's CRM e-mail, else routines.yaml.

    A malformed notify_to raises (ValueError): falling back would mail the report to someone else.
    """
    explicit = parse_addresses(notify_to, "notify_to")
    if explicit:
        return explicit
    if requested_by:
        if EMAIL_RE.match(requested_by):
            return [requested_by]
        from sqlalchemy import select

        from crm.db.crm_schema import user

        with crm.connect() as conn:
            email = conn.execute(select(user.c.email).where(user.c.login == requested_by)).scalar()
        if email:
            return [email]
    return parse_addresses(routine_settings(dag_id).get("notify_to") or [])


def staging_path(dag_id: str, run_id: str) -> Any:
    """Where a run stages DataFrames that cross tasks: CRM_STAGING_URL/dag_id/run_id (file:// by default)."""
    import os

    from airflow.sdk import ObjectStoragePath

    base = os.environ.get("CRM_STAGING_URL") or f"file://{VAR_DIR / 'staging'}"
    safe_run = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    return ObjectStoragePath(base) / dag_id / safe_run


def record_failure(context: Mapping[str, Any]) -> None:
    """A task failed for good: mark the run failed in crm_routine_run with the first error.

    Runs in the worker after the last retry. The e-mail goes out from the run's report task
    (trigger rule all_done), which reads this row. A failure the report task raised after writing
    the row itself (the report e-mail not delivered, the upstream failure it re-raises) adds
    nothing: a report that did not go out must not make a committed run look failed. It must
    never raise: a broken callback would hide the original error, so its own problems are only logged.
    """
    import logging

    log = logging.getLogger(__name__)
    error = context.get("exception")
    if getattr(error, RECORDED_ATTR, False):
        return
    try:
        from crm.db import CRM_DB, engine_for
        from crm.runs import note_failure

        dag_id = context["dag"].dag_id
        settings = routine_settings(dag_id)
        facts = run_facts(context)
        note_failure(
            engine_for(CRM_DB),
            dag_id=dag_id,
            run_id=facts["run_id"],
            business_date=business_date(context, settings["timezone"]),
            started_at=facts["started_at"],
            finished_at=dt.datetime.now(dt.UTC),
            requested_by=facts["requested_by"],
            failed_task=context["task_instance"].task_id,
            error=f"{type(error).__name__}: {error}" if error else "unknown error (see the task log)",
        )
    except Exception:
        log.exception("could not record the failure of this run in crm_routine_run")


def notification_params() -> dict[str, Any]:
    """Params of every routine that notifies customers or users (plus notify_to)."""
    from airflow.sdk import Param

    return {
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Compute and render everything, send nothing and record nothing but the run report, "
            "which shows a few sample messages.",
        ),
        "test_recipient": Param(
            "",
            type="string",
            title="Test recipient",
            description="Send every message to this one address instead of the real recipients (recorded "
            "separately: the real recipients still get theirs in a normal run). Empty: real recipients.",
            maxLength=254,
        ),
        **common_params(),
    }


def test_recipient(params: Mapping[str, Any]) -> str | None:
    """The test_recipient Param, validated (one address, no header tricks)."""
    value = (params.get("test_recipient") or "").strip()
    if not value:
        return None
    addresses = parse_addresses(value)
    if len(addresses) != 1:
        raise ValueError("test_recipient takes exactly one e-mail address")
    return addresses[0]


def ledger_routine(dag_id: str, test_to: str | None) -> str:
    """The ledger's routine name: test sends are kept apart, so they never count as sent to real people."""
    return f"{dag_id}:test" if test_to else dag_id


def upstream_failures(context: Mapping[str, Any], task_ids: list[str]) -> list[str]:
    """Task ids among `task_ids` that did not succeed in this run (for report tasks with trigger_rule all_done)."""
    ti = context["ti"]
    run_id = context["dag_run"].run_id
    try:
        states = ti.get_task_states(dag_id=context["dag"].dag_id, task_ids=task_ids, run_ids=[run_id])
        by_task = states.get(run_id, {})
    except Exception:  # an execution API without this call: fall back on XComs
        by_task = {t: ("success" if ti.xcom_pull(task_ids=t) is not None else "failed") for t in task_ids}
    return [t for t in task_ids if not _all_succeeded(by_task, t)]


def _all_succeeded(by_task: Mapping[str, Any], task_id: str) -> bool:
    """A plain task's state is under its id; a mapped task's under `<id>_<map_index>` (execution API)."""
    mapped = re.compile(rf"{re.escape(task_id)}_\d+")
    states = [v for k, v in by_task.items() if k == task_id or mapped.fullmatch(k)]
    return bool(states) and all(str(v).lower().split(".")[-1] in ("success", "skipped") for v in states)


def send_report(
    context: Mapping[str, Any],
    dag_id: str,
    *,
    upstream: list[str],
    ledger_routines: list[str] | tuple[str, ...] = (),
    summary: Mapping[str, Any] | None = None,
    samples: list[dict[str, Any]] | None = None,
    attachments: list[Any] | None = None,
) -> dict[str, Any]:
    """The body of every routine's last task: record the run, e-mail the report, fail if a step failed.

    Raising at the end (after the report is out) keeps the DAG run failed when an upstream task
    failed, although this task, with trigger_rule all_done, ran.
    """
    from crm.db import CRM_DB, engine_for
    from crm.notify.report import run_report

    settings = routine_settings(dag_id)
    facts = run_facts(context)
    failed = upstream_failures(context, upstream)
    crm = engine_for(CRM_DB)
    params = context.get("params") or {}
    # a malformed notify_to fails here too (no fallback: the report must not go to someone else silently)
    to = resolve_recipients(dag_id, params.get("notify_to"), facts["requested_by"], crm)
    extra = dict(summary or {})
    if failed:
        extra["failed_steps"] = failed
    stored = run_report(
        crm,
        dag_id=dag_id,
        run_id=facts["run_id"],
        business_date=business_date(context, settings["timezone"]),
        status="failed" if failed else "success",
        started_at=facts["started_at"],
        finished_at=dt.datetime.now(dt.UTC),
        to=to,
        requested_by=facts["requested_by"],
        ledger_routines=list(ledger_routines),
        summary=extra,
        samples=samples or [],
        attachments=attachments or [],
    )
    staged = staging_path(dag_id, facts["run_id"])
    if not failed and staged.exists():
        staged.rmdir(recursive=True)
    if failed:
        from airflow.sdk.exceptions import AirflowFailException

        exc = AirflowFailException(f"step(s) {', '.join(failed)} failed: {stored.get('error', 'see their logs')}")
        setattr(exc, RECORDED_ATTR, True)  # the row already says failed, with the step's own error
        raise exc
    return stored


def stage_frame(dag_id: str, run_id: str, name: str, frame: Any) -> str:
    """Stage a DataFrame a later task of the run needs (e.g. the report's CSV) as Parquet; returns its path."""
    path = staging_path(dag_id, run_id) / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        frame.to_parquet(f, index=False)
    return str(path)


def staged_csv_attachment(staged: str | None, filename: str, max_rows: int) -> tuple[list[Any], dict[str, Any]]:
    """The staged frame as a CSV attachment of at most `max_rows` rows, and what the summary should say about it.

    Capped so a first run over a million accounts does not mail a 100 MB file: the full list is
    in crm_account_history (routine, run_id) anyway.
    """
    import pandas as pd
    from airflow.sdk import ObjectStoragePath

    from crm.notify.email import Attachment
    from crm.notify.report import csv_bytes

    if not staged:
        return [], {}
    path = ObjectStoragePath(staged)
    if not path.exists():
        return [], {}
    with path.open("rb") as f:
        frame = pd.read_parquet(f)
    shown = frame.head(max(0, int(max_rows))).copy()
    for col in shown.columns:  # dates as dates, not midnight timestamps
        if (
            pd.api.types.is_datetime64_any_dtype(shown[col])
            and (shown[col].dropna().dt.normalize() == shown[col].dropna()).all()
        ):
            shown[col] = shown[col].dt.strftime("%Y-%m-%d")
    rows = shown.astype(object).where(shown.notna(), None).to_dict("records")
    note: dict[str, Any] = {"csv rows": len(shown)}
    if len(shown) < len(frame):
        note["csv truncated"] = f"first {len(shown)} of {len(frame)} rows; all changes are in crm_account_history"
    return [Attachment(filename, csv_bytes(rows, list(frame.columns)), "text/csv")], note
