"""crm_routine_run: one row per run of a routine: its summary, and the watermark incremental runs resume from."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, select

from crm.db import upsert, write_transaction
from crm.db.crm_schema import routine_run


@dataclass(frozen=True)
class RunRecord:
    dag_id: str
    run_id: str
    business_date: dt.date
    scope: str
    status: str
    finished_at: dt.datetime | None
    watermark: dt.datetime | None
    summary: dict[str, Any]


def record_run(
    conn: Engine | Connection,
    *,
    dag_id: str,
    run_id: str,
    business_date: dt.date,
    status: str,
    started_at: dt.datetime,
    finished_at: dt.datetime | None = None,
    scope: str = "all",
    requested_by: str | None = None,
    notify_to: list[str] | None = None,
    watermark: dt.datetime | None = None,
    summary: dict[str, Any] | None = None,
) -> None:
    """Insert or update the run's row, keyed on (dag_id, run_id), so a retried or cleared run keeps one row."""
    duration = (finished_at - started_at).total_seconds() if finished_at else None
    row = {
        "dag_id": dag_id,
        "run_id": run_id,
        "business_date": pd.Timestamp(business_date),
        "scope": scope,
        "status": status,
        "requested_by": requested_by,
        "notify_to": json.dumps(notify_to or []),
        "started_at": naive_utc(started_at),
        "finished_at": naive_utc(finished_at),
        "duration_seconds": duration,
        "watermark": naive_utc(watermark),
        "summary": json.dumps(summary or {}, default=str, sort_keys=True),
    }
    frame = pd.DataFrame([row])
    for col in ("started_at", "finished_at", "watermark"):
        frame[col] = pd.to_datetime(frame[col])
    upsert(conn, routine_run, frame, ["dag_id", "run_id"])


def last_successful_run(db: Engine | Connection, dag_id: str) -> RunRecord | None:
    """The latest successful run of a routine (by finish time), whatever its scope or business date."""
    stmt = (
        select(routine_run)
        .where(routine_run.c.dag_id == dag_id, routine_run.c.status == "success")
        .order_by(routine_run.c.finished_at.desc(), routine_run.c.id.desc())
        .limit(1)
    )
    if isinstance(db, Engine):
        with db.connect() as conn:
            row = conn.execute(stmt).mappings().first()
    else:
        row = db.execute(stmt).mappings().first()
    if row is None:
        return None
    return RunRecord(
        dag_id=row["dag_id"],
        run_id=row["run_id"],
        business_date=row["business_date"],
        scope=row["scope"],
        status=row["status"],
        finished_at=row["finished_at"],
        watermark=row["watermark"],
        summary=json.loads(row["summary"] or "{}"),
    )


def latest_watermark(crm: Engine, dag_id: str) -> dt.datetime | None:
    """The watermark of the latest successful run that recorded one (dry runs record none)."""
    R = routine_run
    stmt = (
        select(R.c.watermark)
        .where(R.c.dag_id == dag_id, R.c.status == "success", R.c.watermark.is_not(None))
        .order_by(R.c.finished_at.desc(), R.c.id.desc())
        .limit(1)
    )
    with crm.connect() as conn:
        wm = conn.execute(stmt).scalar()
    if wm is None:
        return None
    return wm if isinstance(wm, dt.datetime) else pd.Timestamp(wm).to_pydatetime()


def naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    """Stored as naive UTC: SQLite keeps no offsets, and PostgreSQL columns are TIMESTAMP WITHOUT TIME ZONE."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


# What one attempt of a run says about itself: an earlier attempt's values are history, not this one's.
ATTEMPT_KEYS = ("error", "failed_task", "failed_steps", "report")
HISTORY_KEY = "earlier_attempts"


def finish_run(
    db: Engine,
    *,
    dag_id: str,
    run_id: str,
    business_date: dt.date,
    status: str,
    started_at: dt.datetime,
    finished_at: dt.datetime,
    requested_by: str | None = None,
    notify_to: list[str] | None = None,
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Close the run's row for this attempt, keeping what earlier tasks recorded (scope, watermark, their keys).

    The status given is the run's: the report task judges this attempt's upstream tasks, so a run
    cleared and re-run successfully becomes `success` again. What an earlier attempt said (its
    status, failed task, error, report delivery) moves to `earlier_attempts` in the summary; an
    error recorded during this attempt (by `note_failure`) is kept. Returns the merged summary.
    """
    with write_transaction(db) as conn:
        row = _row(conn, dag_id, run_id)
        earlier = json.loads(row["summary"] or "{}") if row else {}
        # a closed attempt, or errors a successful attempt cannot have had, are history
        new_attempt = row is not None and (_closed(earlier) or status != "failed")
        merged = _start_attempt(row, earlier) if new_attempt else dict(earlier)
        # the first error of this attempt (recorded by note_failure) wins
        merged.update({k: v for k, v in (summary or {}).items() if not (k in ("error", "failed_task") and k in merged)})
        _write(conn, row, dag_id, run_id, business_date, status, started_at, finished_at, requested_by, notify_to,
               merged)  # fmt: skip
    return merged


def note_failure(
    db: Engine,
    *,
    dag_id: str,
    run_id: str,
    business_date: dt.date,
    started_at: dt.datetime,
    finished_at: dt.datetime,
    failed_task: str,
    error: str,
    requested_by: str | None = None,
) -> dict[str, Any]:
    """A task of the run failed for good: the row says `failed` with this attempt's first error.

    A row already closed by a report belongs to an earlier attempt (the run was cleared): its
    outcome moves to `earlier_attempts` and this failure starts the new attempt's record.
    """
    with write_transaction(db) as conn:
        row = _row(conn, dag_id, run_id)
        earlier = json.loads(row["summary"] or "{}") if row else {}
        merged = _start_attempt(row, earlier) if row and _closed(earlier) else dict(earlier)
        merged.setdefault("failed_task", failed_task)
        merged.setdefault("error", error)
        _write(conn, row, dag_id, run_id, business_date, "failed", started_at, finished_at, requested_by,
               json.loads(row["notify_to"] or "[]") if row else None, merged)  # fmt: skip
    return merged


def note_report(db: Engine, *, dag_id: str, run_id: str, note: str) -> None:
    """Record how the run's report fared (`summary.report`), leaving the run's status alone.

    A report that could not be e-mailed does not undo a load that committed: the row keeps its
    status (and watermark), and says "not delivered" here.
    """
    with write_transaction(db) as conn:
        row = _row(conn, dag_id, run_id)
        if row is None:
            return
        summary = json.loads(row["summary"] or "{}")
        summary["report"] = note
        conn.execute(
            routine_run.update()
            .where(routine_run.c.id == row["id"])
            .values(summary=json.dumps(summary, default=str, sort_keys=True))
        )


def _row(conn: Connection, dag_id: str, run_id: str) -> Any:
    stmt = select(routine_run).where(routine_run.c.dag_id == dag_id, routine_run.c.run_id == run_id)
    return conn.execute(stmt).mappings().first()


def _closed(summary: dict[str, Any]) -> bool:
    """A report task finished this attempt (delivered or not): whatever comes next is a new attempt."""
    return "report" in summary


def _start_attempt(row: Any, earlier: dict[str, Any]) -> dict[str, Any]:
    """The earlier summary without its attempt's own keys, which are appended to `earlier_attempts`."""
    merged = {k: v for k, v in earlier.items() if k not in ATTEMPT_KEYS}
    past = {k: earlier[k] for k in ATTEMPT_KEYS if earlier.get(k)}
    troubled = row["status"] == "failed" or "error" in past or not str(past.get("report", "sent")).startswith("sent")
    if troubled:  # a clean earlier attempt (a plain re-run) is not worth a history line
        finished = row["finished_at"]
        entry = {"status": row["status"], "finished_at": finished.isoformat() if finished else None, **past}
        merged[HISTORY_KEY] = [*(earlier.get(HISTORY_KEY) or []), entry]
    return merged


def _write(
    conn: Connection,
    row: Any,
    dag_id: str,
    run_id: str,
    business_date: dt.date,
    status: str,
    started_at: dt.datetime,
    finished_at: dt.datetime,
    requested_by: str | None,
    notify_to: list[str] | None,
    summary: dict[str, Any],
) -> None:
    record_run(
        conn,
        dag_id=dag_id,
        run_id=run_id,
        business_date=business_date,
        status=status,
        started_at=started_at,
        finished_at=finished_at,
        scope=row["scope"] if row else "all",
        requested_by=requested_by,
        notify_to=notify_to,
        watermark=row["watermark"] if row else None,
        summary=summary,
    )
