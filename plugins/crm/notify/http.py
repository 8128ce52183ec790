"""The HTTP channels' common client (SMS gateway, RD Conversas): retries done right, over HttpHook.

Why one client: both APIs need the same discipline. Connection errors, 5xx and 429 are retried
with exponential backoff (429 and 503 honour Retry-After, capped); other 4xx are answers, returned
to the caller to classify (failed, or skipped with a reason). Every request of one ledger row
carries the same `Idempotency-Key`, so a retry after a timeout cannot make the provider act
twice when it honours the key; if the tries run out after a timeout the outcome is `unknown`.

The connection comes from Airflow (HttpHook: host/schema/port, login/password, the provider's
extras such as `timeout` and `verify`). This package's own settings live in the connection extra
under the key `"crm"` (e.g. endpoint paths and field names), which is removed from the request
headers (HttpHook sends unknown extras as headers).
"""

from __future__ import annotations

import email.utils
import json as jsonlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
SETTINGS_KEY = "crm"


@dataclass(frozen=True)
class HttpResult:
    """What the API finally answered (or why there is no answer)."""

    status: int | None  # None: no answer (connection error or timeout on the last try)
    body: Any = None  # parsed JSON, else text
    attempts: int = 0
    error: str | None = None
    # some try timed out after the request went out: the provider may have acted on it. Sticky: a later
    # 5xx, 429 or connection error does not prove the earlier request was not processed
    timed_out: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HttpChannel:
    """A JSON API client for one Airflow HTTP connection, reusing one session (keep-alive) per batch."""

    def __init__(
        self,
        http_conn_id: str,
        *,
        tries: int = 5,
        backoff: float = 0.5,
        max_wait: float = 60.0,
        timeout: float = 15.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.http_conn_id = http_conn_id
        self.tries = tries
        self.backoff = backoff
        self.max_wait = max_wait
        self.timeout = timeout
        self._sleep = sleep
        self._session: Any = None
        self._hook: Any = None
        self._secret: str | None = None
        self.settings: dict[str, Any] = {}
        self.waited: list[float] = []  # every pause taken, for the log and the tests

    def __enter__(self) -> HttpChannel:
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open(self) -> None:
        from airflow.providers.http.hooks.http import HttpHook

        hook = HttpHook(method="POST", http_conn_id=self.http_conn_id)
        session = hook.get_conn()
        settings = session.headers.pop(SETTINGS_KEY, None)
        if isinstance(settings, str):
            settings = jsonlib.loads(settings)
        self.settings = dict(settings or {})
        # Resolved once per open(), not per request: under the Task SDK each lookup is a supervisor round trip.
        self._secret = hook.get_connection(self.http_conn_id).password
        self._hook, self._session = hook, session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    @property
    def secret(self) -> str | None:
        """The connection's password (an API token), read at open(): for the caller to put where the API wants it."""
        return self._secret

    def path(self, name: str, default: str) -> str:
        """An endpoint path from the connection's settings (`crm.paths.<name>`), else the default."""
        return str((self.settings.get("paths") or {}).get(name, default))

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        point_of_no_return: Callable[[], None] | None = None,
    ) -> HttpResult:
        """One logical request with retries; `point_of_no_return` is called once, before the first send."""
        import requests

        if self._session is None:
            self.open()
        url = self._hook.url_from_endpoint(path)
        hdrs = dict(headers or {})
        if idempotency_key:
            hdrs["Idempotency-Key"] = idempotency_key
        if point_of_no_return is not None:
            point_of_no_return()
        last_error, timed_out = None, False
        for attempt in range(1, self.tries + 1):
            try:
                resp = self._session.request(method, url, json=json, params=params, headers=hdrs, timeout=self.timeout)
            except requests.ConnectTimeout as exc:  # never connected: nothing was sent (before Timeout: a subclass)
                last_error = f"connect timeout after {self.timeout}s: {exc}"
                wait = self._backoff(attempt)
            except requests.Timeout as exc:
                last_error, timed_out = f"timeout after {self.timeout}s: {exc}", True
                wait = self._backoff(attempt)
            except requests.ConnectionError as exc:
                last_error = f"connection error: {exc}"
                wait = self._backoff(attempt)
            else:
                if resp.status_code not in RETRY_STATUSES:
                    return HttpResult(
                        resp.status_code, _body(resp), attempt, timed_out=timed_out, headers=dict(resp.headers)
                    )
                last_error = f"HTTP {resp.status_code}: {_short(resp.text)}"
                hinted = retry_after_seconds(resp.headers.get("Retry-After"))
                wait = min(hinted, self.max_wait) if hinted is not None else self._backoff(attempt)
                if attempt == self.tries:
                    return HttpResult(
                        resp.status_code,
                        _body(resp),
                        attempt,
                        error=last_error,
                        timed_out=timed_out,
                        headers=dict(resp.headers),
                    )
            if attempt < self.tries:
                log.warning("%s %s: %s; try %d of %d in %.1fs", method, path, last_error, attempt + 1, self.tries, wait)
                self.waited.append(wait)
                self._sleep(wait)
        return HttpResult(None, None, self.tries, error=last_error, timed_out=timed_out)

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff * 2 ** (attempt - 1), self.max_wait)


def _body(resp: Any) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def outcome_of(result: HttpResult, provider_message_id: str | None = None) -> Any:
    """The ledger outcome of a generic API answer (channels first handle their own special answers)."""
    from crm.notify.ledger import Outcome

    if result.ok:
        return Outcome("sent", provider_message_id=provider_message_id)
    if result.timed_out and (result.status is None or result.status in RETRY_STATUSES):
        # an earlier try may have been acted on, and no later answer says otherwise: never resend automatically
        return Outcome("unknown", error=f"may have been delivered (a try timed out); last try: {result.error}")
    if result.status is None:
        return Outcome("failed", error=result.error, retryable=True)
    detail = f"HTTP {result.status}: {_short(str(result.body))}"
    if result.status in RETRY_STATUSES:
        return Outcome("failed", error=f"still failing after {result.attempts} tries: {detail}", retryable=True)
    return Outcome("failed", error=detail)
