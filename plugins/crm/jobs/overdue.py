"""crm_overdue_invoice_notices (iBee dunning): one e-mail a week to each partner with overdue invoices.

Plan (`plan_notices`): active legal-entity partners (PJ, optionally one audience) with open ERP
receivables due `days_overdue` or more days before the business date; recipients are the partner's
active contacts with an e-mail whose job function matches one of the `contact_functions` patterns.
One ledger row per partner and ISO week: recipient `partner:<id>`, business key
`partner <id> / 2026-W47`. The recipient is the partner, not an address, on purpose: the one
e-mail goes to all its matching contacts at once, and a contact added or changed later in the
week must not cause a second notice. A partner without a matching contact gets a `failed` row
(an error of the run, reported; a re-run after fixing the contacts plans it again), an opted-out
partner a `skipped` one.

Send (`OverdueSender`): right before each message, the receivables stored in the row's payload
are read again from the ERP (`open_receivables_by_id.sql`, which returns only those still open)
and the message is rendered again from them: a receivable paid (or cancelled) since the plan is
neither in the text nor attached, partial payments show the amount still open, and a notice
whose receivables were all paid is `skipped` ("paid before sending"). The PDFs (each invoice in
`invoice_format`, optionally the account statement) are made at that moment, from
include/templates/pdf.

Function patterns (`parse_patterns`, `function_matcher`): case-insensitive; a pattern matches a
function name that starts with it; `%` inside matches any text; every other character (`_`, `'`,
`\\`) is literal. The patterns never reach the database: the job functions are read with a fixed
query and matched in Python (Unicode-aware case folding, which SQLite's LIKE lacks), and only the
matching function ids are bound into the contact query.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import Engine, select

from crm.dag_helpers import EMAIL_RE, parse_addresses
from crm.db.crm_schema import account, address, audience, audience_member, company, contact, job_function, user
from crm.jobs.purchase_profile import AudienceNotFound
from crm.notify import ledger
from crm.notify.dispatch import Sender, email_payload, email_sender
from crm.notify.email import Attachment, HeaderInjection, SmtpChannel
from crm.notify.pdf import currency_of, load_layout, money, pdf_date, render_pdf
from crm.notify.templates import RenderError, TemplateProblem, Templates
from crm.sources import read_frame

log = logging.getLogger(__name__)

DAG_ID = "crm_overdue_invoice_notices"
TEMPLATE_PREFIX = "overdue"
DEFAULT_TEMPLATE = "overdue_3_days"
DEFAULT_FUNCTIONS = "Conta, %Manage"
INVOICE_FORMATS = ("simple", "detailed")
SENDER_MODES = ("company", "user")
MAX_PATTERN_LENGTH = 80  # crm_job_function.name is String(80): a longer pattern can match nothing
MAX_PATTERNS = 20
SAMPLES = 3
_CHUNK = 5000  # ids per IN (...) list
NO_CONTACT = "no matching contact"
PAID_BEFORE_SENDING = "paid before sending"
PAID_KEY = "paid_before_sending"  # in a sent row's payload report: the planned invoices left out
REPORT_COLUMNS = (
    "partner_id",
    "partner",
    "erp_customer_code",
    "company",
    "state",
    "reason",
    "contacts",
    "invoices",
    "open_total",
    "sent_at",
)


class PatternError(ValueError):
    """The contact_functions Param holds a pattern that could not select anyone safely."""


# ------------------------------------------------------------------------------------------------
# Job-function patterns
# ------------------------------------------------------------------------------------------------


def parse_patterns(value: str | Sequence[str] | None) -> list[str]:
    """The patterns of the Param ("Conta, %Manage"); empty, wildcard-only or oversized ones are refused."""
    items = list(value) if isinstance(value, list | tuple) else re.split(r"[,;\n]", value or "")
    patterns = [str(p).strip() for p in items]
    if not patterns or patterns == [""]:
        raise PatternError("contact_functions is empty: give at least one job-function pattern, e.g. 'Conta, %Manage'")
    if len(patterns) > MAX_PATTERNS:
        raise PatternError(f"contact_functions: at most {MAX_PATTERNS} patterns")
    for p in patterns:
        if not p:
            raise PatternError("contact_functions: an empty pattern (two commas in a row, or a trailing comma)")
        if not p.replace("%", "").strip():
            raise PatternError(f"contact_functions: pattern {p!r} is only wildcards and would match every contact")
        if len(p) > MAX_PATTERN_LENGTH:
            raise PatternError(
                f"contact_functions: a pattern is {len(p)} characters long; job functions have at most "
                f"{MAX_PATTERN_LENGTH}"
            )
        if any(ord(c) < 32 for c in p):
            raise PatternError("contact_functions: control characters are not allowed in a pattern")
    return patterns


def function_matcher(patterns: Sequence[str]) -> Callable[[str | None], bool]:
    """A predicate over job-function names: case-insensitive prefix match, `%` = any text, all else literal."""
    parts = [
        "".join(".*" if piece == "%" else re.escape(piece) for piece in re.split("(%)", p.casefold())) for p in patterns
    ]
    regex = re.compile("(?:" + "|".join(parts) + ")", re.DOTALL)
    return lambda name: bool(name) and regex.match(name.casefold()) is not None


def matching_functions(crm: Engine, patterns: Sequence[str]) -> dict[int, str]:
    """Ids and names of the CRM job functions the patterns select (a fixed query; matching in Python)."""
    matches = function_matcher(patterns)
    with crm.connect() as conn:
        rows = conn.execute(select(job_function.c.id, job_function.c.name)).all()
    return {r.id: r.name for r in rows if matches(r.name)}


# ------------------------------------------------------------------------------------------------
# Plan
# ------------------------------------------------------------------------------------------------


@dataclass
class Options:
    """The run's choices (the DAG's Params), validated."""

    days_overdue: int = 3
    patterns: list[str] = field(default_factory=lambda: parse_patterns(DEFAULT_FUNCTIONS))
    template: str = DEFAULT_TEMPLATE
    sender: str = "company"
    copy_to: list[str] = field(default_factory=list)
    invoice_format: str = "simple"
    attach_statement: bool = False
    audience: str | None = None
    test_recipient: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any], test_recipient: str | None = None) -> Options:
        """Validate the trigger form's values; a bad one raises ValueError naming the Param."""
        days = params.get("days_overdue", 3)
        if isinstance(days, bool) or not isinstance(days, int) or days < 0:
            raise ValueError(f"days_overdue must be a whole number >= 0, not {days!r}")
        if params.get("sender", "company") not in SENDER_MODES:
            raise ValueError(f"sender must be one of {', '.join(SENDER_MODES)}")
        if params.get("invoice_format", "simple") not in INVOICE_FORMATS:
            raise ValueError(f"invoice_format must be one of {', '.join(INVOICE_FORMATS)}")
        return cls(
            days_overdue=days,
            patterns=parse_patterns(params.get("contact_functions", DEFAULT_FUNCTIONS)),
            template=params.get("template") or DEFAULT_TEMPLATE,
            sender=params.get("sender", "company"),
            copy_to=parse_addresses(params.get("copy_to") or ""),
            invoice_format=params.get("invoice_format", "simple"),
            attach_statement=bool(params.get("attach_statement", False)),
            audience=(params.get("audience") or "").strip() or None,
            test_recipient=test_recipient,
        )


@dataclass
class NoticePlan:
    items: list[ledger.Planned]
    week: str
    overdue_receivables: int
    partners_with_overdue: int
    matching_functions: list[str]
    samples: list[dict[str, Any]] = field(default_factory=list)
    sample_payloads: list[dict[str, Any]] = field(default_factory=list)
    senders: list[str] = field(default_factory=list)  # the From addresses (the report goes there)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for it in self.items:
            key = it.state if it.state != "skipped" else f"skipped ({it.reason})"
            out[key] = out.get(key, 0) + 1
        return out


def iso_week(day: dt.date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def business_key(partner_id: int, day: dt.date) -> str:
    return f"partner {partner_id} / {iso_week(day)}"


def template_names(templates: Templates | None = None) -> list[str]:
    return (templates or Templates("email")).names(TEMPLATE_PREFIX)


def overdue_receivables(erp: Engine, business_date: dt.date, days_overdue: int) -> pd.DataFrame:
    """Open receivables due `days_overdue` or more days before the business date (erp/overdue_receivables.sql)."""
    return read_frame(erp, "erp/overdue_receivables", {"due_on_or_before": business_date - dt.timedelta(days_overdue)})


def partners(crm: Engine, customer_codes: Iterable[int], audience_code: str | None) -> list[dict[str, Any]]:
    """Active PJ accounts among these ERP customers (in the audience, if one is given), with their company."""
    stmt = (
        select(
            account.c.id,
            account.c.name,
            account.c.short_name,
            account.c.tax_id,
            account.c.email,
            account.c.locale,
            account.c.opt_out_email,
            account.c.erp_customer_code,
            account.c.company_id,
            company.c.name.label("company_name"),
            company.c.email.label("company_email"),
            company.c.phone.label("company_phone"),
            company.c.tax_id.label("company_tax_id"),
            company.c.locale.label("company_locale"),
        )
        .join(company, company.c.id == account.c.company_id)
        .where(account.c.person_type == "PJ", account.c.active.is_(True), account.c.erp_customer_code.is_not(None))
    )
    with crm.connect() as conn:
        if audience_code:
            audience_id = conn.execute(select(audience.c.id).where(audience.c.code == audience_code)).scalar()
            if audience_id is None:
                raise AudienceNotFound(f"audience {audience_code!r} does not exist in crm_audience")
            stmt = stmt.join(audience_member, audience_member.c.account_id == account.c.id).where(
                audience_member.c.audience_id == audience_id
            )
        codes = sorted({int(c) for c in customer_codes})
        out: list[dict[str, Any]] = []
        for start in range(0, len(codes), _CHUNK):
            chunk = stmt.where(account.c.erp_customer_code.in_(codes[start : start + _CHUNK]))
            out += [dict(r) for r in conn.execute(chunk).mappings()]
    out.sort(key=lambda r: r["id"])
    return out


def contacts_of(crm: Engine, partner_ids: Sequence[int], function_ids: Iterable[int]) -> dict[int, list[dict]]:
    """Active contacts of these partners whose job function is one of `function_ids`, per partner."""
    fids = sorted(function_ids)
    out: dict[int, list[dict]] = {}
    if not fids or not partner_ids:
        return out
    stmt = (
        select(
            contact.c.id,
            contact.c.account_id,
            contact.c.name,
            contact.c.email,
            contact.c.opt_out_email,
            job_function.c.name.label("function"),
        )
        .join(job_function, job_function.c.id == contact.c.job_function_id)
        .where(contact.c.active.is_(True), contact.c.job_function_id.in_(fids))
        .order_by(contact.c.account_id, contact.c.id)
    )
    with crm.connect() as conn:
        for start in range(0, len(partner_ids), _CHUNK):
            chunk = stmt.where(contact.c.account_id.in_(list(partner_ids[start : start + _CHUNK])))
            for r in conn.execute(chunk).mappings():
                out.setdefault(r["account_id"], []).append(dict(r))
    return out


def addresses_of(crm: Engine, partner_ids: Sequence[int]) -> dict[int, str]:
    """The billing address (else correspondence, else delivery) of each partner, as printable lines."""
    rank = {"billing": 0, "correspondence": 1, "delivery": 2}
    best: dict[int, tuple[int, str]] = {}
    stmt = select(address)
    with crm.connect() as conn:
        for start in range(0, len(partner_ids), _CHUNK):
            chunk = stmt.where(address.c.account_id.in_(list(partner_ids[start : start + _CHUNK])))
            for r in conn.execute(chunk).mappings():
                street = ", ".join(x for x in (r["street"], r["number"], r["complement"]) if x)
                city = " ".join(x for x in (r["postal_code"], r["city"], f"- {r['state']}" if r["state"] else "") if x)
                text = "\n".join(x for x in (street, r["district"], city) if x)
                k = rank.get(r["address_type"], 9)
                if r["account_id"] not in best or k < best[r["account_id"]][0]:
                    best[r["account_id"]] = (k, text)
    return {k: v[1] for k, v in best.items()}


def requesting_user(crm: Engine, login: str | None) -> dict[str, Any] | None:
    """The CRM user who triggered the run (login = Airflow user name), with an e-mail, or None."""
    if not login:
        return None
    with crm.connect() as conn:
        row = conn.execute(
            select(user.c.login, user.c.name, user.c.email).where(user.c.login == login, user.c.email.is_not(None))
        ).first()
    return dict(row._mapping) if row else None


def plan_notices(
    crm: Engine,
    erp: Engine,
    business_date: dt.date,
    options: Options,
    *,
    requested_by: str | None = None,
    default_sender: str | None = None,
    templates: Templates | None = None,
) -> NoticePlan:
    """Who gets this week's notice (rendered now, re-rendered at send time), who is skipped and who is an error."""
    templates = templates or Templates("email")
    if options.template not in template_names(templates):
        raise ValueError(
            f"unknown overdue template {options.template!r}; available: {', '.join(template_names(templates))}"
        )
    sender_user = None
    if options.sender == "user":
        sender_user = requesting_user(crm, requested_by)
        if sender_user is None:
            raise ValueError(
                f"sender=user: the requesting user {requested_by!r} has no CRM user with an e-mail "
                "(crm_user.login); choose sender=company or trigger the run as that user"
            )
    functions = matching_functions(crm, options.patterns)
    receivables = overdue_receivables(erp, business_date, options.days_overdue)
    by_code = {int(code): frame for code, frame in receivables.groupby("customer_code", sort=False)}
    found = partners(crm, by_code.keys(), options.audience)
    ids = [p["id"] for p in found]
    contacts = contacts_of(crm, ids, functions.keys())
    addresses = addresses_of(crm, ids)
    templates.check(options.template, sorted({p["locale"] or "" for p in found}))
    patterns_text = ", ".join(repr(p) for p in options.patterns)
    plan = NoticePlan(
        items=[],
        week=iso_week(business_date),
        overdue_receivables=len(receivables),
        partners_with_overdue=len(found),
        matching_functions=sorted(functions.values()),
    )
    senders: set[str] = set()
    for p in found:
        key = business_key(p["id"], business_date)
        recs = by_code[int(p["erp_customer_code"])]
        base = _base(p, addresses.get(p["id"], ""), options, business_date)
        base["receivable_ids"] = [int(x) for x in recs["receivable_id"]]
        invoices = invoice_rows(recs, business_date, base["locale"], base["currency"])
        base["report"] = {"invoices": [i["number"] for i in invoices], "open_total": _total(recs)}
        common = {"recipient": f"partner:{p['id']}", "business_key": key, "account_id": p["id"],
                  "company_id": p["company_id"]}  # fmt: skip
        people = contacts.get(p["id"], [])
        usable = [c for c in people if c["email"] and EMAIL_RE.match(c["email"].strip()) and c["email"].isascii()]
        reachable = [c for c in usable if not c["opt_out_email"]]
        base["contacts"] = [
            {"name": c["name"], "email": c["email"].strip(), "function": c["function"]} for c in reachable
        ]
        if p["opt_out_email"]:
            plan.items.append(ledger.Planned(state="skipped", reason="opted out of e-mail", payload={"overdue": base},
                                             **common))  # fmt: skip
            continue
        if not reachable:
            if usable:
                reason = "the matching contacts opted out of e-mail"
                plan.items.append(ledger.Planned(state="skipped", reason=reason, payload={"overdue": base}, **common))
                continue
            error = (
                f"{NO_CONTACT}: partner {p['id']} ({p['name']}) has no active contact with an e-mail address "
                f"whose job function matches {patterns_text}"
            )
            plan.items.append(ledger.Planned(state="failed", error=error, payload={"overdue": base}, **common))
            continue
        try:
            sender, sender_name, reply_to = _sender(p, sender_user, default_sender)
            fields = email_fields(base, invoices)
            rendered = templates.render_email(options.template, fields, base["locale"])
            payload = email_payload(
                sender=sender,
                sender_name=sender_name,
                to=[c["email"] for c in reachable],
                cc=options.copy_to,
                reply_to=reply_to,
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                message_id=f"<overdue.{p['id']}.{plan.week}@{sender.rpartition('@')[2]}>",
                test_recipient=options.test_recipient,
                headers={"X-CRM-Routine": DAG_ID, "X-CRM-Business-Key": key},
            )
        except (RenderError, HeaderInjection, ValueError) as exc:
            plan.items.append(ledger.Planned(state="failed", error=str(exc), payload={"overdue": base}, **common))
            continue
        payload["overdue"] = base
        senders.add(sender)
        plan.items.append(ledger.Planned(payload=payload, **common))
        if len(plan.samples) < SAMPLES:
            plan.samples.append(
                {"to": ", ".join(payload["to"]), "subject": payload["subject"], "text": payload["text"]}
            )
            plan.sample_payloads.append(payload)
    plan.senders = sorted(senders)
    return plan


def _base(p: Mapping[str, Any], address_text: str, options: Options, business_date: dt.date) -> dict[str, Any]:
    """What a notice needs at send time besides the receivables (stored in the ledger payload)."""
    locale = p["locale"] or p["company_locale"] or ""
    return {
        "template": options.template,
        "invoice_format": options.invoice_format,
        "attach_statement": options.attach_statement,
        "days_overdue": options.days_overdue,
        "business_date": business_date.isoformat(),
        "locale": locale,
        "currency": currency_of(p["company_locale"]),
        "partner": {
            "id": p["id"],
            "name": p["name"],
            "short_name": p["short_name"] or p["name"],
            "tax_id": p["tax_id"] or "",
            "code": p["erp_customer_code"],
            "email": p["email"] or "",
            "address": address_text,
        },
        "company": {
            "name": p["company_name"],
            "email": p["company_email"] or "",
            "phone": p["company_phone"] or "",
            "tax_id": p["company_tax_id"] or "",
        },
    }


def _sender(p: Mapping[str, Any], sender_user: Mapping[str, Any] | None, default_sender: str | None) -> tuple:
    """(From, display name, Reply-To): the partner's company, or the requesting user on its behalf."""
    if sender_user is not None:
        return sender_user["email"], f"{sender_user['name']} ({p['company_name']})", sender_user["email"]
    sender = p["company_email"] or default_sender
    if not sender:
        raise ValueError("no sender: the company has no e-mail and smtp_default has no from_email")
    return sender, p["company_name"], p["company_email"] or None


def _total(recs: pd.DataFrame) -> float:
    return round(float((recs["amount"] - recs["paid_amount"]).sum()), 2)


def invoice_rows(recs: pd.DataFrame, business_date: dt.date, locale: str, currency: str) -> list[dict[str, Any]]:
    """The receivables as templates and PDFs show them (dates and amounts formatted for the reader)."""
    out = []
    for r in recs.itertuples(index=False):
        due = pd.Timestamp(r.due_date).date()
        out.append(
            {
                "id": int(r.receivable_id),
                "number": r.document_number,
                "invoice_number": r.invoice_number if isinstance(r.invoice_number, str) else "",
                "invoice_id": None if pd.isna(r.invoice_id) else int(r.invoice_id),
                "issue_date": pdf_date(pd.Timestamp(r.issue_date).date(), locale),
                "due_date": pdf_date(due, locale),
                "days_overdue": (business_date - due).days,
                "amount": money(r.amount, currency, locale),
                "paid_amount": money(r.paid_amount, currency, locale),
                "open_amount": money(r.amount - r.paid_amount, currency, locale),
                "open_value": round(float(r.amount - r.paid_amount), 2),
                "payment_method": r.payment_method,
                "bearer": r.bearer if isinstance(r.bearer, str) else "",
            }
        )
    return out


def email_fields(base: Mapping[str, Any], invoices: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What an overdue e-mail template may use. Values are data: never evaluated as templates."""
    total = round(sum(i["open_value"] for i in invoices), 2)
    locale = base["locale"]
    return {
        "partner": base["partner"],
        "company": base["company"],
        "contacts": base.get("contacts", []),
        "contact_names": ", ".join(c["name"] for c in base.get("contacts", [])),
        "invoices": list(invoices),
        "invoice_count": len(invoices),
        "total": money(total, base["currency"], locale),
        "max_days_overdue": max((i["days_overdue"] for i in invoices), default=0),
        "days_overdue": base["days_overdue"],
        "business_date": pdf_date(base["business_date"], locale),
        "attach_statement": base["attach_statement"],
    }


def summary_of(plan: NoticePlan, result: ledger.PlanResult | None, options: Options) -> dict[str, Any]:
    out: dict[str, Any] = {
        "week": plan.week,
        "overdue_receivables": plan.overdue_receivables,
        "partners_with_overdue_invoices": plan.partners_with_overdue,
        "contact_functions": ", ".join(options.patterns),
        "matching_job_functions": ", ".join(plan.matching_functions) or "(none)",
        "planned_by_state": plan.counts(),
        "partners_without_matching_contact": sum(
            1 for it in plan.items if it.state == "failed" and (it.error or "").startswith(NO_CONTACT)
        ),
        "template": options.template,
        "invoice_format": options.invoice_format,
        "attach_statement": options.attach_statement,
        "sender": options.sender,
        "copy_to": ", ".join(options.copy_to),
    }
    if options.audience:
        out["audience"] = options.audience
    if result is not None:
        out["already_notified_this_week"] = result.already_done
    else:
        out["dry_run_would_send"] = sum(1 for it in plan.items if it.state == "pending")
    return out


# ------------------------------------------------------------------------------------------------
# Send
# ------------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    subject: str
    text: str
    html: str | None
    attachments: list[Attachment]
    invoices: list[dict[str, Any]]


def refresh(erp: Engine, overdue: Mapping[str, Any], templates: Templates | None = None) -> Prepared | None:
    """Re-read the notice's receivables (only those still open come back), re-render it and make its PDFs.

    None when none is open any more. A failure to render raises RenderError (that message fails).
    """
    templates = templates or Templates("email")
    recs = read_frame(erp, "erp/open_receivables_by_id", {"receivable_ids": list(overdue["receivable_ids"])})
    if recs.empty:
        return None
    bdate = dt.date.fromisoformat(overdue["business_date"])
    locale, currency = overdue["locale"], overdue["currency"]
    invoices = invoice_rows(recs, bdate, locale, currency)
    if overdue["invoice_format"] == "detailed":
        items = invoice_items(erp, [i["invoice_id"] for i in invoices if i["invoice_id"]], locale, currency)
        for inv in invoices:
            inv["items"] = items.get(inv["invoice_id"], [])
    fields = email_fields(overdue, invoices)
    rendered = templates.render_email(overdue["template"], fields, locale)
    return Prepared(
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        attachments=documents(overdue, invoices, fields),
        invoices=invoices,
    )


def invoice_items(erp: Engine, invoice_ids: Sequence[int], locale: str, currency: str) -> dict[int, list[dict]]:
    if not invoice_ids:
        return {}
    frame = read_frame(erp, "erp/invoice_items", {"invoice_ids": sorted(set(invoice_ids))})
    out: dict[int, list[dict]] = {}
    for r in frame.itertuples(index=False):
        out.setdefault(int(r.invoice_id), []).append(
            {
                "line": int(r.line),
                "product": r.product_code,
                "quantity": f"{r.quantity:g}",
                "unit_price": money(r.unit_price, currency, locale),
                "total": money(r.quantity * r.unit_price, currency, locale),
            }
        )
    return out


def documents(overdue: Mapping[str, Any], invoices: Sequence[Mapping[str, Any]], fields: Mapping[str, Any]) -> list:
    """The PDFs of one notice: each invoice in the chosen format, then the statement if asked for."""
    locale = overdue["locale"]
    layout = load_layout(f"invoice_{overdue['invoice_format']}", locale)
    common = {"company": overdue["company"], "partner": overdue["partner"], "business_date": fields["business_date"]}
    out = []
    for inv in invoices:
        content = render_pdf(layout, {**common, "invoice": inv, "items": inv.get("items", [])}, title=inv["number"])
        out.append(Attachment(f"{_file_part(layout.labels['invoice'])}-{_file_part(inv['number'])}.pdf", content,
                              "application/pdf"))  # fmt: skip
    if overdue["attach_statement"]:
        statement = load_layout("statement", locale)
        content = render_pdf(statement, {**common, "invoices": list(invoices), "total": fields["total"]})
        name = f"{_file_part(statement.labels['statement'])}-{overdue['partner']['code']}-{overdue['business_date']}"
        out.append(Attachment(f"{name}.pdf", content, "application/pdf"))
    return out


def _file_part(text: str) -> str:
    """A piece of a file name: letters (any script), digits, '-' and '_'; the rest becomes '-'."""
    return re.sub(r"[^\w-]+", "-", str(text)).strip("-") or "document"


class OverdueSender:
    """The send step's Sender: refresh the notice from the ERP, then hand it to the shared e-mail sender."""

    def __init__(self, channel: SmtpChannel, erp: Engine, templates: Templates | None = None) -> None:
        self.erp = erp
        self.templates = templates or Templates("email")
        self._files: dict[int, list[Attachment]] = {}
        self._email: Sender = email_sender(channel, attachments_for=lambda row: self._files.pop(row.id, []))

    def __call__(self, row: ledger.Claimed, point_of_no_return: Callable[[], None]) -> ledger.Outcome:
        overdue = row.payload.get("overdue")
        if not overdue:
            return ledger.Outcome("failed", error="payload without the notice's receivables")
        try:
            prepared = refresh(self.erp, overdue, self.templates)
        except (RenderError, TemplateProblem, KeyError) as exc:
            return ledger.Outcome("failed", error=f"cannot prepare the notice: {exc}")
        except Exception as exc:  # the ERP did not answer: try again later
            log.warning("row %s: re-reading the receivables failed: %s", row.id, exc)
            return ledger.Outcome("failed", error=f"re-reading the receivables failed: {exc}", retryable=True)
        planned = overdue["report"]["invoices"]
        paid_earlier = list(overdue["report"].get(PAID_KEY) or [])  # left out by an earlier try of this row
        if prepared is None:  # nothing is sent: the row (and the report's CSV) lists no invoice
            report = {"invoices": [], "open_total": 0.0, PAID_KEY: paid_earlier + planned}
            payload = {**row.payload, "overdue": {**overdue, "receivable_ids": [], "report": report}}
            return ledger.Outcome("skipped", reason=PAID_BEFORE_SENDING, payload=payload)
        still_open = {x["id"] for x in prepared.invoices}
        left_out = [n for i, n in zip(overdue["receivable_ids"], planned, strict=False) if i not in still_open]
        report = {
            "invoices": [i["number"] for i in prepared.invoices],
            "open_total": round(sum(i["open_value"] for i in prepared.invoices), 2),
            **({PAID_KEY: paid_earlier + left_out} if paid_earlier or left_out else {}),
        }
        row.payload.update(subject=prepared.subject, text=prepared.text, html=prepared.html)
        # receivable_ids and report.invoices stay aligned (a retry of this row pairs them again)
        row.payload["overdue"] = {**overdue, "receivable_ids": [i["id"] for i in prepared.invoices], "report": report}
        self._files[row.id] = prepared.attachments
        try:
            outcome = self._email(row, point_of_no_return)
        finally:
            self._files.pop(row.id, None)
        if outcome.state == "sent" and report.get(PAID_KEY):
            note = f"{PAID_BEFORE_SENDING}, left out: {' '.join(report[PAID_KEY])}"
            outcome = dataclasses.replace(outcome, error="; ".join(x for x in (outcome.error, note) if x))
        # the row keeps the notice as it went out (re-rendered, without the paid invoices), for the report
        return dataclasses.replace(outcome, payload=row.payload)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def report_rows(crm: Engine, routine: str, run_id: str) -> list[dict[str, Any]]:
    """One line per partner of the run: state, reason or error, contacts, invoices (the report's CSV)."""
    rows = ledger.rows_of_run(crm, routine, run_id, ["state", "reason", "last_error", "payload", "sent_at"])
    out = []
    for r in rows:
        payload = json.loads(r["payload"]) if r["payload"] else {}
        o = payload.get("overdue") or {}
        partner, rep = o.get("partner") or {}, o.get("report") or {}
        out.append(
            {
                "partner_id": partner.get("id"),
                "partner": partner.get("name"),
                "erp_customer_code": partner.get("code"),
                "company": (o.get("company") or {}).get("name"),
                "state": "notified" if r["state"] == "sent" else ("error" if r["state"] == "failed" else r["state"]),
                "reason": r["reason"] or r["last_error"] or "",
                "contacts": "; ".join(f"{c['name']} <{c['email']}>" for c in o.get("contacts") or []),
                "invoices": " ".join(rep.get("invoices") or []),
                "open_total": rep.get("open_total"),
                "sent_at": r["sent_at"],
            }
        )
    return out


def partner_errors(rows: Sequence[Mapping[str, Any]], limit: int = 20) -> list[str]:
    """The run's partner errors (no matching contact, a message that failed), for the report's body."""
    return [str(r["reason"]) for r in rows if r["state"] == "error"][:limit]


def report_attachments(
    crm: Engine, erp: Engine, routine: str | None, run_id: str, planned: Mapping[str, Any]
) -> tuple[list[Attachment], dict[str, Any]]:
    """The routine's own part of the execution report: the partners CSV, partner errors, sample PDFs (dry run)."""
    from crm.notify.report import csv_bytes

    summary = dict(planned.get("summary") or {})
    files: list[Attachment] = []
    if routine:
        rows = report_rows(crm, routine, run_id)
        if rows:
            files.append(Attachment(f"{DAG_ID}-partners.csv", csv_bytes(rows, REPORT_COLUMNS), "text/csv"))
            summary["partners_notified"] = sum(1 for r in rows if r["state"] == "notified")
            errors = partner_errors(rows)
            if errors:
                summary["partner_errors"] = errors
    sample = planned.get("sample_notice")
    if sample:  # dry run: the first notice's PDFs, as they would be attached now
        try:
            prepared = refresh(erp, sample)
            files += prepared.attachments if prepared else []
        except Exception as exc:  # the report must still go out
            summary["sample_pdfs"] = f"could not be made: {exc}"
    return files, summary
