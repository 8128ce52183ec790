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
            "else the routine's recipients from routines.yaml.",
        ),
    }


def business_date(context: Mapping[str, Any], timezone: str) -> dt.date:
    """The run's business date: its logical date (or run_after for a manual run without one) in the routine's zone."""
    when = context.get("logical_date") or context["dag_run"].run_after
    return pendulum.instance(when).in_tz(timezone).date()


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


def parse_addresses(value: str | list[str] | None) -> list[str]:
    """Addresses from a Param: a comma/semicolon separated string or a list; a malformed one is an error."""
    if not value:
        return []
    items = value if isinstance(value, list) else re.split(r"[,;\s]+", value)
    out = [a.strip() for a in items if a and a.strip()]
    bad = [a for a in out if not EMAIL_RE.match(a)]
    if bad:
        raise ValueError(f"not an e-mail address: {', '.join(bad)}")
    return out


def resolve_recipients(dag_id: str, notify_to: str | list[str] | None, requested_by: str | None, crm: Any) -> list[str]:
    """Who gets the run summary: the notify_to Param, else the requester's CRM e-mail, else routines.yaml."""
    explicit = parse_addresses(notify_to)
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
    """A task failed for good: mark the run failed in crm_routine_run and tell the requester why.

    Runs in the worker after the last retry. It must never raise: a broken callback would hide
    the original error, so its own problems are only logged.
    """
    import logging

    log = logging.getLogger(__name__)
    try:
        from crm.db import CRM_DB, engine_for
        from crm.notify.summary import send_summary
        from crm.runs import record_run

        dag_id = context["dag"].dag_id
        settings = routine_settings(dag_id)
        facts = run_facts(context)
        bdate = business_date(context, settings["timezone"])
        error = context.get("exception")
        summary = {
            "failed_task": context["task_instance"].task_id,
            "error": f"{type(error).__name__}: {error}" if error else "unknown error",
        }
        crm = engine_for(CRM_DB)
        record_run(
            crm,
            dag_id=dag_id,
            run_id=facts["run_id"],
            business_date=bdate,
            status="failed",
            started_at=facts["started_at"],
            finished_at=dt.datetime.now(dt.UTC),
            requested_by=facts["requested_by"],
            summary=summary,
        )
        params = context.get("params") or {}
        to = resolve_recipients(dag_id, params.get("notify_to"), facts["requested_by"], crm)
        if to:
            send_summary(to, dag_id, facts["run_id"], bdate.isoformat(), "failed", summary)
    except Exception:
        log.exception("could not record the failure of this run in crm_routine_run / by e-mail")
