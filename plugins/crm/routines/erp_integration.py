"""The ERP integration rules of TOTVS CRM ("Novo Lead / Nova Conta"), as pure functions over DataFrames.

Why pure: every rule is a unit-testable statement about one account (or, for the short name, about
the account next to the ERP and the rest of the batch), and the job only feeds it what it read.
A violation is a row (account_id, rule, field, value, message) so the run report can list exactly
what a person has to fix; an account with any violation is not sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

VIOLATION_COLUMNS = ["account_id", "rule", "field", "value", "message"]
ADDRESS_TYPES = ("correspondence", "billing", "delivery")
# crm_account column -> the ERP reference table whose ids it must name
ERP_CHOICES = {
    "erp_group_id": "customer_group",
    "erp_representative_id": "representative",
    "erp_carrier_id": "carrier",
    "erp_bearer_id": "bearer",
    "erp_payment_condition_id": "payment_condition",
}
REQUIRED_TEXT = ("short_name", "name", "email")
ERP_PHONE_TYPES = {"TELEFONE_ERP1": "phone1", "TELEFONE_ERP2": "phone2", "FAX_ERP1": "fax1", "FAX_ERP2": "fax2"}
INTEGRATION_OBSERVATION_TYPE = "Integração"

_CNPJ_W1 = (5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2)
_CNPJ_W2 = (6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2)


def document_digits(value: str | None) -> str | None:
    """Digits of a CPF/CNPJ typed with or without its mask ('123.456.789-09'); None if other characters appear."""
    if value is None:
        return None
    text = str(value).strip()
    stripped = text.replace(".", "").replace("-", "").replace("/", "").replace(" ", "")
    return stripped if stripped.isdigit() and stripped.isascii() else None


def cpf_is_valid(value: str | None) -> bool:
    """Brazilian CPF: 11 digits, two mod-11 check digits (weights 10..2 then 11..2); repeated digits are invalid."""
    digits = document_digits(value)
    if digits is None or len(digits) != 11 or len(set(digits)) == 1:
        return False
    d = [int(c) for c in digits]
    for n in (9, 10):
        total = sum(d[i] * (n + 1 - i) for i in range(n))
        if (total * 10) % 11 % 10 != d[n]:
            return False
    return True


def cnpj_is_valid(value: str | None) -> bool:
    """Brazilian CNPJ: 14 digits, two mod-11 check digits (weights 5..2,9..2 then 6..2,9..2); remainder < 2 -> 0."""
    digits = document_digits(value)
    if digits is None or len(digits) != 14 or len(set(digits)) == 1:
        return False
    d = [int(c) for c in digits]
    for n, weights in ((12, _CNPJ_W1), (13, _CNPJ_W2)):
        r = sum(x * w for x, w in zip(d[:n], weights, strict=True)) % 11
        if (0 if r < 2 else 11 - r) != d[n]:
            return False
    return True


def short_name_key(value: object) -> str | None:
    """How short names are compared (the ERP's key): trimmed, case-insensitive; blank is no name."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    key = str(value).strip().casefold()
    return key or None


def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | (series.astype(object).map(lambda v: str(v).strip() if v is not None else "") == "")


def resolve_codes(
    accounts: pd.DataFrame, erp_customers: pd.DataFrame, codes_in_crm: Iterable[int] = ()
) -> pd.DataFrame:
    """The ERP code each account is written under: its own, or that of the ERP customer it already is.

    An account without a code whose short name AND document match one ERP customer that no other CRM
    account holds is that customer (created by an earlier run whose write-back did not happen, or
    typed into the ERP by hand): it adopts the code instead of clashing with itself. Returns the
    accounts with `target_code` (nullable: a new customer) and `adopted` columns.
    """
    out = accounts.copy()
    out["target_code"] = out["erp_customer_code"].astype("Int64")
    out["adopted"] = False
    taken = set(int(c) for c in codes_in_crm)
    erp = erp_customers.assign(
        key=erp_customers["short_name"].map(short_name_key), doc=erp_customers["tax_id"].map(document_digits)
    )
    erp = erp[erp["key"].notna() & erp["doc"].notna() & ~erp["code"].isin(taken)]
    by_key_doc: dict[tuple[str, str], list[int]] = {}
    for code, key, doc in zip(erp["code"], erp["key"], erp["doc"], strict=True):
        by_key_doc.setdefault((key, doc), []).append(int(code))
    for i in out.index[out["target_code"].isna()]:
        key = short_name_key(out.at[i, "short_name"])
        doc = document_digits(out.at[i, "tax_id"])
        match = by_key_doc.get((key, doc)) if key and doc else None
        if match and len(match) == 1:
            out.at[i, "target_code"] = match[0]
            out.at[i, "adopted"] = True
    return out


def check(
    accounts: pd.DataFrame,
    addresses: pd.DataFrame,
    known_ids: Mapping[str, set[int]],
    erp_customers: pd.DataFrame,
) -> pd.DataFrame:
    """Every violation of the integration rules by the accounts of one batch.

    `accounts`: account_id, target_code (see `resolve_codes`), person_type, name, short_name, email,
    tax_id and the erp_*_id choices. A person_type other than PF/PJ is itself a violation
    (`invalid_person_type`, exact codes as the ERP takes them): the document could be checked
    against neither rule. `addresses`: account_id, address_type of the complete addresses
    (street and city filled). `known_ids`: ERP reference table -> ids it holds. `erp_customers`:
    code, short_name of every ERP customer.
    """
    parts: list[pd.DataFrame] = []

    def add(mask: pd.Series | np.ndarray, rule: str, field: str, values: pd.Series | None, message: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            ids = accounts["account_id"].to_numpy()[mask]
            vals = values.to_numpy(dtype=object)[mask] if values is not None else [None] * len(ids)
            parts.append(
                pd.DataFrame({"account_id": ids, "rule": rule, "field": field, "value": list(vals), "message": message})
            )

    have = set(zip(addresses["account_id"], addresses["address_type"], strict=True))
    for kind in ADDRESS_TYPES:
        missing = [(a, kind) not in have for a in accounts["account_id"]]
        add(pd.Series(missing), "address_required", f"{kind}_address", None, f"no complete {kind} address")

    for column, table in ERP_CHOICES.items():
        values = accounts[column]
        add(values.isna(), "required", column, None, f"no {table.replace('_', ' ')} chosen")
        known = known_ids.get(table, set())
        unknown = values.notna() & ~values.isin(list(known))
        add(unknown, "unknown_in_erp", column, values, f"{table.replace('_', ' ')} not found in the ERP")

    for column in REQUIRED_TEXT:
        add(_blank(accounts[column]), "required", column, None, f"{column.replace('_', ' ')} is required")

    # The short name is the ERP's key: no other ERP customer may have it, nor another account of this batch.
    keys = accounts["short_name"].map(short_name_key)
    erp_keys: dict[str, set[int]] = {}
    for code, name in zip(erp_customers["code"], erp_customers["short_name"], strict=True):
        k = short_name_key(name)
        if k:
            erp_keys.setdefault(k, set()).add(int(code))
    own = accounts["target_code"]
    taken = [
        bool(k) and bool(erp_keys.get(k, set()) - ({int(c)} if pd.notna(c) else set()))
        for k, c in zip(keys, own, strict=True)
    ]
    add(pd.Series(taken), "short_name_taken_in_erp", "short_name", accounts["short_name"],
        "another ERP customer already has this short name")  # fmt: skip
    dup = keys.notna() & keys.duplicated(keep=False)
    add(dup, "short_name_duplicate_in_batch", "short_name", accounts["short_name"],
        "another account of this run has the same short name")  # fmt: skip

    tax = accounts["tax_id"]
    kind = accounts["person_type"].astype(object)
    pf, pj = (kind == "PF").to_numpy(dtype=bool), (kind == "PJ").to_numpy(dtype=bool)
    # Neither PF nor PJ: no document rule could apply, so the type itself is the violation (never a silent pass).
    add(~(pf | pj), "invalid_person_type", "person_type", accounts["person_type"],
        "person type must be PF (person) or PJ (company)")  # fmt: skip
    add(_blank(tax), "required", "tax_id", None, "CPF (person) or CNPJ (company) is required")
    present = ~_blank(tax)
    add(pf & present & ~tax.map(cpf_is_valid), "invalid_cpf", "tax_id", tax, "not a valid CPF (check digits)")
    add(pj & present & ~tax.map(cnpj_is_valid), "invalid_cnpj", "tax_id", tax, "not a valid CNPJ (check digits)")

    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in VIOLATION_COLUMNS})
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["account_id", "rule", "field"], kind="stable").reset_index(drop=True)


def erp_phones(phones: pd.DataFrame) -> pd.DataFrame:
    """phone1/phone2/fax1/fax2 per account from the CRM phones: only the four ERP types, first one of each type."""
    sent = phones[phones["phone_type"].isin(list(ERP_PHONE_TYPES))].sort_values(["account_id", "phone_id"])
    sent = sent.drop_duplicates(["account_id", "phone_type"])
    wide = sent.pivot(index="account_id", columns="phone_type", values="number").rename(columns=ERP_PHONE_TYPES)
    return wide.reindex(columns=list(ERP_PHONE_TYPES.values()))


def integration_notes(observations: pd.DataFrame) -> pd.Series:
    """The ERP notes per account: observations of type 'Integração' only, oldest first, one per line."""
    sent = observations[observations["type_name"] == INTEGRATION_OBSERVATION_TYPE]
    sent = sent.sort_values(["account_id", "created_at", "observation_id"])
    return sent.groupby("account_id")["text"].agg(lambda t: "\n".join(str(x).strip() for x in t))
