"""The notification ledger (`crm_notification`): what makes a notification happen exactly once.

One row per (routine, channel, recipient, business key). The plan step writes rows idempotently;
the send step claims a batch (commits `sending`), and for each message commits `attempted_at`
right before the irreversible step (SMTP DATA, the HTTP POST), then records the outcome.

So after a crash, a `sending` row tells its own story:
- `attempted_at` is null: the message never left; the row goes back to `pending` and is sent later;
- `attempted_at` is set: it may or may not have arrived; the row becomes `unknown`, is reported,
  and is never resent automatically (a person decides).

Re-planning (a re-run, a cleared run, a backfill of the same date) only touches rows that were not
delivered (`pending`, `failed`, `skipped`); `sent`, `sending` and `unknown` rows are left alone, so
nothing is sent twice. A re-plan by a new run gives the row a fresh attempt budget (`attempts` back
to 0): the budget is per run, so a row that used it up in an earlier run is not "not yet sent"
forever. Rows a long-dead attempt of another run left `sending` are adopted by the run that
recovers them (see `recover`), so they are sent (or reported unknown) by a run that still reports.
On PostgreSQL claims use FOR UPDATE SKIP LOCKED, so concurrent workers
never take the same row; SQLite serialises writers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Text,
    and_,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from crm.db.crm_schema import notification as N
from crm.db.upsert import write_transaction

log = logging.getLogger(__name__)
PLANNABLE = ("pending", "failed", "skipped")  # not delivered: a re-plan may rewrite them
FINAL = ("sent", "unknown")
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_STALE_AFTER = dt.timedelta(hours=2)


def utcnow() -> dt.datetime:
    """Wall-clock time for bookkeeping columns only (claimed/sent at), naive UTC like every CRM timestamp."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Planned:
    """One notification the plan step wants: `state` is pending, or skipped/failed with a reason."""

    recipient: str
    business_key: str
    payload: Mapping[str, Any] | None = None
    account_id: int | None = None
    company_id: int | None = None
    state: str = "pending"
    reason: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.state not in PLANNABLE:
            raise ValueError(f"a planned notification is pending, skipped or failed, not {self.state!r}")
        if self.business_key is None or not str(self.business_key).strip():
            raise ValueError("a notification needs a business key")
        if self.recipient is None:
            raise ValueError("recipient may be empty (skipped rows) but not None")


@dataclass(frozen=True)
class PlanResult:
    planned: int
    queued: int  # rows of this run now pending
    skipped: int
    failed: int
    already_done: int  # rows left alone: sent, unknown or sending from an earlier run


def plan(
    target: Engine | Connection,
    routine: str,
    channel: str,
    items: Iterable[Planned],
    *,
    run_id: str,
    business_date: dt.date,
    chunk: int = 2000,
) -> PlanResult:
    """Write the planned rows, idempotently; rows already delivered (or possibly delivered) are untouched."""
    items = list(items)
    _check_unique(items)
    dialect_insert = postgresql.insert if _dialect(target) == "postgresql" else sqlite.insert
    now = utcnow()
    rows = [
        {
            "routine": routine,
            "channel": channel,
            "recipient": it.recipient,
            "business_key": str(it.business_key),
            "state": it.state,
            "reason": it.reason,
            "account_id": it.account_id,
            "company_id": it.company_id,
            "business_date": business_date,
            "payload": None if it.payload is None else json.dumps(it.payload, default=str, ensure_ascii=False),
            "retryable": it.state != "failed",
            "last_error": it.error,
            "run_id": run_id,
            "created_at": now,
            "updated_at": now,
        }
        for it in items
    ]
    stmt = dialect_insert(N)
    ex = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=["routine", "channel", "recipient", "business_key"],
        set_={
            "state": ex.state,
            "reason": ex.reason,
            "payload": ex.payload,
            "retryable": ex.retryable,
            "last_error": ex.last_error,
            "run_id": ex.run_id,
            "business_date": ex.business_date,
            "account_id": ex.account_id,
            "company_id": ex.company_id,
            "claim_token": None,
            # a new run's re-plan gets a fresh attempt budget; a retry of the same run's plan does not
            "attempts": case((N.c.run_id == ex.run_id, N.c.attempts), else_=literal_column("0")),
            "updated_at": ex.updated_at,
        },
        where=or_(*(N.c.state == literal_column(f"'{s}'") for s in PLANNABLE)),  # no IN: executemany
    )
    with write_transaction(target) as conn:
        for start in range(0, len(rows), chunk):
            conn.execute(stmt, rows[start : start + chunk])
        mine = dict(
            conn.execute(
                select(N.c.state, func.count())
                .where(N.c.routine == routine, N.c.channel == channel, N.c.run_id == run_id)
                .group_by(N.c.state)
            ).all()
        )
    this_run = sum(mine.get(s, 0) for s in PLANNABLE)
    return PlanResult(
        planned=len(items),
        queued=mine.get("pending", 0),
        skipped=mine.get("skipped", 0),
        failed=mine.get("failed", 0),
        already_done=max(len(items) - this_run, 0),
    )


@dataclass
class Claimed:
    id: int
    recipient: str
    business_key: str
    payload: dict[str, Any]
    attempts: int
    account_id: int | None = None
    company_id: int | None = None


@dataclass(frozen=True)
class Recovered:
    unknown: int  # attempted by a crashed attempt: may have arrived, never resent
    requeued: int  # claimed but never attempted: back to pending
    adopted: int = 0  # of those, rows another (long dead) run had claimed: now this run's


def recover(
    target: Engine | Connection,
    routine: str,
    *,
    run_id: str,
    owner: str,
    token: str,
    stale_after: dt.timedelta = DEFAULT_STALE_AFTER,
) -> Recovered:
    """Settle `sending` rows a previous attempt of this task (or any attempt, long ago) left behind.

    Rows found by the stale rule may belong to another run. They are adopted (`run_id` set to this
    run): `claim` only takes rows of its own run and the report only lists its own run's rows, so a
    requeued row left with the old run id would be sent by nobody and reported by nobody (that
    run's report went out long ago). Adopted, a requeued row is sent by this run and an `unknown`
    one shows up in this run's report, its error naming the run that left it.
    """
    prefix = owner + "#"
    mine_before = and_(
        N.c.routine == routine,
        N.c.state == "sending",
        N.c.claim_token != token,
        or_(
            and_(N.c.run_id == run_id, func.substr(N.c.claim_token, 1, len(prefix)) == prefix),
            N.c.claimed_at < utcnow() - stale_after,
        ),
    )
    left_by = case(
        (N.c.run_id != run_id, literal(" (left by run ", Text) + N.c.run_id + literal(")", Text)),
        else_=literal("", Text),
    )
    with write_transaction(target) as conn:
        adopted = conn.execute(select(func.count()).where(mine_before, N.c.run_id != run_id)).scalar() or 0
        unknown = conn.execute(
            update(N)
            .where(mine_before, N.c.attempted_at.is_not(None))
            .values(
                state="unknown",
                last_error=literal(
                    "the task stopped while this message was being handed over; it may or may not "
                    "have arrived, so it is not resent automatically",
                    Text,
                )
                + left_by,
                run_id=run_id,
                updated_at=utcnow(),
            )
        ).rowcount
        requeued = conn.execute(
            update(N)
            .where(mine_before, N.c.attempted_at.is_(None))
            .values(state="pending", claim_token=None, run_id=run_id, updated_at=utcnow())
        ).rowcount
    if adopted:
        log.warning("%s: %d row(s) left 'sending' long ago by other runs are now run %s's", routine, adopted, run_id)
    return Recovered(unknown=unknown, requeued=requeued, adopted=adopted)


def claim(
    target: Engine | Connection,
    routine: str,
    *,
    run_id: str,
    token: str,
    limit: int,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> list[Claimed]:
    """Take up to `limit` sendable rows of this run and commit them as `sending` under `token`."""
    sendable = and_(
        N.c.routine == routine,
        N.c.run_id == run_id,
        or_(N.c.state == "pending", and_(N.c.state == "failed", N.c.retryable == literal(True))),
        N.c.attempts < max_attempts,
        or_(N.c.claim_token.is_(None), N.c.claim_token != token),  # one try per row and task attempt
    )
    ids = select(N.c.id).where(sendable).order_by(N.c.id).limit(limit).with_for_update(skip_locked=True)
    with write_transaction(target) as conn:
        # two statements, not UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED): PostgreSQL
        # may evaluate such a subquery more than once and take more than `limit` rows
        chosen = list(conn.execute(ids).scalars())
        if not chosen:
            return []
        rows = conn.execute(
            update(N)
            .where(N.c.id.in_(chosen), sendable)
            .values(state="sending", claim_token=token, claimed_at=utcnow(), attempted_at=None, updated_at=utcnow())
            .returning(
                N.c.id, N.c.recipient, N.c.business_key, N.c.payload, N.c.attempts, N.c.account_id, N.c.company_id
            )
        ).all()
    out = [
        Claimed(
            id=r.id,
            recipient=r.recipient,
            business_key=r.business_key,
            payload=json.loads(r.payload) if r.payload else {},
            attempts=r.attempts,
            account_id=r.account_id,
            company_id=r.company_id,
        )
        for r in rows
    ]
    out.sort(key=lambda c: c.id)
    return out


@dataclass(frozen=True)
class Outcome:
    """What a channel reports for one message."""

    state: str  # sent | failed | unknown | skipped (the provider says it cannot be delivered, e.g. not on WhatsApp)
    provider_message_id: str | None = None
    error: str | None = None
    retryable: bool = False
    reason: str | None = None  # for skipped
    # the payload as really sent, when the sender changed it (re-rendered from fresher data): stored on
    # the row, so the report shows what went out rather than what was planned; None keeps the planned one
    payload: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.state not in ("sent", "failed", "unknown", "skipped"):
            raise ValueError(f"an outcome is sent, failed, unknown or skipped, not {self.state!r}")
        if self.state == "skipped" and not self.reason:
            raise ValueError("a skipped outcome needs a reason")


class _Prepared:
    """An UPDATE compiled once for a dialect, run as driver SQL: no statement building per message.

    The per-message ledger writes are the same two statements thousands of times; compiling them
    once (bind processors included, so values are stored exactly as `conn.execute(update(...))`
    stores them) takes the SQLAlchemy statement machinery out of the send loop.
    """

    def __init__(self, stmt: Any, dialect: Any) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = str(compiled)
        self._compiled = compiled
        self._order = list(compiled.positiontup) if dialect.positional else None
        self._procs = {
            name: proc
            for name, bind in compiled.binds.items()
            if (proc := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }

    def params(self, values: Mapping[str, Any]) -> tuple | dict[str, Any]:
        bound = self._compiled.construct_params(values)
        for name, proc in self._procs.items():
            if bound.get(name) is not None:
                bound[name] = proc(bound[name])
        return tuple(bound[n] for n in self._order) if self._order is not None else bound


_ATTEMPTING = (
    update(N)
    .where(N.c.id == bindparam("row_id"), N.c.claim_token == bindparam("token"))
    .values(attempted_at=bindparam("now"), attempts=N.c.attempts + 1)
)
_RECORD = (
    update(N)
    .where(N.c.id == bindparam("row_id"), N.c.claim_token == bindparam("token"))
    .values(
        state=bindparam("state"),
        reason=bindparam("reason"),
        provider_message_id=bindparam("provider_message_id"),
        last_error=bindparam("last_error"),
        retryable=bindparam("retryable"),
        sent_at=bindparam("sent_at"),
        payload=func.coalesce(bindparam("payload", type_=Text), N.c.payload),
        # a failure before the point of no return was still a try
        attempts=case((N.c.attempted_at.is_(None), N.c.attempts + 1), else_=N.c.attempts),
        updated_at=bindparam("now"),
    )
)


class ClaimLost(RuntimeError):
    """The row was taken over (a run that found it stale adopted it) while this attempt held it: do not send."""


class OutcomeWriter:
    """Commits, per message, "about to send" before the point of no return and the outcome right after.

    Two small commits per message is the price of a ledger that, after a crash, knows which messages
    left (sent), which never did (back to pending) and which were in the hand-over (unknown): with
    the outcome buffered instead, the last message before a crash would be reported unknown although
    it was delivered.

    The commits stay, but their cost is kept small: one connection held for the whole send (`close()`
    gives it back; a connection error drops it and the next write takes a new one) and both UPDATEs
    compiled once, then run as driver SQL.
    """

    def __init__(self, target: Engine, token: str) -> None:
        self.target = target
        self.token = token
        self._conn: Connection | None = None
        self._attempting = _Prepared(_ATTEMPTING, target.dialect)
        self._record = _Prepared(_RECORD, target.dialect)

    def _commit(self, prepared: _Prepared, values: Mapping[str, Any]) -> int:
        if self._conn is None:
            self._conn = self.target.connect()
        conn = self._conn
        try:
            with conn.begin():
                return conn.exec_driver_sql(prepared.sql, prepared.params(values)).rowcount
        except Exception:
            self.close()
            raise

    def attempting(self, row_id: int) -> None:
        """Commit "about to send"; ClaimLost if the row is no longer this attempt's (then nothing may be sent)."""
        if self._commit(self._attempting, {"row_id": row_id, "token": self.token, "now": utcnow()}) != 1:
            raise ClaimLost(f"notification {row_id} is no longer claimed by {self.token}: another run took it over")

    def record(self, row_id: int, outcome: Outcome) -> None:
        now = utcnow()
        self._commit(
            self._record,
            {
                "row_id": row_id,
                "token": self.token,
                "state": outcome.state,
                "reason": outcome.reason,
                "provider_message_id": outcome.provider_message_id,
                "last_error": outcome.error,
                "retryable": outcome.retryable,
                "sent_at": now if outcome.state == "sent" else None,
                "payload": None
                if outcome.payload is None
                else json.dumps(outcome.payload, default=str, ensure_ascii=False),
                "now": now,
            },
        )

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> OutcomeWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def release(target: Engine | Connection, token: str) -> int:
    """Give back rows claimed under `token` but never attempted (e.g. the batch was cut short)."""
    with write_transaction(target) as conn:
        return conn.execute(
            update(N)
            .where(N.c.claim_token == token, N.c.state == "sending", N.c.attempted_at.is_(None))
            .values(state="pending", claim_token=None, updated_at=utcnow())
        ).rowcount


def counts(target: Engine | Connection, routine: str, run_id: str) -> dict[str, Any]:
    """States of the rows this run planned or sent, with skip/failure reasons."""
    stmt = (
        select(N.c.state, N.c.reason, func.count())
        .where(N.c.routine == routine, N.c.run_id == run_id)
        .group_by(N.c.state, N.c.reason)
    )
    with _connect(target) as conn:
        rows = conn.execute(stmt).all()
    states: dict[str, int] = {}
    skipped_by_reason: dict[str, int] = {}
    for state, reason, n in rows:
        states[state] = states.get(state, 0) + n
        if state == "skipped":
            skipped_by_reason[reason or "unspecified"] = skipped_by_reason.get(reason or "unspecified", 0) + n
    return {"states": states, "skipped_by_reason": skipped_by_reason}


def rows_of_run(target: Engine | Connection, routine: str, run_id: str, columns: Sequence[str] | None = None) -> list:
    """Every ledger row of a run (for the report's CSV), oldest first."""
    cols = [N.c[c] for c in columns] if columns else list(N.c)
    stmt = select(*cols).where(N.c.routine == routine, N.c.run_id == run_id).order_by(N.c.id)
    with _connect(target) as conn:
        return list(conn.execute(stmt).mappings().all())


def _check_unique(items: Sequence[Planned]) -> None:
    seen: set[tuple[str, str]] = set()
    for it in items:
        key = (it.recipient, str(it.business_key))
        if key in seen:
            raise ValueError(f"planned twice in one run: recipient {it.recipient!r}, business key {it.business_key!r}")
        seen.add(key)


def _dialect(target: Engine | Connection) -> str:
    return target.dialect.name


@contextmanager
def _connect(target: Engine | Connection) -> Iterator[Connection]:
    if isinstance(target, Engine):
        with target.connect() as conn:
            yield conn
    else:
        yield target
