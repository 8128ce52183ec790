"""A sandbox RD Conversas API on loopback: the contract of the README, and the faults to rehearse.

Why: the WhatsApp routines must be exercised over real HTTP (HttpHook, retries, idempotency keys)
by `make run` and the tests, against something that keeps what it received and can be asserted on.
Built on `crm.demo.http_sandbox.SandboxServer` (recording, idempotency, `inject(path, 429/500/
"timeout")`); this module adds the RD Conversas routes:

- `POST /v1/contacts` {name, phone, reference} -> 201 {"id"}; `PATCH /v1/contacts/<id>` {name, phone} -> 200 {"id"}
- `GET /v1/templates?page=N&per_page=M` -> 200 {"data": [...], "page", "per_page", "total", "next_page"}
- `POST /v1/messages` {chip, to, contact_id, template: {name, language, parameters}} -> 201 {"id", "status"}
- every route wants `Authorization: Bearer <token>` (401 otherwise); numbers in `not_on_whatsapp`
  get 422 {"error": {"code": "not_on_whatsapp"}}, numbers in `blocked` 422 {"error": {"code": "blocked"}}.

``python -m crm.demo rd-conversas --port 8027`` runs it (started by `make run`); with `--log FILE`
every request is appended as a JSON line, the Authorization header left out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from crm.demo.http_sandbox import Request, SandboxServer

TOKEN = "sandbox-token"
# The demo catalogue: what the seeded CRM knows (crm_whatsapp_template) plus templates it does not yet.
DEMO_TEMPLATES: tuple[tuple[str, str, str, str, int], ...] = (
    ("aviso_boleto_vencimento", "pt_BR", "APPROVED",
     "Olá {{1}}, o boleto {{2}} de {{3}} vence em {{4}}. Linha digitável: {{5}}", 5),
    ("aviso_carne_pix", "pt_BR", "APPROVED",
     "Olá {{1}}, a parcela {{2}} do seu carnê ({{3}}) vence em {{4}}. Pague com o PIX copia e cola: {{5}}", 5),
    ("pedido_faturado", "pt_BR", "APPROVED", "{{1}}, seu pedido {{2}} foi faturado. Nota fiscal {{3}}.", 3),
    ("pedido_enviado", "pt_BR", "APPROVED", "{{1}}, seu pedido {{2}} saiu para entrega pela {{3}}.", 3),
    ("pedido_entregue", "pt_BR", "APPROVED", "{{1}}, seu pedido {{2}} foi entregue. Obrigado!", 2),
    ("pedido_cancelado", "pt_BR", "PENDING", "{{1}}, seu pedido {{2}} foi cancelado.", 2),
    ("promo_black_friday", "pt_BR", "REJECTED", "Black Friday: {{1}}% de desconto!", 1),
    ("faktura_termin_platnosci", "pl_PL", "APPROVED",
     "Dzień dobry {{1}}, faktura {{2}} na kwotę {{3}} ma termin płatności {{4}}.", 4),
    ("zamowienie_wyslane", "pl_PL", "APPROVED", "{{1}}, zamówienie {{2}} zostało wysłane.", 2),
    ("factura_scadenta", "ro_RO", "APPROVED", "Bună ziua {{1}}, factura {{2}} de {{3}} este scadentă pe {{4}}.", 4),
    ("comanda_livrata", "ro_RO", "APPROVED", "{{1}}, comanda {{2}} a fost livrată. Mulțumim!", 2),
    ("pedido_em_separacao", "pt_BR", "APPROVED", "{{1}}, seu pedido {{2}} está em separação.", 2),
    ("pedido_pronto_retirada", "pt_BR", "APPROVED", "{{1}}, seu pedido {{2}} está pronto na loja {{3}}.", 3),
)  # fmt: skip


def template_dicts(rows: Iterable[tuple[str, str, str, str, int]] = DEMO_TEMPLATES) -> list[dict[str, Any]]:
    return [{"name": n, "language": lang, "status": s, "body": b, "parameter_count": c} for n, lang, s, b, c in rows]


class RdConversasSandbox:
    """The sandbox API: `contacts`, `messages` hold what was accepted; `server` records every request."""

    def __init__(
        self,
        *,
        token: str = TOKEN,
        templates: list[dict[str, Any]] | None = None,
        not_on_whatsapp: Iterable[str] = (),
        blocked: Iterable[str] = (),
        max_per_page: int = 50,
        host: str = "127.0.0.1",
        port: int = 0,
        stall: float = 5.0,
        log_file: Path | None = None,
    ) -> None:
        self.token = token
        self.catalogue = list(template_dicts() if templates is None else templates)
        self.not_on_whatsapp = set(not_on_whatsapp)
        self.blocked = set(blocked)
        self.max_per_page = max_per_page
        self.contacts: dict[str, dict[str, Any]] = {}
        self.messages: list[dict[str, Any]] = []
        self.log_file = log_file
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        routes = {
            ("POST", "/v1/contacts"): self._create_contact,
            ("PATCH", "/v1/contacts/*"): self._update_contact,
            ("GET", "/v1/templates"): self._templates,
            ("POST", "/v1/messages"): self._send,
        }
        self.server = SandboxServer({k: self._guarded(v) for k, v in routes.items()}, host, port, stall)

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> RdConversasSandbox:
        self.server.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    def connection(self, **settings: Any) -> dict[str, Any]:
        """An Airflow connection (as for AIRFLOW_CONN_RD_CONVERSAS) pointing here, with `crm` settings."""
        return {
            "conn_type": "http",
            "host": self.server.host,
            "port": self.server.port,
            "schema": "http",
            "password": self.token,
            "extra": {"crm": settings},
        }

    # -- routes ----------------------------------------------------------------------------------
    def _guarded(self, route: Any) -> Any:
        def handle(req: Request) -> tuple:
            self._log(req)
            if req.headers.get("authorization") != f"Bearer {self.token}":
                return 401, {"error": {"code": "unauthorized", "message": "missing or invalid token"}}
            return route(req)

        return handle

    def _log(self, req: Request) -> None:
        if self.log_file is None:
            return
        safe = {k: v for k, v in req.headers.items() if k != "authorization"}
        line = json.dumps({"method": req.method, "path": req.path, "query": req.query, "headers": safe,
                           "body": req.body}, ensure_ascii=False)  # fmt: skip
        with self._lock, open(self.log_file, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def _recipient_problem(self, phone: str) -> tuple | None:
        if phone in self.not_on_whatsapp:
            return 422, {"error": {"code": "not_on_whatsapp", "message": f"{phone} has no WhatsApp account"}}
        if phone in self.blocked:
            return 422, {"error": {"code": "blocked", "message": f"{phone} blocked this sender"}}
        return None

    def _create_contact(self, req: Request) -> tuple:
        body = req.body if isinstance(req.body, dict) else {}
        phone, name = str(body.get("phone") or ""), str(body.get("name") or "")
        if not phone.startswith("+") or not phone[1:].isdigit() or not name:
            return 400, {"error": {"code": "invalid_contact", "message": "name and an E.164 phone are required"}}
        problem = self._recipient_problem(phone)
        if problem:
            return problem
        with self._lock:
            cid = f"ct_{next(self._ids):06d}"
            self.contacts[cid] = {"id": cid, "name": name, "phone": phone, "reference": body.get("reference")}
        return 201, {"id": cid}

    def _update_contact(self, req: Request) -> tuple:
        cid = req.path.rsplit("/", 1)[-1]
        body = req.body if isinstance(req.body, dict) else {}
        if cid not in self.contacts:
            return 404, {"error": {"code": "contact_not_found", "message": cid}}
        phone = str(body.get("phone") or self.contacts[cid]["phone"])
        problem = self._recipient_problem(phone)
        if problem:
            return problem
        with self._lock:
            self.contacts[cid].update(phone=phone, name=body.get("name") or self.contacts[cid]["name"])
        return 200, {"id": cid}

    def _templates(self, req: Request) -> tuple:
        try:
            page = max(1, int(req.query.get("page", ["1"])[0]))
            per_page = min(self.max_per_page, max(1, int(req.query.get("per_page", ["20"])[0])))
        except ValueError:
            return 400, {"error": {"code": "invalid_paging"}}
        start = (page - 1) * per_page
        data = self.catalogue[start : start + per_page]
        more = start + per_page < len(self.catalogue)
        return 200, {"data": data, "page": page, "per_page": per_page, "total": len(self.catalogue),
                     "next_page": page + 1 if more else None}  # fmt: skip

    def _send(self, req: Request) -> tuple:
        body = req.body if isinstance(req.body, dict) else {}
        tpl = body.get("template") or {}
        known = {t["name"]: t for t in self.catalogue}
        spec = known.get(tpl.get("name"))
        if spec is None or spec["status"] != "APPROVED":
            return 422, {"error": {"code": "template_not_approved", "message": str(tpl.get("name"))}}
        params = tpl.get("parameters") or []
        if len(params) != spec["parameter_count"] or any(not str(p).strip() for p in params):
            message = f"{spec['name']} takes {spec['parameter_count']} non-empty parameters"
            return 422, {"error": {"code": "invalid_parameters", "message": message}}
        if not body.get("chip"):
            return 422, {"error": {"code": "invalid_chip", "message": "no chip (sender number)"}}
        to = str(body.get("to") or "")
        problem = self._recipient_problem(to)
        if problem:
            return problem
        with self._lock:
            mid = f"msg_{next(self._ids):06d}"
            self.messages.append({"id": mid, **body})
        return 201, {"id": mid, "status": "queued"}

    # -- test helpers -----------------------------------------------------------------------------
    def sent_to(self, phone: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("to") == phone]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="loopback address (default %(default)s)")
    parser.add_argument("--port", type=int, default=8027, help="port (default %(default)s)")
    parser.add_argument("--token", default=TOKEN, help="the bearer token it accepts (default %(default)s)")
    parser.add_argument("--not-on-whatsapp", action="append", default=[], metavar="PHONE",
                        help="answer 'not on WhatsApp' for this E.164 number (repeatable)")  # fmt: skip
    parser.add_argument("--blocked", action="append", default=[], metavar="PHONE",
                        help="answer 'blocked' for this number (repeatable)")  # fmt: skip
    parser.add_argument("--log", type=Path, default=None, help="append every request as a JSON line to this file")
    parser.add_argument("--contacts-from", type=Path, default=None, metavar="CRM_DB",
                        help="start knowing the contacts this CRM SQLite file already holds ids for (crm_external_id), "
                             "as a real account would")  # fmt: skip


def known_contacts(crm_db: Path) -> dict[str, dict[str, Any]]:
    """The contacts a demo CRM already synced: without them the sandbox answers 404 to their updates."""
    import sqlite3

    if not crm_db.is_file():
        return {}
    with sqlite3.connect(crm_db) as conn:
        rows = conn.execute(
            "SELECT account_id, external_id, phone_number FROM crm_external_id WHERE system = 'rd_conversas'"
        ).fetchall()
    return {
        cid: {"id": cid, "name": "seeded", "phone": phone, "reference": f"account:{acc}"} for acc, cid, phone in rows
    }


def main(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    import time

    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
    sandbox = RdConversasSandbox(
        token=args.token,
        not_on_whatsapp=args.not_on_whatsapp,
        blocked=args.blocked,
        host=args.host,
        port=args.port,
        log_file=args.log,
    )
    if args.contacts_from:
        sandbox.contacts.update(known_contacts(args.contacts_from))
    with sandbox:
        print(f"rd-conversas sandbox on {sandbox.url} (requests: {args.log or 'not logged'})", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0
