"""The run summary every routine e-mails to whoever asked for it.

A plain e-mail through the SMTP provider's hook and the `smtp_default`
connection; the body is rendered from include/templates/email/run_summary.html
in a sandboxed, autoescaped Jinja environment (summary values are data).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from crm.config import TEMPLATES_DIR

SMTP_CONN_ID = "smtp_default"


@functools.cache
def _env() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=select_autoescape(["html", "htm"]),
        undefined=StrictUndefined,
    )


def render_summary(
    dag_id: str, run_id: str, business_date: str, status: str, summary: Mapping[str, Any]
) -> tuple[str, str]:
    """Subject and HTML body of a run summary."""
    subject = f"[crm-batch] {dag_id} {business_date}: {status}"
    html = (
        _env()
        .get_template("email/run_summary.html")
        .render(dag_id=dag_id, run_id=run_id, business_date=business_date, status=status, summary=dict(summary))
    )
    return subject, html


def send_summary(
    to: Sequence[str],
    dag_id: str,
    run_id: str,
    business_date: str,
    status: str,
    summary: Mapping[str, Any],
    smtp_conn_id: str = SMTP_CONN_ID,
) -> str:
    """E-mail the summary; returns the subject (for the task log)."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    if not to:
        raise ValueError("run summary: no recipient (set notify_to, or the routine's notify_to in routines.yaml)")
    subject, html = render_summary(dag_id, run_id, business_date, status, summary)
    with SmtpHook(smtp_conn_id=smtp_conn_id) as hook:
        hook.send_email_smtp(to=list(to), subject=subject, html_content=html)
    return subject
