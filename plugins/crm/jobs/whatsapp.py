"""The WhatsApp routines over RD Conversas (TOTVS Moda): contact sync, due-bill and order-stage notices.

Steps over real databases; the rules themselves are in `crm.routines.whatsapp`, the API client in
`crm.notify.whatsapp`. Every routine plans ledger rows (`crm_notification`, channel `whatsapp`)
and sends them through `crm.notify.dispatch`, so the ledger's guarantees hold: a re-run, a cleared
run or a backfill never sends twice; a message whose hand-over was interrupted is `unknown`, not
resent. Ledger recipients are accounts (`account:<id>`), not numbers: a customer who changes
number between two runs must not get the same notice twice.

- Contact sync: key `account <id> / contact` for the creation (so an account is created once,
  ever), `account <id> / phone <number> @ <changed at>` for an update of the number.
- Due notices: key `receivable <id> / due <date>`, ledger routine `crm_whatsapp_due_notices/<company>`
  so a company's notices are the same rows whether companies run as mapped tasks or grouped.
- Order stages: key `order <id> / <stage>`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import Engine, and_, exists, or_, select

from crm.db.crm_schema import account, company, external_id, phone, whatsapp_config, whatsapp_template
from crm.db.upsert import write_transaction
from crm.notify import ledger
from crm.notify.whatsapp import WhatsAppSettings, message_payload
from crm.routines import whatsapp as rules

log = logging.getLogger(__name__)

CONTACT_SYNC = "crm_whatsapp_contact_sync"
DUE_NOTICES = "crm_whatsapp_due_notices"
ORDER_STAGES = "crm_whatsapp_order_stages"
CHANNEL = "whatsapp"
SAMPLES = 3
_IN_CHUNK = 5000


def _chunks(values: Sequence[Any], size: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def company_routine(base: str, company_code: str) -> str:
    """The ledger routine of one company's notices (the same rows in mapped and grouped processing)."""
    return f"{base}/{company_code}"


def naive_utc(value: dt.datetime) -> dt.datetime:
    """CRM and ERP timestamps are naive UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


# --------------------------------------------------------------------------------------------------
# Customers: the account behind an ERP code, its mobile phone of the configured type, its contact id
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipient:
    account_id: int
    company_id: int
    name: str
    short_name: str | None
    locale: str | None
    opt_out_whatsapp: bool
    phone: str | None  # E.164, or None (no mobile of the type, or not normalisable)
    raw_phone: str | None
    phone_changed_at: dt.datetime | None
    contact_id: str | None  # RD Conversas contact id (crm_external_id of the additional field)
    contact_phone: str | None

    @property
    def first_name(self) -> str:
        return rules.first_name(self.name, self.short_name)

    def skip_reason(self) -> str | None:
        """Why this customer gets no WhatsApp notice (only synced contacts with a mobile phone do)."""
        if self.opt_out_whatsapp:
            return "opted out of WhatsApp"
        if self.raw_phone is None:
            return "no mobile phone"
        if self.phone is None:
            return "invalid mobile number"
        if self.contact_id is None:
            return "no RD Conversas contact"
        return None


def _account_columns() -> list:
    return [
        account.c.id,
        account.c.company_id,
        account.c.name,
        account.c.short_name,
        account.c.locale,
        account.c.opt_out_whatsapp,
        account.c.erp_customer_code,
        company.c.locale.label("company_locale"),
    ]


def recipients(
    crm: Engine,
    settings: WhatsAppSettings,
    *,
    customer_codes: Iterable[int] | None = None,
    account_ids: Iterable[int] | None = None,
) -> dict[int, Recipient]:
    """Recipients keyed by ERP customer code (`customer_codes`) or by account id (`account_ids`)."""
    by_code = customer_codes is not None
    keys = sorted({int(k) for k in (customer_codes if by_code else account_ids or [])})
    rows: list[Mapping[str, Any]] = []
    key_col = account.c.erp_customer_code if by_code else account.c.id
    with crm.connect() as conn:
        for part in _chunks(keys):
            stmt = (
                select(*_account_columns())
                .join(company, company.c.id == account.c.company_id)
                .where(key_col.in_(list(part)))
            )
            rows += list(conn.execute(stmt).mappings())
        ids = [r["id"] for r in rows]
        phones = _mobile_phones(conn, ids, settings.mobile_phone_type)
        contacts = _contacts(conn, ids, settings.additional_field)
    out: dict[int, Recipient] = {}
    for r in rows:
        raw, changed = phones.get(r["id"], (None, None))
        contact = contacts.get(r["id"])
        rec = Recipient(
            account_id=r["id"],
            company_id=r["company_id"],
            name=r["name"],
            short_name=r["short_name"],
            locale=r["locale"] or r["company_locale"],
            opt_out_whatsapp=bool(r["opt_out_whatsapp"]),
            phone=rules.normalize_phone(raw, r["locale"] or r["company_locale"]),
            raw_phone=raw,
            phone_changed_at=changed,
            contact_id=contact[0] if contact else None,
            contact_phone=contact[1] if contact else None,
        )
        out[int(r["erp_customer_code"]) if by_code else int(r["id"])] = rec
    return out


def _mobile_phones(conn: Any, account_ids: Sequence[int], phone_type: str) -> dict[int, tuple[str, dt.datetime]]:
    """Each account's mobile number of the configured type: the primary one, else the oldest."""
    out: dict[int, tuple[str, dt.datetime]] = {}
    for part in _chunks(list(account_ids)):
        stmt = (
            select(phone.c.account_id, phone.c.number, phone.c.updated_at, phone.c.created_at)
            .where(phone.c.account_id.in_(list(part)), phone.c.phone_type == phone_type)
            .order_by(phone.c.account_id, phone.c.is_primary.desc(), phone.c.id)
        )
        for r in conn.execute(stmt):
            if r.account_id not in out:
                out[r.account_id] = (r.number, max(r.updated_at, r.created_at))
    return out


def _contacts(conn: Any, account_ids: Sequence[int], system: str) -> dict[int, tuple[str, str | None]]:
    out: dict[int, tuple[str, str | None]] = {}
    for part in _chunks(list(account_ids)):
        stmt = select(external_id.c.account_id, external_id.c.external_id, external_id.c.phone_number).where(
            external_id.c.account_id.in_(list(part)), external_id.c.system == system
        )
        out.update({r.account_id: (r.external_id, r.phone_number) for r in conn.execute(stmt)})
    return out


def store_contact(crm: Engine, system: str, account_id: int, contact_id: str, phone_number: str) -> None:
    """Keep the contact id RD Conversas returned as the account's additional field (crm_external_id)."""
    from sqlalchemy.dialects import postgresql, sqlite

    insert = postgresql.insert if crm.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(external_id).values(
        account_id=account_id,
        system=system,
        external_id=contact_id,
        phone_number=phone_number,
        synced_at=ledger.utcnow(),
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["account_id", "system"],
        set_={"external_id": stmt.excluded.external_id, "phone_number": stmt.excluded.phone_number,
              "synced_at": stmt.excluded.synced_at},
    )  # fmt: skip
    with write_transaction(crm) as conn:
        conn.execute(stmt)


def contact_store(crm: Engine, settings: WhatsAppSettings) -> Any:
    """The `on_contact` hook of the WhatsApp sender: store the id right after the API said yes."""

    def on_contact(row: ledger.Claimed, contact_id: str, phone_number: str) -> None:
        if row.account_id is None:
            raise ValueError(f"ledger row {row.id} has no account")
        store_contact(crm, settings.additional_field, row.account_id, contact_id, phone_number)

    return on_contact


# --------------------------------------------------------------------------------------------------
# Message configurations and the template catalogue
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MessageConfig:
    company_id: int
    company_code: str
    message_type: str
    template: str
    chip: str | None
    fields: tuple[str, ...]
    language: str | None
    problem: str | None  # a configuration that cannot send (template not approved, wrong count): rows fail


def active_configs(crm: Engine, message_types: Iterable[str] | None = None) -> dict[tuple[str, str], MessageConfig]:
    """Active configurations by (company code, message type), checked against the template catalogue."""
    stmt = (
        select(
            whatsapp_config.c.company_id,
            company.c.code,
            whatsapp_config.c.message_type,
            whatsapp_config.c.template_name,
            whatsapp_config.c.chip,
            whatsapp_config.c.parameter_fields,
            whatsapp_template.c.language,
            whatsapp_template.c.status,
            whatsapp_template.c.parameter_count,
        )
        .join(company, company.c.id == whatsapp_config.c.company_id)
        .join(whatsapp_template, whatsapp_template.c.name == whatsapp_config.c.template_name, isouter=True)
        .where(whatsapp_config.c.active == True)  # noqa: E712 - SQL, not Python
        .order_by(company.c.code, whatsapp_config.c.message_type)
    )
    if message_types is not None:
        stmt = stmt.where(whatsapp_config.c.message_type.in_(list(message_types)))
    out: dict[tuple[str, str], MessageConfig] = {}
    with crm.connect() as conn:
        for r in conn.execute(stmt).mappings():
            fields = tuple(json.loads(r["parameter_fields"] or "[]"))
            template = None if r["status"] is None else {"status": r["status"], "parameter_count": r["parameter_count"]}
            try:
                rules.check_template(template, fields, r["template_name"])
                problem = None
            except rules.ParameterError as exc:
                problem = str(exc)
            out[(r["code"], r["message_type"])] = MessageConfig(
                company_id=r["company_id"],
                company_code=r["code"],
                message_type=r["message_type"],
                template=r["template_name"],
                chip=r["chip"],
                fields=fields,
                language=r["language"],
                problem=problem,
            )
    return out


def company_codes(crm: Engine) -> dict[str, dict[str, Any]]:
    with crm.connect() as conn:
        return {
            r["code"]: dict(r)
            for r in conn.execute(select(company.c.id, company.c.code, company.c.name, company.c.locale)).mappings()
        }


def store_templates(crm: Engine, templates: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Upsert the API's catalogue into crm_whatsapp_template; templates the API no longer lists become 'REMOVED'.

    Not deleted: configurations reference them (foreign key), and a configuration of a removed
    template must fail visibly at plan time, not vanish.
    """
    from sqlalchemy.dialects import postgresql, sqlite

    now = ledger.utcnow()
    rows, seen = [], set()
    for t in templates:
        name = str(t.get("name") or "").strip()
        if not name or name in seen:
            continue
        seen.add(name)
        count = t.get("parameter_count")
        rows.append({"name": name, "language": t.get("language"), "status": (t.get("status") or "").upper() or None,
                     "body": t.get("body"), "parameter_count": None if count is None else int(count),
                     "fetched_at": now})  # fmt: skip
    insert = postgresql.insert if crm.dialect.name == "postgresql" else sqlite.insert
    with write_transaction(crm) as conn:
        before = set(conn.execute(select(whatsapp_template.c.name)).scalars())
        if rows:
            stmt = insert(whatsapp_template)
            ex = stmt.excluded
            stmt = stmt.on_conflict_do_update(
                index_elements=["name"],
                set_={"language": ex.language, "status": ex.status, "body": ex.body,
                      "parameter_count": ex.parameter_count, "fetched_at": ex.fetched_at},
            )  # fmt: skip
            conn.execute(stmt, rows)
        gone = sorted(before - seen)
        if gone:
            conn.execute(whatsapp_template.update().where(whatsapp_template.c.name.in_(gone)).values(status="REMOVED"))
    return {"fetched": len(rows), "new": len(seen - before), "updated": len(seen & before), "removed": len(gone)}


def replicate_config(
    crm: Engine, source_company: str, target_companies: Sequence[str], message_types: Sequence[str] | None = None
) -> dict[str, Any]:
    """Copy one company's message configurations to others ("Replicar dados"), in one transaction.

    A target's configuration of the same message type is overwritten (template, chip, active, fields);
    the others are added. Unknown company codes fail before anything is written.
    """
    from sqlalchemy.dialects import postgresql, sqlite

    codes = company_codes(crm)
    unknown = [c for c in [source_company, *target_companies] if c not in codes]
    if unknown:
        raise ValueError(f"unknown company code(s): {', '.join(unknown)}; known: {', '.join(sorted(codes))}")
    targets = [c for c in dict.fromkeys(target_companies) if c != source_company]
    if not targets:
        raise ValueError("replicate_to names no company other than the source")
    stmt = select(whatsapp_config).where(whatsapp_config.c.company_id == codes[source_company]["id"])
    if message_types:
        stmt = stmt.where(whatsapp_config.c.message_type.in_(list(message_types)))
    insert = postgresql.insert if crm.dialect.name == "postgresql" else sqlite.insert
    now = ledger.utcnow()
    with write_transaction(crm) as conn:
        source = [dict(r) for r in conn.execute(stmt.order_by(whatsapp_config.c.message_type)).mappings()]
        if not source:
            raise ValueError(f"company {source_company} has no configuration to replicate")
        rows = [
            {
                "company_id": codes[t]["id"],
                "message_type": s["message_type"],
                "template_name": s["template_name"],
                "chip": s["chip"],
                "active": s["active"],
                "parameter_fields": s["parameter_fields"],
                "created_at": now,
                "updated_at": now,
            }
            for t in targets
            for s in source
        ]
        up = insert(whatsapp_config)
        ex = up.excluded
        up = up.on_conflict_do_update(
            index_elements=["company_id", "message_type"],
            set_={"template_name": ex.template_name, "chip": ex.chip, "active": ex.active,
                  "parameter_fields": ex.parameter_fields, "updated_at": ex.updated_at},
        )  # fmt: skip
        conn.execute(up, rows)
    return {
        "source": source_company,
        "targets": targets,
        "message_types": [s["message_type"] for s in source],
        "written": len(rows),
    }


# --------------------------------------------------------------------------------------------------
# Contact sync
# --------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    items: list[ledger.Planned]
    summary: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)


def contact_candidates(crm: Engine, phone_type: str, since: dt.datetime | None) -> list[int]:
    """Accounts with a phone of the mobile type; with `since`, only those created or whose mobile changed after it."""
    has_mobile = and_(phone.c.account_id == account.c.id, phone.c.phone_type == phone_type)
    cond = exists().where(has_mobile)
    if since is not None:
        changed = exists().where(has_mobile, or_(phone.c.updated_at > since, phone.c.created_at > since))
        cond = and_(cond, or_(account.c.created_at > since, changed))
    with crm.connect() as conn:
        return list(conn.execute(select(account.c.id).where(cond).order_by(account.c.id)).scalars())


def contact_key(account_id: int) -> str:
    return f"account {account_id} / contact"


def plan_contacts(
    crm: Engine, settings: WhatsAppSettings, *, since: dt.datetime | None, test_phone: str | None = None
) -> Plan:
    """Who must be created in RD Conversas (never sent yet) or updated (number changed since it was sent)."""
    ids = contact_candidates(crm, settings.mobile_phone_type, since)
    people = recipients(crm, settings, account_ids=ids)
    items: list[ledger.Planned] = []
    counts = {"create": 0, "update": 0, "up_to_date": 0, "invalid_number": 0}
    for account_id in ids:
        r = people[account_id]
        common = {"recipient": f"account:{account_id}", "account_id": account_id, "company_id": r.company_id}
        if r.phone is None:
            counts["invalid_number"] += 1
            key = contact_key(account_id) if r.contact_id is None else _update_key(r)
            items.append(ledger.Planned(business_key=key, state="skipped", reason="invalid mobile number", **common))
            continue
        target = test_phone or r.phone
        if r.contact_id is None:
            counts["create"] += 1
            payload = {"kind": "contact_create", "name": r.name, "phone": target, "reference": f"account:{account_id}"}
            items.append(ledger.Planned(business_key=contact_key(account_id), payload=payload, **common))
        elif r.contact_phone != r.phone:
            counts["update"] += 1
            payload = {"kind": "contact_update", "contact_id": r.contact_id, "name": r.name, "phone": target,
                       "previous_phone": r.contact_phone}  # fmt: skip
            items.append(ledger.Planned(business_key=_update_key(r), payload=payload, **common))
        else:
            counts["up_to_date"] += 1
    summary = {"mode": "incremental" if since is not None else "batch", "since": since, "candidates": len(ids),
               **counts}  # fmt: skip
    samples = [_contact_sample(it) for it in items if it.payload][:SAMPLES]
    return Plan(items=items, summary=summary, samples=samples)


def _contact_sample(item: ledger.Planned) -> dict[str, Any]:
    """A planned contact call in the run report's sample shape (to, subject, text)."""
    p = item.payload or {}
    target = p.get("contact_id") or p.get("reference")
    return {"to": p.get("phone"), "subject": f"{p.get('kind')}: {target}", "text": f"name: {p.get('name')}"}


def _update_key(r: Recipient) -> str:
    changed = r.phone_changed_at.isoformat(timespec="seconds") if r.phone_changed_at else "-"
    return f"account {r.account_id} / phone {r.phone or r.raw_phone} @ {changed}"


# --------------------------------------------------------------------------------------------------
# Due-bill notices (process 103)
# --------------------------------------------------------------------------------------------------
def due_receivables(erp: Engine, due_date: dt.date, codes: Sequence[str]) -> pd.DataFrame:
    from crm.sources import read_frame

    return read_frame(erp, "erp/whatsapp_due_receivables", {"due_date": due_date, "company_codes": list(codes)})


def due_fields(rec: Any, r: Recipient, company_row: Mapping[str, Any], days: int) -> dict[str, Any]:
    """What a due notice's configured field list may name. Values are data, formatted for the reader."""
    from crm.notify.pdf import currency_of, money, pdf_date

    locale = r.locale or company_row.get("locale") or "pt_BR"
    currency = currency_of(company_row.get("locale") or locale)
    due = pd.Timestamp(rec.due_date).date()
    open_amount = round(float(rec.amount) - float(rec.paid_amount), 2)
    return {
        "customer_name": r.name,
        "first_name": r.first_name,
        "short_name": r.short_name or "",
        "document_number": rec.document_number,
        "amount": money(open_amount, currency, locale),
        "original_amount": money(float(rec.amount), currency, locale),
        "due_date": pdf_date(due, locale),
        "days_before_due": days,
        "digitable_line": rec.digitable_line if isinstance(rec.digitable_line, str) else None,
        "pix_code": rec.pix_code if isinstance(rec.pix_code, str) else None,
        "company_name": company_row.get("name"),
    }


def due_key(receivable_id: int, due: dt.date) -> str:
    return f"receivable {receivable_id} / due {due.isoformat()}"


def plan_due_notices(
    crm: Engine,
    erp: Engine,
    settings: WhatsAppSettings,
    business_date: dt.date,
    company_group: Sequence[str],
    *,
    days_before_due: int,
    test_phone: str | None = None,
) -> dict[str, Plan]:
    """Per company of the group: one planned notice per receivable due on business date + days."""
    due = rules.due_date_for(business_date, days_before_due)
    configs = active_configs(crm, rules.DUE_TYPES)
    companies = company_codes(crm)
    frame = due_receivables(erp, due, list(company_group))
    people = recipients(crm, settings, customer_codes=frame["customer_code"].tolist()) if len(frame) else {}
    plans: dict[str, Plan] = {}
    for code in company_group:
        items: list[ledger.Planned] = []
        samples: list[dict[str, Any]] = []
        counts = {"receivables": 0, "not_a_notice": 0, "no_configuration": 0}
        for rec in frame[frame["company_code"] == code].itertuples(index=False):
            counts["receivables"] += 1
            mtype = rules.message_type_of(rec.payment_method, rec.status)
            if mtype is None:
                counts["not_a_notice"] += 1  # e.g. a PIX carnê installment still open, an 'other' bill
                continue
            cfg = configs.get((code, mtype))
            if cfg is None:
                counts["no_configuration"] += 1
                continue
            key = due_key(int(rec.receivable_id), due)
            r = people.get(int(rec.customer_code))
            extra = {"receivable_id": int(rec.receivable_id), "customer_code": int(rec.customer_code)}
            company_row = companies.get(code, {})
            item = _notice(cfg, r, key, f"customer:{int(rec.customer_code)}", test_phone, extra, settings,
                           lambda r=r, rec=rec, c=company_row: due_fields(rec, r, c, days_before_due))  # fmt: skip
            items.append(item)
            if item.payload and len(samples) < SAMPLES:
                samples.append(_sample(item))
        plans[code] = Plan(items=items, summary={"due_date": due, **counts, "planned": len(items)}, samples=samples)
    return plans


def _notice(
    cfg: MessageConfig,
    r: Recipient | None,
    key: str,
    unknown_recipient: str,
    test_phone: str | None,
    extra: Mapping[str, Any],
    settings: WhatsAppSettings,
    fields: Any,
) -> ledger.Planned:
    """One planned notice: pending with its payload, skipped (customer cannot receive it) or failed (config)."""
    if r is None:
        return ledger.Planned(recipient=unknown_recipient, business_key=key, company_id=cfg.company_id,
                              state="skipped", reason="customer not in the CRM")  # fmt: skip
    common = {"recipient": f"account:{r.account_id}", "business_key": key, "account_id": r.account_id,
              "company_id": cfg.company_id}  # fmt: skip
    reason = r.skip_reason()
    if reason:
        return ledger.Planned(state="skipped", reason=reason, **common)
    try:
        if cfg.problem:
            raise rules.ParameterError(cfg.problem)
        chip = cfg.chip or settings.chip
        if not chip:
            raise rules.ParameterError("no chip: neither the configuration nor the rd_conversas connection names one")
        params = rules.template_parameters(cfg.fields, fields())
    except rules.ParameterError as exc:
        return ledger.Planned(state="failed", error=f"{cfg.company_code} {cfg.message_type}: {exc}", **common)
    payload = message_payload(
        to=test_phone or r.phone,
        template=cfg.template,
        language=cfg.language,
        parameters=params,
        chip=chip,
        contact_id=None if test_phone else r.contact_id,
        message_type=cfg.message_type,
        **extra,
    )
    return ledger.Planned(payload=payload, **common)


def _sample(item: ledger.Planned) -> dict[str, Any]:
    p = item.payload or {}
    return {"to": p.get("to"), "subject": f"{p.get('message_type')}: {p.get('template')}",
            "text": " | ".join(p.get("parameters") or [])}  # fmt: skip


def due_companies(crm: Engine, requested: Sequence[str] | None) -> list[str]:
    """The companies of a run: those asked for, else every company with an active due configuration."""
    codes = company_codes(crm)
    if requested:
        unknown = [c for c in requested if c not in codes]
        if unknown:
            raise ValueError(f"unknown company code(s): {', '.join(unknown)}; known: {', '.join(sorted(codes))}")
        return list(dict.fromkeys(requested))
    return sorted({code for code, _ in active_configs(crm, rules.DUE_TYPES)})


def company_groups(codes: Sequence[str], group: bool) -> list[list[str]]:
    """One processing per company (mapped tasks), or one for all (IN_AGRUPAFILTROEMP)."""
    if not codes:
        return []
    return [list(codes)] if group else [[c] for c in codes]


# --------------------------------------------------------------------------------------------------
# Order-stage notices
# --------------------------------------------------------------------------------------------------
def stage_events(erp: Engine, since: dt.datetime, until: dt.datetime) -> pd.DataFrame:
    from crm.sources import read_frame

    return read_frame(erp, "erp/whatsapp_order_stage_events", {"since": since, "until": until})


def order_fields(ev: Any, r: Recipient, company_row: Mapping[str, Any]) -> dict[str, Any]:
    """What an order-stage notice's configured field list may name."""
    from crm.notify.pdf import currency_of, money, pdf_date

    locale = r.locale or company_row.get("locale") or "pt_BR"
    return {
        "customer_name": r.name,
        "first_name": r.first_name,
        "short_name": r.short_name or "",
        "order_number": ev.order_number,
        "stage": ev.stage,
        "stage_date": pdf_date(pd.Timestamp(ev.occurred_at).date(), locale),
        "order_total": money(float(ev.total_value), currency_of(company_row.get("locale") or locale), locale),
        "carrier": ev.carrier if isinstance(ev.carrier, str) else None,
        "invoice_number": ev.invoice_number if isinstance(ev.invoice_number, str) else None,
        "company_name": company_row.get("name"),
    }


def order_key(order_id: int, stage: str) -> str:
    return f"order {order_id} / {stage}"


def plan_order_stages(
    crm: Engine,
    erp: Engine,
    settings: WhatsAppSettings,
    since: dt.datetime,
    until: dt.datetime,
    *,
    test_phone: str | None = None,
) -> Plan:
    """One notice per order and configured stage reached in (since, until]; other stages are ignored."""
    configs = {k: v for k, v in active_configs(crm).items() if k[1].startswith(rules.ORDER_STAGE_PREFIX)}
    companies = company_codes(crm)
    events = stage_events(erp, since, until)
    people = recipients(crm, settings, customer_codes=events["customer_code"].tolist()) if len(events) else {}
    items: list[ledger.Planned] = []
    samples: list[dict[str, Any]] = []
    seen: set[str] = set()
    not_configured: dict[str, int] = {}
    for ev in events.itertuples(index=False):
        cfg = configs.get((ev.company_code, rules.order_stage_type(ev.stage)))
        if cfg is None:
            not_configured[ev.stage] = not_configured.get(ev.stage, 0) + 1
            continue
        key = order_key(int(ev.order_id), ev.stage)
        if key in seen:  # the ERP recorded the stage twice: one notice
            continue
        seen.add(key)
        r = people.get(int(ev.customer_code))
        extra = {"order_id": int(ev.order_id), "event_id": int(ev.event_id), "stage": ev.stage}
        item = _notice(cfg, r, key, f"customer:{int(ev.customer_code)}", test_phone, extra, settings,
                       lambda r=r, ev=ev: order_fields(ev, r, companies.get(ev.company_code, {})))  # fmt: skip
        items.append(item)
        if item.payload and len(samples) < SAMPLES:
            samples.append(_sample(item))
    summary = {"since": since, "until": until, "events": len(events), "stages_not_configured": not_configured,
               "planned": len(items)}  # fmt: skip
    return Plan(items=items, summary=summary, samples=samples)


def order_window(
    run_time: dt.datetime,
    previous_watermark: dt.datetime | None,
    *,
    since_param: str | None,
    overlap: dt.timedelta,
    first_lookback: dt.timedelta,
) -> tuple[dt.datetime, dt.datetime]:
    """(since, until] of an order-stage run: from the last run's watermark (minus an overlap for late
    events; the ledger keeps them from being sent twice) up to the run's own time; the `since` Param wins."""
    until = naive_utc(run_time)
    if since_param:
        since = naive_utc(dt.datetime.fromisoformat(since_param))
    elif previous_watermark is not None:
        since = previous_watermark - overlap
    else:
        since = until - first_lookback
    if since >= until:
        raise ValueError(f"empty window: since {since} is not before the run's time {until}")
    return since, until


# --------------------------------------------------------------------------------------------------
# Shared by the three DAGs
# --------------------------------------------------------------------------------------------------
def write_plan(crm: Engine, routine: str, plan: Plan, *, run_id: str, business_date: dt.date) -> dict[str, Any]:
    result = ledger.plan(crm, routine, CHANNEL, plan.items, run_id=run_id, business_date=business_date)
    return {"queued": result.queued, "skipped": result.skipped, "failed": result.failed,
            "already_done_by_earlier_runs": result.already_done}  # fmt: skip


def jsonable(value: Any) -> Any:
    """Summaries through XCom: dates and datetimes as ISO strings."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


def noteworthy(crm: Engine, routines: Sequence[str], run_id: str) -> bool:
    """A frequent routine's run worth an e-mail when nobody asked: something failed or is unknown."""
    for routine in routines:
        states = ledger.counts(crm, routine, run_id)["states"]
        if states.get("failed") or states.get("unknown"):
            return True
    return False


def company_breakdown(crm: Engine, routines: Mapping[str, str], run_id: str) -> dict[str, dict[str, Any]]:
    """The report per company: its counts by state and skip reason."""
    out = {}
    for code, routine in routines.items():
        c = ledger.counts(crm, routine, run_id)
        out[code] = {**c["states"], **({"skipped_by_reason": c["skipped_by_reason"]} if c["skipped_by_reason"] else {})}
    return out
