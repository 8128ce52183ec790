"""Steps of crm_class_transition (TOTVS CRM crm251) over real databases: check the rules, plan, apply.

Plain functions taking engines and values (no Airflow), so the DAG, the tests and the benchmark run
the same code. The rules and their semantics are in crm.routines.class_transition.

Where the measures come from:
- lifetime `accumulated_value` / `purchase_count`, and the first and last purchase dates, from
  `crm_account_profile` (crm_account_purchase_profile, whose Asset schedules this routine: the
  profile is fresh when it runs). `days_since_last_purchase` is recomputed for this run's business
  date from the stored last purchase date, so a profile from another date cannot shift it; the
  number of profiles computed for another date is reported.
- windowed `accumulated_value` / `purchase_count` (`window_months` N), from the ERP through
  `erp/purchases_since.sql`, one aggregated query per distinct N (one row per customer).
Accounts without an ERP code or a profile have zero value and count and no dates.
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

from crm.db.crm_schema import (
    account,
    account_class,
    account_history,
    account_profile,
    audience,
    audience_member,
)
from crm.db.crm_schema import class_transition_rule as rule_table
from crm.db.frames import select_frame
from crm.jobs.account_changes import apply_changes, diff
from crm.jobs.purchase_profile import AudienceNotFound
from crm.routines import class_transition as ct
from crm.routines.periods import months_before, whole_months_between
from crm.sources import read_frame

log = logging.getLogger(__name__)

DAG_ID = "crm_class_transition"
REPORT_COLUMNS = [
    "account_id",
    "erp_customer_code",
    "from_class",
    "to_class",
    "rule_id",
    "measure",
    "window_months",
    "operator",
    "threshold",
    "value",
]
__all__ = ["AudienceNotFound", "RuleError", "apply", "check", "plan"]
RuleError = ct.RuleError


@dataclass
class TransitionPlan:
    """What a run would change: `changes` (account_changes.CHANGE_COLUMNS) and one report row per transition."""

    business_date: dt.date
    changes: pd.DataFrame
    report: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)


def classes(crm: Engine) -> dict[int, str]:
    """crm_class id -> code."""
    with crm.connect() as conn:
        return {int(i): str(c) for i, c in conn.execute(select(account_class.c.id, account_class.c.code))}


def check(crm: Engine) -> list[ct.Rule]:
    """The active rules in evaluation order; RuleError (naming each bad rule) if any cannot be evaluated."""
    with crm.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(rule_table).order_by(rule_table.c.id)).mappings()]
    return ct.check_rules(rows, classes(crm))


def read_accounts(crm: Engine, audience_code: str | None = None) -> pd.DataFrame:
    """Accounts in scope (all, or the audience's members) with class and ERP code, indexed by id."""
    stmt = select(account.c.id, account.c.class_id, account.c.erp_customer_code).order_by(account.c.id)
    if audience_code:
        with crm.connect() as conn:
            audience_id = conn.execute(select(audience.c.id).where(audience.c.code == audience_code)).scalar()
        if audience_id is None:
            raise AudienceNotFound(f"audience {audience_code!r} does not exist in crm_audience")
        stmt = stmt.join(audience_member, audience_member.c.account_id == account.c.id).where(
            audience_member.c.audience_id == audience_id
        )
    frame = select_frame(crm, stmt, ["account_id", "class_id", "erp_customer_code"])
    frame["class_id"] = frame["class_id"].astype("Int64")
    frame["erp_customer_code"] = frame["erp_customer_code"].astype("Int64")
    return frame.set_index("account_id")


def moved_on(crm: Engine, business_date: dt.date) -> np.ndarray:
    """Ids of the accounts this routine already moved for `business_date` (from crm_account_history)."""
    h = account_history
    stmt = (
        select(h.c.account_id)
        .where(h.c.routine == DAG_ID, h.c.field == "class_id", h.c.business_date == business_date)
        .distinct()
    )
    return select_frame(crm, stmt, ["account_id"])["account_id"].to_numpy(dtype=np.int64)


def read_profiles(crm: Engine) -> pd.DataFrame:
    """The lifetime purchase fields of crm_account_profile, indexed by account id."""
    t = account_profile
    cols = ["account_id", "accumulated_value", "purchase_count", "first_purchase_date", "last_purchase_date"]
    stmt = select(*[t.c[c] for c in cols], t.c.business_date)
    frame = select_frame(crm, stmt, [*cols, "business_date"])
    for col in ("first_purchase_date", "last_purchase_date", "business_date"):
        frame[col] = pd.to_datetime(frame[col]).to_numpy().astype("datetime64[D]")
    return frame.set_index("account_id")


def measures_for(
    accounts: pd.DataFrame,
    profiles: pd.DataFrame,
    erp: Engine,
    rules: list[ct.Rule],
    business_date: dt.date,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One float column per measure the rules read (NaN: no value), aligned with `accounts`."""
    prof = profiles.reindex(accounts.index)
    bd = np.datetime64(business_date, "D")
    out: dict[str, np.ndarray] = {}
    facts: dict[str, Any] = {}
    needed = {r.measure_key for r in rules}
    if "accumulated_value" in needed:
        out["accumulated_value"] = np.round(prof["accumulated_value"].to_numpy(dtype="float64", na_value=0.0), 2)
        out["accumulated_value"] = np.nan_to_num(out["accumulated_value"], nan=0.0)
    if "purchase_count" in needed:
        out["purchase_count"] = np.nan_to_num(prof["purchase_count"].to_numpy(dtype="float64", na_value=0.0))
    if "days_since_last_purchase" in needed:
        last = prof["last_purchase_date"].to_numpy().astype("datetime64[D]")
        days = (bd - last).astype("float64")
        days[np.isnat(last)] = np.nan
        out["days_since_last_purchase"] = days
    if "months_as_customer" in needed:
        out["months_as_customer"] = whole_months_between(prof["first_purchase_date"].to_numpy(), business_date)
    codes = accounts["erp_customer_code"].to_numpy(dtype="float64", na_value=np.nan)
    for months in ct.windows_needed(rules):
        since = months_before(business_date, months)
        window = read_frame(erp, "erp/purchases_since", {"since": since, "business_date": business_date})
        per_code = window.groupby("customer_code")[["purchase_value", "purchase_count"]].sum()
        per_code.index = per_code.index.astype("float64")
        got = per_code.reindex(codes)
        out[f"accumulated_value@{months}"] = np.round(got["purchase_value"].fillna(0.0).to_numpy(dtype="float64"), 2)
        out[f"purchase_count@{months}"] = got["purchase_count"].fillna(0).to_numpy(dtype="float64")
        facts[f"window {months} months since"] = since.isoformat()
        facts[f"window {months} months customers"] = len(window)
    return pd.DataFrame(out, index=accounts.index), facts


def plan(
    crm: Engine,
    erp: Engine,
    business_date: dt.date,
    *,
    audience_code: str | None = None,
    rules: list[ct.Rule] | None = None,
) -> TransitionPlan:
    """Check the rules, compute the measures, pick each account's winning rule and diff the classes."""
    started = time.perf_counter()
    rules = check(crm) if rules is None else rules  # before anything else: bad rules fail the run here
    class_codes = classes(crm)
    accounts = read_accounts(crm, audience_code)
    profiles = read_profiles(crm)
    measures, facts = measures_for(accounts, profiles, erp, rules, business_date)
    current = accounts["class_id"].to_numpy(dtype="float64", na_value=np.nan)
    winner = ct.evaluate(current, measures, rules)
    # One transition per account per business date: a re-run of the date does not take a second step
    # of a chain (Gold -> Silver, then Silver -> Bronze); the next business date does.
    frozen = accounts.index.isin(moved_on(crm, business_date))
    winner[frozen] = ct.NO_RULE
    to_class = np.array([r.to_class_id for r in rules] + [0], dtype="float64")[winner]  # index -1 -> the padding
    matched = winner != ct.NO_RULE
    new_class = np.where(matched, to_class, current)
    wanted = pd.DataFrame({"class_id": pd.array(new_class, dtype="Int64")}, index=accounts.index)
    changes = diff(accounts[["class_id"]], wanted, ["class_id"])
    report = _report(accounts, measures, rules, winner, changes, class_codes)

    stale = int((profiles["business_date"] != np.datetime64(business_date, "D")).sum()) if len(profiles) else 0
    kept = matched & (to_class == current)
    summary: dict[str, Any] = {
        "scope": f"audience:{audience_code}" if audience_code else "all",
        "accounts": len(accounts),
        "active rules": len(rules),
        "accounts changed": len(changes),
        "kept by a rule confirming their class": int(kept.sum()),
        "no rule satisfied": int((~matched).sum() - frozen.sum()),
        "already moved on this business date": int(frozen.sum()),
        **{
            f"transition {a} -> {b}": int(n)
            for (a, b), n in sorted(report.groupby(["from_class", "to_class"], dropna=False).size().items(), key=str)
        },
        **{f"by rule {int(r)}": int(n) for r, n in report["rule_id"].value_counts().sort_index().items()},
        "profiles": len(profiles),
        "profiles computed for another date": stale,
        **facts,
        "compute_seconds": round(time.perf_counter() - started, 3),
    }
    return TransitionPlan(business_date=business_date, changes=changes, report=report, summary=summary)


def apply(crm: Engine, transition_plan: TransitionPlan, *, run_id: str, changed_at: dt.datetime) -> dict[str, Any]:
    """Write the class changes and their history rows in one transaction."""
    started = time.perf_counter()
    counts = apply_changes(
        crm,
        transition_plan.changes,
        routine=DAG_ID,
        run_id=run_id,
        business_date=transition_plan.business_date,
        changed_at=changed_at,
    )
    return {
        "written class_id": counts.get("class_id", 0),
        "history rows": len(transition_plan.changes),
        "apply_seconds": round(time.perf_counter() - started, 3),
    }


def _report(
    accounts: pd.DataFrame,
    measures: pd.DataFrame,
    rules: list[ct.Rule],
    winner: np.ndarray,
    changes: pd.DataFrame,
    class_codes: dict[int, str],
) -> pd.DataFrame:
    """One row per changed account: classes (codes), the winning rule and the value that fired it."""
    if changes.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in REPORT_COLUMNS})
    ids = np.sort(changes["account_id"].to_numpy(dtype=np.int64))
    pos = accounts.index.get_indexer(ids)
    w = winner[pos]
    value = np.full(len(ids), np.nan)
    for i, rule in enumerate(rules):
        sel = w == i
        if sel.any():
            value[sel] = measures[rule.measure_key].to_numpy(dtype="float64")[pos[sel]]
    code = class_codes

    def pick(attr: str) -> list[Any]:
        return [getattr(rules[i], attr) for i in w]

    old = accounts["class_id"].to_numpy(dtype="float64", na_value=np.nan)[pos]
    return pd.DataFrame(
        {
            "account_id": ids,
            "erp_customer_code": accounts["erp_customer_code"].array[pos],
            "from_class": [None if np.isnan(c) else code.get(int(c), str(int(c))) for c in old],
            "to_class": [code.get(rules[i].to_class_id, str(rules[i].to_class_id)) for i in w],
            "rule_id": pick("id"),
            "measure": pick("measure"),
            "window_months": pd.array(pick("window_months"), dtype="Int64"),
            "operator": pick("operator"),
            "threshold": pick("threshold"),
            "value": value,
        }
    )
