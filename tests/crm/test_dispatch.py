"""dispatch with several senders (one thread and connection each): every row once, the ledger exact, errors stop it."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
import sqlalchemy as sa

from crm.db.crm_schema import notification as N
from crm.notify import ledger
from crm.notify.dispatch import dispatch
from crm.notify.ledger import Outcome, Planned

BD = dt.date(2026, 11, 22)
R = "crm_test_dispatch"


@pytest.fixture
def crm(crm_engine):
    return crm_engine


def plan(crm, n: int, run_id: str = "run-1") -> None:
    rows = [Planned(recipient=f"p{i}@example.com", business_key=f"k{i}", payload={"i": i}) for i in range(n)]
    ledger.plan(crm, R, "email", rows, run_id=run_id, business_date=BD)


def ledger_rows(crm) -> dict[str, tuple]:
    with crm.connect() as conn:
        return {
            r.business_key: (r.state, r.attempts, r.provider_message_id)
            for r in conn.execute(sa.select(N.c.business_key, N.c.state, N.c.attempts, N.c.provider_message_id))
        }


class Recorder:
    """A fake channel: remembers which thread delivered which row, waits a little like a server does."""

    def __init__(self, name: str, log: list, fail_at: int | None = None) -> None:
        self.name, self.log, self.fail_at, self.calls = name, log, fail_at, 0
        self.broke_on: str | None = None

    def __call__(self, row: ledger.Claimed, point_of_no_return) -> Outcome:
        self.calls += 1
        if self.calls == self.fail_at:
            self.broke_on = row.business_key
            raise RuntimeError("the channel broke")
        point_of_no_return()
        time.sleep(0.002)
        self.log.append((row.business_key, self.name, threading.get_ident()))
        return Outcome("sent", provider_message_id=f"<{row.business_key}@{self.name}>")


def test_should_send_every_row_exactly_once_over_several_senders(crm):
    plan(crm, 120)
    log: list = []
    senders = [Recorder(f"c{i}", log) for i in range(3)]

    result = dispatch(crm, R, senders, run_id="run-1", owner="t", try_number=1, batch=25)

    keys = [k for k, _, _ in log]
    assert sorted(keys) == sorted(f"k{i}" for i in range(120)) and len(set(keys)) == 120
    assert {name for _, name, _ in log} == {"c0", "c1", "c2"}  # all three worked...
    assert len({thread for _, _, thread in log}) == 3  # ...each in its own thread
    rows = ledger_rows(crm)
    assert {state for state, _, _ in rows.values()} == {"sent"} and {a for _, a, _ in rows.values()} == {1}
    by_sender = {k: name for k, name, _ in log}
    assert all(mid == f"<{k}@{by_sender[k]}>" for k, (_, _, mid) in rows.items())  # each outcome on its own row
    assert (result.sent, result.failed, result.unknown) == (120, 0, 0)

    again = dispatch(crm, R, senders, run_id="run-1", owner="t", try_number=2)
    assert again.sent == 0 and len(log) == 120


def test_should_stop_on_a_sender_error_and_give_back_the_rows_nobody_took(crm):
    plan(crm, 60)
    log: list = []
    senders = [Recorder("c0", log), Recorder("c1", log, fail_at=5)]

    with pytest.raises(RuntimeError, match="the channel broke"):
        dispatch(crm, R, senders, run_id="run-1", owner="t", try_number=1, batch=60)

    rows = ledger_rows(crm)
    sent = {k for k, (s, _, _) in rows.items() if s == "sent"}
    assert sent == {k for k, _, _ in log}
    # the broken row (claimed, never attempted) and the untouched rest are pending again, none left sending
    assert {s for k, (s, _, _) in rows.items() if k not in sent} == {"pending"}
    assert rows[senders[1].broke_on][0] == "pending" and len(sent) < 60

    log.clear()
    retry = dispatch(crm, R, [Recorder("c0", log), Recorder("c1", log)], run_id="run-1", owner="t", try_number=2)
    assert retry.sent == 60 - len(sent) and {k for k, _, _ in log}.isdisjoint(sent)
    assert {s for s, _, _ in ledger_rows(crm).values()} == {"sent"}


def test_should_not_send_a_row_another_run_took_over_while_this_one_held_it(crm):
    plan(crm, 6)
    log: list = []
    inner = Recorder("c0", log)

    def slow_sender(row: ledger.Claimed, point_of_no_return) -> Outcome:
        if row.business_key == "k2":  # this attempt stalled so long that a later run adopted the row
            with crm.begin() as conn:
                conn.execute(sa.update(N).where(N.c.id == row.id).values(claim_token="later-run#1"))
        return inner(row, point_of_no_return)

    result = dispatch(crm, R, slow_sender, run_id="run-1", owner="t", try_number=1)

    assert sorted(k for k, _, _ in log) == ["k0", "k1", "k3", "k4", "k5"]  # k2 never reached the channel's send
    assert (result.sent, result.claim_lost) == (5, 1)
    with crm.connect() as conn:
        k2 = conn.execute(sa.select(N.c.state, N.c.claim_token, N.c.attempts).where(N.c.business_key == "k2")).one()
    assert tuple(k2) == ("sending", "later-run#1", 0)  # left to the run that holds it
