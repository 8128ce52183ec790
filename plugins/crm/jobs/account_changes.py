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
import sqlite3
from collections.abc import Sequence
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, Engine

from crm.db.crm_schema import account, account_history
from crm.db.upsert import write_transaction

CHANGE_COLUMNS = ["account_id", "field", "old_value", "new_value"]
WRITABLE = {"erp_status", "gp_status", "status_label", "class_id", "owner_id", "erp_customer_code"}
BUMPS_UPDATED_AT = frozenset({"owner_id", "erp_customer_code"})


def diff(current: pd.DataFrame, wanted: pd.DataFrame, fields: Sequence[str]) -> pd.DataFrame:
    """Changes that turn `current` into `wanted` (both indexed by account id), nulls compared as equal.

    In field order, then the accounts' order. The value columns are object dtype, the values as the
    frames hold them (`apply_changes` converts them once per distinct value): inferring a string
    dtype for a million rows only to convert it back costs more than the comparison itself. Frames
    on the same index (a routine's wanted values for the accounts it read) are compared by position.
    """
    same_index = wanted.index.equals(current.index)
    common = wanted.index if same_index else wanted.index.intersection(current.index)
    ids, names, olds, news = [], [], [], []
    for f in fields:
        old = current[f] if same_index else current.loc[common, f]
        new = wanted[f] if same_index else wanted.loc[common, f]
        # nullable dtypes (Int64) compare to NA where a side is null: that is "not the same" unless both are
        same = (old == new).fillna(False).astype(bool) | (old.isna() & new.isna())
        changed = ~same.to_numpy(dtype=bool)
        if changed.any():
            ids.append(common.to_numpy()[changed])
            names.append(np.repeat(np.array([f], dtype=object), int(changed.sum())))  # np.full: 15x slower
            olds.append(old.array[changed].to_numpy(dtype=object))
            news.append(new.array[changed].to_numpy(dtype=object))
    if not ids:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in CHANGE_COLUMNS})
    return pd.DataFrame(
        {
            "account_id": np.concatenate(ids),
            **{
                c: pd.Series(np.concatenate(parts), dtype=object)
                for c, parts in (("field", names), ("old_value", olds), ("new_value", news))
            },
        }
    )


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

    Set-wise on purpose (a million status changes must take seconds, not minutes). Changes repeat a
    few values a million times (three statuses, a label per locale, four classes), so each distinct
    combination of new values goes once into a small temporary table and the accounts travel as one
    array parameter of (account id, combination) pairs: one UPDATE per set of changed fields joins
    them (every account row rewritten once, in id order), one INSERT ... SELECT writes the history
    rows in the order of `changes` (`_write_setwise`). No Python object, bound parameter or statement
    per row. Where the database cannot do that (SQLite before 3.38, another dialect, ids beyond what
    the pairs can encode), row by row with executemany (`_write_rowwise`): the same rows either way.
    """
    if changes.empty:
        return {}
    field_of, field_uniques = pd.factorize(changes["field"].to_numpy(dtype=object), use_na_sentinel=False)
    unknown = set(field_uniques.tolist()) - WRITABLE
    if unknown:
        raise ValueError(f"not a field routines may change: {sorted(unknown, key=str)}")
    # The fields in name order (the order of the SET clauses); each change's field as an index into them.
    field_names = sorted(str(f) for f in field_uniques)
    col_of = np.asarray([field_names.index(str(f)) for f in field_uniques], dtype=np.int64)[field_of]
    ids = changes["account_id"].to_numpy(dtype=np.int64)
    rows, row_of = _sorted_codes(ids)
    if np.bincount(row_of * len(field_names) + col_of).max() > 1:
        raise ValueError("two changes of the same field of the same account")
    counts = {f: int(n) for f, n in zip(field_names, np.bincount(col_of, minlength=len(field_names)), strict=True)}

    # Per account, the code of its new value of each field (into `new_values`; -1: null, _UNCHANGED: not changed).
    new_codes, new_values = _factorized(changes["new_value"].to_numpy(dtype=object), _plain)
    matrix = np.full((len(rows), len(field_names)), _UNCHANGED, dtype=np.int64)
    matrix[row_of, col_of] = new_codes
    update = _Updates(rows, matrix, new_values, field_names)
    # The history rows: field, old and new value as text, for the audited changes.
    keep = changes["audited"].to_numpy(dtype=bool) if "audited" in changes else np.ones(len(changes), dtype=bool)
    old_codes, old_texts = _factorized(changes["old_value"].to_numpy(dtype=object)[keep], _text)
    new_texts = [_text(v) for v in new_values]
    history = _History(ids[keep], col_of[keep], old_codes, new_codes[keep], field_names, old_texts, new_texts)

    stamp = changed_at if changed_at.tzinfo is None else changed_at.astimezone(dt.UTC).replace(tzinfo=None)
    with write_transaction(target) as conn:
        audit = (routine, run_id, _driver_value(business_date, conn.dialect.name))
        when = _driver_value(stamp, conn.dialect.name)
        if _setwise_supported(conn, update, history):
            _write_setwise(conn, update, history, audit, when)
        else:
            _write_rowwise(conn, update, history, audit, when)
    return counts


_UNCHANGED = -2
_HISTORY_BATCH = 50_000
# Accounts per set-wise statement: bounds the array parameter (a few MB of text) without costing statements.
_SETWISE_CHUNK = 1 << 20
_INT64_MAX = (1 << 63) - 1


class _Updates:
    """The account rows to rewrite, grouped by the combination of new values they take.

    `combo_of_row`: per account (`rows`, ascending ids), its combination; `combos`: per combination,
    the code of each field's new value (`_UNCHANGED` for a field it does not change); `masks`: per
    combination, its changed fields as bits (field i -> bit i).
    """

    def __init__(self, rows: np.ndarray, matrix: np.ndarray, values: list[Any], field_names: list[str]) -> None:
        self.rows, self.values, self.field_names = rows, values, field_names
        self.combo_of_row, first = _combinations(matrix)
        self.combos = matrix[first]
        bits = np.int64(1) << np.arange(len(field_names), dtype=np.int64)
        self.masks = (self.combos != _UNCHANGED).astype(np.int64) @ bits

    def fields_of(self, mask: int) -> list[int]:
        return [i for i in range(len(self.field_names)) if mask >> i & 1]

    def value(self, code: int) -> Any:
        return None if code < 0 else self.values[code]

    def bumps(self, mask: int) -> bool:
        return any(self.field_names[i] in BUMPS_UPDATED_AT for i in self.fields_of(mask))


class _History:
    """The history rows in the order of the changes; `combo_of`: per row, its (field, old, new) combination."""

    def __init__(
        self,
        ids: np.ndarray,
        cols: np.ndarray,
        old_codes: np.ndarray,
        new_codes: np.ndarray,
        field_names: list[str],
        old_texts: list[str | None],
        new_texts: list[str | None],
    ) -> None:
        self.ids, self.field_names = ids, field_names
        self.combo_of, first = _combinations(np.column_stack([cols, old_codes, new_codes]))
        self.combos = [
            (field_names[c], None if o < 0 else old_texts[o], None if n < 0 else new_texts[n])
            for c, o, n in zip(cols[first].tolist(), old_codes[first].tolist(), new_codes[first].tolist(), strict=True)
        ]
        self.cols, self.old_codes, self.new_codes = cols, old_codes, new_codes
        self.old_texts, self.new_texts = old_texts, new_texts

    def __len__(self) -> int:
        return len(self.ids)


def _setwise_supported(conn: Connection, update: _Updates, history: _History) -> bool:
    """PostgreSQL, or SQLite 3.38+ (UPDATE ... FROM, JSON built in) with ids the packed pairs can hold."""
    if conn.dialect.name == "postgresql":
        return True
    if conn.dialect.name != "sqlite" or sqlite3.sqlite_version_info < (3, 38):
        return False
    for ids, n in ((update.rows, len(update.combos)), (history.ids, len(history.combos))):
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) > (_INT64_MAX - n) // max(n, 1)):
            return False
    return True


def _write_setwise(
    conn: Connection, update: _Updates, history: _History, audit: tuple[Any, Any, Any], when: Any
) -> None:
    """The UPDATEs and the history INSERT joining the distinct values (temporary tables) to the array of accounts."""
    dialect = conn.dialect
    q = dialect.identifier_preparer.quote
    p = "?" if dialect.paramstyle == "qmark" else "%s"
    acct, hist = q(account.name), q(account_history.name)
    new_table, hist_table = "crm_change_new_values", "crm_change_history_values"
    type_of = {f: account.c[f].type.compile(dialect=dialect) for f in update.field_names}
    value_cols = [f"v{i}" for i in range(len(update.field_names))]
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {new_table} (code INTEGER PRIMARY KEY, "
        + ", ".join(f"{c} {type_of[f]}" for c, f in zip(value_cols, update.field_names, strict=True))
        + ")"
    )
    conn.exec_driver_sql(
        f"INSERT INTO {new_table} VALUES ({', '.join([p] * (1 + len(value_cols)))})",
        [(g, *(update.value(c) for c in combo)) for g, combo in enumerate(update.combos.tolist())],
    )
    for mask in np.unique(update.masks).tolist():
        cols = update.fields_of(mask)
        sets = ", ".join(f"{q(update.field_names[i])} = n.{value_cols[i]}" for i in cols)
        params: list[Any] = []
        if update.bumps(mask):  # max(updated_at, stamp), portable: a later edit's stamp is never lowered
            sets += f", updated_at = CASE WHEN {acct}.updated_at < {p} THEN {p} ELSE {acct}.updated_at END"
            params += [when, when]
        members = np.flatnonzero(update.masks[update.combo_of_row] == mask)
        for part in _chunks(members):
            pairs, args = _pairs(dialect.name, update.rows[part], update.combo_of_row[part], len(update.combos))
            conn.exec_driver_sql(
                f"UPDATE {acct} SET {sets} FROM {pairs} {_join(dialect.name, new_table, 'n')}"
                f" WHERE {acct}.id = s.account_id",
                (*params, *args),
            )
    conn.exec_driver_sql(f"DROP TABLE {new_table}")
    if not len(history):
        return
    h = account_history.c
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {hist_table} (code INTEGER PRIMARY KEY, field {h.field.type.compile(dialect=dialect)},"
        " old_value TEXT, new_value TEXT)"
    )
    conn.exec_driver_sql(
        f"INSERT INTO {hist_table} VALUES ({p}, {p}, {p}, {p})", [(g, *c) for g, c in enumerate(history.combos)]
    )
    columns = [h.account_id, h.field, h.old_value, h.new_value, h.routine, h.run_id, h.business_date, h.changed_at]
    # In the order of the changes (so the history ids are too): SQLite scans the array in order, PostgreSQL sorts.
    order = " ORDER BY s.n" if dialect.name == "postgresql" else ""
    for part in _chunks(np.arange(len(history))):
        pairs, args = _pairs(dialect.name, history.ids[part], history.combo_of[part], len(history.combos))
        conn.exec_driver_sql(
            f"INSERT INTO {hist} ({', '.join(q(c.name) for c in columns)})"
            f" SELECT s.account_id, c.field, c.old_value, c.new_value, {p}, {p}, {p}, {p}"
            f" FROM {pairs} {_join(dialect.name, hist_table, 'c')}{order}",
            (*audit, when, *args),
        )
    conn.exec_driver_sql(f"DROP TABLE {hist_table}")


def _pairs(dialect_name: str, ids: np.ndarray, codes: np.ndarray, n_codes: int) -> tuple[str, tuple[str, ...]]:
    """A FROM item `s(account_id, code[, n])` over (id, code) pairs given as array parameters.

    PostgreSQL zips two arrays (`unnest`, with their ordinality `n`). SQLite has no array type:
    the pairs go as one JSON array of `id * n_codes + code` (json_each keeps the order).
    """
    if dialect_name == "postgresql":
        return (
            "unnest(CAST(%s AS BIGINT[]), CAST(%s AS BIGINT[])) WITH ORDINALITY AS s(account_id, code, n)",
            (_int_list(ids, "{", "}"), _int_list(codes, "{", "}")),
        )
    packed = ids * np.int64(n_codes) + codes
    return (
        f"(SELECT value / {int(n_codes)} AS account_id, value % {int(n_codes)} AS code FROM json_each(?)) AS s",
        (_int_list(packed, "[", "]"),),
    )


def _int_list(values: np.ndarray, open_: str, close: str) -> str:
    """Integers as one comma-separated literal, formatted by Arrow (6x faster than str() per value)."""
    if not len(values):
        return open_ + close
    text = pc.cast(pa.array(values, type=pa.int64()), pa.string())
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(text)], type=pa.int32()), text), ",")
    return open_ + joined[0].as_py() + close


def _join(dialect_name: str, table: str, alias: str) -> str:
    """Join a values table to the pairs `s` on its code; on SQLite a CROSS JOIN, which keeps `s` the outer loop."""
    if dialect_name == "sqlite":  # the array scanned once, in order; each code a primary-key lookup
        return f"CROSS JOIN {table} AS {alias} ON {alias}.code = s.code"
    return f"JOIN {table} AS {alias} ON {alias}.code = s.code"


def _chunks(positions: np.ndarray) -> list[np.ndarray]:
    return [positions[i : i + _SETWISE_CHUNK] for i in range(0, len(positions), _SETWISE_CHUNK)]


def _write_rowwise(
    conn: Connection, update: _Updates, history: _History, audit: tuple[Any, Any, Any], when: Any
) -> None:
    """One UPDATE per account (an executemany per set of changed fields) and one history row per change."""
    p = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    q = conn.dialect.identifier_preparer.quote
    values = [*update.values, None]  # code -1 (a null) -> None
    masks_of_row = update.masks[update.combo_of_row]
    matrix = update.combos[update.combo_of_row]
    for mask in np.unique(update.masks).tolist():
        cols = update.fields_of(mask)
        members = np.flatnonzero(masks_of_row == mask)
        sets = ", ".join(f"{q(update.field_names[i])} = {p}" for i in cols)
        bump = update.bumps(mask)
        stamp_cols = (repeat(when), repeat(when)) if bump else ()
        if bump:  # max(updated_at, stamp), portable: a later edit's stamp is never lowered
            sets += f", updated_at = CASE WHEN updated_at < {p} THEN {p} ELSE updated_at END"
        sql = f"UPDATE {q(account.name)} SET {sets} WHERE id = {p}"
        params = list(
            zip(
                *([values[c] for c in matrix[members, i].tolist()] for i in cols),
                *stamp_cols,
                update.rows[members].tolist(),
                strict=False,
            )
        )
        conn.exec_driver_sql(sql, params)
    h = account_history.c
    columns = [h.account_id, h.field, h.old_value, h.new_value, h.routine, h.run_id, h.business_date, h.changed_at]
    sql = (
        f"INSERT INTO {q(account_history.name)} ({', '.join(q(c.name) for c in columns)}) "
        f"VALUES ({', '.join([p] * len(columns))})"
    )
    old_texts, new_texts = [*history.old_texts, None], [*history.new_texts, None]
    rows = list(
        zip(
            history.ids.tolist(),
            [history.field_names[c] for c in history.cols.tolist()],
            [old_texts[c] for c in history.old_codes.tolist()],
            [new_texts[c] for c in history.new_codes.tolist()],
            *(repeat(v) for v in audit),
            repeat(when),
            strict=False,
        )
    )
    for start in range(0, len(rows), _HISTORY_BATCH):
        conn.exec_driver_sql(sql, rows[start : start + _HISTORY_BATCH])


def _factorized(values: np.ndarray, convert: Any) -> tuple[np.ndarray, list[Any]]:
    """Codes (-1: null) and `convert` applied once per distinct value (a few statuses or classes, a million times)."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64), []
    codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)
    return codes.astype(np.int64), [convert(v) for v in uniques]


def _sorted_codes(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(ids, return_inverse=True), by hashing then sorting the distinct ids only (3x faster on 2 M ids)."""
    codes, uniques = pd.factorize(ids)
    order = np.argsort(uniques, kind="stable")
    rank = np.empty(len(uniques), dtype=np.int64)
    rank[order] = np.arange(len(uniques), dtype=np.int64)
    return np.asarray(uniques)[order], rank[codes]


def _combinations(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense code of each row's combination of values (first seen: 0) and the first row of each combination.

    The columns as the digits of one mixed-radix number, factorized once; where their ranges would
    overflow 62 bits (many distinct values), column by column, re-densified after each.
    """
    n = len(matrix)
    if not n:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    low = matrix.min(axis=0)
    digits = matrix - low
    ranges = [int(r) + 1 for r in digits.max(axis=0)]
    if float(np.prod(np.asarray(ranges, dtype=np.float64))) < 2.0**62:
        key = np.zeros(n, dtype=np.int64)
        for j, r in enumerate(ranges):
            key = key * np.int64(r) + digits[:, j]
        key = pd.factorize(key)[0].astype(np.int64)
    else:
        key = np.zeros(n, dtype=np.int64)
        for j in range(matrix.shape[1]):
            key = pd.factorize(key * np.int64(ranges[j]) + digits[:, j])[0].astype(np.int64)
    # factorize numbers combinations in order of appearance: a first row is one whose code exceeds all before it
    first = np.flatnonzero(key > np.maximum.accumulate(np.concatenate([[-1], key[:-1]])))
    return key, first


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
