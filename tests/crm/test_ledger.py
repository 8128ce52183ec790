"""The notification ledger on SQLite and PostgreSQL: idempotent plans, claims, crash recovery, no double claims."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import sqlalchemy as sa

from crm.db import engine_from_url
from crm.db.crm_schema import metadata
from crm.db.crm_schema import notification as N
from crm.notify import ledger
from crm.notify.ledger import Outcome, Planned

BD = dt.date(2026, 11, 22)
R = "crm_test_routine"


@pytest.fixture
def crm(crm_engine):
    return crm_engine


def items(n: int, skipped: int = 0) -> list[Planned]:
    out = [Planned(recipient=f"p{i}@example.com", business_key=f"k{i}", payload={"i": i}) for i in range(n)]
    out += [
        Planned(recipient="", business_key=f"s{i}", state="skipped", reason="no e-mail address") for i in range(skipped)
    ]
    return out


def states(eng) -> dict[str, str]:
    with eng.connect() as conn:
        return dict(conn.execute(sa.select(N.c.business_key, N.c.state)).all())


def send_all(eng, run_id: str, token: str, fail: set[str] = frozenset()) -> list[str]:
    """A fake channel: 'sends' every claimable row (marking the point of no return) and returns the keys."""
    writer = ledger.OutcomeWriter(eng, token)
    sent = []
    while rows := ledger.claim(eng, R, run_id=run_id, token=token, limit=3):
        for row in rows:
            writer.attempting(row.id)
            if row.business_key in fail:
                writer.record(row.id, Outcome("failed", error="451 later", retryable=True))
            else:
                writer.record(row.id, Outcome("sent", provider_message_id=f"<{row.id}>"))
                sent.append(row.business_key)
    return sent


def test_should_plan_idempotently_and_never_resend_what_was_sent(crm):
    first = ledger.plan(crm, R, "email", items(5, skipped=2), run_id="run1", business_date=BD)
    assert (first.planned, first.queued, first.skipped, first.already_done) == (7, 5, 2, 0)
    assert sorted(send_all(crm, "run1", "t1")) == [f"k{i}" for i in range(5)]
    # the same date again (re-run, clear, backfill): a new run id plans the same keys
    again = ledger.plan(crm, R, "email", items(5, skipped=2), run_id="run2", business_date=BD)
    assert (again.queued, again.skipped, again.already_done) == (0, 2, 5)
    assert send_all(crm, "run2", "t2") == []
    assert set(states(crm).values()) == {"sent", "skipped"}


def test_should_replan_rows_that_were_not_delivered(crm):
    ledger.plan(crm, R, "email", items(3), run_id="run1", business_date=BD)
    send_all(crm, "run1", "t1", fail={"k1"})
    assert states(crm)["k1"] == "failed"
    # the account opted out meanwhile: a re-plan may turn a failed row into skipped, never a sent one
    replan = [
        Planned(recipient="p0@example.com", business_key="k0", state="skipped", reason="opted out"),
        Planned(recipient="p1@example.com", business_key="k1", state="skipped", reason="opted out"),
    ]
    ledger.plan(crm, R, "email", replan, run_id="run2", business_date=BD)
    assert states(crm) == {"k0": "sent", "k1": "skipped", "k2": "sent"}


def test_should_retry_only_pending_and_transient_failures_on_a_task_retry(crm):
    ledger.plan(crm, R, "email", items(4), run_id="run1", business_date=BD)
    with crm.begin() as conn:  # a permanent refusal from an earlier attempt
        conn.execute(sa.update(N).where(N.c.business_key == "k3").values(state="failed", retryable=False))
    assert sorted(send_all(crm, "run1", "o#1", fail={"k2"})) == ["k0", "k1"]
    # same attempt: the transient failure is not taken twice
    assert send_all(crm, "run1", "o#1") == []
    # the task's retry (a new token) takes the transient failure only
    assert send_all(crm, "run1", "o#2") == ["k2"]
    assert states(crm) == {"k0": "sent", "k1": "sent", "k2": "sent", "k3": "failed"}


def test_should_turn_a_crashed_attempts_rows_into_unknown_or_pending_by_whether_they_left(crm):
    ledger.plan(crm, R, "email", items(5), run_id="run1", business_date=BD)
    rows = ledger.claim(crm, R, run_id="run1", token="dag/run1/send#1", limit=5)
    writer = ledger.OutcomeWriter(crm, "dag/run1/send#1")
    writer.attempting(rows[0].id)
    writer.record(rows[0].id, Outcome("sent"))
    writer.attempting(rows[1].id)  # ... and the worker dies during the hand-over of row 1
    recovered = ledger.recover(crm, R, run_id="run1", owner="dag/run1/send", token="dag/run1/send#2")
    assert (recovered.unknown, recovered.requeued) == (1, 3)
    assert states(crm) == {"k0": "sent", "k1": "unknown", "k2": "pending", "k3": "pending", "k4": "pending"}
    assert sorted(send_all(crm, "run1", "dag/run1/send#2")) == ["k2", "k3", "k4"]
    # an unknown row is not re-planned by a later run either
    ledger.plan(crm, R, "email", items(5), run_id="run2", business_date=BD)
    assert states(crm)["k1"] == "unknown"


def test_should_leave_rows_of_a_concurrent_live_task_alone(crm):
    ledger.plan(crm, R, "email", items(4), run_id="run1", business_date=BD)
    ledger.claim(crm, R, run_id="run1", token="dag/run1/send/0#1", limit=2)
    recovered = ledger.recover(crm, R, run_id="run1", owner="dag/run1/send/1", token="dag/run1/send/1#1")
    assert (recovered.unknown, recovered.requeued) == (0, 0)
    assert sorted(states(crm).values()) == ["pending", "pending", "sending", "sending"]


def test_should_reject_two_plans_of_the_same_key_in_one_run(crm):
    dup = [Planned(recipient="a@example.com", business_key="k"), Planned(recipient="a@example.com", business_key="k")]
    with pytest.raises(ValueError, match="planned twice"):
        ledger.plan(crm, R, "email", dup, run_id="run1", business_date=BD)


def test_should_reject_a_missing_business_key():
    with pytest.raises(ValueError, match="business key"):
        Planned(recipient="a@example.com", business_key="  ")


def test_should_count_states_and_skip_reasons_of_a_run(crm):
    ledger.plan(crm, R, "email", items(3, skipped=2), run_id="run1", business_date=BD)
    send_all(crm, "run1", "t", fail={"k0"})
    c = ledger.counts(crm, R, "run1")
    assert c == {"states": {"sent": 2, "failed": 1, "skipped": 2}, "skipped_by_reason": {"no e-mail address": 2}}


def test_should_never_give_one_row_to_two_concurrent_claimers_on_postgresql(pg_engine):
    metadata.create_all(pg_engine)
    ledger.plan(pg_engine, R, "email", items(400), run_id="run1", business_date=BD)
    taken: dict[str, list[int]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def worker(name: str) -> None:
        barrier.wait()
        while rows := ledger.claim(pg_engine, R, run_id="run1", token=f"w/{name}#1", limit=7):
            taken[name] += [r.id for r in rows]

    threads = [threading.Thread(target=worker, args=(n,)) for n in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not set(taken["a"]) & set(taken["b"])
    assert len(taken["a"]) + len(taken["b"]) == 400
    assert taken["a"] and taken["b"]  # both really worked (SKIP LOCKED, not one after the other)


def test_should_never_give_one_row_to_two_claiming_processes_on_sqlite(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    url = f"sqlite:///{tmp_path}/crm.db"
    eng = engine_from_url(url)
    metadata.create_all(eng)
    ledger.plan(eng, R, "email", items(300), run_id="run1", business_date=BD)
    code = (
        "import sys; from crm.db import engine_from_url; from crm.notify import ledger\n"
        "eng = engine_from_url(sys.argv[1]); got = []\n"
        "while rows := ledger.claim(eng, sys.argv[2], run_id='run1', token=sys.argv[3], limit=5):\n"
        "    got += [r.id for r in rows]\n"
        "print(' '.join(map(str, got)))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, R, f"w/{n}#1"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(ledger.__file__).parents[2])},
        )
        for n in "ab"
    ]
    outs = [set(map(int, p.communicate(timeout=120)[0].split())) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert not outs[0] & outs[1]
    assert len(outs[0]) + len(outs[1]) == 300


def test_should_give_a_new_run_a_fresh_attempt_budget_for_a_replanned_row(crm):
    ledger.plan(crm, R, "email", items(2), run_id="run1", business_date=BD)
    for attempt in range(1, ledger.DEFAULT_MAX_ATTEMPTS + 1):  # k1 defers every try of run 1
        send_all(crm, "run1", f"o#{attempt}", fail={"k1"})
    assert send_all(crm, "run1", "o#99") == []  # the budget of run 1 is used up
    # a new run (a re-run of the date, a backfill) plans k1 again: it must be sendable, not pending forever
    ledger.plan(crm, R, "email", items(2), run_id="run2", business_date=BD)
    assert send_all(crm, "run2", "p#1") == ["k1"]
    assert states(crm) == {"k0": "sent", "k1": "sent"}
    with crm.connect() as conn:
        assert conn.execute(sa.select(N.c.attempts).where(N.c.business_key == "k1")).scalar() == 1


def test_should_adopt_rows_a_long_dead_run_left_sending_so_they_are_sent_and_reported(crm):
    ledger.plan(crm, R, "email", items(3), run_id="run1", business_date=BD)
    rows = ledger.claim(crm, R, run_id="run1", token="dag/run1/send#1", limit=3)
    writer = ledger.OutcomeWriter(crm, "dag/run1/send#1")
    writer.attempting(rows[0].id)  # run 1 dies handing k0 over; k1, k2 never left; nobody retries run 1
    writer.close()
    with crm.begin() as conn:
        conn.execute(sa.update(N).values(claimed_at=ledger.utcnow() - dt.timedelta(hours=3)))
    # a later run of the same routine (other business keys) finds them by the stale rule
    ledger.plan(crm, R, "email", [Planned(recipient="new@example.com", business_key="n0")], run_id="run2",
                business_date=BD)  # fmt: skip
    recovered = ledger.recover(crm, R, run_id="run2", owner="dag/run2/send", token="dag/run2/send#1")
    assert (recovered.unknown, recovered.requeued, recovered.adopted) == (1, 2, 3)
    assert sorted(send_all(crm, "run2", "dag/run2/send#1")) == ["k1", "k2", "n0"]
    assert states(crm) == {"k0": "unknown", "k1": "sent", "k2": "sent", "n0": "sent"}
    c = ledger.counts(crm, R, "run2")  # run 2's report shows them
    assert c["states"] == {"sent": 3, "unknown": 1}
    (unknown,) = [r for r in ledger.rows_of_run(crm, R, "run2") if r["state"] == "unknown"]
    assert "may or may not have arrived" in unknown["last_error"] and "(left by run run1)" in unknown["last_error"]


def test_should_store_the_payload_a_sender_really_sent(crm):
    ledger.plan(crm, R, "email", items(2), run_id="run1", business_date=BD)
    rows = ledger.claim(crm, R, run_id="run1", token="t#1", limit=2)
    with ledger.OutcomeWriter(crm, "t#1") as writer:
        writer.record(rows[0].id, Outcome("sent", payload={"i": 0, "refreshed": True}))
        writer.record(rows[1].id, Outcome("sent"))
    payloads = {r["business_key"]: r["payload"] for r in ledger.rows_of_run(crm, R, "run1")}
    assert payloads == {"k0": '{"i": 0, "refreshed": true}', "k1": '{"i": 1}'}
