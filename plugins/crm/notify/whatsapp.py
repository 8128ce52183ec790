"""The WhatsApp channel: an RD Conversas client over the HTTP channel, and the dispatch Sender.

Why a thin layer over `HttpChannel`: retries (connection errors, 5xx, 429 with Retry-After),
idempotency keys and the point of no return are the HTTP channel's; what is RD Conversas' own is
here: the endpoints (configurable, `crm.paths` in the connection extra), the token as a bearer
header, paging the template catalogue, and the answers that mean "do not try again, and it is not
an error of ours": a number that is not on WhatsApp, or a contact who blocked the sender. Those
become `skipped` ledger rows with the reason.

The contract this client assumes is documented in the README ("RD Conversas API contract") and
implemented by the sandbox server `crm.demo.rd_conversas`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crm.notify.http import HttpChannel, HttpResult, outcome_of
from crm.notify.ledger import Claimed, Outcome

log = logging.getLogger(__name__)

CONN_ID = "rd_conversas"
DEFAULT_PATHS = {
    "contacts": "/v1/contacts",  # POST: create; PATCH <contacts>/<id>: update
    "templates": "/v1/templates",  # GET ?page=N&per_page=M
    "messages": "/v1/messages",  # POST: send a template message
}
# Error codes of a 4xx answer that are facts about the recipient, not failures.
SKIP_REASONS = {"not_on_whatsapp": "not on WhatsApp", "blocked": "blocked"}
MAX_PAGES = 1000


@dataclass(frozen=True)
class WhatsAppSettings:
    """The corporate parameter DS_LST_CONFIG_RDCONVERSAS (minus the token) and CD_TIPOFONE_CELULAR.

    Read from the connection extra `crm` (see the README); the token is the connection password.
    """

    chip: str | None = None  # NR_CHIP_RDCONVERSAS: default sender number
    additional_field: str = "rd_conversas"  # CD_CAMPO_ADIC_PESRDCONV: crm_external_id.system of the contact id
    days_before_due: int = 2  # QT_DIAS_AVISO_VENC
    mobile_phone_type: str = "mobile"  # CD_TIPOFONE_CELULAR: crm_phone.phone_type that is sent
    page_size: int = 100  # templates per page

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any] | None) -> WhatsAppSettings:
        s = dict(extra or {})
        try:
            return cls(
                chip=(str(s["chip"]).strip() or None) if s.get("chip") else None,
                additional_field=str(s.get("additional_field") or cls.additional_field),
                days_before_due=int(s.get("days_before_due", cls.days_before_due)),
                mobile_phone_type=str(s.get("mobile_phone_type") or cls.mobile_phone_type),
                page_size=int(s.get("page_size", cls.page_size)),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"connection {CONN_ID!r}: bad value in the 'crm' extra: {exc}") from exc


def load_settings(conn_id: str = CONN_ID) -> WhatsAppSettings:
    """The package's settings of the RD Conversas connection, without opening a session (call inside a task)."""
    import json

    from airflow.sdk import BaseHook

    extra = BaseHook.get_connection(conn_id).extra_dejson.get("crm")
    if isinstance(extra, str):
        extra = json.loads(extra)
    return WhatsAppSettings.from_extra(extra)


def idempotency_key(routine: str, recipient: str, business_key: str) -> str:
    """Stable per ledger row identity (not its id: a rebuilt CRM database must not collide with old keys)."""
    digest = hashlib.sha256(f"{routine}\x1f{recipient}\x1f{business_key}".encode()).hexdigest()[:32]
    return f"crm-{digest}"


def error_code(result: HttpResult) -> str | None:
    """The API's error code of a 4xx answer: {"error": {"code": ...}} or {"error": "..."}."""
    body = result.body
    if not isinstance(body, Mapping):
        return None
    err = body.get("error")
    if isinstance(err, Mapping):
        return str(err.get("code") or "") or None
    return str(err) if err else None


def outcome(result: HttpResult, provider_id: str | None = None) -> Outcome:
    """The ledger outcome of an RD Conversas answer: "not on WhatsApp" / "blocked" are skips, the rest generic."""
    if not result.ok and result.status is not None and 400 <= result.status < 500:
        reason = SKIP_REASONS.get(error_code(result) or "")
        if reason:
            return Outcome("skipped", reason=reason)
        if result.status == 401:
            return Outcome("failed", error="HTTP 401: the RD Conversas token was refused (rd_conversas password)")
    return outcome_of(result, provider_id)


class RdConversas:
    """RD Conversas client: contacts, template catalogue, template messages. One session per batch."""

    def __init__(self, conn_id: str = CONN_ID, **http: Any) -> None:
        self.http = HttpChannel(conn_id, **http)
        self.settings = WhatsAppSettings()

    def __enter__(self) -> RdConversas:
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.close()

    def open(self) -> None:
        self.http.open()
        self.settings = WhatsAppSettings.from_extra(self.http.settings)

    def _headers(self) -> dict[str, str]:
        token = self.http.secret
        return {"Authorization": f"Bearer {token}"} if token else {}

    def create_contact(
        self,
        *,
        name: str,
        phone: str,
        reference: str,
        idempotency_key: str | None = None,
        point_of_no_return: Callable[[], None] | None = None,
    ) -> HttpResult:
        """POST contacts: answers 201 {"id": ...}."""
        return self.http.request(
            "POST",
            self.http.path("contacts", DEFAULT_PATHS["contacts"]),
            json={"name": name, "phone": phone, "reference": reference},
            headers=self._headers(),
            idempotency_key=idempotency_key,
            point_of_no_return=point_of_no_return,
        )

    def update_contact(
        self,
        contact_id: str,
        *,
        name: str,
        phone: str,
        idempotency_key: str | None = None,
        point_of_no_return: Callable[[], None] | None = None,
    ) -> HttpResult:
        """PATCH contacts/<id>: a changed number updates the contact (its id stays)."""
        base = self.http.path("contacts", DEFAULT_PATHS["contacts"]).rstrip("/")
        return self.http.request(
            "PATCH",
            f"{base}/{contact_id}",
            json={"name": name, "phone": phone},
            headers=self._headers(),
            idempotency_key=idempotency_key,
            point_of_no_return=point_of_no_return,
        )

    def templates(self, page_size: int | None = None) -> Iterator[dict[str, Any]]:
        """Every template of the account, page by page (until `next_page` is null or a page comes back empty)."""
        per_page = page_size or self.settings.page_size
        page: int | None = 1
        seen = 0
        while page is not None:
            if seen >= MAX_PAGES:
                raise RuntimeError(f"template catalogue: more than {MAX_PAGES} pages; is `next_page` stuck?")
            seen += 1
            result = self.http.request(
                "GET",
                self.http.path("templates", DEFAULT_PATHS["templates"]),
                params={"page": page, "per_page": per_page},
                headers=self._headers(),
            )
            if not result.ok or not isinstance(result.body, Mapping):
                raise RuntimeError(f"template catalogue, page {page}: {result.error or f'HTTP {result.status}'}")
            items = list(result.body.get("data") or [])
            yield from items
            nxt = result.body.get("next_page")
            page = int(nxt) if nxt and items else None

    def send_template(
        self,
        *,
        to: str,
        template: str,
        parameters: Sequence[str],
        chip: str | None,
        language: str | None = None,
        contact_id: str | None = None,
        idempotency_key: str | None = None,
        point_of_no_return: Callable[[], None] | None = None,
    ) -> HttpResult:
        """POST messages: a template message with positional parameters; answers 201/202 {"id": ...}."""
        body = {
            "chip": chip or self.settings.chip,
            "to": to,
            "contact_id": contact_id,
            "template": {"name": template, "language": language, "parameters": [str(p) for p in parameters]},
        }
        return self.http.request(
            "POST",
            self.http.path("messages", DEFAULT_PATHS["messages"]),
            json=body,
            headers=self._headers(),
            idempotency_key=idempotency_key,
            point_of_no_return=point_of_no_return,
        )


def _id_of(result: HttpResult) -> str | None:
    if isinstance(result.body, Mapping) and result.body.get("id") is not None:
        return str(result.body["id"])
    return None


# Ledger payloads of the WhatsApp channel: {"kind": "message" | "contact_create" | "contact_update", ...}.
def message_payload(
    *,
    to: str,
    template: str,
    language: str | None,
    parameters: Sequence[Any],
    chip: str | None,
    contact_id: str | None,
    message_type: str,
    **extra: Any,
) -> dict[str, Any]:
    """What the send step needs to deliver one template message (kept on the ledger row)."""
    return {
        "kind": "message",
        "to": to,
        "template": template,
        "language": language,
        "parameters": [str(p) for p in parameters],
        "chip": chip,
        "contact_id": contact_id,
        "message_type": message_type,
        **extra,
    }


ContactStored = Callable[[Claimed, str, str], None]  # (row, contact id, phone) -> None


def whatsapp_sender(client: RdConversas, routine: str, on_contact: ContactStored | None = None) -> Callable:
    """A dispatch Sender for the WhatsApp payloads; `on_contact` stores a contact id right after the API's yes."""

    def send(row: Claimed, point_of_no_return: Callable[[], None]) -> Outcome:
        p = row.payload
        key = idempotency_key(routine, row.recipient, row.business_key)
        kind = p.get("kind")
        try:
            if kind == "message":
                result = client.send_template(
                    to=p["to"],
                    template=p["template"],
                    parameters=p["parameters"],
                    chip=p.get("chip"),
                    language=p.get("language"),
                    contact_id=p.get("contact_id"),
                    idempotency_key=key,
                    point_of_no_return=point_of_no_return,
                )
            elif kind == "contact_create":
                result = client.create_contact(
                    name=p["name"],
                    phone=p["phone"],
                    reference=p["reference"],
                    idempotency_key=key,
                    point_of_no_return=point_of_no_return,
                )
            elif kind == "contact_update":
                result = client.update_contact(
                    p["contact_id"],
                    name=p["name"],
                    phone=p["phone"],
                    idempotency_key=key,
                    point_of_no_return=point_of_no_return,
                )
            else:
                return Outcome("failed", error=f"unknown WhatsApp payload kind {kind!r}")
        except KeyError as exc:
            return Outcome("failed", error=f"incomplete WhatsApp payload: missing {exc}")
        provider_id = _id_of(result) or (p.get("contact_id") if kind == "contact_update" else None)
        out = outcome(result, provider_id)
        if out.state == "sent" and kind != "message":
            if not provider_id:
                return Outcome("unknown", error=f"the API accepted the contact but returned no id: {result.body!r}")
            if on_contact is not None:
                on_contact(row, provider_id, p["phone"])
        return out

    return send
