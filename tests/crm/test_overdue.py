"""Unit tests of the overdue-notice pieces: job-function patterns and PDF documents (no Airflow, no database)."""

from __future__ import annotations

import io

import pypdf
import pytest

from crm.jobs.overdue import PatternError, function_matcher, parse_patterns
from crm.notify import pdf as P

FUNCTIONS = [
    "Conta",
    "Contabilidade",
    "Contabilitate",
    "Gerente de Contas",
    "Manager",
    "Management",
    "Director",
    "Księgowość",
    "KSIĘGOWOŚĆ I FINANSE",
    "Conta_Corrente",
    "ContaXCorrente",
    "x' OR 1=1 --",
    None,
]


def matched(patterns: str) -> list[str | None]:
    matches = function_matcher(parse_patterns(patterns))
    return [f for f in FUNCTIONS if matches(f)]


@pytest.mark.parametrize(
    ("patterns", "want"),
    [
        ("Conta", ["Conta", "Contabilidade", "Contabilitate", "Conta_Corrente", "ContaXCorrente"]),
        ("Contab", ["Contabilidade", "Contabilitate"]),
        ("%Manage", ["Manager", "Management"]),
        ("Manager", ["Manager"]),
        ("manage", ["Manager", "Management"]),  # case-insensitive prefix
        (
            "Conta, %Manage",
            ["Conta", "Contabilidade", "Contabilitate", "Manager", "Management", "Conta_Corrente", "ContaXCorrente"],
        ),
        ("%Contas", ["Gerente de Contas"]),
        ("księgowość", ["Księgowość", "KSIĘGOWOŚĆ I FINANSE"]),  # Unicode case folding
        ("Conta_", ["Conta_Corrente"]),  # '_' is literal, not LIKE's any-character
        ("C%e", ["Contabilidade", "Contabilitate", "Conta_Corrente", "ContaXCorrente"]),
        ("x' OR 1=1 --", ["x' OR 1=1 --"]),  # only the function literally called that
        ("_", []),
        (".*", []),  # not a regex either
        ("Con(ta", []),
    ],
)
def test_should_match_job_functions_by_prefix_with_percent_wildcards(patterns, want):
    assert matched(patterns) == want


@pytest.mark.parametrize("bad", ["", "  ", "%", "%%", " % ", "Conta, %", "Conta,,Manager", "Conta,", "x" * 81, "a\tb"])
def test_should_refuse_empty_wildcard_only_or_oversized_patterns(bad):
    with pytest.raises(PatternError):
        parse_patterns(bad)


def test_should_accept_patterns_as_a_list_and_trim_them():
    assert parse_patterns([" Conta ", "%Manage"]) == ["Conta", "%Manage"]


FIELDS = {
    "company": {
        "name": "Țărână Verde Distribuție S.R.L.",
        "tax_id": "14399840",
        "email": "office@example.ro",
        "phone": "+40213100200",
    },
    "partner": {
        "name": "Łódzka Hurtownia Spożywcza sp. z o.o.",
        "tax_id": "7251801126",
        "code": 1042,
        "address": "ul. Piotrkowska 12\n90-001 Łódź",
    },
    "business_date": "22.11.2026",
}


def invoice(number: str, amount: float, locale: str, currency: str) -> dict:
    return {
        "number": number,
        "invoice_number": "1-123",
        "issue_date": "22.10.2026",
        "due_date": "01.11.2026",
        "days_overdue": 21,
        "amount": P.money(amount, currency, locale),
        "paid_amount": P.money(0, currency, locale),
        "open_amount": P.money(amount, currency, locale),
        "payment_method": "boleto",
        "bearer": "Banca Transilvania",
        "items": [],
    }


def text_of(content: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(content))
    return "\n".join(p.extract_text() for p in reader.pages).replace("\xa0", " ").replace("\u202f", " ")


@pytest.mark.parametrize(
    ("locale", "currency", "words"),
    [
        ("pt_BR", "BRL", ["Fatura", "Vencimento", "Conceição", "R$ 1.234,56"]),
        ("pl_PL", "PLN", ["Faktura", "Termin płatności", "Łódź", "1 234,56 zł"]),
        ("ro_RO", "RON", ["Factură", "Scadența", "Țărână", "1.234,56 RON"]),
    ],
)
def test_should_render_invoices_that_parse_back_with_their_language(locale, currency, words):
    fields = {**FIELDS, "partner": {**FIELDS["partner"], "name": "Padaria Conceição Ltda. / Łódź / Țărână"}}
    for fmt in ("simple", "detailed"):
        inv = invoice("12345/1", 1234.56, locale, currency)
        content = P.render_pdf(P.load_layout(f"invoice_{fmt}", locale), {**fields, "invoice": inv, "items": []})
        assert content.startswith(b"%PDF-")
        text = text_of(content)
        assert "12345/1" in text
        for w in words:
            assert w in text, (fmt, w, text)


def test_should_break_pages_of_a_long_statement_and_repeat_the_header():
    invoices = [invoice(f"N-{i:04d}", 10.0 + i, "pt_BR", "BRL") for i in range(120)]
    layout = P.load_layout("statement", "pt_BR")
    content = P.render_pdf(layout, {**FIELDS, "invoices": invoices, "total": "R$ 9.999,00"})
    reader = pypdf.PdfReader(io.BytesIO(content))
    assert len(reader.pages) >= 3
    text = text_of(content)
    assert all(f"N-{i:04d}" in text for i in range(120))
    assert text.count(layout.labels["due_date"]) == len(reader.pages)
    assert "R$ 9.999,00" in text


def test_should_share_font_objects_only_between_documents_with_the_same_glyphs():
    layout = P.load_layout("invoice_simple", "ro_RO")
    inv = invoice("A-1", 5.0, "ro_RO", "RON")
    first = P.render_pdf(layout, {**FIELDS, "invoice": inv})
    cached = len(P._font_objects)
    second = P.render_pdf(layout, {**FIELDS, "invoice": {**inv, "number": "A-2"}})
    assert len(P._font_objects) == cached  # same repertoire: the font objects were reused
    # a letter outside the repertoire takes fpdf2's own path, and still renders
    odd = P.render_pdf(layout, {**FIELDS, "invoice": {**inv, "number": "Straße-Ő-3"}})
    assert "Straße-Ő-3" in text_of(odd)
    assert "A-1" in text_of(first) and "A-2" in text_of(second) and "A-2" not in text_of(first)


def test_should_fail_the_message_not_the_process_on_a_missing_field():
    from crm.notify.templates import RenderError

    with pytest.raises(RenderError, match="missing field"):
        P.render_pdf(P.load_layout("invoice_simple", "pt_BR"), {"company": {}, "partner": {}})


def test_should_write_dates_and_money_as_the_reader_does():
    import datetime as dt

    day = dt.date(2026, 11, 2)
    assert P.pdf_date(day, "pt_BR") == "02/11/2026"
    assert P.pdf_date(day, "pl_PL") == "02.11.2026" == P.pdf_date("2026-11-02", "ro_RO")
    assert P.currency_of("pt_BR") == "BRL" and P.currency_of("pl_PL") == "PLN" and P.currency_of("ro_RO") == "RON"
    assert P.money(1234.5, "BRL", "pt_BR").replace("\xa0", " ") == "R$ 1.234,50"


OFFERED_LOCALES = ["", "pt_BR", "pl_PL", "ro_RO"]  # the default files and every language the dunning speaks


def _notice_fields(locale: str) -> dict:
    import datetime as dt

    import pandas as pd

    from crm.jobs.overdue import email_fields, invoice_rows

    recs = pd.DataFrame(
        [
            {"receivable_id": 7, "document_number": "NF-1001/1", "invoice_number": "1001", "invoice_id": 1,
             "issue_date": "2026-09-01", "due_date": "2026-10-01", "amount": 1234.5, "paid_amount": 0.0,
             "payment_method": "boleto", "bearer": ""},
            {"receivable_id": 8, "document_number": "NF-1002/2", "invoice_number": "1002", "invoice_id": 2,
             "issue_date": "2026-09-15", "due_date": "2026-11-01", "amount": 99.9, "paid_amount": 9.9,
             "payment_method": "pix", "bearer": ""},
        ]
    )  # fmt: skip
    currency = P.currency_of(locale or None)
    base = {
        "locale": locale,
        "currency": currency,
        "partner": {"name": "Łódź & Bălan Ltda.", "short_name": "Łódź & Bălan"},
        "company": {"name": "Aurora Distribuidora", "email": "fin@aurora.example", "phone": "+55 11 3040-5060"},
        "contacts": [{"name": "Ștefan Ionescu", "email": "s@example.ro", "function": "Contabilidade"}],
        "days_overdue": 3,
        "business_date": dt.date(2026, 11, 22),
        "attach_statement": True,
    }
    return email_fields(base, invoice_rows(recs, dt.date(2026, 11, 22), locale, currency))


@pytest.mark.parametrize("locale", OFFERED_LOCALES)
def test_should_render_every_offered_overdue_template_in_every_locale(locale):
    """The DAG's template enum lists include/templates/email/overdue*; each must have subject, text and HTML
    in each language, not fall back to another language's file."""
    from crm.config import TEMPLATES_DIR
    from crm.notify.templates import Templates

    names = sorted({p.name.split(".")[0] for p in (TEMPLATES_DIR / "email").glob("overdue*.txt")})  # the enum
    assert names == ["overdue_3_days", "overdue_final_notice"]
    templates = Templates("email")
    lang = locale.split("_")[0]
    fields = _notice_fields(locale)
    for name in names:
        for part in ("subject", "txt", "html"):
            assert templates.path_for(name, part, locale or None)[1] == lang, (name, part)
        rendered = templates.render_email(name, fields, locale or None)
        assert rendered.locale == lang
        assert " ".join(fields["total"].split()) in rendered.subject  # a subject is one line of plain spaces
        for body in (rendered.text, rendered.html):
            assert "NF-1001/1" in body and "NF-1002/2" in body and fields["total"] in body
        assert "Łódź &amp; Bălan Ltda." in rendered.html  # autoescaped, diacritics intact
        assert "Łódź & Bălan Ltda." in rendered.text
