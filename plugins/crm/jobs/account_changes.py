"""Changing accounts, audited: the one way routines write account fields (status, class, owner, ERP code).

Each change is a row (account_id, field, old, new). `apply_changes` writes the new values and one
`crm_account_history` row per change (old value, new value, routine, run id, business date) in
the caller's transaction, so the account and its audit trail can never disagree. Only real
changes are passed in (`diff` drops the equal ones), so re-running a date changes nothing more.
A change marked `audited = False` (an optional column) is written without a history row of its
own: a derived value whose change is already told by another one of the same account (the
status label that follows its status, see crm.jobs.account_status).

`crm_account.updated_at` is the CRM's change signal: the ERP account sync resumes from it, and the
CRM touches it when a person saves an account. Routine writes follow one rule:

- they **never lower it**: a change that moves it sets `updated_at = max(updated_at, stamp)`, so a
  person's edit saved between a routine's plan and its write-back keeps its (later) stamp and the
  next incremental ERP sync still sees it;
- only changes of the account record itself move it (`BUMPS_UPDATED_AT`: the owner, the ERP code);
  the derived, informational fields (status, status label, class) leave it alone: they are
  recomputed for up to every account each night, nothing downstream resumes from them, and moving
  the stamp would make the next ERP sync re-check up to a million unchanged accounts. Their audit
  trail is `crm_account_history` (`changed_at`).

The stamp is the caller's `changed_at`: the time of the write (UTC), also the history's `changed_at`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine

from crm.db.crm_schema import account, account_history
from crm.db.upsert import write_transaction

CHANGE_COLUMNS = ["account_id", "field", "old_value", "new_value"]
WRITABLE = {"erp_status", "gp_status", "status_label", "class_id", "owner_id", "erp_customer_code"}
BUMPS_UPDATED_AT = frozenset({"owner_id", "erp_customer_code"})


def diff(current: pd.DataFrame, wanted: pd.DataFrame, fields: Sequence[str]) -> pd.DataFrame:
    """Changes that turn `current` into `wanted` (both indexed by account id), nulls compared as equal."""
    common = wanted.index.intersection(current.index)
    parts = []
    for f in fields:
        old = current.loc[common, f]
        new = wanted.loc[common, f]
        # nullable dtypes (Int64) compare to NA where a side is null: that is "not the same" unless both are
        same = (old == new).fillna(False).astype(bool) | (old.isna() & new.isna())
        changed = ~same.to_numpy(dtype=bool)
        if changed.any():
            parts.append(
                pd.DataFrame(
                    {
                        "account_id": common[changed].to_numpy(),
                        "field": f,
                        "old_value": old.to_numpy(dtype=object)[changed],
                        "new_value": new.to_numpy(dtype=object)[changed],
                    }
                )
            )
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in CHANGE_COLUMNS})
    return pd.concat(parts, ignore_index=True)


def apply_changes(
    target: Engine | Connection,
    changes: pd.DataFrame,
    *,
    routine: str,
    run_id: str,
    business_date: dt.date,
    changed_at: dt.datetime,
) -> dict[str, int]:
    """Write the changes and their history rows in one transaction; returns the count per field.

    `updated_at` moves (never backwards) only for accounts changing a field of BUMPS_UPDATED_AT,
    to `changed_at` or stays where a later edit put it (see the module docstring).

    Set-wise on purpose (a million status changes must take seconds, not minutes): one UPDATE per
    account setting every changed field at once (one executemany per combination of fields), and
    the history rows in one executemany of plain tuples. Values are converted once per distinct
    value, not once per row.
    """
    unknown = set(pd.unique(changes["field"])) - WRITABLE if len(changes) else set()  # not a Python loop over the rows
    if unknown:
        raise ValueError(f"not a field routines may change: {sorted(unknown)}")
    counts: dict[str, int] = {}
    if changes.empty:
        return counts
    if changes.duplicated(["account_id", "field"]).any():
        raise ValueError("two changes of the same field of the same account")
    stamp = changed_at if changed_at.tzinfo is None else changed_at.astimezone(dt.UTC).replace(tzinfo=None)
    ids = changes["account_id"].to_numpy(dtype=np.int64)
    fields = changes["field"].to_numpy(dtype=object)
    new_plain = _mapped(changes["new_value"].to_numpy(dtype=object), _plain)
    with write_transaction(target) as conn:
        p = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        q = conn.dialect.identifier_preparer.quote
        when = _driver_value(stamp, conn.dialect.name)
        day = _driver_value(business_date, conn.dialect.name)
        # Per account, the new value of each field it changes (None where it changes nothing: told apart by `has`).
        field_names = sorted(set(fields.tolist()))
        rows, row_of = np.unique(ids, return_inverse=True)
        matrix = np.empty((len(rows), len(field_names)), dtype=object)
        has = np.zeros((len(rows), len(field_names)), dtype=bool)
        col_of = pd.Index(field_names).get_indexer(fields)
        matrix[row_of, col_of] = new_plain
        has[row_of, col_of] = True
        # The combination of fields each account changes, as a bit mask (field i -> bit i): one UPDATE per mask.
        masks = has.astype(np.int64) @ (np.int64(1) << np.arange(len(field_names), dtype=np.int64))
        for mask in np.unique(masks).tolist():
            cols = [i for i in range(len(field_names)) if mask >> i & 1]
            members = np.flatnonzero(masks == mask)
            sets = ", ".join(f"{q(field_names[i])} = {p}" for i in cols)
            bump = any(field_names[i] in BUMPS_UPDATED_AT for i in cols)
            stamp_cols = (repeat(when), repeat(when)) if bump else ()
            if bump:  # max(updated_at, stamp), portable: a later edit's stamp is never lowered
                sets += f", updated_at = CASE WHEN updated_at < {p} THEN {p} ELSE updated_at END"
            sql = f"UPDATE {q(account.name)} SET {sets} WHERE id = {p}"
            params = list(
                zip(*(matrix[members, i].tolist() for i in cols), *stamp_cols, rows[members].tolist(), strict=False)
            )
            conn.exec_driver_sql(sql, params)
        for name, n in zip(*np.unique(fields.astype(str), return_counts=True), strict=True):
            counts[str(name)] = int(n)
        if "audited" in changes:
            keep = changes["audited"].to_numpy(dtype=bool)
            changes, ids, fields = changes[keep], ids[keep], fields[keep]
        h = account_history.c
        columns = [h.account_id, h.field, h.old_value, h.new_value, h.routine, h.run_id, h.business_date, h.changed_at]
        sql = (
            f"INSERT INTO {q(account_history.name)} ({', '.join(q(c.name) for c in columns)}) "
            f"VALUES ({', '.join([p] * len(columns))})"
        )
        history = list(
            zip(
                ids.tolist(),
                fields.tolist(),
                _mapped(changes["old_value"].to_numpy(dtype=object), _text),
                _mapped(changes["new_value"].to_numpy(dtype=object), _text),
                repeat(routine),
                repeat(run_id),
                repeat(day),
                repeat(when),
                strict=False,
            )
        )
        for start in range(0, len(history), _HISTORY_BATCH):
            conn.exec_driver_sql(sql, history[start : start + _HISTORY_BATCH])
    return counts


_HISTORY_BATCH = 50_000


def _mapped(values: np.ndarray, convert: Any) -> list[Any]:
    """`convert` applied once per distinct value (changes repeat a few statuses or classes a million times)."""
    if len(values) == 0:
        return []
    codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)
    table = [convert(v) for v in uniques] + [None]  # code -1 (a null) -> None
    return [table[c] for c in codes.tolist()]


def _driver_value(value: dt.date | dt.datetime, dialect_name: str) -> Any:
    """Dates as SQLAlchemy stores them in SQLite (text), objects for the other drivers."""
    if dialect_name != "sqlite":
        return value
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value.isoformat()


def _plain(value: Any) -> Any:
    """numpy scalars and pandas nulls as the driver takes them."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _text(value: Any) -> str | None:
    v = _plain(value)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)
