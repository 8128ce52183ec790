"""Steps of crm_account_purchase_profile over real databases: extract + transform, then load.

Plain functions taking engines and values (no Airflow), so the DAG, the tests
and the benchmark all run the same code.

Incremental by default: a run recomputes only the accounts whose ERP purchase
data changed since the previous successful run's watermark (plus accounts
that have no profile yet), and refreshes "days since last purchase" of every
other account with one set-based UPDATE. A run falls back to a full
recomputation when asked (`full_refresh`), when there is no previous run,
when the previous run covered another audience, or when it was for a later
business date (a backfill).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Date, Engine, Integer, cast, func, literal, select, update

from crm.db import upsert, write_transaction
from crm.db.crm_schema import account, account_profile, audience, audience_member
from crm.routines.purchase_profile import PROFILE_FIELDS, ProfileAccumulator
from crm.runs import last_successful_run, naive_utc, record_run
from crm.sources import iter_frames, read_frame

log = logging.getLogger(__name__)

DAG_ID = "crm_account_purchase_profile"


class AudienceNotFound(ValueError):
    """The `audience` Param names no audience of the CRM."""


@dataclass
class ComputeResult:
    profiles: pd.DataFrame
    mode: str
    scope: str
    watermark: dt.datetime | None
    stats: dict[str, Any] = field(default_factory=dict)


def scope_of(audience_code: str | None) -> str:
    return f"audience:{audience_code}" if audience_code else "all"


def accounts_in_scope(crm: Engine | Connection, audience_code: str | None) -> tuple[pd.DataFrame, int]:
    """Accounts with an ERP customer code in scope, and how many in scope lack one (skipped)."""
    stmt = select(account.c.id.label("account_id"), account.c.erp_customer_code)
    if audience_code:
        with _connect(crm) as conn:
            audience_id = conn.execute(select(audience.c.id).where(audience.c.code == audience_code)).scalar()
        if audience_id is None:
            raise AudienceNotFound(f"audience {audience_code!r} does not exist in crm_audience")
        stmt = stmt.join(audience_member, audience_member.c.account_id == account.c.id).where(
            audience_member.c.audience_id == audience_id
        )
    linked_stmt = stmt.where(account.c.erp_customer_code.is_not(None))
    skipped_stmt = select(func.count()).select_from(stmt.where(account.c.erp_customer_code.is_(None)).subquery())
    with _connect(crm) as conn:
        skipped = conn.execute(skipped_stmt).scalar_one()
        # Plain driver tuples straight into one int64 array: a DataFrame built from a million Row
        # objects goes through pandas' per-object slow path (seconds per million rows).
        rows = conn.execute(linked_stmt).cursor.fetchall()
    arr = np.array(rows, dtype=np.int64).reshape(-1, 2)
    linked = pd.DataFrame({"account_id": arr[:, 0], "erp_customer_code": arr[:, 1]})
    return linked, int(skipped)


def compute(
    crm: Engine,
    erp: Engine,
    business_date: dt.date,
    *,
    audience_code: str | None = None,
    full_refresh: bool = False,
    chunk_rows: int = 500_000,
) -> ComputeResult:
    """Extract and transform: the profiles to load (all accounts in scope, or only the changed ones)."""
    started = time.perf_counter()
    scope = scope_of(audience_code)
    accounts, skipped_no_code = accounts_in_scope(crm, audience_code)
    watermark = read_frame(erp, "erp/purchase_watermark")["watermark"].iloc[0]
    watermark = None if pd.isna(watermark) else pd.Timestamp(watermark).to_pydatetime()

    previous = last_successful_run(crm, DAG_ID)
    mode, reason = _mode(previous, scope, business_date, full_refresh)
    log.info("purchase profile: %s run (%s), %d accounts in scope", mode, reason, len(accounts))

    if mode == "incremental":
        assert previous is not None and previous.watermark is not None
        changed = read_frame(
            erp,
            "erp/purchase_changes",
            {"since": previous.watermark, "window_start": previous.business_date, "business_date": business_date},
        )["customer_code"]
        missing = _accounts_without_profile(crm)
        wanted = accounts["erp_customer_code"].isin(changed) | accounts["account_id"].isin(missing)
        accounts = accounts[wanted].reset_index(drop=True)
        codes = accounts["erp_customer_code"].tolist()
        invoices = iter_frames(
            erp,
            "erp/invoices_by_customer",
            {"business_date": business_date, "customer_codes": codes},
            chunk_rows=chunk_rows,
        )
        quotes = iter_frames(
            erp,
            "erp/last_quotes_by_customer",
            {"business_date": business_date, "customer_codes": codes},
            chunk_rows=chunk_rows,
        )
    else:
        invoices = iter_frames(erp, "erp/invoices", {"business_date": business_date}, chunk_rows=chunk_rows)
        quotes = iter_frames(erp, "erp/last_quotes", {"business_date": business_date}, chunk_rows=chunk_rows)

    acc = ProfileAccumulator(accounts, business_date)
    for i, chunk in enumerate(invoices, 1):
        acc.add_invoices(chunk)
        log.info("purchase profile: invoice chunk %d folded (%d invoices read so far)", i, acc.invoices_seen)
    for chunk in quotes:
        acc.add_last_quotes(chunk)
    profiles = acc.result()
    stats = {
        "mode": mode,
        "mode_reason": reason,
        "accounts_recomputed": len(profiles),
        "skipped_no_erp_code": skipped_no_code,
        "invoices_read": acc.invoices_seen,
        "invoices_counted": acc.invoices_counted,
        "compute_seconds": round(time.perf_counter() - started, 3),
    }
    return ComputeResult(profiles=profiles, mode=mode, scope=scope, watermark=watermark, stats=stats)


def load(
    crm: Engine,
    result: ComputeResult,
    *,
    business_date: dt.date,
    run_id: str,
    run_after: dt.datetime,
    started_at: dt.datetime,
    requested_by: str | None = None,
    notify_to: list[str] | None = None,
    audience_code: str | None = None,
) -> dict[str, Any]:
    """Upsert the profiles, refresh the others' day counts, record the run: one transaction, all or nothing."""
    t0 = time.perf_counter()
    # In key order: the upsert then walks the primary-key B-tree front to back (measured 2x faster).
    frame = result.profiles.sort_values("account_id", kind="stable", ignore_index=True)
    frame["business_date"] = pd.Timestamp(business_date)
    frame["run_id"] = run_id
    frame["updated_at"] = pd.Timestamp(naive_utc(run_after))
    with write_transaction(crm) as conn:
        res = upsert(conn, account_profile, frame, ["account_id"], compare_columns=PROFILE_FIELDS)
        refreshed = refresh_days_since(conn, business_date, run_id, run_after, audience_code)
        summary = {
            **result.stats,
            "accounts_considered": result.stats["accounts_recomputed"],
            "inserted": res.inserted,
            "updated": res.updated,
            "unchanged": res.unchanged,
            "days_refreshed": refreshed,
            "load_seconds": round(time.perf_counter() - t0, 3),
        }
        record_run(
            conn,
            dag_id=DAG_ID,
            run_id=run_id,
            business_date=business_date,
            status="success",
            started_at=started_at,
            finished_at=dt.datetime.now(dt.UTC),
            scope=result.scope,
            requested_by=requested_by,
            notify_to=notify_to,
            watermark=result.watermark,
            summary=summary,
        )
    return summary


def refresh_days_since(
    conn: Connection, business_date: dt.date, run_id: str, run_after: dt.datetime, audience_code: str | None = None
) -> int:
    """Move "days since last purchase" of profiles computed for another date to this business date, in SQL."""
    t = account_profile
    if conn.dialect.name == "sqlite":
        days = cast(func.julianday(business_date.isoformat()) - func.julianday(t.c.last_purchase_date), Integer)
    else:
        days = literal(business_date, Date) - t.c.last_purchase_date
    stmt = (
        update(t)
        .where(t.c.business_date != business_date)
        .values(
            days_since_last_purchase=days,
            business_date=business_date,
            run_id=run_id,
            updated_at=naive_utc(run_after),
        )
    )
    if audience_code:
        members = (
            select(audience_member.c.account_id)
            .join(audience, audience.c.id == audience_member.c.audience_id)
            .where(audience.c.code == audience_code)
        )
        stmt = stmt.where(t.c.account_id.in_(members))
    return conn.execute(stmt).rowcount


def _mode(previous: Any, scope: str, business_date: dt.date, full_refresh: bool) -> tuple[str, str]:
    if full_refresh:
        return "full", "full_refresh requested"
    if previous is None or previous.watermark is None:
        return "full", "no previous successful run"
    if previous.scope not in ("all", scope):
        return "full", f"previous run covered {previous.scope}"
    if previous.business_date > business_date:
        return "full", f"previous run was for a later business date ({previous.business_date})"
    return "incremental", f"changes since {previous.watermark} (run {previous.run_id})"


def _accounts_without_profile(crm: Engine) -> np.ndarray:
    """Ids of the accounts with an ERP code and no profile row (an anti-join in the CRM database)."""
    stmt = select(account.c.id).where(
        account.c.erp_customer_code.is_not(None),
        ~select(account_profile.c.account_id).where(account_profile.c.account_id == account.c.id).exists(),
    )
    with crm.connect() as conn:
        rows = conn.execute(stmt).cursor.fetchall()
    return np.array(rows, dtype=np.int64).reshape(-1)


def _connect(db: Engine | Connection) -> Any:
    from contextlib import nullcontext

    return db.connect() if isinstance(db, Engine) else nullcontext(db)
