"""The ERP integration rules one by one: check digits, required and known choices, addresses, short names."""

from __future__ import annotations

import pandas as pd
import pytest

from crm.routines import erp_integration as rules

KNOWN = {t: {1, 2, 3} for t in rules.ERP_CHOICES.values()}


@pytest.mark.parametrize("cpf", ["52998224725", "529.982.247-25", "11144477735", "00000000191"])
def test_should_accept_cpfs_with_valid_check_digits(cpf):
    assert rules.cpf_is_valid(cpf)


@pytest.mark.parametrize(
    "cpf", ["52998224726", "52998224715", "11111111111", "5299822472", "529982247250", "5299822472a", "", None]
)
def test_should_refuse_cpfs_with_wrong_digits_repeated_digits_or_wrong_length(cpf):
    assert not rules.cpf_is_valid(cpf)


@pytest.mark.parametrize("cnpj", ["11222333000181", "11.222.333/0001-81", "45723174000110", "11444777000161"])
def test_should_accept_cnpjs_with_valid_check_digits(cnpj):
    assert rules.cnpj_is_valid(cnpj)


@pytest.mark.parametrize("cnpj", ["11222333000182", "11222333000191", "00000000000000", "1122233300018", "52998224725"])
def test_should_refuse_cnpjs_with_wrong_digits_or_length(cnpj):
    assert not rules.cnpj_is_valid(cnpj)


def account(**over) -> dict:
    base = {
        "account_id": 1,
        "target_code": pd.NA,
        "erp_customer_code": pd.NA,
        "person_type": "PJ",
        "name": "Comercial São Jorge Ltda.",
        "short_name": "SAO JORGE",
        "email": "compras@example.com",
        "tax_id": "11222333000181",
        **{c: 1 for c in rules.ERP_CHOICES},
    }
    return base | over


def check(*accounts: dict, addresses=None, erp=None) -> pd.DataFrame:
    frame = pd.DataFrame(list(accounts))
    if addresses is None:
        addresses = pd.DataFrame(
            [(a["account_id"], t) for a in accounts for t in rules.ADDRESS_TYPES],
            columns=["account_id", "address_type"],
        )
    erp = erp if erp is not None else pd.DataFrame({"code": [], "short_name": []})
    return rules.check(frame, addresses, KNOWN, erp)


def found(violations: pd.DataFrame) -> set[tuple]:
    return set(zip(violations["account_id"], violations["rule"], violations["field"], strict=True))


def test_should_find_no_violation_in_a_complete_account():
    assert check(account()).empty


@pytest.mark.parametrize("kind", rules.ADDRESS_TYPES)
def test_should_require_each_of_the_three_addresses(kind):
    addresses = pd.DataFrame([(1, t) for t in rules.ADDRESS_TYPES if t != kind], columns=["account_id", "address_type"])
    assert found(check(account(), addresses=addresses)) == {(1, "address_required", f"{kind}_address")}


@pytest.mark.parametrize("column", list(rules.ERP_CHOICES))
def test_should_require_each_erp_choice_and_know_it_in_the_erp(column):
    assert found(check(account(**{column: None}))) == {(1, "required", column)}
    assert found(check(account(**{column: 99}))) == {(1, "unknown_in_erp", column)}


@pytest.mark.parametrize("column", ["short_name", "name", "email"])
@pytest.mark.parametrize("blank", [None, "", "   "])
def test_should_require_short_name_company_name_and_email(column, blank):
    assert (1, "required", column) in found(check(account(**{column: blank})))


def test_should_check_cpf_for_persons_and_cnpj_for_companies():
    assert found(check(account(person_type="PF", tax_id="52998224726"))) == {(1, "invalid_cpf", "tax_id")}
    assert found(check(account(person_type="PF", tax_id="11222333000181"))) == {(1, "invalid_cpf", "tax_id")}
    assert found(check(account(tax_id="11222333000182"))) == {(1, "invalid_cnpj", "tax_id")}
    assert found(check(account(tax_id=None))) == {(1, "required", "tax_id")}
    assert check(account(person_type="PF", tax_id="529.982.247-25")).empty


@pytest.mark.parametrize("person_type", ["PX", "pf", "", None])
def test_should_refuse_a_person_type_that_is_neither_pf_nor_pj_whatever_the_document(person_type):
    for tax_id in ("52998224725", "11222333000181", "not a document"):  # a valid CPF, a valid CNPJ, garbage
        v = check(account(person_type=person_type, tax_id=tax_id))
        assert found(v) == {(1, "invalid_person_type", "person_type")}
        assert v["value"].tolist() == [person_type]


def test_should_refuse_a_short_name_another_erp_customer_has_but_not_the_accounts_own():
    erp = pd.DataFrame({"code": [10, 11], "short_name": ["Sao Jorge ", "OUTRO"]})
    assert found(check(account(), erp=erp)) == {(1, "short_name_taken_in_erp", "short_name")}
    assert check(account(target_code=10, erp_customer_code=10), erp=erp).empty  # its own row in the ERP


def test_should_refuse_every_account_of_the_batch_sharing_a_short_name():
    v = check(
        account(),
        account(account_id=2, short_name=" sao jorge", tax_id="45723174000110"),
        account(account_id=3, short_name="X", tax_id="11444777000161"),
    )
    assert found(v) == {
        (1, "short_name_duplicate_in_batch", "short_name"),
        (2, "short_name_duplicate_in_batch", "short_name"),
    }


def test_should_adopt_the_code_of_the_erp_customer_with_the_same_short_name_and_document():
    erp = pd.DataFrame(
        {"code": [10, 11, 12], "short_name": ["SAO JORGE", "OUTRO", "DUP"], "tax_id": ["11.222.333/0001-81", None, "x"]}
    )
    frame = pd.DataFrame([account(), account(account_id=2, short_name="OUTRO", tax_id="45723174000110")])
    out = rules.resolve_codes(frame, erp)
    assert out["target_code"].tolist()[0] == 10 and bool(out["adopted"].iloc[0])
    assert pd.isna(out["target_code"].iloc[1])  # same name, another document: a clash, not the same customer
    held = rules.resolve_codes(frame, erp, codes_in_crm=[10])  # another CRM account holds that code already
    assert pd.isna(held["target_code"].iloc[0])


def test_should_send_only_erp_typed_phones_and_integration_observations():
    phones = pd.DataFrame({
        "account_id": [1, 1, 1, 1, 1], "phone_id": [5, 4, 3, 2, 1],
        "phone_type": ["TELEFONE_ERP1", "TELEFONE_ERP1", "mobile", "FAX_ERP1", "commercial"],
        "number": ["second", "first", "m", "fax", "c"],
    })  # fmt: skip
    wide = rules.erp_phones(phones)
    got = {k: (None if pd.isna(v) else v) for k, v in wide.loc[1].items()}
    assert got == {"phone1": "first", "phone2": None, "fax1": "fax", "fax2": None}  # lowest id of each type
    obs = pd.DataFrame({
        "account_id": [1, 1, 1], "observation_id": [3, 2, 1], "created_at": ["2026-02-01", "2026-01-01", "2026-03-01"],
        "text": ["b", "a", "crm only"], "type_name": ["Integração", "Integração", "Comercial"],
    })  # fmt: skip
    assert rules.integration_notes(obs).to_dict() == {1: "a\nb"}
