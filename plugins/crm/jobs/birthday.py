"""crm_birthday_greetings (TOTVS CRM crm304rp): plan one birthday e-mail per account whose birthday is today.

"Today" is the run's business date in the routine's timezone. A 29 February birthday is greeted
on 28 February in common years. Active accounts with a valid e-mail and no e-mail opt-out get a
pending ledger row with the rendered message; the others get a skipped row with the reason, so
the report can count them. Business key: 'account <id> / <date>', so a re-run, a cleared run or a
backfill of the same date plans the same rows and sends nothing twice.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Template
from sqlalchemy import Engine, extract, select

from crm.dag_helpers import EMAIL_RE
from crm.db.crm_schema import account, company
from crm.notify import ledger
from crm.notify.dispatch import email_payload
from crm.notify.email import HeaderInjection, check_header
from crm.notify.templates import RenderError, Templates

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "birthday"
SAMPLES = 3


@dataclass
class BirthdayPlan:
    items: list[ledger.Planned]
    considered: int
    samples: list[dict[str, Any]] = field(default_factory=list)


def birthday_days(business_date: dt.date) -> list[tuple[int, int]]:
    """(month, day) pairs greeted on this date: 28 Feb also greets 29 Feb birthdays in common years."""
    days = [(business_date.month, business_date.day)]
    if business_date.month == 2 and business_date.day == 28 and not calendar.isleap(business_date.year):
        days.append((2, 29))
    return days


def age_on(birth: dt.date, day: dt.date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def candidates(crm: Engine, business_date: dt.date) -> list[dict[str, Any]]:
    """Every account (active or not) born on one of today's (month, day) pairs, with its company."""
    month = business_date.month
    days = [d for m, d in birthday_days(business_date) if m == month]
    stmt = (
        select(
            account.c.id,
            account.c.name,
            account.c.short_name,
            account.c.email,
            account.c.birth_date,
            account.c.locale,
            account.c.active,
            account.c.opt_out_email,
            account.c.company_id,
            account.c.person_type,
            company.c.name.label("company_name"),
            company.c.email.label("company_email"),
        )
        .join(company, company.c.id == account.c.company_id)
        .where(
            account.c.birth_date.is_not(None),
            extract("month", account.c.birth_date) == month,
            extract("day", account.c.birth_date).in_(days),
        )
        .order_by(account.c.id)
    )
    with crm.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


def compile_subject(templates: Templates, subject: str | None) -> Template | None:
    """The `subject` Param as a template, or None (the template's own, localised subject)."""
    if not subject or not subject.strip():
        return None
    check_header("subject", subject)  # CR/LF in the Param: refused before anything is planned
    return templates.from_string(subject)


def plan_birthdays(
    crm: Engine,
    business_date: dt.date,
    *,
    template: str = DEFAULT_TEMPLATE,
    subject: str | None = None,
    test_recipient: str | None = None,
    default_sender: str | None = None,
    templates: Templates | None = None,
) -> BirthdayPlan:
    """Who gets a greeting today, rendered; who is skipped and why. Touches no ledger (see `write`)."""
    templates = templates or Templates("email")
    if template not in templates.names("birthday"):
        raise ValueError(f"unknown birthday template {template!r}; available: {', '.join(templates.names('birthday'))}")
    subject_tpl = compile_subject(templates, subject)
    rows = candidates(crm, business_date)
    templates.check(template, sorted({r["locale"] or "" for r in rows}))
    items: list[ledger.Planned] = []
    samples: list[dict[str, Any]] = []
    for r in rows:
        key = f"account {r['id']} / {business_date.isoformat()}"
        email = (r["email"] or "").strip()
        common = {"account_id": r["id"], "company_id": r["company_id"], "business_key": key}
        reason = _skip_reason(r, email)
        if reason:
            items.append(ledger.Planned(recipient=email.lower(), state="skipped", reason=reason, **common))
            continue
        fields = _fields(r, business_date)
        try:
            rendered = templates.render_email(template, fields, r["locale"], subject=subject_tpl)
            sender = r["company_email"] or default_sender
            if not sender:
                raise ValueError("no sender: the company has no e-mail and smtp_default has no from_email")
            payload = email_payload(
                sender=sender,
                sender_name=r["company_name"],
                to=[email],
                reply_to=r["company_email"],
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                message_id=f"<birthday.{r['id']}.{business_date.isoformat()}@{sender.rpartition('@')[2]}>",
                test_recipient=test_recipient,
                headers={"X-CRM-Routine": "crm_birthday_greetings", "X-CRM-Business-Key": key},
            )
        except (RenderError, HeaderInjection, ValueError) as exc:
            items.append(ledger.Planned(recipient=email.lower(), state="failed", error=str(exc), **common))
            continue
        items.append(ledger.Planned(recipient=email.lower(), payload=payload, **common))
        if len(samples) < SAMPLES:
            samples.append({"to": ", ".join(payload["to"]), "subject": payload["subject"], "text": payload["text"]})
    return BirthdayPlan(items=items, considered=len(rows), samples=samples)


def _skip_reason(r: dict[str, Any], email: str) -> str | None:
    if not r["active"]:
        return "inactive account"
    if not email:
        return "no e-mail address"
    if r["opt_out_email"]:
        return "opted out of e-mail"
    if not EMAIL_RE.match(email) or not email.isascii():
        return "invalid e-mail address"
    return None


def _fields(r: dict[str, Any], business_date: dt.date) -> dict[str, Any]:
    """What a birthday template may use. Values are data: never evaluated as templates."""
    name = r["name"] or ""
    short = (r["short_name"] or "").strip()
    first = short or (name.split()[0] if name.split() else name)
    return {
        "name": name,
        "short_name": short,
        "first_name": first,
        "email": r["email"],
        "birth_date": r["birth_date"],
        "age": age_on(r["birth_date"], business_date) if r["person_type"] == "PF" else None,
        "locale": r["locale"],
        "company_name": r["company_name"],
        "company_email": r["company_email"],
        "business_date": business_date,
    }


def summary_of(plan: BirthdayPlan, result: ledger.PlanResult | None) -> dict[str, Any]:
    out: dict[str, Any] = {"accounts_with_birthday": plan.considered, "planned": len(plan.items)}
    if result is not None:
        out.update(queued=result.queued, already_done_by_earlier_runs=result.already_done)
    else:
        out["dry_run_would_send"] = sum(1 for it in plan.items if it.state == "pending")
    return out


def rendered_counts(items: Sequence[ledger.Planned]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for it in items:
        counts[it.state] = counts.get(it.state, 0) + 1
    return counts
