"""Account status (TOTVS CRM crm1003): pure transform from ERP or GP facts to status codes and labels.

Codes (stored in `crm_account.erp_status` / `gp_status`): `active`, `inactive`, `not_integrated`.
The display label of the deciding source's code goes to `crm_account.status_label`, in the account's
language (`include/config/account_status_labels.yaml`; fallback: the account's locale, else its
company's, `pt_BR` -> `pt` -> the default labels). The status is informational only.

ERP: no ERP customer code -> `not_integrated` (a lead stays so until the ERP knows it); otherwise
`active` if it has a non-cancelled purchase within its "months inactive" (ERP credit info; null,
zero or negative: the configured default) counted back from the business date, i.e. a purchase
dated on or after `months_before(business_date, N)` (crm.routines.periods), else `inactive`.

GP: no beneficiary code, or a code the GP does not know -> `not_integrated`; `active` when the
beneficiary and its contract are both `active` and the contract covers the business date
(started on or before it, not ended before it); anything else (suspended, cancelled, ended,
not yet started) -> `inactive`.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from crm.config import INCLUDE_DIR
from crm.notify.templates import locale_chain
from crm.routines.periods import months_before_many

ACTIVE, INACTIVE, NOT_INTEGRATED = "active", "inactive", "not_integrated"
CODES = (ACTIVE, INACTIVE, NOT_INTEGRATED)
SOURCES = ("erp", "gp")
STATUS_FIELD = {"erp": "erp_status", "gp": "gp_status"}
LABELS_FILE = INCLUDE_DIR / "config" / "account_status_labels.yaml"


class LabelError(ValueError):
    """The label file lacks a default label for some source/status."""


@functools.cache
def load_labels(path: Path = LABELS_FILE) -> dict[str, dict[str, dict[str, str]]]:
    """{locale: {source: {code: label}}} from the YAML file; the '' locale (default) must be complete."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    labels = {str(loc or ""): v for loc, v in (data.get("labels") or {}).items()}
    default = labels.get("default") or labels.get("")
    missing = [f"{s}.{c}" for s in SOURCES for c in CODES if not (default or {}).get(s, {}).get(c)]
    if missing:
        raise LabelError(f"{path}: the default labels lack {', '.join(missing)}")
    labels[""] = labels.pop("default", default)
    return labels


def label_for(labels: Mapping[str, Mapping[str, Mapping[str, str]]], source: str, code: str, locale: str | None) -> str:
    """The label of one status in one locale, with the fallback chain."""
    for loc in locale_chain(locale):
        found = (labels.get(loc) or {}).get(source, {}).get(code)
        if found:
            return found
    raise LabelError(f"no label for {source}.{code}")


def labels_of(
    codes: np.ndarray,
    locales: pd.Series,
    source: str,
    labels: Mapping[str, Mapping[str, Mapping[str, str]]],
    *,
    code_idx: np.ndarray | None = None,
) -> np.ndarray:
    """Vectorised: the label of each (code, locale) pair; a table per distinct locale, then one gather.

    The locales are factorized as they are (Arrow strings stay Arrow: no Python string per account);
    a null locale takes the table's last row, the fallback chain from no locale at all. `code_idx`:
    `code_index(codes)` when the caller has it already (a million codes are not indexed twice).
    """
    loc_idx, distinct = pd.factorize(locales, use_na_sentinel=True)
    table = np.array(
        [[label_for(labels, source, c, loc or None) for c in CODES] for loc in [*distinct.tolist(), None]],
        dtype=object,
    )
    code_idx = code_index(codes) if code_idx is None else code_idx
    if (code_idx < 0).any():
        raise ValueError(f"unknown status code(s): {sorted(set(np.asarray(codes)[code_idx < 0]))}")
    return table[loc_idx, code_idx]  # loc_idx -1 (a null locale): the last row


def code_index(codes: np.ndarray) -> np.ndarray:
    """Position of each status code in CODES (-1: not a code), by factorizing first.

    A million codes are three distinct values: hashing them into a factorization and mapping its few
    uniques is 5x faster than looking every string up in an Index.
    """
    got, distinct = pd.factorize(np.asarray(codes, dtype=object), use_na_sentinel=False)
    return pd.Index(CODES).get_indexer(distinct)[got] if len(got) else np.zeros(0, dtype=np.int64)


def months_inactive_of(customer_codes: pd.Series, credit: pd.DataFrame, default_months: int) -> np.ndarray:
    """The "months inactive" that applies to each account: its ERP credit info's, else `default_months`.

    `credit`: customer_code, months_inactive (nullable). Null, zero or negative values (how ERPs
    leave the field unset) and customers without credit info get the default; a customer listed
    twice takes its last row.
    """
    if int(default_months) < 1:
        raise ValueError("the default months inactive must be at least 1")
    codes = customer_codes.to_numpy(dtype="float64", na_value=np.nan)
    months = np.full(len(codes), int(default_months), dtype=np.int64)
    if len(credit):
        found = _lookup(
            credit["customer_code"].to_numpy(dtype="float64"),
            pd.to_numeric(credit["months_inactive"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan),
            codes,
            keep="last",
        )
        use = ~np.isnan(codes) & (np.nan_to_num(found, nan=0.0) >= 1)
        months[use] = found[use].astype(np.int64)
    return months


def erp_statuses(
    customer_codes: pd.Series, months: np.ndarray, purchases: pd.DataFrame, business_date: dt.date
) -> pd.DataFrame:
    """Status per account from its ERP customer code (nullable), months inactive and last purchase.

    `months`: from `months_inactive_of`; `purchases`: customer_code, last_purchase_date (the latest
    non-cancelled purchase of a window starting on or before every account's cutoff). Returns,
    aligned with `customer_codes`: status (object: the codes as Python strings, as the labels and
    the diff take them), months_inactive (applied; null without a code), window_start (a purchase on
    or after it keeps the account active), last_purchase_date (the purchase that did, null if none).
    """
    n = len(customer_codes)
    has_code = customer_codes.notna().to_numpy()
    codes = customer_codes.to_numpy(dtype="float64", na_value=np.nan)
    months = np.asarray(months, dtype=np.int64)
    # months_before once per distinct month count (a handful), gathered back per account
    month_idx, distinct_months = pd.factorize(months)
    window_start = months_before_many(business_date, np.asarray(distinct_months, dtype=np.int64))[month_idx]
    last = np.full(n, np.datetime64("NaT"), dtype="datetime64[D]")
    if len(purchases):
        dates = pd.to_datetime(purchases["last_purchase_date"]).to_numpy().astype("datetime64[D]")
        known = ~np.isnat(dates)
        last = _lookup(purchases["customer_code"].to_numpy(dtype="float64")[known], dates[known], codes, keep="max")
    bd = np.datetime64(business_date, "D")
    bought = ~np.isnat(last) & (last >= window_start) & (last <= bd)
    status = np.asarray(CODES, dtype=object)[np.where(~has_code, 2, np.where(bought, 0, 1))]
    months_applied = pd.array(months, dtype="Int64")
    months_applied[~has_code] = pd.NA
    return pd.DataFrame(
        {
            "status": pd.Series(status, index=customer_codes.index, dtype=object),
            "months_inactive": pd.Series(months_applied, index=customer_codes.index),
            "window_start": pd.Series(
                np.where(has_code, window_start, np.datetime64("NaT")), index=customer_codes.index
            ),
            "last_purchase_date": pd.Series(np.where(bought, last, np.datetime64("NaT")), index=customer_codes.index),
        },
        index=customer_codes.index,
    )


def _lookup(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray, *, keep: str) -> np.ndarray:
    """The value of each `wanted` key (NaN/NaT where absent or NaN); a key listed twice: its `keep` ('last', 'max').

    One hash lookup per account on plain arrays (float keys: nullable integer codes as float64, NaN
    never found), without a Series, a groupby or a reindex in between; whole-number keys are hashed
    as integers (40% faster than as floats).
    """
    missing = np.array(np.datetime64("NaT") if values.dtype.kind == "M" else np.nan, dtype=values.dtype)
    known = ~np.isnan(keys)
    keys, values = keys[known], values[known]
    if keep == "max":  # by key, then value: a key's last row holds its largest value
        order = np.lexsort((values, keys))
        keys, values = keys[order], values[order]
    keys, wanted = _as_integers(keys, wanted)
    index = pd.Index(keys)
    if not index.is_unique:
        last = ~index.duplicated(keep="last")
        index, values = index[last], values[last]
    pos = index.get_indexer(wanted)
    out = np.full(len(wanted), missing, dtype=values.dtype)
    found = pos >= 0
    out[found] = values[pos[found]]
    return out


def _as_integers(keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float keys and probes as int64 when every one is a whole number (a NaN probe: a key that is none)."""
    if not len(keys) or np.abs(keys).max() >= 2**53:
        return keys, wanted
    as_int = keys.astype(np.int64)
    nan = np.isnan(wanted)
    probe = np.where(nan, 0.0, wanted)
    if not (as_int == keys).all() or np.abs(probe).max(initial=0) >= 2**53:
        return keys, wanted
    probe_int = probe.astype(np.int64)
    if not (probe_int == probe).all():
        return keys, wanted
    probe_int[nan] = as_int.min() - 1  # found nowhere
    return as_int, probe_int


def gp_statuses(beneficiary_codes: pd.Series, gp: pd.DataFrame, business_date: dt.date) -> pd.DataFrame:
    """Status per account from its GP beneficiary code (nullable) and the GP's beneficiary/contract rows.

    `gp`: beneficiary_code, beneficiary_status, contract_status, contract_start, contract_end (nullable).
    Returns, aligned with `beneficiary_codes`: status, beneficiary_status, contract_status.
    """
    codes = beneficiary_codes.astype(object)
    known = gp.drop_duplicates("beneficiary_code", keep="last").set_index("beneficiary_code")
    rows = known.reindex(codes.where(codes.notna(), None).to_numpy())
    bd = np.datetime64(business_date, "D")
    start = pd.to_datetime(rows["contract_start"]).to_numpy().astype("datetime64[D]")
    end = pd.to_datetime(rows["contract_end"]).to_numpy().astype("datetime64[D]")
    found = rows["beneficiary_status"].notna().to_numpy() & codes.notna().to_numpy()
    covers = ~np.isnat(start) & (start <= bd) & (np.isnat(end) | (end >= bd))
    active = (
        (rows["beneficiary_status"].to_numpy(dtype=object) == "active")
        & (rows["contract_status"].to_numpy(dtype=object) == "active")
        & covers
    )
    status = np.where(~found, NOT_INTEGRATED, np.where(active, ACTIVE, INACTIVE)).astype(object)
    return pd.DataFrame(
        {
            "status": status,
            "beneficiary_status": rows["beneficiary_status"].to_numpy(dtype=object),
            "contract_status": rows["contract_status"].to_numpy(dtype=object),
        },
        index=beneficiary_codes.index,
    )
