"""crm_task_reminders (Comarch ERP Optima's reminder automaton): plan e-mail/SMS reminders before tasks.

Every 15 minutes a run looks at the reminders whose send time (occurrence start minus offset) fell
in its window (`crm.routines.reminders.Window`: since the previous successful run's end, with
catch-up within the grace period and older ones reported missed) and writes one ledger row per
reminder: task, occurrence start and side in the business key, the channel in its own column, so
each occurrence of a recurring task is reminded once per side and channel, whatever the re-runs.

Who and how, per company (`crm_reminder_settings`, only companies with reminders enabled):
- customers get reminders at the task's account (its e-mail, or its first mobile phone, primary
  first); operators at the task's operator (`crm_user.email` / `mobile_phone`);
- channel, offset and template come from the task, else from the company's defaults for that side
  when they are enabled (SMS is the default channel);
- only open tasks: completed or cancelled ones get none; an address that is missing, invalid or
  opted out gives a skipped row with the reason, as does a side the task has no settings for;
- e-mails go out from the company's reminder account (`sender_email`) with Reply-To the operator
  on whose behalf reminders are sent; SMS from the gateway's configured sender id, else the
  company's phone number.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Engine, and_, func, literal, or_, select, union_all

from crm.dag_helpers import EMAIL_RE
from crm.db.crm_schema import account, company, notification, phone, reminder_settings, routine_run, task, user
from crm.notify import ledger
from crm.notify.dispatch import Sender, email_payload
from crm.notify.email import HeaderInjection
from crm.notify.sms import SmsTooLong, normalise_phone, sms_payload
from crm.notify.templates import RenderError, TemplateProblem, Templates, render
from crm.routines.reminders import Due, SideSettings, Window, business_key, iter_due, to_local

log = logging.getLogger(__name__)

ROUTINE = "crm_task_reminders"
MISSED = "missed"
SAMPLES = 3
DEFAULT_MAX_SEGMENTS = 4
_CHUNK = 900
_DATE_FORMATS = {"pt": "%d/%m/%Y", "pl": "%d.%m.%Y", "ro": "%d.%m.%Y", "es": "%d/%m/%Y"}


def latest_window_end(crm: Engine, dag_id: str = ROUTINE) -> dt.datetime | None:
    """The furthest window end a successful real run covered (`crm_routine_run.watermark`), as UTC."""
    stmt = select(func.max(routine_run.c.watermark)).where(
        routine_run.c.dag_id == dag_id, routine_run.c.status == "success"
    )
    with crm.connect() as conn:
        value = conn.execute(stmt).scalar()
    if value is None:
        return None
    value = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return value.replace(tzinfo=dt.UTC)


def companies(crm: Engine) -> dict[int, dict[str, Any]]:
    """Reminder settings of active companies with reminders enabled, with the company and the sending operator."""
    sender = user.alias("sender")
    stmt = (
        select(
            reminder_settings,
            company.c.name.label("company_name"),
            company.c.email.label("company_email"),
            company.c.phone.label("company_phone"),
            company.c.timezone,
            company.c.locale.label("company_locale"),
            sender.c.name.label("sender_name"),
            sender.c.email.label("sender_user_email"),
        )
        .join(company, company.c.id == reminder_settings.c.company_id)
        .outerjoin(sender, sender.c.id == reminder_settings.c.sender_user_id)
        .where(reminder_settings.c.enabled == literal(True), company.c.active == literal(True))
    )
    with crm.connect() as conn:
        return {r["company_id"]: dict(r) for r in conn.execute(stmt).mappings()}


def max_offset_minutes(crm: Engine) -> int:
    """The largest offset any task or company default uses: how far ahead of the window tasks must be read."""
    cols = [task.c.customer_offset_minutes, task.c.operator_offset_minutes]
    defaults = [
        reminder_settings.c[f"{side}_{ch}_offset_minutes"]
        for side in ("customer", "operator")
        for ch in ("sms", "email")
    ]
    parts = [select(func.max(c).label("m")) for c in cols] + [
        select(func.max(c).label("m")).select_from(reminder_settings) for c in defaults
    ]
    sub = union_all(*parts).subquery()
    with crm.connect() as conn:
        return int(conn.execute(select(func.max(sub.c.m))).scalar() or 0)


def open_tasks(crm: Engine, company_ids: Iterable[int], lo: dt.datetime, hi: dt.datetime) -> list[dict[str, Any]]:
    """Open tasks of these companies that may have an occurrence between lo and hi (naive, local-ish bounds)."""
    operator = user.alias("operator")
    stmt = (
        select(
            task,
            account.c.name.label("account_name"),
            account.c.short_name.label("account_short_name"),
            account.c.email.label("account_email"),
            account.c.locale.label("account_locale"),
            account.c.active.label("account_active"),
            account.c.opt_out_email,
            account.c.opt_out_sms,
            operator.c.name.label("operator_name"),
            operator.c.email.label("operator_email"),
            operator.c.mobile_phone.label("operator_mobile"),
            operator.c.locale.label("operator_locale"),
            operator.c.active.label("operator_active"),
        )
        .outerjoin(account, account.c.id == task.c.account_id)
        .outerjoin(operator, operator.c.id == task.c.operator_id)
        .where(
            task.c.status == "open",
            task.c.company_id.in_(list(company_ids)),
            or_(
                and_(task.c.recurrence_freq.is_(None), task.c.starts_at >= lo, task.c.starts_at <= hi),
                and_(
                    task.c.recurrence_freq.is_not(None),
                    task.c.starts_at <= hi,
                    or_(task.c.recurrence_until.is_(None), task.c.recurrence_until >= lo),
                ),
            ),
        )
        .order_by(task.c.id)
    )
    with crm.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


def mobile_phones(crm: Engine, account_ids: Iterable[int]) -> dict[int, str]:
    """Each account's mobile number: the primary one first, then the oldest."""
    ids = sorted(set(account_ids))
    out: dict[int, str] = {}
    with crm.connect() as conn:
        for start in range(0, len(ids), _CHUNK):
            rows = conn.execute(
                select(phone.c.account_id, phone.c.number)
                .where(phone.c.account_id.in_(ids[start : start + _CHUNK]), phone.c.phone_type == "mobile")
                .order_by(phone.c.account_id, phone.c.is_primary.desc(), phone.c.id)
            ).all()
            for account_id, number in rows:
                out.setdefault(account_id, number)
    return out


def settled(crm: Engine, routine: str, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """(channel, business key) pairs an earlier run already decided: anything but pending or a retryable failure."""
    wanted = sorted(set(keys))
    by_key: dict[str, set[str]] = {}
    for channel, key in wanted:
        by_key.setdefault(key, set()).add(channel)
    keys_only = sorted(by_key)
    out: set[tuple[str, str]] = set()
    N = notification
    open_states = or_(N.c.state == "pending", and_(N.c.state == "failed", N.c.retryable == literal(True)))
    with crm.connect() as conn:
        for start in range(0, len(keys_only), _CHUNK):
            rows = conn.execute(
                select(N.c.channel, N.c.business_key).where(
                    N.c.routine == routine, N.c.business_key.in_(keys_only[start : start + _CHUNK]), ~open_states
                )
            ).all()
            out.update((c, k) for c, k in rows if c in by_key.get(k, ()))
    return out


@dataclass
class ReminderPlan:
    """What a run would send: ledger items per channel, with counts and a few sample renders."""

    window: Window
    items: dict[str, list[ledger.Planned]] = field(default_factory=lambda: {"email": [], "sms": []})
    kinds: dict[str, int] = field(default_factory=lambda: {"due": 0, "catch_up": 0, "missed": 0})
    samples: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    tasks_read: int = 0

    def summary(self, result: Mapping[str, ledger.PlanResult] | None = None) -> dict[str, Any]:
        sms = [it.payload for it in self.items["sms"] if it.state == "pending" and it.payload]
        by_encoding: dict[str, int] = {}
        for p in sms:
            by_encoding[p["encoding"]] = by_encoding.get(p["encoding"], 0) + 1
        out: dict[str, Any] = {
            "window": {
                "from": self.window.scan_from.isoformat(),
                "to": self.window.end.isoformat(),
                "previous_run_end": self.window.since.isoformat() if self.window.since else None,
                "grace_hours": self.window.grace.total_seconds() / 3600,
            },
            "tasks_read": self.tasks_read,
            "reminders_due": self.kinds["due"],
            "reminders_caught_up": self.kinds["catch_up"],
            "reminders_missed": self.kinds["missed"],
            "sms_planned": {"messages": len(sms), "segments": sum(p["segments"] for p in sms), **by_encoding},
        }
        if self.problems:
            out["problems"] = self.problems
        if result is not None:
            out["already_done_by_earlier_runs"] = sum(r.already_done for r in result.values())
        return out


@dataclass(frozen=True)
class Options:
    """Run-time choices of one run (Params, routines.yaml, the SMTP connection's default sender)."""

    routine: str = ROUTINE
    test_recipient: str | None = None
    test_phone: str | None = None
    default_sender: str | None = None
    max_segments: int = DEFAULT_MAX_SEGMENTS


def plan_reminders(
    crm: Engine,
    window: Window,
    options: Options | None = None,
    *,
    email_templates: Templates | None = None,
    sms_templates: Templates | None = None,
) -> ReminderPlan:
    """Every reminder of this window, rendered, or skipped/failed with the reason. Touches no ledger."""
    options = options or Options()
    email_templates = email_templates or Templates("email")
    sms_templates = sms_templates or Templates("sms")
    plan = ReminderPlan(window)
    settings = companies(crm)
    if not settings:
        return plan
    margin = dt.timedelta(days=1)
    lo = window.scan_from.replace(tzinfo=None) - margin
    hi = window.end.replace(tzinfo=None) + dt.timedelta(minutes=max_offset_minutes(crm)) + margin
    tasks = open_tasks(crm, settings, lo, hi)
    plan.tasks_read = len(tasks)
    zones: dict[int, ZoneInfo] = {}
    for cid, s in settings.items():
        try:
            zones[cid] = ZoneInfo(s["timezone"])
        except (ZoneInfoNotFoundError, ValueError):
            plan.problems.append(f"company {cid}: unknown timezone {s['timezone']!r}; its tasks were not reminded")
    found: list[tuple[dict[str, Any], str, SideSettings, Due, str]] = []
    for t in tasks:
        tz = zones.get(t["company_id"])
        if tz is None:
            continue
        try:
            found += [(t, *hit) for hit in iter_due(t, settings[t["company_id"]], tz, window)]
        except ValueError as exc:  # a malformed recurrence or recipients mode: that task only
            plan.problems.append(f"task {t['id']}: {exc}")
    phones = mobile_phones(crm, [t["account_id"] for t, *_ in found if t["account_id"]])
    keyed = [
        (t, side, s, due, kind, business_key(t["id"], due.occurrence, zones[t["company_id"]], side))
        for t, side, s, due, kind in found
    ]
    done = settled(
        crm, options.routine, [(s.channel or "email", key) for _, _, s, _, kind, key in keyed if kind == "catch_up"]
    )
    for t, side, s, due, kind, key in keyed:
        channel = s.channel or "email"
        if kind == "catch_up" and (channel, key) in done:
            continue
        company_settings = settings[t["company_id"]]
        item = _plan_one(
            t,
            side,
            s,
            due,
            kind,
            key,
            company_settings,
            zones[t["company_id"]],
            phones,
            options,
            window,
            email_templates,
            sms_templates,
        )
        # a reminder too old to send but unsendable anyway (no phone, ...) is counted by that reason, not as missed
        plan.kinds["due" if kind == MISSED and item.reason != MISSED else kind] += 1
        plan.items[channel].append(item)
        if item.state == "pending" and len(plan.samples) < SAMPLES and item.payload:
            p = item.payload
            plan.samples.append(
                {"to": _to(p), "subject": p.get("subject") or f"SMS ({p.get('segments')} seg.)", "text": p["text"]}
            )
    return plan


def _to(payload: Mapping[str, Any]) -> str:
    to = payload.get("to")
    return ", ".join(to) if isinstance(to, list) else str(to)


def _plan_one(
    t: Mapping[str, Any],
    side: str,
    s: SideSettings,
    due: Due,
    kind: str,
    key: str,
    company_settings: Mapping[str, Any],
    tz: ZoneInfo,
    phones: Mapping[int, str],
    options: Options,
    window: Window,
    email_templates: Templates,
    sms_templates: Templates,
) -> ledger.Planned:
    common = {"business_key": key, "account_id": t["account_id"], "company_id": t["company_id"]}
    if s.problem:
        return ledger.Planned(recipient="", state="skipped", reason=s.problem, **common)
    channel = s.channel or "email"
    recipient, reason = _address(t, side, channel, phones)
    if reason:
        return ledger.Planned(recipient=recipient, state="skipped", reason=reason, **common)
    if kind == "missed":
        when = to_local(due.send_at, tz).isoformat(sep=" ", timespec="minutes")
        grace = window.grace.total_seconds() / 3600
        error = f"due at {when} ({tz.key}), more than the grace period ({grace:g} h) before this run: not sent late"
        return ledger.Planned(recipient=recipient, state="skipped", reason=MISSED, error=error, **common)
    if options.test_recipient is None and options.test_phone is not None and channel == "email":
        return ledger.Planned(recipient=recipient, state="skipped", reason="test run: no test_recipient", **common)
    if options.test_phone is None and options.test_recipient is not None and channel == "sms":
        return ledger.Planned(recipient=recipient, state="skipped", reason="test run: no test_phone", **common)
    locale = (t["account_locale"] if side == "customer" else t["operator_locale"]) or company_settings["company_locale"]
    fields = template_fields(t, side, due, company_settings, locale)
    try:
        if channel == "email":
            payload = _email(
                t, side, due, key, s, fields, locale, company_settings, recipient, options, email_templates
            )
        else:
            template, _ = sms_templates.load(s.template or "", "txt", locale)
            text = render(template, fields).strip()
            sender = normalise_phone(company_settings["company_phone"])
            payload = sms_payload(
                to=recipient, sender=sender, text=text, max_segments=options.max_segments, test_phone=options.test_phone
            )
    except (RenderError, TemplateProblem, HeaderInjection, SmsTooLong, ValueError) as exc:
        return ledger.Planned(recipient=recipient, state="failed", error=str(exc), **common)
    payload["occurrence"] = key
    payload["send_at"] = due.send_at.astimezone(dt.UTC).isoformat()  # the send step re-checks the grace period
    return ledger.Planned(recipient=recipient, payload=payload, **common)


def _email(
    t: Mapping[str, Any],
    side: str,
    due: Due,
    key: str,
    s: SideSettings,
    fields: Mapping[str, Any],
    locale: str | None,
    cs: Mapping[str, Any],
    recipient: str,
    options: Options,
    templates: Templates,
) -> dict[str, Any]:
    rendered = templates.render_email(s.template or "", fields, locale)
    sender = cs["sender_email"] or cs["company_email"] or options.default_sender
    if not sender:
        raise ValueError("no sender: the company has no reminder e-mail account and smtp_default has no from_email")
    stamp = due.starts_at.strftime("%Y%m%dT%H%MZ")
    payload = email_payload(
        sender=sender,
        sender_name=cs["company_name"],
        to=[recipient],
        reply_to=cs["sender_user_email"] or sender,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        message_id=f"<reminder.{t['id']}.{stamp}.{side}@{sender.rpartition('@')[2]}>",
        test_recipient=options.test_recipient,
        headers={"X-CRM-Routine": ROUTINE, "X-CRM-Business-Key": key},
    )
    payload["channel"] = "email"
    return payload


def _address(t: Mapping[str, Any], side: str, channel: str, phones: Mapping[int, str]) -> tuple[str, str | None]:
    """(recipient, skip reason or None) of one side on one channel."""
    if side == "customer":
        if t["account_id"] is None:
            return "", "no account on the task"
        if not t["account_active"]:
            return "", "inactive account"
        raw = t["account_email"] if channel == "email" else phones.get(t["account_id"])
        opted_out = t["opt_out_email"] if channel == "email" else t["opt_out_sms"]
    else:
        if t["operator_id"] is None:
            return "", "no operator on the task"
        if not t["operator_active"]:
            return "", "inactive operator"
        raw = t["operator_email"] if channel == "email" else t["operator_mobile"]
        opted_out = False
    raw = (raw or "").strip()
    if channel == "email":
        if not raw:
            return "", "no e-mail address"
        if opted_out:
            return raw.lower(), "opted out of e-mail"
        if not EMAIL_RE.match(raw) or not raw.isascii():
            return raw.lower(), "invalid e-mail address"
        return raw.lower(), None
    if not raw:
        return "", "no mobile phone"
    number = normalise_phone(raw)
    if opted_out:
        return number or raw, "opted out of SMS"
    if number is None:
        return raw, "mobile phone not in international format"
    return number, None


def template_fields(
    t: Mapping[str, Any], side: str, due: Due, cs: Mapping[str, Any], locale: str | None
) -> dict[str, Any]:
    """What a reminder template may use. Values are data: never evaluated as templates."""
    lang = (locale or "").replace("-", "_").split("_")[0].lower()
    occ = due.occurrence
    start_date = occ.strftime(_DATE_FORMATS.get(lang, "%Y-%m-%d"))
    customer = t.get("account_name") or ""
    short = (t.get("account_short_name") or "").strip()
    operator = t.get("operator_name") or ""
    recipient_name = (short or (customer.split()[0] if customer.split() else "")) if side == "customer" else operator
    return {
        "task_id": t["id"],
        "task_title": t["title"],
        "task_description": t.get("description") or "",
        "start_date": start_date,
        "start_time": occ.strftime("%H:%M"),
        "starts_at": f"{start_date} {occ.strftime('%H:%M')}",
        "timezone": cs["timezone"],
        "recurring": bool(t.get("recurrence_freq")),
        "side": side,
        "recipient_name": recipient_name,
        "customer_name": customer,
        "operator_name": operator,
        "company_name": cs["company_name"],
        "company_phone": cs["company_phone"] or "",
        "company_email": cs["company_email"] or "",
        "sender_name": cs["sender_name"] or cs["company_name"],
        "locale": locale,
    }


def write(
    crm: Engine, plan: ReminderPlan, routine: str, *, run_id: str, business_date: dt.date
) -> dict[str, ledger.PlanResult]:
    """Write the plan's ledger rows, one channel at a time (rows already delivered are left alone)."""
    return {
        channel: ledger.plan(crm, routine, channel, items, run_id=run_id, business_date=business_date)
        for channel, items in plan.items.items()
        if items
    }


def routing_sender(senders: Mapping[str, Callable[[], Sender]], *, cutoff: dt.datetime | None = None) -> Sender:
    """One Sender for a ledger holding several channels: each row goes to its payload's channel.

    The channel senders are built on first use, so a run with only e-mails never opens the SMS
    gateway's session and vice versa. `cutoff` (this run's window end minus the grace period): a
    reminder due at or before it is skipped as missed, never sent late — a row this run did not
    plan (left pending by a run that died, adopted) is checked here, at send time.
    """
    built: dict[str, Sender] = {}

    def send(row: ledger.Claimed, point_of_no_return: Callable[[], None]) -> ledger.Outcome:
        send_at = row.payload.get("send_at")
        if cutoff is not None and send_at and dt.datetime.fromisoformat(send_at) <= cutoff:
            return ledger.Outcome(
                "skipped",
                reason=MISSED,
                error=f"due at {send_at} (UTC), more than the grace period before this run: not sent late",
            )
        channel = row.payload.get("channel", "email")
        if channel not in senders:
            return ledger.Outcome("failed", error=f"no sender for channel {channel!r}")
        if channel not in built:
            built[channel] = senders[channel]()
        return built[channel](row, point_of_no_return)

    return send


def final_counts(crm: Engine, routines: Sequence[str], run_id: str) -> dict[str, int]:
    """Reminders of this run by outcome, with 'missed' apart from the other skips (the report's headline)."""
    out = {"sent": 0, "skipped": 0, "missed": 0, "failed": 0, "unknown": 0, "not_yet_sent": 0}
    for routine in routines:
        c = ledger.counts(crm, routine, run_id)
        states = c["states"]
        missed = c["skipped_by_reason"].get(MISSED, 0)
        out["sent"] += states.get("sent", 0)
        out["missed"] += missed
        out["skipped"] += states.get("skipped", 0) - missed
        out["failed"] += states.get("failed", 0)
        out["unknown"] += states.get("unknown", 0)
        out["not_yet_sent"] += states.get("pending", 0) + states.get("sending", 0)
    return out
