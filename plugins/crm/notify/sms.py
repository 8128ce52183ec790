"""The SMS channel: length in segments (GSM-7 vs UCS-2), the gateway request, a Sender for dispatch.

Why count segments: an SMS is billed and delivered per segment, and one character outside the
GSM-7 alphabet (ç, ł, ș, an emoji) switches the whole message to UCS-2, cutting a segment from
160 to 70 characters. The plan step counts them, refuses a text longer than the routine allows
(the row fails with the count, before anything is sent) and the run report shows the totals.

- GSM-7 (3GPP TS 23.038): the basic table costs one septet per character, the extension table
  (``^ { } [ ] ~ \\ | €`` and form feed) two (escape + character). One message holds 160 septets;
  a concatenated one 153 per segment (the UDH takes the rest), and an escape pair never straddles
  two segments.
- UCS-2 (UTF-16 code units): 70 in one message, 67 per segment when concatenated; a character
  outside the BMP (most emoji) takes two units and is never split either.

The gateway is an HTTP connection (`sms_gateway`, HttpHook) driven by `crm.notify.http.HttpChannel`:
retries with backoff on connection errors, 5xx and 429 (Retry-After honoured), no retry on other
4xx, one `Idempotency-Key` per ledger row. The request is a JSON POST of to/from/text; a real
gateway is fitted through the connection extra, key ``"crm"``::

    {"crm": {"paths": {"send": "/api/v2/sms"},
             "fields": {"to": "destination", "from": "sender", "text": "message"},
             "body": {"route": "premium"},        # static fields added to every request
             "from": "ACME",                      # sender id; else the company's phone number
             "id_field": "message_id",            # where the answer carries the provider's id
             "token_header": "Authorization", "token_prefix": "Bearer "}}   # password as a token
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from crm.notify import ledger
from crm.notify.http import HttpChannel, outcome_of

SMS_CONN_ID = "sms_gateway"
DEFAULT_PATH = "/sms"
FIELDS = ("to", "from", "text")

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
GSM7_SINGLE, GSM7_MULTI = 160, 153
UCS2_SINGLE, UCS2_MULTI = 70, 67

_PHONE_PUNCTUATION = re.compile(r"[\s().\-/]")
_E164 = re.compile(r"^\+[1-9]\d{7,14}$")


class SmsTooLong(ValueError):
    """The rendered text needs more segments than allowed: that message fails at plan time."""


@dataclass(frozen=True)
class SmsLength:
    """How a text travels: its encoding, its size in that encoding's units and its segments."""

    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int

    @property
    def chars_per_segment(self) -> int:
        if self.encoding == "GSM-7":
            return GSM7_SINGLE if self.segments <= 1 else GSM7_MULTI
        return UCS2_SINGLE if self.segments <= 1 else UCS2_MULTI


def is_gsm7(text: str) -> bool:
    """True when every character is in the GSM-7 basic or extension table."""
    return all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text)


def sms_length(text: str) -> SmsLength:
    """Encoding, units and segment count of `text`, packing segments the way handsets do."""
    if is_gsm7(text):
        costs = [2 if c in GSM7_EXTENSION else 1 for c in text]
        return SmsLength("GSM-7", sum(costs), _segments(costs, GSM7_SINGLE, GSM7_MULTI))
    costs = [2 if ord(c) > 0xFFFF else 1 for c in text]
    return SmsLength("UCS-2", sum(costs), _segments(costs, UCS2_SINGLE, UCS2_MULTI))


def _segments(costs: list[int], single: int, multi: int) -> int:
    total = sum(costs)
    if total <= single:
        return 1
    segments, used = 1, 0
    for cost in costs:  # a two-unit character (escape pair, surrogate pair) is never split
        if used + cost > multi:
            segments, used = segments + 1, 0
        used += cost
    return segments


def normalise_phone(number: str | None) -> str | None:
    """The number in E.164 (``+5511987654321``), or None when it is not in international form."""
    if not number:
        return None
    compact = _PHONE_PUNCTUATION.sub("", number.strip())
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    return compact if _E164.match(compact) else None


def sms_payload(
    *, to: str, sender: str | None, text: str, max_segments: int, test_phone: str | None = None
) -> dict[str, Any]:
    """The ledger payload of one SMS (with its length); too long a text raises SmsTooLong."""
    length = sms_length(text)
    if length.segments > max_segments:
        raise SmsTooLong(
            f"the text needs {length.segments} {length.encoding} segments ({length.units} units), "
            f"more than the {max_segments} allowed"
        )
    payload: dict[str, Any] = {
        "channel": "sms",
        "to": test_phone or to,
        "from": sender,
        "text": text,
        "encoding": length.encoding,
        "units": length.units,
        "segments": length.segments,
    }
    if test_phone:
        payload["original_to"] = to
    return payload


class SmsChannel:
    """Sends SMS payloads to the gateway of one HTTP connection, over one session per batch."""

    def __init__(self, http_conn_id: str = SMS_CONN_ID, *, http: HttpChannel | None = None, **http_options: Any):
        self.http = http or HttpChannel(http_conn_id, **http_options)

    def __enter__(self) -> SmsChannel:
        self.http.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.close()

    @property
    def settings(self) -> dict[str, Any]:
        return self.http.settings

    def body(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON the gateway gets: static fields, then to/from/text under the configured names."""
        names = {**{f: f for f in FIELDS}, **(self.settings.get("fields") or {})}
        sender = self.settings.get("from") or payload.get("from")
        body = dict(self.settings.get("body") or {})
        body.update({names["to"]: payload["to"], names["from"]: sender, names["text"]: payload["text"]})
        if sender is None:
            body.pop(names["from"])  # the gateway's account default
        return body

    def headers(self) -> dict[str, str]:
        header = self.settings.get("token_header")
        secret = self.http.secret if header else None
        return {str(header): f"{self.settings.get('token_prefix', '')}{secret}"} if header and secret else {}

    def send(
        self,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str,
        point_of_no_return: Callable[[], None] | None = None,
    ) -> ledger.Outcome:
        """POST one SMS; the outcome as the ledger records it (sent / failed [retryable] / unknown)."""
        try:
            body = self.body(payload)
        except KeyError as exc:
            return ledger.Outcome("failed", error=f"cannot build the SMS: missing {exc}")
        result = self.http.request(
            "POST",
            self.http.path("send", DEFAULT_PATH),
            json=body,
            headers=self.headers(),
            idempotency_key=idempotency_key,
            point_of_no_return=point_of_no_return,
        )
        provider_id = None
        if result.ok and isinstance(result.body, Mapping):
            value = result.body.get(self.settings.get("id_field", "id"))
            provider_id = None if value is None else str(value)
        return outcome_of(result, provider_message_id=provider_id)


def idempotency_key(row: ledger.Claimed) -> str:
    """One key per ledger row: every retry of that row's SMS (in this task or a retry of it) reuses it."""
    return f"crm-notification-{row.id}"


def sms_sender(channel: SmsChannel) -> Callable[[ledger.Claimed, Callable[[], None]], ledger.Outcome]:
    """A dispatch Sender posting each claimed row's SMS payload to the gateway."""

    def send(row: ledger.Claimed, point_of_no_return: Callable[[], None]) -> ledger.Outcome:
        return channel.send(row.payload, idempotency_key=idempotency_key(row), point_of_no_return=point_of_no_return)

    return send
