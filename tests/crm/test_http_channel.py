"""The HTTP channels' client against the loopback sandbox: retries, Retry-After, idempotency, outcomes."""

from __future__ import annotations

import json
from email.utils import formatdate

import pytest

from crm.demo.http_sandbox import SandboxServer
from crm.notify.http import HttpChannel, outcome_of, retry_after_seconds


@pytest.fixture
def api(monkeypatch):
    counter = iter(range(1, 10_000))
    routes = {
        ("POST", "/v1/messages"): lambda req: (201, {"id": f"m{next(counter)}", "to": req.body["to"]}),
        ("GET", "/v1/templates"): lambda req: (200, {"items": [], "page": req.query.get("page", ["1"])[0]}),
    }
    with SandboxServer(routes, stall=1.5) as server:
        monkeypatch.setenv(
            "AIRFLOW_CONN_TEST_API",
            json.dumps(
                {
                    "conn_type": "http",
                    "host": server.host,
                    "port": server.port,
                    "schema": "http",
                    "password": "s3cret-token",
                    "extra": {"crm": {"paths": {"send": "/v1/messages"}}, "X-Static": "yes"},
                }
            ),
        )
        yield server


def channel(**kw) -> tuple[HttpChannel, list[float]]:
    waits: list[float] = []
    return HttpChannel("test_api", sleep=waits.append, backoff=0.25, timeout=0.5, **kw), waits


def test_should_honour_retry_after_on_429_then_send_once(api):
    api.inject("/v1/messages", (429, {"Retry-After": "3"}))
    ch, waits = channel()
    with ch:
        result = ch.request("POST", ch.path("send", "/x"), json={"to": "+5511"}, idempotency_key="row-1")
    assert result.ok and result.attempts == 2 and waits == [3.0]
    assert len(api.deliveries("/v1/messages")) == 1
    sent = api.requests("/v1/messages")
    assert [r.headers["idempotency-key"] for r in sent] == ["row-1", "row-1"]
    assert sent[0].headers["x-static"] == "yes" and "crm" not in sent[0].headers  # settings are not headers


def test_should_retry_5xx_with_backoff_and_not_other_4xx(api):
    api.inject("/v1/messages", 500, 503)
    ch, waits = channel()
    with ch:
        ok = ch.request("POST", "/v1/messages", json={"to": "1"}, idempotency_key="a")
        api.inject("/v1/messages", 400)
        bad = ch.request("POST", "/v1/messages", json={"to": "2"}, idempotency_key="b")
    assert ok.ok and ok.attempts == 3 and waits == [0.25, 0.5]
    assert bad.status == 400 and bad.attempts == 1
    assert outcome_of(bad).state == "failed" and not outcome_of(bad).retryable
    assert len(api.deliveries("/v1/messages")) == 1


def test_should_not_act_twice_when_an_answer_is_lost_and_the_request_retried(api):
    api.inject("/v1/messages", "timeout")
    ch, _ = channel()
    with ch:
        result = ch.request("POST", "/v1/messages", json={"to": "1"}, idempotency_key="k1")
    assert result.ok and result.attempts == 2
    assert len(api.requests("/v1/messages")) == 2 and len(api.deliveries("/v1/messages")) == 1


def test_should_report_unknown_when_every_try_times_out(api):
    api.inject("/v1/messages", "timeout", "timeout")
    ch, _ = channel(tries=2)
    with ch:
        result = ch.request("POST", "/v1/messages", json={"to": "1"}, idempotency_key="k2")
    assert result.status is None and result.timed_out
    assert outcome_of(result).state == "unknown"


def test_should_give_up_retryably_when_the_api_stays_down(api):
    api.inject("/v1/messages", 502, 502, 502)
    ch, waits = channel(tries=3)
    with ch:
        result = ch.request("POST", "/v1/messages", json={"to": "1"})
    out = outcome_of(result)
    assert result.status == 502 and out.state == "failed" and out.retryable and len(waits) == 2


def test_should_expose_the_token_only_on_request(api):
    ch, _ = channel()
    with ch:
        assert ch.secret == "s3cret-token"
        assert ch.settings == {"paths": {"send": "/v1/messages"}}


def test_should_look_the_connection_up_once_per_open_not_per_request(api, monkeypatch):
    from airflow.providers.http.hooks.http import HttpHook

    lookups: list[str] = []
    real = HttpHook.get_connection.__func__

    def counting(cls, conn_id):
        lookups.append(conn_id)
        return real(cls, conn_id)

    monkeypatch.setattr(HttpHook, "get_connection", classmethod(counting))
    ch, _ = channel()
    with ch:
        opened = len(lookups)
        for i in range(5):
            assert ch.request("POST", "/v1/messages", json={"to": str(i)}, headers={"X-Token": ch.secret}).ok
        assert len(lookups) == opened <= 2  # the session (HttpHook.get_conn) and the token, nothing per request
    assert [r.headers["x-token"] for r in api.requests("/v1/messages")] == ["s3cret-token"] * 5


def test_should_read_retry_after_as_seconds_or_http_date():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(formatdate(1_000_030, usegmt=True), now=1_000_000) == pytest.approx(30, abs=1)
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_should_answer_keep_alive_requests_without_waiting_for_delayed_acks(api):
    """The sandbox serves `make run` and every test: 100 requests on one keep-alive session took ~4 s
    (Nagle + the client's delayed ACK, ~40 ms each) before the handler disabled Nagle."""
    import time

    import requests

    with requests.Session() as session:
        started = time.perf_counter()
        for i in range(100):
            assert session.post(f"{api.url}/v1/messages", json={"to": f"+55119{i:08d}"}).status_code == 201
        elapsed = time.perf_counter() - started
    assert elapsed < 1.5, f"100 keep-alive requests took {elapsed:.2f} s"


class _FakeSession:
    """Answers each try from a script: an exception to raise or a status code (for what a sandbox cannot do)."""

    def __init__(self, script):
        self.script = list(script)
        self.tries = 0

    def request(self, *args, **kwargs):
        import requests

        self.tries += 1
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        resp = requests.Response()
        resp.status_code, resp._content = step, b'{"error": "x"}'
        return resp


def scripted(*script) -> tuple[HttpChannel, _FakeSession]:
    from types import SimpleNamespace

    ch = HttpChannel("unused", tries=len(script), sleep=lambda s: None)
    ch._hook = SimpleNamespace(url_from_endpoint=lambda path: f"http://gateway.invalid{path}")
    ch._session = _FakeSession(script)
    return ch, ch._session


def test_should_stay_unknown_when_a_timeout_is_followed_by_a_5xx_on_the_last_try(api):
    api.inject("/v1/messages", "timeout", 502)  # the first try was processed, its answer lost
    ch, _ = channel(tries=2)
    with ch:
        result = ch.request("POST", "/v1/messages", json={"to": "1"}, idempotency_key="k3")
    assert len(api.deliveries("/v1/messages")) == 1  # it did arrive
    assert result.status == 502 and result.timed_out
    assert outcome_of(result).state == "unknown"


def test_should_stay_unknown_when_a_timeout_is_followed_by_a_connection_error():
    import requests

    ch, session = scripted(requests.ReadTimeout("read timed out"), requests.ConnectionError("refused"))
    result = ch.request("POST", "/sms", json={"to": "1"})
    assert session.tries == 2 and result.status is None and result.timed_out
    out = outcome_of(result)
    assert out.state == "unknown" and "refused" in out.error


def test_should_not_count_a_connect_timeout_as_possibly_delivered():
    import requests

    ch, session = scripted(requests.ConnectTimeout("connect timed out"), requests.ConnectTimeout("again"))
    result = ch.request("POST", "/sms", json={"to": "1"})
    assert session.tries == 2 and not result.timed_out
    out = outcome_of(result)
    assert out.state == "failed" and out.retryable and "connect timeout" in out.error
    # ... but a read timeout before it still may have been delivered
    ch, _ = scripted(requests.ReadTimeout("read timed out"), requests.ConnectTimeout("connect timed out"), 503)
    assert outcome_of(ch.request("POST", "/sms", json={"to": "1"})).state == "unknown"
