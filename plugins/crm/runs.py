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


def naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    """Stored as naive UTC: SQLite keeps no offsets, and PostgreSQL columns are TIMESTAMP WITHOUT TIME ZONE."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


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
    """Close the run's row, keeping what earlier tasks recorded (scope, watermark, their summary keys).

    Returns the merged summary. An error recorded earlier (by the failure callback) is kept.
    """
    with write_transaction(db) as conn:
        row = (
            conn.execute(select(routine_run).where(routine_run.c.dag_id == dag_id, routine_run.c.run_id == run_id))
            .mappings()
            .first()
        )
        earlier = json.loads(row["summary"] or "{}") if row else {}
        merged = {**earlier, **(summary or {})}
        for key in ("error", "failed_task"):
            if key in earlier:
                merged[key] = earlier[key]
        record_run(
            conn,
            dag_id=dag_id,
            run_id=run_id,
            business_date=business_date,
            status="failed" if status == "failed" or (row and row["status"] == "failed") else status,
            started_at=started_at,
            finished_at=finished_at,
            scope=row["scope"] if row else "all",
            requested_by=requested_by,
            notify_to=notify_to,
            watermark=row["watermark"] if row else None,
            summary=merged,
        )
    return merged
