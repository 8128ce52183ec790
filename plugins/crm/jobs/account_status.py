"""Steps of crm_account_status (TOTVS CRM crm1003) over real databases: plan the changes, then apply them.

Plain functions taking engines and values (no Airflow), so the DAG, the tests and the benchmark run
the same code. `plan` reads every account (one query), the source's facts through the contract-checked
SQL files (`erp/credit_months_inactive.sql` + `erp/purchases_since.sql`, or `gp/beneficiary_status.sql`),
computes every status and label vectorised (crm.routines.account_status) and diffs them against the
stored ones; `apply` writes only the changes, with their history rows, in one transaction
(crm.jobs.account_changes). Re-running a date finds nothing to change.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select

from crm.db.crm_schema import account, company
from crm.db.frames import select_frame
from crm.jobs.account_changes import apply_changes, diff
from crm.routines import account_status as rules
from crm.routines.periods import months_before
from crm.sources import read_frame

log = logging.getLogger(__name__)

DAG_ID = "crm_account_status"
DEFAULT_MONTHS_INACTIVE = 12
ACCOUNT_COLUMNS = [
    "account_id",
    "locale",
    "company_locale",
    "erp_customer_code",
    "gp_beneficiary_code",
    "erp_status",
    "gp_status",
    "status_label",
]


@dataclass
class StatusPlan:
    """What a run would change: `changes` (account_changes.CHANGE_COLUMNS) and one report row per changed account."""

    source: str
    business_date: dt.date
    changes: pd.DataFrame
    report: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)


# The columns only one source's status reads: the other source's are not read for it.
SOURCE_ONLY_COLUMNS = {"erp": ("erp_customer_code", "erp_status"), "gp": ("gp_beneficiary_code", "gp_status")}


def read_accounts(crm: Engine, source: str | None = None) -> pd.DataFrame:
    """Every CRM account with what the status needs, indexed by account id.

    `source` ('erp' or 'gp'): only the columns that source's status and report need (the other
    source's code and status are a quarter of the columns of a million-row read); default: all.
    """
    skip = {c for s, cols in SOURCE_ONLY_COLUMNS.items() if s != source for c in cols} if source else set()
    names = [c for c in ACCOUNT_COLUMNS if c not in skip]
    columns = {
        "account_id": account.c.id,
        "locale": account.c.locale,
        "company_locale": company.c.locale,
        **{c: account.c[c] for c in ACCOUNT_COLUMNS[3:]},
    }
    stmt = (
        select(*[columns[c] for c in names])
        .select_from(account.outerjoin(company, company.c.id == account.c.company_id))
        .order_by(account.c.id)
    )
    frame = select_frame(crm, stmt, names)
    if "erp_customer_code" in frame:
        frame["erp_customer_code"] = frame["erp_customer_code"].astype("Int64")
    return frame.set_index("account_id")


def plan(
    crm: Engine,
    source_db: Engine,
    business_date: dt.date,
    *,
    source: str = "erp",
    default_months_inactive: int = DEFAULT_MONTHS_INACTIVE,
    accounts: pd.DataFrame | None = None,
) -> StatusPlan:
    """Compute every account's status from `source` ('erp' or 'gp', read from `source_db`) and diff it."""
    if source not in rules.SOURCES:
        raise ValueError(f"source must be one of {', '.join(rules.SOURCES)}, not {source!r}")
    started = time.perf_counter()
    accounts = read_accounts(crm, source) if accounts is None else accounts
    read_s = time.perf_counter() - started
    status_field = rules.STATUS_FIELD[source]
    if source == "erp":
        codes = accounts["erp_customer_code"]
        credit = read_frame(source_db, "erp/credit_months_inactive")
        months = rules.months_inactive_of(codes, credit, default_months_inactive)
        linked = codes.notna().to_numpy()
        longest = int(months[linked].max()) if linked.any() else int(default_months_inactive)
        since = months_before(business_date, longest)
        purchases = read_frame(source_db, "erp/purchases_since", {"since": since, "business_date": business_date})
        facts = rules.erp_statuses(codes, months, purchases, business_date)
        facts_read = {"credit_info_rows": len(credit), "customers_with_purchases": len(purchases)}
        facts_read["window_since"] = since.isoformat()
    else:
        gp = read_frame(source_db, "gp/beneficiary_status")
        facts = rules.gp_statuses(accounts["gp_beneficiary_code"], gp, business_date)
        facts_read = {"gp_beneficiaries": len(gp)}
    locales = accounts["locale"].where(accounts["locale"].notna(), accounts["company_locale"])
    status = facts["status"].to_numpy(dtype=object)
    status_idx = rules.code_index(status)  # once, for the labels and the counts
    label = rules.labels_of(status, locales, source, rules.load_labels(), code_idx=status_idx)
    # object columns on purpose: a string dtype would be inferred, converted to Arrow, and back for the diff
    wanted = pd.DataFrame(
        {
            status_field: pd.Series(status, index=accounts.index, dtype=object),
            "status_label": pd.Series(label, index=accounts.index, dtype=object),
        }
    )
    changes = diff(accounts, wanted, [status_field, "status_label"])
    # The label follows its status: a status change's history row tells both (the label is the status's
    # translation in the account's language), so only a label that moved alone (a new translation, another
    # locale) gets a history row of its own. Halves the history of a night that changes many statuses.
    is_status = (changes["field"] == status_field).to_numpy(dtype=bool)
    status_moved = changes["account_id"].to_numpy()[is_status]
    is_label = (changes["field"] == "status_label").to_numpy(dtype=bool)
    changes["audited"] = ~(is_label & changes["account_id"].isin(status_moved).to_numpy(dtype=bool))
    report = _report(accounts, wanted, facts, changes, status_field)
    summary: dict[str, Any] = {
        "source": source,
        "accounts": len(accounts),
        **_status_counts(status_idx),
        "accounts changed": len(report),
        "status changes": int(is_status.sum()),
        **_moves(report),
        **facts_read,
        "compute_seconds": round(time.perf_counter() - started, 3),
        "read_accounts_seconds": round(read_s, 3),
    }
    if source == "erp":
        summary["default_months_inactive"] = int(default_months_inactive)
    return StatusPlan(source=source, business_date=business_date, changes=changes, report=report, summary=summary)


def apply(crm: Engine, status_plan: StatusPlan, *, run_id: str, changed_at: dt.datetime) -> dict[str, Any]:
    """Write the planned changes and their history rows in one transaction; returns counts per field.

    Informational fields: `crm_account.updated_at` is left alone (crm.jobs.account_changes), so a
    million status changes do not make the next ERP account sync re-check a million accounts.
    """
    started = time.perf_counter()
    counts = apply_changes(
        crm,
        status_plan.changes,
        routine=DAG_ID,
        run_id=run_id,
        business_date=status_plan.business_date,
        changed_at=changed_at,
    )
    return {
        **{f"written {k}": v for k, v in counts.items()},
        "history rows": int(status_plan.changes["audited"].sum()) if "audited" in status_plan.changes else 0,
        "apply_seconds": round(time.perf_counter() - started, 3),
    }


REPORT_COLUMNS = {
    "erp": [
        "account_id",
        "erp_customer_code",
        "old_status",
        "new_status",
        "old_label",
        "new_label",
        "months_inactive",
        "window_start",
        "last_purchase_date",
    ],
    "gp": [
        "account_id",
        "gp_beneficiary_code",
        "old_status",
        "new_status",
        "old_label",
        "new_label",
        "beneficiary_status",
        "contract_status",
    ],
}


def _report(
    accounts: pd.DataFrame, wanted: pd.DataFrame, facts: pd.DataFrame, changes: pd.DataFrame, status_field: str
) -> pd.DataFrame:
    """One row per changed account: old and new status and label, and the facts that decided it.

    By position: `wanted` and `facts` are aligned with `accounts` (plan builds them so), so the changed
    accounts are gathered with one take per column instead of an index lookup per column.
    """
    ids = np.sort(pd.unique(changes["account_id"].to_numpy(dtype=np.int64)))
    pos = accounts.index.get_indexer(ids)
    source = "erp" if status_field == "erp_status" else "gp"

    def take(frame: pd.DataFrame, col: str) -> Any:
        return frame[col].array.take(pos)

    code = {"erp": "erp_customer_code", "gp": "gp_beneficiary_code"}[source]  # the source's customer code
    out = pd.DataFrame(
        {
            "account_id": ids,
            code: take(accounts, code) if source == "erp" else take(accounts, code).to_numpy(dtype=object),
            "old_status": take(accounts, status_field).to_numpy(dtype=object),
            "new_status": take(wanted, status_field).to_numpy(dtype=object),
            "old_label": take(accounts, "status_label").to_numpy(dtype=object),
            "new_label": take(wanted, "status_label").to_numpy(dtype=object),
        }
    )
    for col in ("months_inactive", "window_start", "last_purchase_date", "beneficiary_status", "contract_status"):
        if col in facts:
            out[col] = take(facts, col)
    return out[REPORT_COLUMNS[source]]


def _status_counts(status_idx: np.ndarray) -> dict[str, int]:
    """Accounts per status code (every code, zeros included), from the codes' positions in CODES."""
    counts = np.bincount(status_idx[status_idx >= 0], minlength=len(rules.CODES))
    return {f"status {code}": int(n) for code, n in zip(rules.CODES, counts, strict=True)}


def _moves(report: pd.DataFrame) -> dict[str, int]:
    """Label-only changes, and the accounts per status move ('change (none) -> active'), in a stable order.

    Counted on factorized codes (a few distinct statuses), not by grouping a million strings.
    """
    if not len(report):
        return {"label-only changes": 0}
    old, olds = pd.factorize(report["old_status"].to_numpy(dtype=object), use_na_sentinel=True)
    new, news = pd.factorize(report["new_status"].to_numpy(dtype=object), use_na_sentinel=True)
    label_only, moved = 0, {}
    for (o, w), n in _pair_counts(old, new).items():
        old_value, new_value = (olds[o] if o >= 0 else None), (news[w] if w >= 0 else None)
        label_only += n if ("" if old_value is None else old_value) == new_value else 0
        key = (_txt(old_value), _txt(new_value))
        moved[key] = moved.get(key, 0) + n
    return {
        "label-only changes": label_only,
        **{f"change {o} -> {w}": n for (o, w), n in sorted(moved.items()) if o != w},
    }


def _pair_counts(a: np.ndarray, b: np.ndarray) -> dict[tuple[int, int], int]:
    """How often each (a, b) pair of small codes (-1 allowed) occurs."""
    width = int(b.max()) + 2
    counts = np.bincount((a + 1) * width + (b + 1))
    return {(int(k // width) - 1, int(k % width) - 1): int(counts[k]) for k in np.flatnonzero(counts)}


def _txt(value: Any) -> str:
    return "(none)" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
