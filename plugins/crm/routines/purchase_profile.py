"""Account purchase profile (TOTVS CRM crm338, "dados complementares da conta"): pure transform.

The nine fields, per account, from its ERP invoices and quotes:

- purchases are the non-cancelled invoices issued on or before the business date;
- first purchase = the earliest issue date; several invoices on that day: the one
  entered first (lowest invoice_id). Its value is that invoice's value, not the day's sum;
- last purchase = the latest issue date; several invoices on that day: the one entered
  last (highest invoice_id); "last invoice number" is that invoice's number;
- accumulated value = sum of the purchases (rounded to cents); accumulated count = their number;
- last quote date = latest quote on or before the business date (quotes do not need a purchase);
- days since last purchase = business date - last purchase date.

An account with no purchase gets null dates/values/number and a zero count and value.

Each profile also keeps its high water: the highest invoice_id it counts. Invoices above it are
not in the profile, so they can be added to it later (`ProfileAccumulator.resume`) with the same
result as recomputing from every invoice: a new invoice on the day of the first purchase never
beats it (its id is higher), one on the day of the last purchase always does.

Invoices arrive in chunks (`add_invoices`), folded into per-account arrays with
numpy scatter-reductions, so memory is O(accounts), not O(invoices), and nothing
is sorted.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

PROFILE_FIELDS = [
    "first_purchase_date",
    "first_purchase_value",
    "last_purchase_date",
    "last_purchase_value",
    "accumulated_value",
    "purchase_count",
    "last_quote_date",
    "days_since_last_purchase",
    "last_invoice_number",
]

# Order key of an invoice: (issue day, invoice_id) packed in one int64 so one min/max finds first/last.
_ID_BITS = 40
_MAX_ID = (1 << _ID_BITS) - 1
_DAY0 = np.datetime64("1900-01-01", "D")
_NO_FIRST = np.iinfo(np.int64).max
_NO_LAST = np.iinfo(np.int64).min


class ProfileAccumulator:
    """Folds invoice and quote chunks into the nine purchase fields of a fixed set of accounts."""

    def __init__(self, accounts: pd.DataFrame, business_date: dt.date) -> None:
        """`accounts`: account_id and erp_customer_code (unique, not null) of the accounts in scope."""
        codes = accounts["erp_customer_code"].to_numpy(dtype=np.int64)
        order = np.argsort(codes, kind="stable")
        self._codes = codes[order]
        if len(self._codes) > 1 and (np.diff(self._codes) == 0).any():
            raise ValueError("accounts: erp_customer_code must be unique")
        self._account_ids = accounts["account_id"].to_numpy(dtype=np.int64)[order]
        # Position of each code by direct indexing when codes are small non-negative integers (ERP
        # customer numbers usually are): 10 M lookups cost 0.1 s this way, 1.5 s by binary search. Not for
        # a few accounts among large codes (an incremental run): the table would cost more than it saves.
        self._dense: np.ndarray | None = None
        if len(self._codes) and self._codes[0] >= 0 and self._codes[-1] <= max(4 * len(self._codes), 1 << 16):
            self._dense = np.full(int(self._codes[-1]) + 1, -1, dtype=np.int64)
            self._dense[self._codes] = np.arange(len(self._codes))
        self._business_day = np.datetime64(business_date, "D")
        n = len(self._codes)
        self.count = np.zeros(n, dtype=np.int64)
        self.total = np.zeros(n, dtype=np.float64)
        self.first_key = np.full(n, _NO_FIRST, dtype=np.int64)
        self.last_key = np.full(n, _NO_LAST, dtype=np.int64)
        self.first_value = np.full(n, np.nan)
        self.last_value = np.full(n, np.nan)
        self.last_number = np.full(n, None, dtype=object)
        self.last_quote_day = np.full(n, _NO_LAST, dtype=np.int64)
        self.high_water = np.full(n, -1, dtype=np.int64)
        # High water each account was resumed with (`resume`); no invoice is above it for the others.
        self._resumed_high_water = np.full(n, _NO_FIRST, dtype=np.int64)
        self._resumed = np.zeros(n, dtype=bool)
        self._touched = np.zeros(n, dtype=bool)  # resumed and given something since: an invoice, a quote
        self.invoices_seen = 0
        self.invoices_counted = 0

    def _index(self, customer_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Position of each code among the accounts, and whether it is one of them."""
        codes = np.asarray(customer_codes, dtype=np.int64)
        if self._dense is not None:
            inside = (codes >= 0) & (codes < len(self._dense))
            pos = np.full(len(codes), -1, dtype=np.int64)
            pos[inside] = self._dense[codes[inside]]
            known = pos >= 0
            return np.maximum(pos, 0), known
        pos = np.searchsorted(self._codes, codes)
        pos_clipped = np.minimum(pos, max(len(self._codes) - 1, 0))
        known = (pos < len(self._codes)) & (self._codes[pos_clipped] == codes) if len(self._codes) else pos < 0
        return pos_clipped, known

    def add_invoices(self, chunk: pd.DataFrame) -> None:
        """Fold one chunk of invoices (the erp/invoices.sql contract) into the state."""
        self.invoices_seen += len(chunk)
        self._fold(chunk)

    def add_new_invoices(self, chunk: pd.DataFrame) -> None:
        """Fold changed invoices (erp/invoice_changes.sql) into the resumed accounts, counting none twice.

        Only invoices above the high water an account was resumed with are taken: the profile already
        counts the others (an edited one means a recomputation, decided before). Rows of other
        accounts are ignored: those accounts read all their invoices through `add_invoices`.
        """
        self.invoices_seen += len(chunk)
        if chunk.empty or not len(self._codes):
            return
        pos, known = self._index(chunk["customer_code"].to_numpy())
        above = known & (chunk["invoice_id"].to_numpy(dtype=np.int64) > self._resumed_high_water[pos])
        if above.any():
            self._fold(chunk[above])

    def _fold(self, chunk: pd.DataFrame) -> None:
        if chunk.empty or not len(self._codes):
            return
        pos, known = self._index(chunk["customer_code"].to_numpy())
        day = chunk["issue_date"].to_numpy().astype("datetime64[D]")
        keep = known & ~chunk["cancelled"].to_numpy(dtype=bool) & (day <= self._business_day)
        if not keep.any():
            return
        i = pos[keep]
        ids = chunk["invoice_id"].to_numpy(dtype=np.int64)[keep]
        if ids.min() < 0 or ids.max() > _MAX_ID:
            raise ValueError(f"invoice_id must be between 0 and {_MAX_ID}")
        value = chunk["total_value"].to_numpy(dtype=np.float64)[keep]
        key = ((day[keep] - _DAY0).astype(np.int64) << _ID_BITS) | ids
        n = len(self._codes)
        self.invoices_counted += len(i)
        self.count += np.bincount(i, minlength=n)
        self.total += np.bincount(i, weights=value, minlength=n)

        chunk_first = np.full(n, _NO_FIRST, dtype=np.int64)
        np.minimum.at(chunk_first, i, key)
        win = (key == chunk_first[i]) & (key < self.first_key[i])  # the chunk's first beats the state's
        self.first_value[i[win]] = value[win]
        np.minimum(self.first_key, chunk_first, out=self.first_key)

        chunk_last = np.full(n, _NO_LAST, dtype=np.int64)
        np.maximum.at(chunk_last, i, key)
        win = (key == chunk_last[i]) & (key > self.last_key[i])
        self.last_value[i[win]] = value[win]
        # Only the winners' numbers become Python strings (the column may hold Arrow strings).
        winners = chunk["invoice_number"].iloc[np.flatnonzero(keep)[win]]
        self.last_number[i[win]] = winners.to_numpy(dtype=object, na_value=None)
        np.maximum(self.last_key, chunk_last, out=self.last_key)
        np.maximum.at(self.high_water, i, ids)
        self._touched[i] = True

    def resume(self, stored: pd.DataFrame, *, keep_last_quote: bool | np.ndarray = True) -> None:
        """Start some accounts from their stored profiles (the columns of `result()`) instead of from nothing.

        Only invoices above each profile's `erp_invoice_high_water` may be added afterwards (the caller
        checks): those are the ones the profile does not count yet. `keep_last_quote` False (per row or
        for all): the account's last quote is read again, so the stored one is dropped.
        """
        if stored.empty:
            return
        pos, known = self._index(stored["erp_customer_code"].to_numpy())
        if not known.all():
            raise ValueError("resume: a stored profile of an account this accumulator does not hold")
        count = stored["purchase_count"].to_numpy(dtype=np.int64)
        bought = count > 0
        first = _days(stored["first_purchase_date"])
        last = _days(stored["last_purchase_date"])
        if (bought & ((first < 0) | (last < 0))).any():
            raise ValueError("resume: a stored profile with purchases but no first or last purchase date")
        self.count[pos] = count
        self.total[pos] = stored["accumulated_value"].to_numpy(dtype=np.float64, na_value=0.0)
        # Tie part 0: a same-day newcomer (higher id) loses the first place and takes the last one.
        self.first_key[pos] = np.where(bought, first << _ID_BITS, _NO_FIRST)
        self.last_key[pos] = np.where(bought, last << _ID_BITS, _NO_LAST)
        self.first_value[pos] = np.where(
            bought, stored["first_purchase_value"].to_numpy(dtype=np.float64, na_value=np.nan), np.nan
        )
        self.last_value[pos] = np.where(
            bought, stored["last_purchase_value"].to_numpy(dtype=np.float64, na_value=np.nan), np.nan
        )
        self.last_number[pos] = np.where(bought, stored["last_invoice_number"].to_numpy(dtype=object), None)
        quote = _days(stored["last_quote_date"])
        keep = np.broadcast_to(np.asarray(keep_last_quote, dtype=bool), quote.shape)
        self.last_quote_day[pos] = np.where(keep & (quote >= 0), quote, _NO_LAST)
        hw = stored["erp_invoice_high_water"].to_numpy(dtype=np.float64, na_value=np.nan)
        self.high_water[pos] = np.nan_to_num(hw, nan=-1.0).astype(np.int64)
        self._resumed_high_water[pos] = self.high_water[pos]
        self._resumed[pos] = True
        self._touched[pos] = ~keep  # its last quote is read again

    def add_last_quotes(self, chunk: pd.DataFrame) -> None:
        """Fold last quote dates (the erp/last_quotes.sql contract: customer_code, last_quote_date)."""
        if chunk.empty or not len(self._codes):
            return
        pos, known = self._index(chunk["customer_code"].to_numpy())
        day = chunk["last_quote_date"].to_numpy().astype("datetime64[D]")
        keep = known & ~np.isnat(day) & (day <= self._business_day)
        np.maximum.at(self.last_quote_day, pos[keep], (day[keep] - _DAY0).astype(np.int64))
        self._touched[pos[keep]] = True

    def may_have_changed(self) -> np.ndarray:
        """Per row of `result()`: False for a resumed profile that nothing was added to (it is as stored)."""
        return ~self._resumed | self._touched

    def result(self) -> pd.DataFrame:
        """account_id, the erp_customer_code it was computed from, and the nine fields, one row per account."""
        bought = self.count > 0
        first_day = np.where(bought, self.first_key >> _ID_BITS, 0) + _DAY0
        last_day = np.where(bought, self.last_key >> _ID_BITS, 0) + _DAY0
        first_day = np.where(bought, first_day, np.datetime64("NaT"))
        last_day = np.where(bought, last_day, np.datetime64("NaT"))
        days_since = (self._business_day - last_day).astype("timedelta64[D]").astype(np.float64)
        return pd.DataFrame(
            {
                "account_id": self._account_ids,
                "erp_customer_code": self._codes,
                "first_purchase_date": first_day.astype("datetime64[s]"),
                "first_purchase_value": np.round(self.first_value, 2),
                "last_purchase_date": last_day.astype("datetime64[s]"),
                "last_purchase_value": np.round(self.last_value, 2),
                "accumulated_value": np.round(self.total, 2),
                "purchase_count": self.count,
                "last_quote_date": np.where(
                    self.last_quote_day == _NO_LAST, np.datetime64("NaT"), _DAY0 + np.maximum(self.last_quote_day, 0)
                ).astype("datetime64[s]"),
                "days_since_last_purchase": pd.array(np.where(bought, days_since, np.nan), dtype="Float64").astype(
                    "Int64"
                ),
                "last_invoice_number": pd.array(self.last_number, dtype=object),
                "erp_invoice_high_water": pd.arrays.IntegerArray(
                    np.maximum(self.high_water, 0), mask=self.high_water < 0
                ),
            }
        )


def _days(dates: pd.Series) -> np.ndarray:
    """Days since _DAY0 of each date (ISO text, date or datetime values); -1 where null."""
    day = pd.to_datetime(dates, errors="raise").to_numpy().astype("datetime64[D]")
    out = (day - _DAY0).astype(np.int64)
    out[np.isnat(day)] = -1
    return out


def compute_profiles(
    accounts: pd.DataFrame,
    invoices: pd.DataFrame,
    last_quotes: pd.DataFrame,
    business_date: dt.date,
) -> pd.DataFrame:
    """The nine purchase fields for `accounts` from whole invoice and quote frames (tests, small runs)."""
    acc = ProfileAccumulator(accounts, business_date)
    acc.add_invoices(invoices)
    acc.add_last_quotes(last_quotes)
    return acc.result()
