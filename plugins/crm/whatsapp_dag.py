"""What the WhatsApp DAGs share at parse time (Params) and in their tasks (run time, test phone, report).

Why not crm.dag_helpers: the e-mail routines' `test_recipient` is an address; a WhatsApp test
goes to a phone number. Light imports only: DAG files import this while being parsed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pendulum

E164 = re.compile(r"^\+[1-9]\d{7,14}$")


def test_phone_param() -> Any:
    from airflow.sdk import Param

    return Param(
        "",
        type="string",
        title="Test phone",
        description="Send every message to this one WhatsApp number (E.164, e.g. +5511999990000) instead of "
        "the customers' (recorded separately: the customers still get theirs in a normal run). Empty: customers.",
        maxLength=16,
        pattern=r"^(\+[1-9][0-9]{7,14})?$",
    )


def dry_run_param() -> Any:
    from airflow.sdk import Param

    return Param(
        False,
        type="boolean",
        title="Dry run",
        description="Compute everything, call the API never and record nothing but the run report "
        "(which shows a few sample messages).",
    )


def test_phone(params: Mapping[str, Any]) -> str | None:
    """The test_phone Param, validated."""
    value = (params.get("test_phone") or "").strip()
    if not value:
        return None
    if not E164.match(value):
        raise ValueError(f"test_phone must be one E.164 number (+5511999990000), not {value!r}")
    return value


def run_time(context: Mapping[str, Any]) -> dt.datetime:
    """The moment a run stands for (its logical date, or run_after for a manual run), naive UTC."""
    when = context.get("logical_date") or context["dag_run"].run_after
    return pendulum.instance(when).in_tz("UTC").naive()


def report(
    context: Mapping[str, Any],
    dag_id: str,
    *,
    upstream: list[str],
    routines: Sequence[str],
    summary: Mapping[str, Any] | None,
    samples: list[dict[str, Any]] | None = None,
    alert_only: bool = False,
) -> dict[str, Any]:
    """The standard run report; for routines every few minutes (`alert_only`), e-mailed when nobody asked
    only if a step or a message failed (to routines.yaml `params.alert_to`): the run row is written always."""
    from crm.config import routine_settings
    from crm.dag_helpers import send_report, upstream_failures

    params = dict(context.get("params") or {})
    if alert_only and not (params.get("notify_to") or "").strip():
        from crm.db import CRM_DB, engine_for
        from crm.jobs.whatsapp import noteworthy

        run_id = context["dag_run"].run_id
        if upstream_failures(context, upstream) or noteworthy(engine_for(CRM_DB), routines, run_id):
            alert_to = routine_settings(dag_id).get("params", {}).get("alert_to") or []
            params["notify_to"] = ", ".join(alert_to)
    return send_report(
        {**context, "params": params},
        dag_id,
        upstream=upstream,
        ledger_routines=list(routines),
        summary=summary,
        samples=samples,
    )
