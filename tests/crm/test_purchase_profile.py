"""The nine purchase fields, hand-computed for each edge case (pure transform, no database)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from crm.routines.purchase_profile import ProfileAccumulator, compute_profiles

BD = dt.date(2026, 11, 22)


def invoices(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(
        rows, columns=["invoice_id", "customer_code", "issue_date", "total_value", "invoice_number", "cancelled"]
    )
    frame["issue_date"] = pd.to_datetime(frame["issue_date"])
    return frame


def quotes(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_code", "last_quote_date"])
    frame["last_quote_date"] = pd.to_datetime(frame["last_quote_date"])
    return frame


def accounts(*codes: int) -> pd.DataFrame:
    return pd.DataFrame({"account_id": [c * 10 for c in codes], "erp_customer_code": list(codes)})


def profile_of(result: pd.DataFrame, account_id: int) -> dict:
    return result.set_index("account_id").loc[account_id].to_dict()


def test_should_resolve_same_day_invoices_by_entry_order():
    inv = invoices(
        [
            (11, 1, "2026-03-01", 50.0, "NF-11", False),
            (10, 1, "2026-03-01", 40.0, "NF-10", False),  # same first day, entered first -> first purchase
            (30, 1, "2026-10-10", 70.0, "NF-30", False),
            (31, 1, "2026-10-10", 80.0, "NF-31", False),  # same last day, entered last -> last purchase
        ]
    )
    p = profile_of(compute_profiles(accounts(1), inv, quotes([]), BD), 10)
    assert p["first_purchase_date"] == pd.Timestamp("2026-03-01") and p["first_purchase_value"] == 40.0
    assert p["last_purchase_date"] == pd.Timestamp("2026-10-10") and p["last_purchase_value"] == 80.0
    assert p["last_invoice_number"] == "NF-31"
    assert p["accumulated_value"] == 240.0 and p["purchase_count"] == 4
    assert p["days_since_last_purchase"] == 43


def test_should_ignore_cancelled_invoices_everywhere():
    inv = invoices(
        [
            (1, 1, "2026-01-01", 999.0, "NF-1", True),  # cancelled first
            (2, 1, "2026-02-01", 10.0, "NF-2", False),
            (3, 1, "2026-11-01", 999.0, "NF-3", True),  # cancelled last
        ]
    )
    p = profile_of(compute_profiles(accounts(1), inv, quotes([]), BD), 10)
    assert (p["first_purchase_date"], p["last_purchase_date"]) == (pd.Timestamp("2026-02-01"),) * 2
    assert (p["accumulated_value"], p["purchase_count"], p["last_invoice_number"]) == (10.0, 1, "NF-2")


def test_should_give_nulls_and_zero_to_accounts_without_purchases():
    inv = invoices([(1, 2, "2026-01-01", 5.0, "NF-1", True)])  # only a cancelled invoice
    result = compute_profiles(accounts(1, 2), inv, quotes([(1, "2026-05-05")]), BD)
    for account_id in (10, 20):
        p = profile_of(result, account_id)
        assert p["purchase_count"] == 0 and p["accumulated_value"] == 0.0
        assert pd.isna(p["first_purchase_date"]) and pd.isna(p["last_purchase_date"])
        assert pd.isna(p["first_purchase_value"]) and pd.isna(p["last_purchase_value"])
        assert pd.isna(p["days_since_last_purchase"]) and pd.isna(p["last_invoice_number"])
    assert profile_of(result, 10)["last_quote_date"] == pd.Timestamp("2026-05-05")  # a quote without a purchase
    assert pd.isna(profile_of(result, 20)["last_quote_date"])


def test_should_ignore_invoices_and_quotes_after_the_business_date():
    inv = invoices([(1, 1, "2026-11-22", 10.0, "NF-1", False), (2, 1, "2026-11-23", 20.0, "NF-2", False)])
    q = quotes([(1, "2026-11-20"), (1, "2026-12-01")])
    p = profile_of(compute_profiles(accounts(1), inv, q, BD), 10)
    assert (p["purchase_count"], p["days_since_last_purchase"], p["last_invoice_number"]) == (1, 0, "NF-1")
    assert p["last_quote_date"] == pd.Timestamp("2026-11-20")


def test_should_ignore_customers_outside_the_scope():
    inv = invoices([(1, 1, "2026-01-01", 10.0, "NF-1", False), (2, 99, "2026-01-01", 20.0, "NF-2", False)])
    result = compute_profiles(accounts(1), inv, quotes([(99, "2026-01-01")]), BD)
    assert result["account_id"].tolist() == [10]
    assert profile_of(result, 10)["accumulated_value"] == 10.0


def test_should_round_money_to_cents():
    inv = invoices([(i, 1, "2026-01-01", 0.1, f"NF-{i}", False) for i in range(1, 4)])
    assert profile_of(compute_profiles(accounts(1), inv, quotes([]), BD), 10)["accumulated_value"] == 0.3


def test_should_give_the_same_answer_whatever_the_chunking():
    rng = np.random.default_rng(7)
    n = 5000
    inv = invoices(
        list(
            zip(
                rng.permutation(n) + 1,
                rng.integers(1, 300, n),
                pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 2500, n), unit="D"),
                np.round(rng.lognormal(4, 1, n), 2),
                [f"NF-{i}" for i in range(n)],
                rng.random(n) < 0.05,
                strict=True,
            )
        )
    )
    acc = accounts(*range(1, 300))
    whole = compute_profiles(acc, inv, quotes([]), BD)
    chunked = ProfileAccumulator(acc, BD)
    for start in range(0, n, 333):
        chunked.add_invoices(inv.iloc[start : start + 333])
    pd.testing.assert_frame_equal(chunked.result(), whole)
    # and against a plain pandas sort + groupby
    live = inv[~inv["cancelled"]].sort_values(["customer_code", "issue_date", "invoice_id"])
    g = live.groupby("customer_code")
    expected = pd.DataFrame(
        {
            "first_purchase_value": g["total_value"].first(),
            "last_purchase_value": g["total_value"].last(),
            "last_invoice_number": g["invoice_number"].last(),
            "purchase_count": g.size(),
        }
    )
    got = whole.assign(customer_code=whole["account_id"] // 10).set_index("customer_code")
    got = got[got["purchase_count"] > 0]
    pd.testing.assert_frame_equal(got[expected.columns], expected, check_names=False, check_dtype=False)


def test_should_give_the_same_last_invoice_numbers_from_arrow_strings_as_from_objects():
    inv = invoices(
        [
            (1, 1, "2026-01-01", 10.0, "NF-1", False),
            (2, 1, "2026-03-01", 20.0, None, False),  # the last purchase has no number
            (3, 2, "2026-02-01", 30.0, "NF-3", False),
            (4, 2, "2026-04-01", 40.0, "NF-4", True),  # cancelled: not the last
            (5, 3, "2026-05-01", 50.0, "Ș-5", False),
        ]
    )
    arrow = inv.assign(invoice_number=inv["invoice_number"].astype("string[pyarrow]"))

    def in_chunks_of_two(frame: pd.DataFrame) -> pd.DataFrame:
        acc = ProfileAccumulator(accounts(1, 2, 3), BD)
        for start in range(0, len(frame), 2):
            acc.add_invoices(frame.iloc[start : start + 2])
        return acc.result()

    plain, got = in_chunks_of_two(inv), in_chunks_of_two(arrow)
    pd.testing.assert_frame_equal(got, plain)
    pd.testing.assert_frame_equal(got, compute_profiles(accounts(1, 2, 3), inv, quotes([]), BD))
    numbers = got.set_index("account_id")["last_invoice_number"]
    assert numbers.isna().tolist() == [True, False, False] and numbers.iloc[1:].tolist() == ["NF-3", "Ș-5"]


def test_should_reject_duplicate_customer_codes_among_accounts():
    with pytest.raises(ValueError, match="unique"):
        ProfileAccumulator(pd.DataFrame({"account_id": [1, 2], "erp_customer_code": [5, 5]}), BD)


@pytest.mark.parametrize("offset", [10**12, -(10**6)], ids=["huge-codes", "negative-codes"])
def test_should_find_accounts_the_same_way_whatever_the_range_of_customer_codes(offset):
    rng = np.random.default_rng(3)
    n = 2_000
    inv = invoices(
        list(
            zip(
                range(1, n + 1),
                rng.integers(1, 400, n),  # codes 1-399; accounts for 1-299 only: the rest are not ours
                pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 330, n), unit="D"),
                np.round(rng.lognormal(4, 1, n), 2),
                [f"NF-{i}" for i in range(n)],
                rng.random(n) < 0.05,
                strict=True,
            )
        )
    )
    small = compute_profiles(accounts(*range(1, 300)), inv, quotes([(5, "2026-02-02")]), BD)  # direct lookup
    shifted = inv.assign(customer_code=inv["customer_code"] + offset)
    far = pd.DataFrame({"account_id": np.arange(1, 300) * 10, "erp_customer_code": np.arange(1, 300) + offset})
    got = compute_profiles(far, shifted, quotes([(5 + offset, "2026-02-02")]), BD)  # binary search
    pd.testing.assert_frame_equal(got.drop(columns="erp_customer_code"), small.drop(columns="erp_customer_code"))
    assert (got["erp_customer_code"] - offset).tolist() == small["erp_customer_code"].tolist()
    counted = ~inv["cancelled"] & (inv["customer_code"] < 300) & (inv["issue_date"] <= pd.Timestamp(BD))
    assert small["purchase_count"].sum() == int(counted.sum())


# --- resuming stored profiles with new invoices (incremental runs) ---------------------------------


def resumed(stored: pd.DataFrame, new: pd.DataFrame, new_quotes: pd.DataFrame | None = None, **kw) -> pd.DataFrame:
    """Stored profiles (rows of `result()`) carried forward with changed invoices, as the incremental run does."""
    acc = ProfileAccumulator(stored[["account_id", "erp_customer_code"]], kw.pop("business_date", BD))
    acc.resume(stored, **kw)
    acc.add_new_invoices(new)
    if new_quotes is not None:
        acc.add_last_quotes(new_quotes)
    return acc.result()


def test_should_record_the_highest_counted_invoice_id_as_the_high_water():
    inv = invoices(
        [
            (5, 1, "2026-01-01", 1.0, "NF-5", False),
            (9, 1, "2026-02-01", 1.0, "NF-9", True),  # cancelled: not counted, not the high water
            (7, 1, "2026-12-01", 1.0, "NF-7", False),  # after the business date: not counted either
        ]
    )
    result = compute_profiles(accounts(1, 2), inv, quotes([]), BD)
    assert profile_of(result, 10)["erp_invoice_high_water"] == 5
    assert pd.isna(profile_of(result, 20)["erp_invoice_high_water"])  # no invoice counted


def test_should_keep_the_stored_first_purchase_and_give_the_last_to_a_new_same_day_invoice():
    old = invoices([(10, 1, "2026-03-01", 40.0, "NF-10", False), (20, 1, "2026-10-10", 70.0, "NF-20", False)])
    stored = compute_profiles(accounts(1), old, quotes([]), BD)
    new = invoices(
        [
            (30, 1, "2026-03-01", 5.0, "NF-30", False),  # same day as the first purchase, entered later
            (31, 1, "2026-10-10", 8.0, "NF-31", False),  # same day as the last purchase, entered later
        ]
    )
    p = profile_of(resumed(stored, new), 10)
    assert (p["first_purchase_date"], p["first_purchase_value"]) == (pd.Timestamp("2026-03-01"), 40.0)
    assert (p["last_purchase_date"], p["last_purchase_value"]) == (pd.Timestamp("2026-10-10"), 8.0)
    assert (p["last_invoice_number"], p["purchase_count"], p["accumulated_value"]) == ("NF-31", 4, 123.0)
    assert p["erp_invoice_high_water"] == 31


def test_should_let_a_backdated_new_invoice_become_the_first_purchase():
    stored = compute_profiles(accounts(1), invoices([(10, 1, "2026-03-01", 40.0, "NF-10", False)]), quotes([]), BD)
    p = profile_of(resumed(stored, invoices([(11, 1, "2025-12-31", 9.0, "NF-11", False)])), 10)
    assert (p["first_purchase_date"], p["first_purchase_value"]) == (pd.Timestamp("2025-12-31"), 9.0)
    assert (p["last_purchase_date"], p["last_invoice_number"]) == (pd.Timestamp("2026-03-01"), "NF-10")


def test_should_give_a_first_purchase_to_an_account_that_had_none():
    stored = compute_profiles(accounts(1), invoices([]), quotes([(1, "2026-05-05")]), BD)
    p = profile_of(resumed(stored, invoices([(3, 1, "2026-11-20", 12.5, "NF-3", False)])), 10)
    assert (p["purchase_count"], p["accumulated_value"], p["days_since_last_purchase"]) == (1, 12.5, 2)
    assert p["first_purchase_date"] == p["last_purchase_date"] == pd.Timestamp("2026-11-20")
    assert p["last_quote_date"] == pd.Timestamp("2026-05-05")  # kept


def test_should_take_only_invoices_above_the_high_water_it_resumed_with():
    old = invoices([(10, 1, "2026-03-01", 40.0, "NF-10", False), (20, 1, "2026-04-01", 60.0, "NF-20", False)])
    stored = compute_profiles(accounts(1), old, quotes([]), BD)
    changed = invoices(
        [
            (20, 1, "2026-04-01", 60.0, "NF-20", False),  # already counted (an overlap re-read): not twice
            (25, 1, "2026-05-01", 1.0, "NF-25", True),  # cancelled: not counted
            (26, 1, "2026-12-25", 1.0, "NF-26", False),  # after the business date: not counted
            (27, 1, "2026-06-01", 2.0, "NF-27", False),
        ]
    )
    acc = ProfileAccumulator(accounts(1), BD)
    acc.resume(stored)
    acc.add_new_invoices(changed.iloc[[3]])
    acc.add_new_invoices(changed.iloc[[0, 1, 2]])  # a later chunk with lower ids is still above the resumed mark
    p = profile_of(acc.result(), 10)
    assert (p["purchase_count"], p["accumulated_value"], p["erp_invoice_high_water"]) == (3, 102.0, 27)


def test_should_ignore_changed_invoices_of_accounts_that_were_not_resumed():
    stored = compute_profiles(accounts(1), invoices([(10, 1, "2026-03-01", 40.0, "NF-10", False)]), quotes([]), BD)
    acc = ProfileAccumulator(accounts(1, 2), BD)
    acc.resume(stored)
    acc.add_new_invoices(invoices([(11, 2, "2026-03-02", 5.0, "NF-11", False)]))  # account 2 reads all its invoices
    assert profile_of(acc.result(), 20)["purchase_count"] == 0


def test_should_drop_the_stored_last_quote_when_it_is_read_again():
    stored = compute_profiles(accounts(1, 2), invoices([]), quotes([(1, "2026-06-01"), (2, "2026-06-01")]), BD)
    # customer 1's quote moved back to April (read again); customer 2's quotes did not change
    result = resumed(stored, invoices([]), quotes([(1, "2026-04-01")]), keep_last_quote=np.array([False, True]))
    assert profile_of(result, 10)["last_quote_date"] == pd.Timestamp("2026-04-01")
    assert profile_of(result, 20)["last_quote_date"] == pd.Timestamp("2026-06-01")


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_should_resume_to_the_same_profiles_as_a_recomputation(seed):
    rng = np.random.default_rng(seed)
    n = 3_000
    days = pd.Timestamp("2025-06-01") + pd.to_timedelta(rng.integers(0, 560, n), unit="D")  # some after BD
    inv = pd.DataFrame(
        {
            "invoice_id": np.arange(1, n + 1),
            "customer_code": rng.integers(1, 200, n),
            "issue_date": days.to_numpy(),
            "total_value": np.round(rng.uniform(0.01, 900, n), 2),
            "invoice_number": [f"NF-{i}" for i in range(1, n + 1)],
            "cancelled": rng.random(n) < 0.1,
        }
    )
    inv.loc[rng.random(n) < 0.3, "issue_date"] = pd.Timestamp("2026-02-02")  # many same-day invoices
    acc_frame = accounts(*range(1, 200))
    cut = int(rng.integers(n // 4, 3 * n // 4))
    old, new = inv[inv["invoice_id"] <= cut], inv[inv["invoice_id"] > cut]
    stored = compute_profiles(acc_frame, old, quotes([]), BD)
    want = compute_profiles(acc_frame, inv, quotes([]), BD)
    got = resumed(stored, new.sample(frac=1.0, random_state=seed))  # changed rows come in any order
    pd.testing.assert_frame_equal(got, want)
