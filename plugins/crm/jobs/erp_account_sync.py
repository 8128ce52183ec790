"""crm_erp_account_sync (TOTVS CRM "Novo Lead / Nova Conta"): push accounts that satisfy the ERP integration rules.

Which accounts: those whose customer type integrates with the ERP (`crm_customer_type.integrates_erp`)
and that changed since the watermark of the latest successful run that recorded one (the latest
`updated_at` of accounts, their phones and observations, read when that run started; a dry run
records none, so the run after it resumes from the last real run); all of them on the first run or
with `full_check`. Address edits are seen through the account's `updated_at`, which the CRM touches
when an account is saved. The ERP code write-back moves `updated_at` only forward
(`crm.jobs.account_changes`): an edit saved while a run was writing keeps its later stamp and is
checked by the next run.

Each is checked against every rule (`crm.routines.erp_integration.check`). Valid accounts are written
to the ERP through the write contract `include/sql/erp/customer_upsert.sql` (one ERP transaction),
only where the ERP row differs (`customers_by_code.sql`), new customers numbered from
`customer_next_code.sql`; then, in one CRM transaction, the ERP codes are written back to the
accounts with their history (`crm.jobs.account_changes`) and the run is recorded with its watermark.
If the CRM step fails after the ERP commit, the next run recognises the customers it created (same
short name and document) and adopts their codes, so nothing is created twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, exists, func, or_, select, union_all

from crm.db.crm_schema import account as A
from crm.db.crm_schema import address, company, customer_type, observation, observation_type, phone
from crm.db.upsert import write_transaction
from crm.jobs.account_changes import apply_changes, diff
from crm.routines import erp_integration as rules
from crm.runs import latest_watermark, naive_utc, record_run
from crm.sources import execute, read_frame

log = logging.getLogger(__name__)

DAG_ID = "crm_erp_account_sync"
ERP_FIELDS = [
    "code",
    "company_code",
    "name",
    "short_name",
    "tax_id",
    "person_type",
    "email",
    "group_id",
    "representative_id",
    "carrier_id",
    "bearer_id",
    "payment_condition_id",
    "phone1",
    "phone2",
    "fax1",
    "fax2",
    "address",
    "district",
    "city",
    "state",
    "postal_code",
    "country",
    "notes",
]
VIOLATION_REPORT_COLUMNS = ["account_id", "account_name", "short_name", "rule", "field", "value", "message"]
PUSHED_REPORT_COLUMNS = ["account_id", "account_name", "erp_customer_code", "action"]


@dataclass
class SyncPlan:
    business_date: dt.date
    mode: str
    watermark: dt.datetime | None
    checked: pd.DataFrame  # the accounts of the batch (account_id, name, short_name, target_code, ...)
    violations: pd.DataFrame  # VIOLATION_REPORT_COLUMNS
    rows: list[dict[str, Any]]  # customer_upsert.sql parameters (without written_at), new or changed only
    pushed: pd.DataFrame  # PUSHED_REPORT_COLUMNS, action: inserted | updated | unchanged
    writebacks: pd.DataFrame  # account_changes rows for erp_customer_code
    stats: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        invalid = self.violations["account_id"].nunique()
        actions = self.pushed["action"].value_counts()
        return {
            "mode": self.mode,
            "accounts_checked": len(self.checked),
            "accounts_valid": len(self.checked) - invalid,
            "accounts_invalid": invalid,
            "violations": len(self.violations),
            "violations_by_rule": {
                str(k): int(v) for k, v in self.violations["rule"].value_counts().sort_index().items()
            },
            "erp_inserted": int(actions.get("inserted", 0)),
            "erp_updated": int(actions.get("updated", 0)),
            "erp_unchanged": int(actions.get("unchanged", 0)),
            "codes_written_back": len(self.writebacks),
            **self.stats,
        }


def crm_watermark(crm: Engine | Connection) -> dt.datetime | None:
    """Latest write the CRM side shows (accounts, phones, observations): where the next run resumes."""
    stmt = select(func.max(union_all(
        select(func.max(A.c.updated_at).label("m")),
        select(func.max(phone.c.updated_at).label("m")),
        select(func.max(observation.c.updated_at).label("m")),
    ).subquery().c.m))  # fmt: skip
    with _connect(crm) as conn:
        value = conn.execute(stmt).scalar()
    return None if value is None else pd.Timestamp(value).to_pydatetime()


def candidates(crm: Engine | Connection, since: dt.datetime | None) -> pd.DataFrame:
    """Accounts of an integrating customer type, changed at or after `since` (all when None)."""
    cols = [
        A.c.id.label("account_id"),
        A.c.erp_customer_code,
        A.c.person_type,
        A.c.name,
        A.c.short_name,
        A.c.email,
        A.c.tax_id,
        *[A.c[c] for c in rules.ERP_CHOICES],
        company.c.code.label("company_code"),
    ]
    stmt = (
        select(*cols)
        .join(customer_type, customer_type.c.id == A.c.customer_type_id)
        .join(company, company.c.id == A.c.company_id)
        .where(customer_type.c.integrates_erp)
        .order_by(A.c.id)
    )
    if since is not None:
        since = naive_utc(since)
        stmt = stmt.where(
            or_(
                A.c.updated_at >= since,
                exists().where(phone.c.account_id == A.c.id, phone.c.updated_at >= since),
                exists().where(observation.c.account_id == A.c.id, observation.c.updated_at >= since),
            )
        )
    with _connect(crm) as conn:
        frame = pd.DataFrame(conn.execute(stmt).all(), columns=[c.name for c in cols])
    for c in ["erp_customer_code", *rules.ERP_CHOICES]:
        frame[c] = frame[c].astype("Int64")
    return frame


def _details(conn: Connection, ids: list[int]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Addresses, phones and observations of the batch, read in slices of ids."""
    addr, phones, obs = [], [], []
    for start in range(0, len(ids), 5000):
        part = ids[start : start + 5000]
        addr.append(pd.DataFrame(conn.execute(select(
            address.c.account_id, address.c.address_type, address.c.street, address.c.number, address.c.complement,
            address.c.district, address.c.city, address.c.state, address.c.postal_code, address.c.country,
        ).where(address.c.account_id.in_(part))).all()))  # fmt: skip
        phones.append(pd.DataFrame(conn.execute(select(
            phone.c.account_id, phone.c.id.label("phone_id"), phone.c.phone_type, phone.c.number
        ).where(phone.c.account_id.in_(part), phone.c.phone_type.in_(list(rules.ERP_PHONE_TYPES)))).all()))  # fmt: skip
        obs.append(pd.DataFrame(conn.execute(select(
            observation.c.account_id, observation.c.id.label("observation_id"), observation.c.created_at,
            observation.c.text, observation_type.c.name.label("type_name"),
        ).join(observation_type, observation_type.c.id == observation.c.observation_type_id)
         .where(observation.c.account_id.in_(part))).all()))  # fmt: skip
    names = (
        ["account_id", "address_type", "street", "number", "complement", "district", "city", "state", "postal_code",
         "country"],
        ["account_id", "phone_id", "phone_type", "number"],
        ["account_id", "observation_id", "created_at", "text", "type_name"],
    )  # fmt: skip
    frames = []
    for parts, cols in zip((addr, phones, obs), names, strict=True):
        parts = [p for p in parts if not p.empty]
        frames.append(pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols))
    return frames[0], frames[1], frames[2]


def complete_addresses(addresses: pd.DataFrame) -> pd.DataFrame:
    """Addresses that count as present: street and city filled."""

    def filled(s: pd.Series) -> pd.Series:
        return s.notna() & (s.astype(object).map(lambda v: str(v).strip() if v is not None else "") != "")

    return addresses[filled(addresses["street"]) & filled(addresses["city"])]


def plan_sync(crm: Engine, erp: Engine, business_date: dt.date, *, full_check: bool = False) -> SyncPlan:
    """Check the batch and compute every ERP write and CRM write-back; writes nothing."""
    watermark = crm_watermark(crm)
    previous = latest_watermark(crm, DAG_ID)  # dry runs record no watermark: they are skipped here
    if full_check or previous is None:
        mode, since = "full", None
    else:
        mode, since = "incremental", previous
    batch = candidates(crm, since)
    ids = batch["account_id"].astype(int).tolist()
    with crm.connect() as conn:
        addresses, phones, observations = _details(conn, ids)
        codes_in_crm = set(
            conn.execute(select(A.c.erp_customer_code).where(A.c.erp_customer_code.is_not(None))).scalars()
        )
    refs = read_frame(erp, "erp/customer_reference")
    known = {k: set(g["id"].astype(int)) for k, g in refs.groupby("kind")}
    keys = read_frame(erp, "erp/customer_keys")
    resolved = rules.resolve_codes(batch, keys, codes_in_crm)
    complete = complete_addresses(addresses)
    found = rules.check(resolved, complete, known, keys)

    valid = resolved[~resolved["account_id"].isin(found["account_id"])].copy()
    new = valid["target_code"].isna()
    if new.any():
        first = int(read_frame(erp, "erp/customer_next_code")["next_code"].iloc[0])
        taken = set(keys["code"].astype(int))
        fresh = [c for c in range(first, first + int(new.sum()) + len(taken) + 1) if c not in taken][: int(new.sum())]
        valid.loc[valid.index[new.to_numpy()], "target_code"] = fresh
    wanted = _erp_rows(valid, complete, phones, observations)
    codes = [int(c) for c in wanted["code"]]
    current = read_frame(erp, "erp/customers_by_code", {"codes": codes}) if codes else pd.DataFrame(columns=ERP_FIELDS)
    current = current.set_index("code") if len(current) else pd.DataFrame(columns=ERP_FIELDS[1:])
    rows, actions = [], []
    for record in wanted.to_dict("records"):
        r = {k: _plain(v) for k, v in record.items()}
        code = int(r["code"])
        if code not in current.index:
            action = "inserted"
        else:
            before = current.loc[code]
            changed = any(_plain(before[f]) != r[f] for f in ERP_FIELDS[1:])
            action = "updated" if changed else "unchanged"
        actions.append(action)
        if action != "unchanged":
            rows.append(r)
    names = valid.set_index("account_id")["name"]
    pushed = pd.DataFrame(
        {
            "account_id": valid["account_id"].to_numpy(),
            "account_name": names.to_numpy(),
            "erp_customer_code": [int(c) for c in valid["target_code"]],
            "action": actions,
        },
        columns=PUSHED_REPORT_COLUMNS,
    )
    writebacks = diff(
        valid.set_index("account_id")[["erp_customer_code"]],
        valid.set_index("account_id")[["target_code"]].rename(columns={"target_code": "erp_customer_code"}),
        ["erp_customer_code"],
    )
    info = batch.set_index("account_id")
    violations = found.assign(
        account_name=found["account_id"].map(info["name"]), short_name=found["account_id"].map(info["short_name"])
    )[VIOLATION_REPORT_COLUMNS]
    violations["value"] = violations["value"].map(lambda v: None if _plain(v) is None else str(v)).astype(object)
    return SyncPlan(
        business_date=business_date,
        mode=mode,
        watermark=watermark,
        checked=resolved,
        violations=violations,
        rows=rows,
        pushed=pushed,
        writebacks=writebacks,
        stats={"codes_adopted": int(valid["adopted"].sum()), "since": since.isoformat() if since else None},
    )


def _erp_rows(
    valid: pd.DataFrame, addresses: pd.DataFrame, phones: pd.DataFrame, observations: pd.DataFrame
) -> pd.DataFrame:
    """The customer rows to write, one per valid account: only ERP-typed phones, only 'Integração' notes."""
    corr = (
        addresses[addresses["address_type"] == "correspondence"].drop_duplicates("account_id").set_index("account_id")
    )
    wide = rules.erp_phones(phones) if len(phones) else pd.DataFrame(columns=list(rules.ERP_PHONE_TYPES.values()))
    notes = rules.integration_notes(observations) if len(observations) else pd.Series(dtype=object)
    out = []
    for r in valid.to_dict("records"):
        a = r["account_id"]
        c = corr.loc[a]
        street = ", ".join(str(x).strip() for x in (c["street"], c["number"]) if _plain(x))
        if _plain(c["complement"]):
            street += f" - {str(c['complement']).strip()}"
        ph = wide.loc[a] if a in wide.index else {}
        out.append(
            {
                "code": int(r["target_code"]),
                "company_code": r["company_code"],
                "name": str(r["name"]).strip(),
                "short_name": str(r["short_name"]).strip(),
                "tax_id": rules.document_digits(r["tax_id"]),
                "person_type": r["person_type"],
                "email": str(r["email"]).strip(),
                **{col.removeprefix("erp_"): int(r[col]) for col in rules.ERP_CHOICES},
                **{k: _plain(ph.get(k)) if len(ph) else None for k in rules.ERP_PHONE_TYPES.values()},
                "address": street,
                "district": _plain(c["district"]),
                "city": str(c["city"]).strip(),
                "state": _plain(c["state"]),
                "postal_code": _plain(c["postal_code"]),
                "country": c["country"],
                "notes": _plain(notes.get(a)),
            }
        )
    return pd.DataFrame(out, columns=ERP_FIELDS)


def apply_sync(
    crm: Engine,
    erp: Engine,
    plan: SyncPlan,
    *,
    run_id: str,
    written_at: dt.datetime,
    started_at: dt.datetime,
    requested_by: str | None = None,
) -> dict[str, Any]:
    """ERP writes (one ERP transaction), then code write-back with history and the run's row (one CRM transaction)."""
    stamp = naive_utc(written_at)
    with write_transaction(erp) as conn:
        written = execute(conn, "erp/customer_upsert", [{**r, "written_at": stamp} for r in plan.rows])
    summary = plan.summary()
    with write_transaction(crm) as conn:
        counts = apply_changes(
            conn,
            plan.writebacks,
            routine=DAG_ID,
            run_id=run_id,
            business_date=plan.business_date,
            changed_at=written_at,
        )
        summary.update(erp_rows_written=written, codes_written_back=counts.get("erp_customer_code", 0))
        record_run(
            conn,
            dag_id=DAG_ID,
            run_id=run_id,
            business_date=plan.business_date,
            status="success",
            started_at=started_at,
            finished_at=dt.datetime.now(dt.UTC),
            requested_by=requested_by,
            watermark=plan.watermark,
            summary=summary,
        )
    return summary


def _plain(v: Any) -> Any:
    """A DataFrame cell as the contract carries it: None for nulls and blanks, Python scalars."""
    if v is None:
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, str) and not v.strip():
        return None
    return v


def _connect(db: Engine | Connection) -> Any:
    from contextlib import nullcontext

    return db.connect() if isinstance(db, Engine) else nullcontext(db)


def report_attachments(staged: str) -> list[Any]:
    """The run report's CSVs: every violation (account, rule, field, value) and every account pushed."""
    from airflow.sdk import ObjectStoragePath

    from crm.notify.email import Attachment
    from crm.notify.report import csv_bytes

    files = []
    for name, columns in (("violations", VIOLATION_REPORT_COLUMNS), ("pushed", PUSHED_REPORT_COLUMNS)):
        path = ObjectStoragePath(staged) / f"{name}.parquet"
        if not path.exists():
            continue
        with path.open("rb") as f:
            frame = pd.read_parquet(f)
        rows = [{k: _plain(v) for k, v in r.items()} for r in frame.to_dict("records")]
        files.append(Attachment(f"{DAG_ID}-{name}.csv", csv_bytes(rows, columns), "text/csv"))
    return files
