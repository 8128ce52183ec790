"""Pure rules of the WhatsApp routines (TOTVS Moda / RD Conversas): no database, no Airflow.

Kept apart so the rules the issue names (which receivable gets which message type, how a
configuration's field list becomes the template's parameters, which numbers can be sent) can be
tested and read without the plumbing around them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

DUE_BOLETO = "due_boleto"
DUE_CARNE = "due_carne"
DUE_TYPES = (DUE_BOLETO, DUE_CARNE)
ORDER_STAGE_PREFIX = "order_stage:"
# Calling codes of the countries of the demo's companies, for numbers typed without one.
CALLING_CODES = {"BR": "55", "PL": "48", "RO": "40", "PT": "351"}
_NATIONAL_LENGTHS = {"55": (10, 11), "48": (9, 9), "40": (9, 9), "351": (9, 9)}


class ParameterError(ValueError):
    """A configuration's field list cannot fill its template (unknown field, empty value, wrong count)."""


def message_type_of(payment_method: str, status: str) -> str | None:
    """The notice a receivable gets: "due boleto" for open boleto bills, "due carnê" for PIX carnê in progress."""
    if payment_method == "boleto" and status in ("open", "in_progress"):
        return DUE_BOLETO
    if payment_method == "pix_carne" and status == "in_progress":
        return DUE_CARNE
    return None


def order_stage_type(stage: str) -> str:
    """The message type of an order stage, as configured in crm_whatsapp_config."""
    return f"{ORDER_STAGE_PREFIX}{stage}"


def normalize_phone(number: str | None, locale: str | None = None) -> str | None:
    """An E.164 number (+5511987654321), or None when it cannot be one.

    Numbers typed with a '+' keep their digits; numbers typed nationally ('(11) 98765-4321') get the
    calling code of the locale's country when their length fits that country's plan.
    """
    if not number or not str(number).strip():
        return None
    raw = str(number).strip()
    digits = re.sub(r"\D", "", raw)
    if raw.startswith("+") or raw.startswith("00"):
        digits = digits[2:] if raw.startswith("00") else digits
        return f"+{digits}" if 8 <= len(digits) <= 15 else None
    country = (locale or "").replace("-", "_").split("_")[-1].upper() if locale and "_" in locale else ""
    code = CALLING_CODES.get(country)
    if not code:
        return None
    national = digits.lstrip("0")
    low, high = _NATIONAL_LENGTHS[code]
    return f"+{code}{national}" if low <= len(national) <= high else None


def template_parameters(fields: Sequence[str], values: Mapping[str, Any]) -> list[str]:
    """The template's positional parameters: the configured fields' values, in order, none empty."""
    out = []
    for name in fields:
        if name not in values:
            raise ParameterError(f"unknown field {name!r} in the message configuration; known: {', '.join(values)}")
        value = values[name]
        if value is None or not str(value).strip():
            raise ParameterError(f"field {name!r} has no value for this message")
        out.append(str(value).strip())
    return out


def check_template(template: Mapping[str, Any] | None, fields: Sequence[str], template_name: str) -> None:
    """A configuration must point at an approved template that takes as many parameters as it gives."""
    if template is None:
        raise ParameterError(f"template {template_name!r} is not in the catalogue (crm_whatsapp_template)")
    status = (template.get("status") or "").upper()
    if status != "APPROVED":
        raise ParameterError(f"template {template_name!r} is not approved (status {status or 'unknown'})")
    count = template.get("parameter_count")
    if count is not None and int(count) != len(fields):
        raise ParameterError(
            f"template {template_name!r} takes {int(count)} parameter(s), the configuration gives {len(fields)}"
        )


def first_name(name: str | None, short_name: str | None) -> str:
    """How a message greets a customer: the short name, else the first word of the name."""
    short = (short_name or "").strip()
    if short:
        return short
    parts = (name or "").split()
    return parts[0] if parts else ""


def due_date_for(business_date: dt.date, days_before_due: int) -> dt.date:
    """QT_DIAS_AVISO_VENC: on 23/05 with 2 days, the bills due on 25/05."""
    return business_date + dt.timedelta(days=int(days_before_due))
