"""Steps of crm_class_transition (TOTVS CRM crm251) over real databases: check the rules, plan, apply.

Plain functions taking engines and values (no Airflow), so the DAG, the tests and the benchmark run
the same code. The rules and their semantics are in crm.routines.class_transition.

Where the measures come from (all of them as of the run's business date D, so a backfill of D
reproduces D's classes):
- lifetime `accumulated_value` / `purchase_count`, and the first and last purchase dates
  (`days_since_last_purchase`, `months_as_customer`), from `crm_account_profile` for the accounts
  whose profile row is for D (crm_account_purchase_profile, whose Asset schedules this routine: the
  profile is normally fresh when it runs). Accounts with an ERP code whose profile is for another
  date, or missing, get them from the ERP up to D with the purchase profile's own fold
  (`crm.routines.purchase_profile.ProfileAccumulator` over `erp/invoices.sql`, or
  `erp/invoices_by_customer.sql` when only a few accounts need it): a backfill never reads a later
  profile (which would count later purchases and give negative days). Counts in the summary.
- windowed `accumulated_value` / `purchase_count` (`window_months` N), from the ERP, aggregated there
  (one row per customer): two distinct N per scan through `erp/purchases_in_windows.sql` (the longer
  window's invoices, the shorter one's counted alongside), an odd one out through `erp/purchases_since.sql`.
Accounts without an ERP code have zero value and count and no dates.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
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
from crm.routines.purchase_profile import ProfileAccumulator
from crm.sources import iter_frames, read_frame

log = logging.getLogger(__name__)

DAG_ID = "crm_class_transition"
LIFETIME_MEASURES = frozenset({"accumulated_value", "purchase_count", "days_since_last_purchase", "months_as_customer"})
LIFETIME_COLUMNS = ["accumulated_value", "purchase_count", "first_purchase_date", "last_purchase_date"]
# Up to this many accounts needing ERP measures are read by customer (indexed IN lists); more: one full scan.
FEW_ACCOUNTS = 20_000
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


def read_profiles(crm: Engine, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The lifetime purchase fields of crm_account_profile, indexed by account id.

    `columns`: the LIFETIME_COLUMNS to read (default all; `profile_columns` gives the ones some rules
    need). The profile's date and ERP code always come along: they decide whether a row is for the
    run's date. Dates are parsed once per distinct day, not once per row.
    """
    t = account_profile
    wanted = list(LIFETIME_COLUMNS if columns is None else [c for c in LIFETIME_COLUMNS if c in columns])
    cols = ["account_id", *wanted]
    if "erp_customer_code" in t.c:  # the code the profile was computed from, where the schema keeps it
        cols.append("erp_customer_code")
    stmt = select(*[t.c[c] for c in cols], t.c.business_date)
    frame = select_frame(crm, stmt, [*cols, "business_date"])
    for col in ("first_purchase_date", "last_purchase_date", "business_date"):
        if col in frame:
            frame[col] = _days(frame[col])
    return frame.set_index("account_id")


def profile_columns(rules: list[ct.Rule]) -> list[str]:
    """The LIFETIME_COLUMNS the rules' measures are computed from."""
    needed = {r.measure_key for r in rules}
    return [c for c in LIFETIME_COLUMNS if needed & _MEASURES_OF[c]]


_MEASURES_OF = {
    "accumulated_value": {"accumulated_value"},
    "purchase_count": {"purchase_count"},
    "first_purchase_date": {"months_as_customer"},
    "last_purchase_date": {"days_since_last_purchase"},
}


def _days(values: pd.Series) -> np.ndarray:
    """Dates (ISO text from SQLite, date objects from other drivers) as datetime64[D], NaT for nulls.

    Parsed once per distinct value: a million profile dates are a few thousand days (12x faster than
    `pd.to_datetime` over every row, which goes through strptime for text).
    """
    codes, distinct = pd.factorize(values, use_na_sentinel=True)
    days = pd.to_datetime(pd.Series(distinct, dtype=object)).to_numpy().astype("datetime64[D]")
    return np.append(days, np.datetime64("NaT"))[codes]  # code -1 (a null): the NaT at the end


def lifetime_as_of(
    accounts: pd.DataFrame,
    profiles: pd.DataFrame,
    erp: Engine,
    business_date: dt.date,
    *,
    chunk_rows: int = 500_000,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The lifetime fields (LIFETIME_COLUMNS) of `accounts` as of `business_date`, indexed like `accounts`.

    From the profile where its row is for that date; for the other accounts with an ERP code (profile
    of another date, or none), folded from the ERP invoices up to the date by the purchase profile's
    ProfileAccumulator, so a backfill sees that date's purchases only.
    """
    columns = [c for c in LIFETIME_COLUMNS if c in profiles]  # read_profiles may have left some out
    aligned = profiles.reindex(accounts.index)  # the accounts' profile rows looked up once, for every column
    prof = aligned[columns].copy()
    bd = np.datetime64(business_date, "D")
    fresh = aligned["business_date"].to_numpy().astype("datetime64[D]") == bd
    if "erp_customer_code" in profiles:  # a profile computed under another ERP code is not this account's
        own = accounts["erp_customer_code"].to_numpy(dtype="float64", na_value=np.nan)
        fresh &= aligned["erp_customer_code"].to_numpy(dtype="float64", na_value=np.nan) == own
    has_code = accounts["erp_customer_code"].notna().to_numpy()
    need = has_code & ~fresh
    facts: dict[str, Any] = {"lifetime measures from the profile": int((has_code & fresh).sum())}
    if need.any():
        codes = np.unique(accounts["erp_customer_code"].to_numpy(dtype="float64", na_value=np.nan)[need]).astype(
            np.int64
        )
        acc = ProfileAccumulator(pd.DataFrame({"account_id": codes, "erp_customer_code": codes}), business_date)
        if len(codes) <= FEW_ACCOUNTS:
            invoices = iter_frames(
                erp,
                "erp/invoices_by_customer",
                {"business_date": business_date, "customer_codes": codes.tolist()},
                chunk_rows=chunk_rows,
            )
        else:
            invoices = iter_frames(erp, "erp/invoices", {"business_date": business_date}, chunk_rows=chunk_rows)
        for chunk in invoices:
            acc.add_invoices(chunk)
        got = (
            acc.result()
            .set_index("account_id")
            .reindex(accounts["erp_customer_code"].to_numpy(dtype="float64", na_value=np.nan)[need])
        )
        rows = accounts.index[need]
        for col in columns:
            if col.endswith("_date"):
                prof.loc[rows, col] = got[col].to_numpy().astype("datetime64[D]")
            else:
                prof.loc[rows, col] = got[col].to_numpy(dtype="float64")
        facts["lifetime measures from the ERP (profile not for this date)"] = int(need.sum())
        facts["ERP invoices read for lifetime measures"] = acc.invoices_seen
    for col in ("first_purchase_date", "last_purchase_date"):
        if col in prof:
            prof[col] = pd.to_datetime(prof[col]).to_numpy().astype("datetime64[D]")
    return prof, facts


def measures_for(
    accounts: pd.DataFrame,
    profiles: pd.DataFrame,
    erp: Engine,
    rules: list[ct.Rule],
    business_date: dt.date,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One float column per measure the rules read (NaN: no value), aligned with `accounts`, as of `business_date`."""
    needed = {r.measure_key for r in rules}
    facts: dict[str, Any] = {}
    if needed & LIFETIME_MEASURES:
        prof, facts = lifetime_as_of(accounts, profiles, erp, business_date)
    else:
        prof = pd.DataFrame(index=accounts.index)
    bd = np.datetime64(business_date, "D")
    out: dict[str, np.ndarray] = {}
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
    window_facts: dict[int, dict[str, Any]] = {}
    for frame, columns in _window_reads(erp, ct.windows_needed(rules), business_date):
        if not frame["customer_code"].is_unique:  # one row per customer by contract; sum duplicates all the same
            frame = frame.groupby("customer_code", as_index=False).sum()
        pos = pd.Index(frame["customer_code"].to_numpy(dtype="float64")).get_indexer(codes)  # once per scan
        for months, (value_col, count_col) in columns.items():
            value = frame[value_col].to_numpy(dtype="float64")
            count = frame[count_col].to_numpy(dtype="float64")
            out[f"accumulated_value@{months}"] = np.round(_gathered(value, pos), 2)
            out[f"purchase_count@{months}"] = _gathered(count, pos)
            window_facts[months] = {
                f"window {months} months since": months_before(business_date, months).isoformat(),
                f"window {months} months customers": int((count > 0).sum()),
            }
    for months in sorted(window_facts):
        facts.update(window_facts[months])
    return pd.DataFrame(out, index=accounts.index), facts


def _gathered(values: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """values[pos] per account, 0 where the customer bought nothing in the window (pos -1)."""
    out = np.zeros(len(pos), dtype="float64")
    found = pos >= 0
    out[found] = values[pos[found]]
    return out


def _window_reads(
    erp: Engine, windows: list[int], business_date: dt.date
) -> list[tuple[pd.DataFrame, dict[int, tuple[str, str]]]]:
    """The ERP purchases of each window (months), two windows per scan, longest first.

    Each frame comes with, per window it serves, its (value, count) columns: a pair of windows is one
    `erp/purchases_in_windows.sql` (the longer window's rows, the shorter one's counted alongside: one
    GROUP BY instead of two over mostly the same invoices); an odd one out, `erp/purchases_since.sql`.
    """
    reads = []
    longest_first = sorted(windows, reverse=True)
    for i in range(0, len(longest_first), 2):
        longer, *shorter = longest_first[i : i + 2]
        since = months_before(business_date, longer)
        if shorter:
            params = {"since": since, "recent_since": months_before(business_date, shorter[0])}
            frame = read_frame(erp, "erp/purchases_in_windows", {**params, "business_date": business_date})
            reads.append(
                (
                    frame,
                    {longer: ("purchase_value", "purchase_count"), shorter[0]: ("recent_value", "recent_count")},
                )
            )
        else:
            frame = read_frame(erp, "erp/purchases_since", {"since": since, "business_date": business_date})
            reads.append((frame, {longer: ("purchase_value", "purchase_count")}))
    return reads


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
    profiles = read_profiles(crm, profile_columns(rules))  # only what the rules' measures need
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
    """Write the class changes and their history rows in one transaction (`updated_at` untouched: account_changes)."""
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

    # per rule, then gathered per account: a list comprehension per column over a million accounts is seconds
    def pick(attr: str, dtype: Any) -> np.ndarray:
        return np.array([getattr(r, attr) for r in rules], dtype=dtype)[w]

    old = accounts["class_id"].to_numpy(dtype="float64", na_value=np.nan)[pos]
    return pd.DataFrame(
        {
            "account_id": ids,
            "erp_customer_code": accounts["erp_customer_code"].array[pos],
            "from_class": _class_codes(old, class_codes),
            "to_class": _class_codes(pick("to_class_id", "float64"), class_codes),
            "rule_id": pick("id", np.int64),
            "measure": pick("measure", object),
            "window_months": pd.array(pick("window_months", object), dtype="Int64"),
            "operator": pick("operator", object),
            "threshold": pick("threshold", "float64"),
            "value": value,
        }
    )


def _class_codes(class_ids: np.ndarray, class_codes: dict[int, str]) -> np.ndarray:
    """crm_class codes of float class ids (NaN: None; an id without a class row: its number as text)."""
    got, distinct = pd.factorize(class_ids, use_na_sentinel=True)
    table = [class_codes.get(int(c), str(int(c))) for c in distinct] + [None]  # code -1 (NaN) -> None
    return np.array(table, dtype=object)[got]
