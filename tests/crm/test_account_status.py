"""Account status rules (crm.routines.account_status): the "months inactive" boundary, GP contracts, labels.

Pure functions, no database: each case is a customer with its months inactive and last purchase,
and the expected status is worked out by hand on a calendar.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from crm.routines import account_status as rules

D = dt.date


def erp_status(business_date: dt.date, months: int, last_purchase: str | None) -> tuple[str, object]:
    """(status, window_start) of one customer (code 10) with this months inactive and last purchase."""
    codes = pd.Series([10], dtype="Int64")
    purchases = pd.DataFrame(
        {"customer_code": [10] if last_purchase else [], "last_purchase_date": [last_purchase] if last_purchase else []}
    )
    got = rules.erp_statuses(codes, np.array([months]), purchases, business_date)
    return got["status"].iloc[0], pd.Timestamp(got["window_start"].iloc[0]).date()


@pytest.mark.parametrize(
    ("business_date", "months", "last_purchase", "expected", "window_start"),
    [
        # 22 Nov - 6 months = 22 May: the window's first day counts, the day before does not
        (D(2026, 11, 22), 6, "2026-05-22", "active", D(2026, 5, 22)),
        (D(2026, 11, 22), 6, "2026-05-21", "inactive", D(2026, 5, 22)),
        (D(2026, 11, 22), 6, "2026-11-22", "active", D(2026, 5, 22)),  # bought on the business date
        # month ends: 31 Mar - 1 month = 28 Feb (common year) / 29 Feb (leap year)
        (D(2026, 3, 31), 1, "2026-02-28", "active", D(2026, 2, 28)),
        (D(2026, 3, 31), 1, "2026-02-27", "inactive", D(2026, 2, 28)),
        (D(2028, 3, 31), 1, "2028-02-29", "active", D(2028, 2, 29)),
        (D(2028, 3, 31), 1, "2028-02-28", "inactive", D(2028, 2, 29)),
        # 28 Feb - 1 month = 28 Jan: a purchase on 31 Jan is within, one on 27 Jan is not
        (D(2026, 2, 28), 1, "2026-01-31", "active", D(2026, 1, 28)),
        (D(2026, 2, 28), 1, "2026-01-27", "inactive", D(2026, 1, 28)),
        # the leap day as business date: 29 Feb 2028 - 12 months = 28 Feb 2027
        (D(2028, 2, 29), 12, "2027-02-28", "active", D(2027, 2, 28)),
        (D(2028, 2, 29), 12, "2027-02-27", "inactive", D(2027, 2, 28)),
        # ... and a purchase on a leap day, 12 months later: 28 Feb 2025 - 12 months = 28 Feb 2024
        (D(2025, 2, 28), 12, "2024-02-29", "active", D(2024, 2, 28)),
        (D(2025, 3, 1), 12, "2024-02-29", "inactive", D(2024, 3, 1)),
        (D(2026, 11, 22), 12, None, "inactive", D(2025, 11, 22)),  # never bought
    ],
)
def test_should_count_months_inactive_back_from_the_business_date(
    business_date, months, last_purchase, expected, window_start
):
    assert erp_status(business_date, months, last_purchase) == (expected, window_start)


def test_should_ignore_a_purchase_after_the_business_date():
    assert erp_status(D(2026, 11, 22), 12, "2026-11-23")[0] == "inactive"


def test_should_not_integrate_accounts_without_an_erp_code_and_keep_their_facts_empty():
    codes = pd.Series([None, 10], dtype="Int64")
    purchases = pd.DataFrame({"customer_code": [10], "last_purchase_date": ["2026-11-01"]})
    got = rules.erp_statuses(codes, np.array([12, 12]), purchases, D(2026, 11, 22))
    assert got["status"].tolist() == ["not_integrated", "active"]
    assert got["months_inactive"].isna().tolist() == [True, False]
    assert pd.isna(got["window_start"].iloc[0]) and pd.isna(got["last_purchase_date"].iloc[0])
    assert pd.Timestamp(got["last_purchase_date"].iloc[1]).date() == D(2026, 11, 1)


def test_should_take_the_latest_purchase_when_a_customer_appears_twice():
    codes = pd.Series([10], dtype="Int64")
    purchases = pd.DataFrame({"customer_code": [10, 10], "last_purchase_date": ["2026-01-01", "2026-11-01"]})
    assert rules.erp_statuses(codes, np.array([3]), purchases, D(2026, 11, 22))["status"].tolist() == ["active"]


def test_should_apply_the_default_months_where_the_credit_info_has_none_zero_or_negative():
    codes = pd.Series([1, 2, 3, 4, 5, None], dtype="Int64")
    credit = pd.DataFrame({"customer_code": [1, 2, 3, 4], "months_inactive": [6, None, 0, -3]})
    assert rules.months_inactive_of(codes, credit, 12).tolist() == [6, 12, 12, 12, 12, 12]
    with pytest.raises(ValueError, match="at least 1"):
        rules.months_inactive_of(codes, credit, 0)


@pytest.mark.parametrize(
    ("beneficiary", "contract", "start", "end", "expected"),
    [
        ("active", "active", "2026-11-22", None, "active"),  # the contract starts on the business date
        ("active", "active", "2020-01-01", "2026-11-22", "active"),  # ... or ends on it
        ("active", "active", "2020-01-01", "2026-11-21", "inactive"),  # ended the day before
        ("active", "active", "2026-11-23", None, "inactive"),  # not started yet
        ("suspended", "active", "2020-01-01", None, "inactive"),
        ("active", "cancelled", "2020-01-01", None, "inactive"),
    ],
)
def test_should_derive_the_gp_status_from_beneficiary_and_contract_on_the_business_date(
    beneficiary, contract, start, end, expected
):
    gp = pd.DataFrame(
        {
            "beneficiary_code": ["B1"],
            "beneficiary_status": [beneficiary],
            "contract_status": [contract],
            "contract_start": [start],
            "contract_end": [end],
        }
    )
    got = rules.gp_statuses(pd.Series(["B1", "NOPE", None], dtype=object), gp, D(2026, 11, 22))
    assert got["status"].tolist() == [expected, "not_integrated", "not_integrated"]


def test_should_label_each_status_in_the_account_language_with_fallback_to_the_default():
    codes = np.array(["active", "inactive", "not_integrated", "active"], dtype=object)
    locales = pd.Series(["pt_BR", "pl", None, "es_ES"])
    got = rules.labels_of(codes, locales, "erp", rules.load_labels())
    assert got.tolist() == ["Ativo ERP", "Nieaktywny ERP", "Not integrated ERP", "Active ERP"]
    with pytest.raises(ValueError, match="unknown status"):
        rules.labels_of(np.array(["dormant"], dtype=object), pd.Series(["pt"]), "erp", rules.load_labels())


def test_should_refuse_a_label_file_without_every_default_label(tmp_path):
    path = tmp_path / "labels.yaml"
    path.write_text("labels:\n  default:\n    erp: {active: A, inactive: I}\n  pt:\n    erp: {active: Ativo}\n")
    with pytest.raises(rules.LabelError, match=r"erp\.not_integrated, gp\.active"):
        rules.load_labels(path)


def test_should_take_the_last_credit_row_of_a_customer_listed_twice():
    codes = pd.Series([1, 2, None], dtype="Int64")
    credit = pd.DataFrame({"customer_code": [1, 2, 1], "months_inactive": [6, 3, 18]})
    assert rules.months_inactive_of(codes, credit, 12).tolist() == [18, 3, 12]


def test_should_find_purchases_by_code_whatever_the_order_and_ignore_unknown_customers():
    codes = pd.Series([30, None, 10, 20, 99], dtype="Int64")
    purchases = pd.DataFrame(
        {
            "customer_code": [20, 10, 30, 10],
            "last_purchase_date": ["2026-11-01", "2026-01-01", "2025-01-01", "2026-10-01"],
        }
    )
    got = rules.erp_statuses(codes, np.array([12] * 5), purchases, D(2026, 11, 22))
    assert got["status"].tolist() == ["inactive", "not_integrated", "active", "active", "inactive"]
    last = [None if pd.isna(v) else pd.Timestamp(v).date() for v in got["last_purchase_date"]]
    assert last == [None, None, D(2026, 10, 1), D(2026, 11, 1), None]  # 10: its latest; 30: out of the window


def test_should_label_arrow_string_locales_with_nulls_and_empty_ones_as_the_default():
    codes = np.array(["active", "inactive", "active", "not_integrated"], dtype=object)
    locales = pd.Series(pd.array(["pl_PL", None, "", "pt"], dtype="str"))
    got = rules.labels_of(codes, locales, "erp", rules.load_labels())
    default = rules.load_labels()[""]["erp"]
    assert got.tolist() == ["Aktywny ERP", default["inactive"], default["active"], "Não integrado ERP"]
    assert rules.code_index(np.array(["inactive", "dormant", "active"], dtype=object)).tolist() == [1, -1, 0]


def test_should_never_match_a_key_by_truncating_it():
    # whole-number codes are hashed as integers; a fractional key or probe keeps the float lookup
    values = np.array([10.0, 20.0])
    got = rules._lookup(np.array([1.0, 2.0]), values, np.array([2.0, 1.5, np.nan, 1.0]), keep="last")
    np.testing.assert_array_equal(got, [20.0, np.nan, np.nan, 10.0])
    got = rules._lookup(np.array([1.5, 2.0]), values, np.array([1.5, 1.0, 2.0]), keep="last")
    np.testing.assert_array_equal(got, [10.0, np.nan, 20.0])
    assert np.isnan(rules._lookup(np.array([]), np.array([]), np.array([1.0]), keep="max")).all()
