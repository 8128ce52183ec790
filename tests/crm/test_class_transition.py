"""Class-transition rules (crm.routines.class_transition): validation, priority and ties, evaluation.

Pure functions, no database: rules are rows as the CRM table holds them, measures are hand-made
columns, and the expected winner of every account is worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crm.routines import class_transition as ct

CLASSES = [1, 2, 3, 4]  # Bronze, Silver, Gold, Diamond


def rule(rid: int, **over) -> dict:
    base = {
        "id": rid,
        "from_class_id": None,
        "to_class_id": 2,
        "measure": "purchase_count",
        "operator": ">=",
        "threshold": 1,
        "window_months": None,
        "priority": 10,
        "active": True,
        "description": f"rule number {rid}",
    }
    return base | over


def winners(rows: list[dict], classes: list[float], measures: dict[str, list[float]]) -> list[int | None]:
    """The id of the rule each account moves by (None: no rule), after check_rules' ordering."""
    rules = ct.check_rules(rows, CLASSES)
    got = ct.evaluate(np.array(classes, dtype="float64"), pd.DataFrame(measures, dtype="float64"), rules)
    return [None if w == ct.NO_RULE else rules[w].id for w in got]


def test_should_let_the_lowest_priority_number_win_whatever_the_rule_ids():
    rows = [rule(1, priority=20, to_class_id=2), rule(2, priority=5, to_class_id=3)]
    assert winners(rows, [1.0], {"purchase_count": [3]}) == [2]


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_should_break_a_priority_tie_by_the_lowest_rule_id_in_whatever_order_the_rows_come(order):
    both = [rule(8, priority=10, to_class_id=3), rule(5, priority=10, to_class_id=4)]
    rows = [both[i] for i in order]
    assert winners(rows, [1.0, 1.0], {"purchase_count": [3, 0]}) == [5, None]
    assert [r.id for r in ct.check_rules(rows, CLASSES)] == [5, 8]


def test_should_break_a_tie_by_id_only_among_rules_the_account_satisfies():
    rows = [rule(5, priority=10, threshold=10), rule(8, priority=10, threshold=2, to_class_id=3)]
    assert winners(rows, [1.0], {"purchase_count": [3]}) == [8]  # 5 has the lower id but does not fire


@pytest.mark.parametrize("missing", [None, float("nan"), pd.NA])
def test_should_put_a_rule_without_priority_after_every_numbered_rule(missing):
    rows = [rule(1, priority=missing, to_class_id=4), rule(2, priority=99, to_class_id=3), rule(3, priority=missing)]
    rules = ct.check_rules(rows, CLASSES)
    assert [(r.id, r.priority) for r in rules] == [(2, 99), (1, None), (3, None)]
    # both fire for the first account: the numbered one wins; the second satisfies only the unnumbered ones
    rows[1]["threshold"] = 5
    assert winners(rows, [1.0, 1.0], {"purchase_count": [7, 2]}) == [2, 1]


def test_should_keep_the_class_when_the_winning_rule_confirms_it_and_move_by_no_lower_rule():
    rows = [rule(1, priority=1, to_class_id=3, threshold=5), rule(2, priority=2, to_class_id=2, threshold=1)]
    rules = ct.check_rules(rows, CLASSES)
    got = ct.evaluate(np.array([3.0]), pd.DataFrame({"purchase_count": [6.0]}), rules)
    assert rules[got[0]].to_class_id == 3  # rule 1 wins and keeps Gold: rule 2 does not move it to Silver


def test_should_apply_a_rule_only_to_accounts_of_its_from_class():
    rows = [rule(1, from_class_id=1, to_class_id=2)]
    assert winners(rows, [1.0, 2.0, np.nan], {"purchase_count": [3, 3, 3]}) == [1, None, None]
    rows = [rule(1, from_class_id=None, to_class_id=2)]  # any class, and accounts without one
    assert winners(rows, [1.0, 2.0, np.nan], {"purchase_count": [3, 3, 3]}) == [1, 1, 1]


@pytest.mark.parametrize(
    ("operator", "fires"),
    [(">=", [False, True, True]), (">", [False, False, True]), ("<=", [True, True, False]),
     ("<", [True, False, False]), ("=", [False, True, False]), ("!=", [True, False, True])],
)  # fmt: skip
def test_should_compare_with_each_operator_and_let_a_null_measure_satisfy_none(operator, fires):
    rows = [rule(1, measure="days_since_last_purchase", operator=operator, threshold=90)]
    got = winners(rows, [1.0] * 4, {"days_since_last_purchase": [89, 90, 91, np.nan]})
    assert got == [1 if f else None for f in fires] + [None]  # never bought: no rule, even with !=


def test_should_read_one_measure_column_per_window_and_list_the_windows_to_fetch():
    rows = [
        rule(1, measure="accumulated_value", window_months=12, threshold=1000, to_class_id=3),
        rule(2, measure="accumulated_value", threshold=1000, to_class_id=2),
        rule(3, measure="purchase_count", window_months=24),
        rule(4, measure="purchase_count", window_months=12, active=False),
    ]
    rules = ct.check_rules(rows, CLASSES)
    assert [r.measure_key for r in rules] == ["accumulated_value@12", "accumulated_value", "purchase_count@24"]
    assert ct.windows_needed(rules) == [12, 24]
    measures = {"accumulated_value@12": [500, 1500], "accumulated_value": [2000, 2000], "purchase_count@24": [0, 0]}
    assert winners(rows, [1.0, 1.0], measures) == [2, 1]


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"measure": "purchase_cnt"}, "unknown measure 'purchase_cnt'"),
        ({"measure": None}, "unknown measure None"),
        ({"operator": "=>"}, "bad operator '=>'"),
        ({"operator": "=="}, "bad operator '=='"),
        ({"threshold": "lots"}, "threshold 'lots' is not a number"),
        ({"threshold": None}, "threshold None is not a number"),
        ({"threshold": float("inf")}, "threshold inf is not a number"),
        ({"measure": "days_since_last_purchase", "window_months": 12}, "days_since_last_purchase takes no window"),
        ({"measure": "months_as_customer", "window_months": 6}, "months_as_customer takes no window"),
        ({"window_months": 0}, "window_months 0 is not a whole number of months"),
        ({"window_months": 1.5}, "window_months 1.5 is not a whole number of months"),
        ({"from_class_id": 9}, "from_class_id 9 is not a class of crm_class"),
        ({"to_class_id": 7}, "to_class_id 7 is not a class of crm_class"),
        ({"to_class_id": None}, "to_class_id is missing"),
        ({"from_class_id": "gold"}, "from_class_id 'gold' is not a class of crm_class"),
        ({"priority": "high"}, "priority 'high' is not a whole number"),
    ],
)
def test_should_refuse_a_rule_that_cannot_be_evaluated_naming_it_and_why(over, reason):
    rows = [rule(1), rule(42, **over)]
    with pytest.raises(ct.RuleError) as err:
        ct.check_rules(rows, CLASSES)
    message = str(err.value)
    assert "rule 42 (rule number 42)" in message and reason in message
    assert "rule 1 " not in message  # the good rule is not blamed


def test_should_name_every_bad_rule_at_once_and_ignore_inactive_ones():
    rows = [rule(3, measure="purchase_cnt"), rule(4, operator="=>"), rule(5, operator="~", active=False)]
    with pytest.raises(ct.RuleError) as err:
        ct.check_rules(rows, CLASSES)
    assert "rule 3" in str(err.value) and "rule 4" in str(err.value) and "rule 5" not in str(err.value)
    assert ct.check_rules([rule(5, operator="~", active=False)], CLASSES) == []
