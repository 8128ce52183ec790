"""Class transition (TOTVS CRM crm251): rules from crm_class_transition_rule evaluated over all accounts at once.

Measures (per account, on the run's business date; purchases = non-cancelled ERP invoices):

- `accumulated_value` (window optional): value of the purchases within the last N months
  (crm.routines.periods: issued on or after business date - N months, up to the business date);
  without a window, of all purchases (crm_account_profile).
- `purchase_count` (window optional): the number of those purchases.
- `days_since_last_purchase` (no window): business date - last purchase date; null if never bought.
- `months_as_customer` (no window): whole calendar months from the first purchase to the business
  date; null if the account never bought.

A null measure satisfies no rule, whatever the operator (`!=` included). Values are compared with
the rule's threshold by `>=`, `>`, `<=`, `<`, `=` or `!=` (money rounded to cents first).

A rule applies to accounts of its `from_class_id` (null: any class, and accounts without one).
Among the active rules an account satisfies, the one with the **lowest priority number** wins
(priority 1 before 2: "first priority"), ties broken by the **lowest rule id** (so two rules of
equal priority always resolve the same way, whatever order the database returns them in). A rule
with **no priority** (null) comes **after every numbered rule** (a forgotten priority must not make a
rule the most important one); among themselves such rules go by id. The account moves
to that rule's class. If the winner's class is the account's own, it stays (a higher rule that
confirms the class also keeps lower ones from moving it, so the classes do not oscillate between
runs). An account satisfying no rule keeps its class. One transition per account per run.

Rules that cannot be evaluated (unknown measure or operator, non-numeric threshold, a window on a
measure that takes none, a window under 1 month, an unknown class, a priority that is not a whole
number) raise `RuleError` naming every bad rule, before anything is computed or changed. Inactive
rules are neither checked nor used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

OPERATORS = (">=", ">", "<=", "<", "=", "!=")
WINDOW_OPTIONAL, WINDOW_NONE = "optional", "none"
MEASURES: dict[str, str] = {
    "accumulated_value": WINDOW_OPTIONAL,
    "purchase_count": WINDOW_OPTIONAL,
    "days_since_last_purchase": WINDOW_NONE,
    "months_as_customer": WINDOW_NONE,
}
MAX_WINDOW_MONTHS = 1200
NO_RULE = -1


class RuleError(ValueError):
    """One or more class-transition rules cannot be evaluated; the message names each rule and why."""


@dataclass(frozen=True)
class Rule:
    id: int
    from_class_id: int | None
    to_class_id: int
    measure: str
    operator: str
    threshold: float
    window_months: int | None
    priority: int | None  # None: after every numbered rule
    description: str = ""

    @property
    def order_key(self) -> tuple[bool, int, int]:
        """Evaluation order: numbered priorities ascending, then unnumbered ones; ties by rule id."""
        return (self.priority is None, self.priority if self.priority is not None else 0, self.id)

    @property
    def measure_key(self) -> str:
        """Column name of the measure this rule reads, e.g. 'accumulated_value' or 'accumulated_value@24'."""
        return f"{self.measure}@{self.window_months}" if self.window_months else self.measure

    def label(self) -> str:
        window = f" in the last {self.window_months} months" if self.window_months else ""
        return f"rule {self.id}: {self.measure}{window} {self.operator} {_num(self.threshold)}"


def check_rules(rows: Iterable[Mapping[str, Any]], class_ids: Iterable[int]) -> list[Rule]:
    """Validate active rule rows; return them in evaluation order (`Rule.order_key`) or raise RuleError."""
    known = {int(c) for c in class_ids}
    rules: list[Rule] = []
    problems: list[str] = []
    for row in rows:
        if not _truthy(row.get("active", True)):
            continue
        rid = row.get("id")
        why = _problems(row, known)
        if why:
            desc = f" ({row['description']})" if row.get("description") else ""
            problems.append(f"rule {rid}{desc}: {'; '.join(why)}")
            continue
        rules.append(
            Rule(
                id=int(rid),
                from_class_id=None if _null(row.get("from_class_id")) else _as_int(row["from_class_id"]),
                to_class_id=int(_as_int(row["to_class_id"])),
                measure=str(row["measure"]).strip(),
                operator=str(row["operator"]).strip(),
                threshold=float(row["threshold"]),
                window_months=None if _null(row.get("window_months")) else int(row["window_months"]),
                priority=None if _null(row.get("priority")) else int(float(row["priority"])),
                description=str(row.get("description") or ""),
            )
        )
    if problems:
        raise RuleError("class-transition rules that cannot be evaluated: " + " | ".join(problems))
    return sorted(rules, key=lambda r: r.order_key)


def _problems(row: Mapping[str, Any], known: set[int]) -> list[str]:
    why = []
    measure = str(row.get("measure") or "").strip()
    if measure not in MEASURES:
        why.append(f"unknown measure {row.get('measure')!r} (known: {', '.join(MEASURES)})")
    op = str(row.get("operator") or "").strip()
    if op not in OPERATORS:
        why.append(f"bad operator {row.get('operator')!r} (one of {' '.join(OPERATORS)})")
    threshold = row.get("threshold")
    try:
        if _null(threshold) or not math.isfinite(float(threshold)):
            raise ValueError
    except (TypeError, ValueError):
        why.append(f"threshold {threshold!r} is not a number")
    window = row.get("window_months")
    if not _null(window):
        try:
            w = float(window)
            if not w.is_integer() or not 1 <= w <= MAX_WINDOW_MONTHS:
                raise ValueError
        except (TypeError, ValueError):
            why.append(f"window_months {window!r} is not a whole number of months from 1 to {MAX_WINDOW_MONTHS}")
        else:
            if MEASURES.get(measure) == WINDOW_NONE:
                why.append(f"{measure} takes no window_months (got {window!r})")
    priority = row.get("priority")
    if not _null(priority):
        try:
            if not float(priority).is_integer():
                raise ValueError
        except (TypeError, ValueError):
            why.append(f"priority {priority!r} is not a whole number")
    for col in ("from_class_id", "to_class_id"):
        value = row.get(col)
        if _null(value):
            if col == "to_class_id":
                why.append("to_class_id is missing")
        elif _as_int(value) not in known:
            why.append(f"{col} {value!r} is not a class of crm_class")
    return why


def windows_needed(rules: Iterable[Rule]) -> list[int]:
    """Distinct windows (months) the rules read from the ERP, ascending."""
    return sorted({r.window_months for r in rules if r.window_months})


def evaluate(class_ids: np.ndarray, measures: pd.DataFrame, rules: list[Rule]) -> np.ndarray:
    """Index (into `rules`) of the winning rule per account, NO_RULE where none applies.

    `class_ids`: float array (NaN: no class); `measures`: one float column per `Rule.measure_key`
    (NaN: no value), aligned with `class_ids`. `rules` in evaluation order (check_rules' order).
    """
    n = len(class_ids)
    winner = np.full(n, NO_RULE, dtype=np.int64)
    for i, rule in enumerate(rules):
        open_ = winner == NO_RULE
        if not open_.any():
            break
        values = measures[rule.measure_key].to_numpy(dtype="float64", na_value=np.nan)
        hit = open_ & ~np.isnan(values) & _compare(values, rule.operator, rule.threshold)
        if rule.from_class_id is not None:
            hit &= class_ids == rule.from_class_id
        winner[hit] = i
    return winner


def _compare(values: np.ndarray, op: str, threshold: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        if op == ">=":
            return values >= threshold
        if op == ">":
            return values > threshold
        if op == "<=":
            return values <= threshold
        if op == "<":
            return values < threshold
        if op == "=":
            return values == threshold
        if op == "!=":
            return values != threshold
    raise RuleError(f"bad operator {op!r}")


def _null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _as_int(value: Any) -> int | None:
    """A whole number given as int, float or text; None for anything else (so it matches no class)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else None


def _truthy(value: Any) -> bool:
    return bool(value) and str(value).strip().lower() not in ("0", "false", "f", "no")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
