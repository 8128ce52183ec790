"""Steps of crm_account_purchase_profile over real databases: extract + transform, then load.

Plain functions taking engines and values (no Airflow), so the DAG, the tests
and the benchmark all run the same code.

Incremental by default: a run recomputes only the accounts whose profile may
have changed since the previous successful run, and refreshes "days since
last purchase" of every other account with one set-based UPDATE. Which
accounts, without scanning them all:

- ERP side: customers with invoices or quotes written since the previous run's
  ERP watermark, or dated in the days the business date moved over
  (`purchase_changes.sql`), looked up by code;
- CRM side: accounts whose `updated_at` moved since the previous run's CRM
  watermark (the account table's own change stamp, indexed): one that gained
  an ERP code, or whose code changed, is recomputed; one that lost its code
  loses its profile; in an audience run, members without a profile too.

Both watermarks are read back with an overlap (`WATERMARK_OVERLAP`) so rows
committed late with a slightly older stamp are still seen. A run falls back to
a full recomputation when asked (`full_refresh`), when there is no previous
run (or it predates the CRM watermark), when the previous run covered another
audience, or when it was for a later business date (a backfill).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Date, Engine, Integer, cast, delete, func, literal, select, update

from crm.db import upsert, write_transaction
from crm.db.crm_schema import account, account_profile, audience, audience_member
from crm.routines.purchase_profile import PROFILE_FIELDS, ProfileAccumulator
from crm.runs import last_successful_run, naive_utc, record_run
from crm.sources import iter_frames, read_frame

log = logging.getLogger(__name__)

DAG_ID = "crm_account_purchase_profile"
# Watermarks are read back this much earlier: a row committed late with a slightly older stamp is
# still seen (recomputing an unchanged account is harmless; missing a changed one is not).
WATERMARK_OVERLAP = dt.timedelta(hours=1)
_LOOKUP_BATCH = 5_000


class AudienceNotFound(ValueError):
    """The `audience` Param names no audience of the CRM."""


@dataclass
class ComputeResult:
    profiles: pd.DataFrame
    mode: str
    scope: str
    watermark: dt.datetime | None
    stats: dict[str, Any] = field(default_factory=dict)
    # Accounts whose profile goes (they lost their ERP code); None: every account in scope without a code.
    drop_account_ids: list[int] | None = None


def scope_of(audience_code: str | None) -> str:
    return f"audience:{audience_code}" if audience_code else "all"


def audience_id_of(crm: Engine | Connection, audience_code: str | None) -> int | None:
    """The audience's id (None for all accounts); an unknown code is an AudienceNotFound."""
    if not audience_code:
        return None
    with _connect(crm) as conn:
        audience_id = conn.execute(select(audience.c.id).where(audience.c.code == audience_code)).scalar()
    if audience_id is None:
        raise AudienceNotFound(f"audience {audience_code!r} does not exist in crm_audience")
    return int(audience_id)


def accounts_in_scope(crm: Engine | Connection, audience_code: str | None) -> tuple[pd.DataFrame, int]:
    """Accounts with an ERP customer code in scope, and how many in scope lack one (skipped)."""
    audience_id = audience_id_of(crm, audience_code)
    stmt = _in_audience(select(account.c.id, account.c.erp_customer_code), audience_id)
    with _connect(crm) as conn:
        rows = conn.execute(stmt.where(account.c.erp_customer_code.is_not(None))).cursor.fetchall()
    return _pairs(rows), _count_without_code(crm, audience_id)


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
    audience_id = audience_id_of(crm, audience_code)
    watermark = read_frame(erp, "erp/purchase_watermark")["watermark"].iloc[0]
    watermark = None if pd.isna(watermark) else pd.Timestamp(watermark).to_pydatetime()
    with crm.connect() as conn:
        crm_watermark = conn.execute(select(func.max(account.c.updated_at))).scalar()

    previous = last_successful_run(crm, DAG_ID)
    mode, reason = _mode(previous, scope, business_date, full_refresh)
    drop: list[int] | None = None
    if mode == "incremental":
        assert previous is not None and previous.watermark is not None
        changed = read_frame(
            erp,
            "erp/purchase_changes",
            {
                "since": previous.watermark - WATERMARK_OVERLAP,
                "window_start": previous.business_date,
                "business_date": business_date,
            },
        )["customer_code"]
        crm_since = dt.datetime.fromisoformat(previous.summary["crm_watermark"]) - WATERMARK_OVERLAP
        accounts, drop = _changed_accounts(crm, audience_id, changed.to_numpy(dtype=np.int64), crm_since)
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
        accounts, _ = accounts_in_scope(crm, audience_code)
        invoices = iter_frames(erp, "erp/invoices", {"business_date": business_date}, chunk_rows=chunk_rows)
        quotes = iter_frames(erp, "erp/last_quotes", {"business_date": business_date}, chunk_rows=chunk_rows)
    log.info("purchase profile: %s run (%s), %d accounts to compute", mode, reason, len(accounts))

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
        "accounts_in_scope": _count_with_code(crm, audience_id),
        "accounts_recomputed": len(profiles),
        "skipped_no_erp_code": _count_without_code(crm, audience_id),
        "invoices_read": acc.invoices_seen,
        "invoices_counted": acc.invoices_counted,
        "crm_watermark": crm_watermark.isoformat(sep=" ") if crm_watermark else None,
        "compute_seconds": round(time.perf_counter() - started, 3),
    }
    return ComputeResult(
        profiles=profiles, mode=mode, scope=scope, watermark=watermark, stats=stats, drop_account_ids=drop
    )


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
    """Upsert the profiles, drop stale ones, refresh the others' day counts, record the run: one transaction."""
    t0 = time.perf_counter()
    # In key order: the upsert then walks the primary-key B-tree front to back (measured 2x faster).
    frame = result.profiles.sort_values("account_id", kind="stable", ignore_index=True)
    frame["business_date"] = pd.Timestamp(business_date)
    frame["run_id"] = run_id
    frame["updated_at"] = pd.Timestamp(naive_utc(run_after))
    with write_transaction(crm) as conn:
        audience_id = audience_id_of(conn, audience_code)
        res = upsert(
            conn, account_profile, frame, ["account_id"], compare_columns=["erp_customer_code", *PROFILE_FIELDS]
        )
        dropped = drop_profiles(conn, result.drop_account_ids, audience_id)
        refreshed = refresh_days_since(conn, business_date, run_id, run_after, audience_id)
        summary = {
            **result.stats,
            "accounts_considered": result.stats["accounts_recomputed"],
            "inserted": res.inserted,
            "updated": res.updated,
            "unchanged": res.unchanged,
            "dropped_no_erp_code": dropped,
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


def drop_profiles(conn: Connection, account_ids: list[int] | None, audience_id: int | None = None) -> int:
    """Delete the profiles of accounts that no longer have an ERP code: they describe another customer."""
    t = account_profile
    if account_ids is None:  # a full run: every account in scope without a code
        stmt = delete(t).where(
            t.c.account_id.in_(
                _in_audience(select(account.c.id).where(account.c.erp_customer_code.is_(None)), audience_id)
            )
        )
        return conn.execute(stmt).rowcount
    dropped = 0
    for start in range(0, len(account_ids), _LOOKUP_BATCH):
        batch = account_ids[start : start + _LOOKUP_BATCH]
        dropped += conn.execute(delete(t).where(t.c.account_id.in_(batch))).rowcount
    return dropped


def refresh_days_since(
    conn: Connection, business_date: dt.date, run_id: str, run_after: dt.datetime, audience_id: int | None = None
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
    if audience_id is not None:
        members = select(audience_member.c.account_id).where(audience_member.c.audience_id == audience_id)
        stmt = stmt.where(t.c.account_id.in_(members))
    return conn.execute(stmt).rowcount


def _mode(previous: Any, scope: str, business_date: dt.date, full_refresh: bool) -> tuple[str, str]:
    if full_refresh:
        return "full", "full_refresh requested"
    if previous is None or previous.watermark is None:
        return "full", "no previous successful run"
    if not previous.summary.get("crm_watermark"):
        return "full", f"previous run {previous.run_id} recorded no CRM watermark"
    if previous.scope not in ("all", scope):
        return "full", f"previous run covered {previous.scope}"
    if previous.business_date > business_date:
        return "full", f"previous run was for a later business date ({previous.business_date})"
    return "incremental", f"changes since {previous.watermark} (run {previous.run_id})"


def _changed_accounts(
    crm: Engine, audience_id: int | None, erp_codes: np.ndarray, crm_since: dt.datetime
) -> tuple[pd.DataFrame, list[int]]:
    """Accounts to recompute (by ERP change or CRM change) and accounts whose profile must go.

    Index lookups only (ERP codes, `updated_at`, an audience's members): never a scan of every account.
    """
    a, p = account, account_profile
    parts: list[pd.DataFrame] = []
    with crm.connect() as conn:
        codes = np.unique(erp_codes).tolist()
        for start in range(0, len(codes), _LOOKUP_BATCH):
            stmt = select(a.c.id, a.c.erp_customer_code).where(
                a.c.erp_customer_code.in_(codes[start : start + _LOOKUP_BATCH])
            )
            parts.append(_pairs(conn.execute(_in_audience(stmt, audience_id)).cursor.fetchall()))

        touched = _in_audience(
            select(a.c.id, a.c.erp_customer_code, p.c.account_id.is_not(None), p.c.erp_customer_code)
            .select_from(a.outerjoin(p, p.c.account_id == a.c.id))
            .where(a.c.updated_at >= naive_utc(crm_since)),
            audience_id,
        )
        drop: list[int] = []
        stale: list[tuple[int, int]] = []
        for account_id, code, has_profile, profiled_code in conn.execute(touched).cursor.fetchall():
            if code is None:
                if has_profile:
                    drop.append(int(account_id))
            elif not has_profile or profiled_code != code:
                stale.append((account_id, code))
        parts.append(_pairs(stale))

        if audience_id is not None:  # joining an audience does not touch the account
            missing = _in_audience(
                select(a.c.id, a.c.erp_customer_code)
                .select_from(a.outerjoin(p, p.c.account_id == a.c.id))
                .where(a.c.erp_customer_code.is_not(None), p.c.account_id.is_(None)),
                audience_id,
            )
            parts.append(_pairs(conn.execute(missing).cursor.fetchall()))
    accounts = pd.concat(parts, ignore_index=True).drop_duplicates("account_id", ignore_index=True)
    return accounts, drop


def _in_audience(stmt: Any, audience_id: int | None) -> Any:
    """Restrict a SELECT over crm_account to an audience's members (no-op for all accounts)."""
    if audience_id is None:
        return stmt
    members = select(audience_member.c.account_id).where(audience_member.c.audience_id == audience_id)
    return stmt.where(account.c.id.in_(members))


def _count_with_code(crm: Engine, audience_id: int | None) -> int:
    stmt = _in_audience(select(func.count()).where(account.c.erp_customer_code.is_not(None)), audience_id)
    with crm.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def _count_without_code(crm: Engine | Connection, audience_id: int | None) -> int:
    stmt = _in_audience(select(func.count()).where(account.c.erp_customer_code.is_(None)), audience_id)
    with _connect(crm) as conn:
        return int(conn.execute(stmt).scalar_one())


def _pairs(rows: Any) -> pd.DataFrame:
    """(account_id, erp_customer_code) driver tuples as an int64 frame.

    Plain tuples straight into one array: a DataFrame built from a million Row objects goes
    through pandas' per-object slow path (seconds per million rows).
    """
    arr = np.array(rows, dtype=np.int64).reshape(-1, 2)
    return pd.DataFrame({"account_id": arr[:, 0], "erp_customer_code": arr[:, 1]})


def _connect(db: Engine | Connection) -> Any:
    from contextlib import nullcontext

    return db.connect() if isinstance(db, Engine) else nullcontext(db)
