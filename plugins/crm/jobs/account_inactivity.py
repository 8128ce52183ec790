"""crm_account_inactivity (TOTVS CRM crm00356): accounts without movement; optional owner transfer; notifications.

Driven by a `crm_inactivity_profile` (the `profile` Param): the period, which movement counts
(CRM activities, opportunities opened or closed, tickets opened or closed, ERP purchases from
`erp/purchases_since.sql`), whether idle accounts are transferred and to whom, who is notified,
and the e-mail template. Definitions (window, monitored, round-robin): `crm.routines.inactivity`.

One transaction writes the owner changes, their history rows (`crm.jobs.account_changes`) and the
notification ledger rows, so a crash cannot leave transfers without their e-mails. Transfers this
routine already made on the same business date are read back from the history, so a re-run, a
retry or a clear of that date lists the same accounts, moves nothing more and sends nothing twice
(ledger business key `inactivity <profile> / <date>`, one e-mail per notified user).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, and_, or_, select, union

from crm.dag_helpers import EMAIL_RE
from crm.db.crm_schema import account, account_history, activity, inactivity_profile, opportunity, ticket, user
from crm.db.upsert import write_transaction
from crm.jobs.account_changes import apply_changes, diff
from crm.notify import ledger
from crm.notify.dispatch import email_payload
from crm.notify.email import Attachment, HeaderInjection
from crm.notify.report import csv_bytes
from crm.notify.templates import RenderError, Templates
from crm.routines import inactivity
from crm.sources import read_frame

log = logging.getLogger(__name__)

DAG_ID = "crm_account_inactivity"
SAMPLES = 3
LISTING_COLUMNS = [
    "account_id",
    "name",
    "short_name",
    "kind",
    "erp_customer_code",
    "previous_owner_id",
    "previous_owner_name",
    "owner_id",
    "owner_name",
    "transferred",
]


class ProfileNotFound(ValueError):
    """The `profile` Param names no active inactivity profile (retrying cannot help)."""


class ProfileInvalid(ValueError):
    """The profile cannot be run as configured (unknown users, bad JSON, no template)."""


@dataclass(frozen=True)
class Profile:
    id: int
    code: str
    name: str
    period_days: int
    counts: dict[str, bool]
    transfer: bool
    transfer_to: list[int]
    notify: list[int]
    email_template: str


@dataclass
class InactivityPlan:
    profile: Profile
    business_date: dt.date
    window_start: dt.date
    listing: pd.DataFrame
    changes: pd.DataFrame
    items: list[ledger.Planned]
    monitored: int
    samples: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        transferred = self.listing[self.listing["transferred"]]
        return {
            "profile": self.profile.code,
            "period_days": self.profile.period_days,
            "window": f"{self.window_start.isoformat()} .. {self.business_date.isoformat()}",
            "counted_movement": [k for k, v in self.profile.counts.items() if v],
            "accounts_monitored": self.monitored,
            "accounts_inactive": len(self.listing),
            "transfer": self.profile.transfer,
            "owner_changes_this_run": len(self.changes),
            "transferred_on_this_date": len(transferred),
            "transferred_to": {
                str(k): int(v) for k, v in transferred["owner_name"].value_counts().sort_index().items()
            },
            "users_notified": sum(1 for it in self.items if it.state == "pending"),
        }


def _json_ids(value: str | None, what: str, code: str) -> list[int]:
    if value is None or not str(value).strip():
        return []
    try:
        ids = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ProfileInvalid(f"profile {code!r}: {what} is not a JSON list of user ids: {value!r}") from exc
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ProfileInvalid(f"profile {code!r}: {what} is not a JSON list of user ids: {value!r}")
    return list(dict.fromkeys(ids))  # listed order kept, duplicates dropped


def load_profile(crm: Engine | Connection, code: str) -> Profile:
    """The active profile with this code, its user lists checked against crm_user."""
    code = (code or "").strip()
    with _connect(crm) as conn:
        row = conn.execute(select(inactivity_profile).where(inactivity_profile.c.code == code)).mappings().first()
        if row is None or not row["active"]:
            known = conn.execute(
                select(inactivity_profile.c.code).where(inactivity_profile.c.active).order_by(inactivity_profile.c.code)
            ).scalars()
            state = "is inactive" if row is not None else "does not exist"
            raise ProfileNotFound(f"inactivity profile {code!r} {state}; active profiles: {', '.join(known) or 'none'}")
        transfer_to = _json_ids(row["transfer_to_user_ids"], "transfer_to_user_ids", code)
        notify = _json_ids(row["notify_user_ids"], "notify_user_ids", code)
        active_users = set(
            conn.execute(select(user.c.id).where(user.c.id.in_(transfer_to + notify), user.c.active)).scalars()
        )
    if row["transfer"] and not transfer_to:
        raise ProfileInvalid(f"profile {code!r} transfers accounts but lists no owner in transfer_to_user_ids")
    missing = [u for u in transfer_to if u not in active_users]
    if row["transfer"] and missing:
        raise ProfileInvalid(f"profile {code!r}: transfer owner(s) {missing} are not active CRM users")
    return Profile(
        id=row["id"],
        code=row["code"],
        name=row["name"],
        period_days=int(row["period_days"]),
        counts={
            "activities": bool(row["count_activities"]),
            "opportunities": bool(row["count_opportunities"]),
            "tickets": bool(row["count_tickets"]),
            "purchases": bool(row["count_purchases"]),
        },
        transfer=bool(row["transfer"]),
        transfer_to=transfer_to if row["transfer"] else [],
        notify=notify,
        email_template=row["email_template"],
    )


def moved_accounts(
    crm: Engine | Connection,
    erp: Engine | None,
    profile: Profile,
    window_start: dt.date,
    business_date: dt.date,
    *,
    timezone: str,
) -> set[int]:
    """Accounts with a counted movement in the window: its days in `timezone`, both ends included.

    CRM timestamps are naive UTC, so the bounds are the window's local midnights in UTC
    (`inactivity.window_instants`); ERP purchases are dated, compared by their date.
    """
    lo, hi = inactivity.window_instants(window_start, business_date, timezone)

    def within(col: Any) -> Any:
        return and_(col >= lo, col < hi)

    parts = []
    if profile.counts["activities"]:
        parts.append(select(activity.c.account_id).where(within(activity.c.occurred_at)))
    if profile.counts["opportunities"]:
        o = opportunity.c
        parts.append(select(o.account_id).where(or_(within(o.opened_at), within(o.closed_at))))
    if profile.counts["tickets"]:
        parts.append(select(ticket.c.account_id).where(or_(within(ticket.c.opened_at), within(ticket.c.closed_at))))
    moved: set[int] = set()
    with _connect(crm) as conn:
        if parts:
            moved |= set(conn.execute(union(*parts)).scalars())
        if profile.counts["purchases"] and erp is not None:
            buyers = read_frame(erp, "erp/purchases_since", {"since": window_start, "business_date": business_date})
            codes = buyers["customer_code"].tolist()
            for start in range(0, len(codes), 5000):
                batch = codes[start : start + 5000]
                moved |= set(conn.execute(select(account.c.id).where(account.c.erp_customer_code.in_(batch))).scalars())
    return moved


def _accounts(conn: Connection, timezone: str) -> pd.DataFrame:
    stmt = select(
        account.c.id.label("account_id"),
        account.c.name,
        account.c.short_name,
        account.c.kind,
        account.c.erp_customer_code,
        account.c.owner_id,
        account.c.active,
        account.c.created_at,
    ).order_by(account.c.id)
    frame = pd.DataFrame(conn.execute(stmt).all(), columns=list(stmt.selected_columns.keys()))
    frame["created_on"] = inactivity.local_dates(frame["created_at"], timezone)
    frame["owner_id"] = frame["owner_id"].astype("Int64")
    frame["erp_customer_code"] = frame["erp_customer_code"].astype("Int64")
    return frame.drop(columns="created_at")


def _earlier_transfers(conn: Connection, business_date: dt.date) -> pd.DataFrame:
    """Owner changes this routine already made on this business date (a re-run or retry lists them again)."""
    h = account_history.c
    stmt = (
        select(h.account_id, h.old_value, h.new_value)
        .where(h.routine == DAG_ID, h.field == "owner_id", h.business_date == business_date)
        .order_by(h.id)
    )
    rows = pd.DataFrame(conn.execute(stmt).all(), columns=["account_id", "old_value", "new_value"])
    return rows.drop_duplicates("account_id", keep="first").set_index("account_id")


def _users(conn: Connection) -> pd.DataFrame:
    stmt = select(user.c.id, user.c.name, user.c.email, user.c.locale, user.c.is_supervisor, user.c.active)
    return pd.DataFrame(conn.execute(stmt).all(), columns=list(stmt.selected_columns.keys())).set_index("id")


def build_listing(
    crm: Engine | Connection, erp: Engine | None, profile: Profile, business_date: dt.date, *, timezone: str
) -> tuple[pd.DataFrame, pd.DataFrame, int, pd.DataFrame]:
    """(listing of the inactive accounts, owner changes to make, accounts monitored, users); days in `timezone`."""
    window_start, _ = inactivity.window(business_date, profile.period_days)
    moved = moved_accounts(crm, erp, profile, window_start, business_date, timezone=timezone)
    with _connect(crm) as conn:
        accounts = _accounts(conn, timezone)
        earlier = _earlier_transfers(conn, business_date)
        users = _users(conn)
    created = pd.to_datetime(accounts["created_on"])
    monitored = int((accounts["active"].astype(bool) & (created <= pd.Timestamp(window_start))).sum())
    idle = inactivity.inactive_accounts(accounts, moved, window_start)
    new_owner = inactivity.assign_owners(idle, profile.transfer_to) if profile.transfer else None
    listing = idle[["account_id", "name", "short_name", "kind", "erp_customer_code"]].copy()
    listing["previous_owner_id"] = idle["owner_id"]
    listing["owner_id"] = idle["owner_id"]
    listing["transferred"] = False
    if new_owner is not None:
        moving = new_owner.notna()
        listing.loc[moving, "owner_id"] = new_owner[moving]
        listing.loc[moving, "transferred"] = True
    changes = diff(
        idle.set_index("account_id")[["owner_id"]],
        listing.set_index("account_id")[["owner_id"]],
        ["owner_id"],
    )
    # Accounts this routine moved earlier on this date: shown as transferred, from their previous owner.
    for i in listing.index[listing["account_id"].isin(earlier.index) & ~listing["transferred"]]:
        before = earlier.loc[listing.at[i, "account_id"]]
        if _as_int(before["new_value"]) == _as_int(listing.at[i, "owner_id"]):
            listing.at[i, "previous_owner_id"] = _as_int(before["old_value"])
            listing.at[i, "transferred"] = True
    names = users["name"]
    listing["previous_owner_name"] = listing["previous_owner_id"].map(lambda u: names.get(u) if pd.notna(u) else None)
    listing["owner_name"] = listing["owner_id"].map(lambda u: names.get(u) if pd.notna(u) else None)
    return listing[LISTING_COLUMNS].reset_index(drop=True), changes, monitored, users


def plan(
    crm: Engine,
    erp: Engine | None,
    business_date: dt.date,
    profile_code: str,
    *,
    sender: str,
    timezone: str,
    test_recipient: str | None = None,
    templates: Templates | None = None,
) -> InactivityPlan:
    """Everything the run would do (changes, e-mails), computed and rendered; nothing written.

    `timezone`: the routine's (routines.yaml), whose days the window counts (the business date's zone).
    """
    templates = templates or Templates("email")
    profile = load_profile(crm, profile_code)
    window_start, _ = inactivity.window(business_date, profile.period_days)
    listing, changes, monitored, users = build_listing(crm, erp, profile, business_date, timezone=timezone)
    notified = users.loc[[u for u in profile.notify if u in users.index]]
    templates.check(profile.email_template, sorted({loc or "" for loc in notified["locale"]}))
    key = business_key(profile.code, business_date)
    items: list[ledger.Planned] = []
    samples: list[dict[str, Any]] = []
    for uid in profile.notify:
        if uid not in users.index:
            items.append(
                ledger.Planned(recipient=f"user {uid}", business_key=key, state="skipped", reason="unknown user")
            )
            continue
        u = users.loc[uid]
        email = "" if _isna(u["email"]) else str(u["email"]).strip()
        recipient = email.lower() or f"user {uid}"
        reason = _skip_reason(u, email)
        mine = inactivity.accounts_for(listing, uid, bool(u["is_supervisor"]))
        if reason is None and mine.empty:
            reason = "no accounts concerned"
        if reason:
            items.append(ledger.Planned(recipient=recipient, business_key=key, state="skipped", reason=reason))
            continue
        fields = email_fields(profile, business_date, window_start, u, mine, total=len(listing))
        try:
            rendered = templates.render_email(profile.email_template, fields, u["locale"])
            payload = email_payload(
                sender=sender,
                sender_name="CRM",
                to=[email],
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                message_id=f"<inactivity.{profile.code.lower()}.{uid}.{business_date.isoformat()}@{sender.rpartition('@')[2]}>",
                test_recipient=test_recipient,
                headers={"X-CRM-Routine": DAG_ID, "X-CRM-Business-Key": key},
            )
        except (RenderError, HeaderInjection, ValueError) as exc:
            items.append(ledger.Planned(recipient=recipient, business_key=key, state="failed", error=str(exc)))
            continue
        csv_name = f"inactive-accounts-{profile.code}-{business_date.isoformat()}.csv"
        payload["attachments"] = [
            {
                "filename": csv_name,
                "mime_type": "text/csv",
                "base64": base64.b64encode(csv_bytes(_csv_rows(mine), LISTING_COLUMNS)).decode("ascii"),
            }
        ]
        items.append(ledger.Planned(recipient=recipient, business_key=key, payload=payload))
        if len(samples) < SAMPLES:
            samples.append({"to": ", ".join(payload["to"]), "subject": payload["subject"], "text": payload["text"]})
    return InactivityPlan(
        profile=profile,
        business_date=business_date,
        window_start=window_start,
        listing=listing,
        changes=changes,
        items=items,
        monitored=monitored,
        samples=samples,
    )


def apply(
    crm: Engine,
    result: InactivityPlan,
    *,
    routine: str,
    run_id: str,
    changed_at: dt.datetime,
) -> dict[str, Any]:
    """Owner changes, their history and the ledger rows: one transaction, all or nothing."""
    with write_transaction(crm) as conn:
        counts = apply_changes(
            conn,
            result.changes,
            routine=DAG_ID,
            run_id=run_id,
            business_date=result.business_date,
            changed_at=changed_at,
        )
        planned = ledger.plan(conn, routine, "email", result.items, run_id=run_id, business_date=result.business_date)
    return {
        "owners_changed": counts.get("owner_id", 0),
        "queued": planned.queued,
        "already_done_by_earlier_runs": planned.already_done,
    }


def business_key(profile_code: str, business_date: dt.date) -> str:
    return f"inactivity {profile_code} / {business_date.isoformat()}"


def attachments_of(row: ledger.Claimed) -> list[Attachment]:
    """The CSV planned with the message (kept in the ledger payload, so a retry sends the same file)."""
    return [
        Attachment(a["filename"], base64.b64decode(a["base64"]), a.get("mime_type"))
        for a in row.payload.get("attachments") or []
    ]


def email_fields(
    profile: Profile,
    business_date: dt.date,
    window_start: dt.date,
    u: Mapping[str, Any],
    accounts: pd.DataFrame,
    *,
    total: int,
) -> dict[str, Any]:
    """What an inactivity template may use. Values are data: never evaluated as templates."""
    rows = _csv_rows(accounts)
    return {
        "user_name": u["name"],
        "is_supervisor": bool(u["is_supervisor"]),
        "profile_code": profile.code,
        "profile_name": profile.name,
        "period_days": profile.period_days,
        "window_start": window_start,
        "business_date": business_date,
        "transfer": profile.transfer,
        "accounts": rows,
        "count": len(rows),
        "transferred_count": sum(1 for r in rows if r["transferred"]),
        "total_inactive": total,
    }


def _csv_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for r in frame.to_dict("records"):
        out.append({k: (None if _isna(v) else (int(v) if k.endswith("_id") or k == "erp_customer_code" else v))
                    for k, v in r.items()})  # fmt: skip
        out[-1]["transferred"] = bool(r["transferred"])
    return out


def _as_int(v: Any) -> int | None:
    if _isna(v) or v == "":
        return None
    return int(v)


def _isna(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _skip_reason(u: Mapping[str, Any], email: str) -> str | None:
    if not u["active"]:
        return "inactive user"
    if not email:
        return "no e-mail address"
    if not EMAIL_RE.match(email) or not email.isascii():
        return "invalid e-mail address"
    return None


def _connect(db: Engine | Connection) -> Any:
    from contextlib import nullcontext

    return db.connect() if isinstance(db, Engine) else nullcontext(db)


def default_sender(smtp_conn_id: str = "smtp_default") -> str:
    """Internal notices go out from the SMTP connection's `from_email` (read without connecting)."""
    from airflow.sdk import BaseHook

    from crm.notify.report import FALLBACK_SENDER

    try:
        extra = BaseHook.get_connection(smtp_conn_id).extra_dejson or {}
    except Exception:  # no such connection: the report step will say so; the plan can still render
        extra = {}
    return str(extra.get("from_email") or FALLBACK_SENDER)


def report_attachment(staged: str, profile_code: str) -> Attachment:
    """The run report's CSV of every inactive account (with old and new owner), from the staged listing."""
    from airflow.sdk import ObjectStoragePath

    with ObjectStoragePath(staged).open("rb") as f:
        listing = pd.read_parquet(f)
    name = f"{DAG_ID}-{profile_code}-inactive-accounts.csv"
    return Attachment(name, csv_bytes(_csv_rows(listing), LISTING_COLUMNS), "text/csv")
