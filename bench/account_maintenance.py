"""Benchmark of crm_account_status and crm_class_transition against naive per-account peers, in the same run.

Why this shape: a number alone says nothing, so each routine is measured next to what it competes
with, on the same data, in the same run (docs: DESIGN.md, "Performance"):

  (a)  crm_account_status, source ERP: what the DAG's task calls, `plan()` (read every account, the
       ERP credit info and the last purchases, compute every status and label, diff), the report
       staged as Parquet (`stage_frame`), then `apply()` (the changes and their history rows)
  (b)  its naive peer: per account, SELECT the account, its credit info's months inactive and its
       last purchase date, the status and label in Python, a per-row UPDATE plus its history rows
       (SQLAlchemy Core), one commit at the end; on --naive-sample accounts, extrapolated linearly
  (c)  crm_class_transition: `check()` (the check_rules task), then `plan()` (rules, classes,
       accounts, crm_account_profile, windowed ERP purchases, evaluation, diff), `stage_frame`,
       `apply()`; on a CRM database whose crm_account_profile was filled by
       crm_account_purchase_profile for the business date (what schedules the routine)
  (d)  its naive peer: per account, SELECT the account, its profile row, its invoices within the
       longest rule window and whether it was already moved that date; the measures and the rules
       in Python; a per-row UPDATE plus a history row; one commit; sampled and extrapolated like (b)

Each case runs in a fresh subprocess (its peak RSS is its own) on a fresh copy of the CRM database
(the routines write). The data comes from crm.demo.generate, generated and cached by the same
helper (and in the same place, var/bench/<accounts>/data) as bench/purchase_profile.py, so one
benchmark's data serves the other with --reuse. Correctness guard: on the sampled accounts the
peer's resulting status/label (b) or class (d), and its number of history rows, must equal the
routine's; exit status 2 otherwise. Results: a table on stdout, ratios with PASS/FAIL (informative:
the exit status is 0 unless a case crashed or a guard failed), the same as Markdown, and
var/bench/accounts/<accounts>/results.json.

    PYTHONPATH=plugins .venv/bin/python bench/account_maintenance.py --accounts 20000
    make bench-accounts BENCH_ARGS="--accounts 1000000 --reuse"
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import functools
import json
import os
import pstats
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "plugins", ROOT / "bench"):
    if str(_p) not in sys.path:  # `make` sets PYTHONPATH=plugins; a bare run does not
        sys.path.insert(0, str(_p))

import purchase_profile as pp  # noqa: E402  (the data generation/cache, copies, RSS and machine helpers)

BUSINESS_DATE = pp.BUSINESS_DATE
TARGET_ACCOUNTS = 1_000_000
TARGET_SECONDS = 60.0
TARGET_RATIO = 30.0
STATUS_DAG = "crm_account_status"
CLASS_DAG = "crm_class_transition"

CASES: dict[str, str] = {
    "a": "crm_account_status (ERP): plan + stage + apply",
    "b": "naive status: queries per account + UPDATE per row",
    "c": "crm_class_transition: check + plan + stage + apply",
    "d": "naive class: queries per account + UPDATE per row",
}
LABEL = {c: f"({c})" for c in CASES}
RUN_ORDER = ("a", "b", "c", "d")
ROUTINE_OF = {"b": "a", "d": "c"}


CaseCrashed = pp.CaseCrashed


# --------------------------------------------------------------------------------------------
# Child side: one case, in its own process
# --------------------------------------------------------------------------------------------


class _StageClock:
    """Wraps module attributes (the job's read functions) to add up the seconds spent in them.

    The routine's own code runs unchanged: `plan()` looks these names up in its module at call time,
    so wrapping them splits its time into reading and computing without calling anything else.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, module: Any, *names: str) -> None:
        for name in names:
            original = getattr(module, name)

            @functools.wraps(original)
            def timed(*args: Any, _f: Any = original, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return _f(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - t0

            setattr(module, name, timed)
            self._undo.append((module, name, original))

    def restore(self) -> None:
        for module, name, original in reversed(self._undo):
            setattr(module, name, original)


def _engines(spec: dict[str, Any]) -> tuple[Any, Any]:
    from crm.db import engine_from_url

    return engine_from_url(f"sqlite:///{spec['crm']}"), engine_from_url(f"sqlite:///{spec['erp']}")


def _task_process(spec: dict[str, Any]) -> None:
    """What an Airflow task process has loaded before the task runs: airflow.sdk (ObjectStoragePath)."""
    os.environ["CRM_STAGING_URL"] = f"file://{spec['staging']}"
    from airflow.sdk import ObjectStoragePath  # noqa: F401  (its import is not the routine's time)


def _status_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Case a: what update_statuses of dags/crm_account_status.py calls, timed per stage."""
    _task_process(spec)
    from crm.dag_helpers import stage_frame
    from crm.jobs import account_status as job

    crm, erp = _engines(spec)
    bd = dt.date.fromisoformat(spec["business_date"])
    reads = _StageClock()
    reads.wrap(job, "read_accounts", "read_frame")
    profiler = cProfile.Profile() if spec.get("profile") else None
    base = pp._rss_mib()
    if profiler:
        profiler.enable()
    t0, cpu0 = time.perf_counter(), time.process_time()
    plan = job.plan(crm, erp, bd, source="erp", default_months_inactive=spec["default_months_inactive"])
    t1 = time.perf_counter()
    staged = stage_frame(STATUS_DAG, spec["run_id"], "changes", plan.report)
    t2 = time.perf_counter()
    applied = job.apply(crm, plan, run_id=spec["run_id"], changed_at=dt.datetime.now(dt.UTC))
    t3, cpu = time.perf_counter(), time.process_time() - cpu0
    if profiler:
        profiler.disable()
        profiler.dump_stats(spec["profile"])
    reads.restore()
    accounts_changed = int(plan.summary["accounts changed"])
    return {
        "seconds": t3 - t0,
        "cpu_seconds": cpu,  # this process's CPU time: wall minus it is waiting (I/O, a busy machine)
        "rows": int(plan.summary["accounts"]),
        "unit": "accounts",
        "base_rss_mib": base,
        "stages": {
            "read": reads.seconds,
            "compute": (t1 - t0) - reads.seconds,
            "stage": t2 - t1,
            "write": t3 - t2,
        },
        "accounts_changed": accounts_changed,
        "history_rows": int(applied["history rows"]),
        "staged_bytes": Path(staged.removeprefix("file://")).stat().st_size,
        "summary": {**plan.summary, **applied},
    }


def _class_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Case c: what check_rules and transition_classes of dags/crm_class_transition.py call, timed per stage."""
    _task_process(spec)
    from crm.dag_helpers import stage_frame
    from crm.jobs import class_transition as job

    crm, erp = _engines(spec)
    bd = dt.date.fromisoformat(spec["business_date"])
    reads = _StageClock()
    reads.wrap(job, "check", "classes", "read_accounts", "read_profiles", "moved_on", "read_frame")
    profiler = cProfile.Profile() if spec.get("profile") else None
    base = pp._rss_mib()
    if profiler:
        profiler.enable()
    t0, cpu0 = time.perf_counter(), time.process_time()
    rules = job.check(crm)  # the check_rules task
    plan = job.plan(crm, erp, bd, audience_code=None)  # transition_classes: plan() checks the rules again
    t1 = time.perf_counter()
    staged = stage_frame(CLASS_DAG, spec["run_id"], "changes", plan.report)
    t2 = time.perf_counter()
    applied = job.apply(crm, plan, run_id=spec["run_id"], changed_at=dt.datetime.now(dt.UTC))
    t3, cpu = time.perf_counter(), time.process_time() - cpu0
    if profiler:
        profiler.disable()
        profiler.dump_stats(spec["profile"])
    reads.restore()
    return {
        "seconds": t3 - t0,
        "cpu_seconds": cpu,  # this process's CPU time: wall minus it is waiting (I/O, a busy machine)
        "rows": int(plan.summary["accounts"]),
        "unit": "accounts",
        "base_rss_mib": base,
        "stages": {
            "read": reads.seconds,
            "compute": (t1 - t0) - reads.seconds,
            "stage": t2 - t1,
            "write": t3 - t2,
        },
        "active_rules": [r.label() for r in rules],
        "accounts_changed": int(plan.summary["accounts changed"]),
        "history_rows": int(applied["history rows"]),
        "staged_bytes": Path(staged.removeprefix("file://")).stat().st_size,
        "summary": {**plan.summary, **applied},
    }


def _sample_ids(crm: Any, spec: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Every account id (the fixed part of a naive run) and the random sample the loop runs on."""
    from sqlalchemy import select

    from crm.db.crm_schema import account

    with crm.connect() as conn:
        ids = list(conn.execute(select(account.c.id).order_by(account.c.id)).scalars())
    sample = sorted(random.Random(spec["seed"]).sample(ids, min(spec["naive_sample"], len(ids))))
    return ids, sample


def _naive_result(
    spec: dict[str, Any],
    ids: list[int],
    sample: list[int],
    fixed: float,
    loop: float,
    commit: float,
    changed: int,
    history: int,
) -> dict[str, Any]:
    """Extrapolated: the fixed part and the one commit as measured, the per-account loop times all accounts.

    The commit is counted once, not scaled: scaling the fsync of a 2,000-account transaction by 500
    would charge the peer for 500 commits it does not make (committing a million changes costs more
    than committing 2,000, so this errs in the peer's favour).
    """
    per_account = loop / max(len(sample), 1)
    return {
        "seconds": fixed + per_account * len(ids) + commit,
        "commit_seconds": commit,
        "rows": len(ids),
        "unit": "accounts",
        "extrapolated": True,
        "sample_accounts": len(sample),
        "sample_seconds": loop,
        "fixed_seconds": fixed,
        "per_account_ms": per_account * 1000,
        "sample_changed": changed,
        "sample_history_rows": history,
        "sample_ids": sample,
    }


def _naive_status_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Case b: crm_account_status row by row; timed on a sample, extrapolated to all accounts."""
    from sqlalchemy import bindparam, insert, select, text, update

    from crm.db.crm_schema import account, account_history, company
    from crm.routines import account_status as rules
    from crm.routines.periods import months_before

    crm, erp = _engines(spec)
    bd = dt.date.fromisoformat(spec["business_date"])
    default_months = int(spec["default_months_inactive"])
    base = pp._rss_mib()

    t0 = time.perf_counter()
    labels = rules.load_labels()
    ids, sample = _sample_ids(crm, spec)
    fixed = time.perf_counter() - t0

    account_sql = (
        select(
            account.c.locale,
            company.c.locale,
            account.c.erp_customer_code,
            account.c.erp_status,
            account.c.status_label,
        )
        .select_from(account.outerjoin(company, company.c.id == account.c.company_id))
        .where(account.c.id == bindparam("id"))
    )
    months_sql = text("SELECT months_inactive FROM credit_info WHERE customer_code = :code")
    last_sql = text(
        "SELECT MAX(issue_date) FROM invoice WHERE customer_code = :code AND NOT cancelled AND issue_date <= :bd"
    )
    changed = history = 0
    t1 = time.perf_counter()
    with crm.connect() as conn, erp.connect() as erp_conn, conn.begin() as transaction:
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        for account_id in sample:
            locale, company_locale, code, old_status, old_label = conn.execute(account_sql, {"id": account_id}).one()
            if code is None:
                status = rules.NOT_INTEGRATED
            else:
                months = erp_conn.execute(months_sql, {"code": code}).scalar()
                if months is None or months < 1:
                    months = default_months
                last = erp_conn.execute(last_sql, {"code": code, "bd": bd.isoformat()}).scalar()
                since = months_before(bd, months)
                bought = last is not None and since <= dt.date.fromisoformat(last) <= bd
                status = rules.ACTIVE if bought else rules.INACTIVE
            label = rules.label_for(labels, "erp", status, locale if locale is not None else company_locale)
            new = {
                f: v
                for f, v, old in (("erp_status", status, old_status), ("status_label", label, old_label))
                if v != old
            }
            if not new:
                continue
            changed += 1
            conn.execute(update(account).where(account.c.id == account_id).values(**new))  # updated_at: as the routine
            for field, value in new.items():
                if field == "status_label" and "erp_status" in new:
                    continue  # the label follows its status: audited with it, as the routine does
                old = old_status if field == "erp_status" else old_label
                conn.execute(
                    insert(account_history).values(
                        account_id=account_id,
                        field=field,
                        old_value=old,
                        new_value=value,
                        routine=STATUS_DAG,
                        run_id=spec["run_id"],
                        business_date=bd,
                        changed_at=now,
                    )
                )
                history += 1
        loop = time.perf_counter() - t1
        transaction.commit()
    commit = time.perf_counter() - t1 - loop
    return {"base_rss_mib": base, **_naive_result(spec, ids, sample, fixed, loop, commit, changed, history)}


def _naive_class_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Case d: crm_class_transition row by row; timed on a sample, extrapolated to all accounts."""
    import numpy as np
    from sqlalchemy import bindparam, insert, select, text, update

    from crm.db.crm_schema import account, account_history, account_profile
    from crm.jobs import class_transition as job
    from crm.routines.periods import months_before, whole_months_between

    crm, erp = _engines(spec)
    bd = dt.date.fromisoformat(spec["business_date"])
    base = pp._rss_mib()

    t0 = time.perf_counter()
    rules = job.check(crm)  # the active rules, in evaluation order (priority, id)
    ids, sample = _sample_ids(crm, spec)
    fixed = time.perf_counter() - t0

    windows = sorted({r.window_months for r in rules if r.window_months})
    since = {w: months_before(bd, w) for w in windows}
    earliest = min(since.values()) if since else bd
    account_sql = select(account.c.class_id, account.c.erp_customer_code).where(account.c.id == bindparam("id"))
    profile_sql = select(
        account_profile.c.accumulated_value,
        account_profile.c.purchase_count,
        account_profile.c.first_purchase_date,
        account_profile.c.last_purchase_date,
    ).where(account_profile.c.account_id == bindparam("id"))
    invoices_sql = text(
        "SELECT issue_date, total_value FROM invoice"
        " WHERE customer_code = :code AND NOT cancelled AND issue_date >= :since AND issue_date <= :bd"
    )
    moved_sql = text(
        "SELECT 1 FROM crm_account_history WHERE account_id = :id AND routine = :routine"
        " AND field = 'class_id' AND business_date = :bd LIMIT 1"
    )
    ops: dict[str, Callable[[float, float], bool]] = {
        ">=": lambda v, t: v >= t,
        ">": lambda v, t: v > t,
        "<=": lambda v, t: v <= t,
        "<": lambda v, t: v < t,
        "=": lambda v, t: v == t,
        "!=": lambda v, t: v != t,
    }
    changed = history = 0
    t1 = time.perf_counter()
    with crm.connect() as conn, erp.connect() as erp_conn, conn.begin() as transaction:
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        for account_id in sample:
            class_id, code = conn.execute(account_sql, {"id": account_id}).one()
            prof = conn.execute(profile_sql, {"id": account_id}).one_or_none()
            value, count, first, last = prof if prof else (None, None, None, None)
            measures: dict[str, float | None] = {
                "accumulated_value": round(float(value or 0.0), 2),
                "purchase_count": float(count or 0),
                "days_since_last_purchase": float((bd - last).days) if last else None,
                "months_as_customer": None,
            }
            if first is not None:
                months = whole_months_between(np.array([first], dtype="datetime64[D]"), bd)[0]
                measures["months_as_customer"] = None if np.isnan(months) else float(months)
            purchases = []
            if code is not None and windows:
                purchases = [
                    (dt.date.fromisoformat(day), float(v))
                    for day, v in erp_conn.execute(
                        invoices_sql, {"code": code, "since": earliest.isoformat(), "bd": bd.isoformat()}
                    )
                ]
            for w in windows:
                inside = [v for day, v in purchases if day >= since[w]]
                measures[f"accumulated_value@{w}"] = round(sum(inside), 2)
                measures[f"purchase_count@{w}"] = float(len(inside))
            new_class = class_id
            if conn.execute(moved_sql, {"id": account_id, "routine": CLASS_DAG, "bd": bd.isoformat()}).first() is None:
                for rule in rules:
                    v = measures[rule.measure_key]
                    if rule.from_class_id is not None and class_id != rule.from_class_id:
                        continue
                    if v is not None and ops[rule.operator](v, rule.threshold):
                        new_class = rule.to_class_id
                        break
            if new_class == class_id:
                continue
            changed += 1
            conn.execute(update(account).where(account.c.id == account_id).values(class_id=new_class))
            conn.execute(
                insert(account_history).values(
                    account_id=account_id,
                    field="class_id",
                    old_value=None if class_id is None else str(class_id),
                    new_value=str(new_class),
                    routine=CLASS_DAG,
                    run_id=spec["run_id"],
                    business_date=bd,
                    changed_at=now,
                )
            )
            history += 1
        loop = time.perf_counter() - t1
        transaction.commit()
    commit = time.perf_counter() - t1 - loop
    return {"base_rss_mib": base, **_naive_result(spec, ids, sample, fixed, loop, commit, changed, history)}


def _profile_setup_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Setup of (c) and (d), not timed as a case: crm_account_purchase_profile fills crm_account_profile."""
    from crm.jobs.purchase_profile import compute, load

    crm, erp = _engines(spec)
    bd = dt.date.fromisoformat(spec["business_date"])
    t0 = time.perf_counter()
    result = compute(crm, erp, bd, full_refresh=True)
    summary = load(
        crm,
        result,
        business_date=bd,
        run_id="bench_profile_setup",
        run_after=dt.datetime.combine(bd, dt.time(3, 0), dt.UTC),
        started_at=dt.datetime.now(dt.UTC),
    )
    return {
        "seconds": time.perf_counter() - t0,
        "rows": int(summary["accounts_recomputed"]),
        "unit": "profiles",
        "base_rss_mib": 0.0,
    }


CHILD_RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "a": _status_run,
    "b": _naive_status_run,
    "c": _class_run,
    "d": _naive_class_run,
    "profile": _profile_setup_run,
}


def child_main(case: str, spec_path: Path) -> int:
    """Run one case and write its measurements, with this process's peak RSS, next to the spec."""
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    out = CHILD_RUNNERS[case](spec)
    out["peak_rss_mib"] = pp._rss_mib()
    Path(spec["out"]).write_text(json.dumps(out, default=str, indent=1), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------------------------
# Parent side: data, fresh copies, subprocesses, guards, report
# --------------------------------------------------------------------------------------------


def run_case(case: str, spec: dict[str, Any], case_dir: Path, title: str | None = None) -> dict[str, Any]:
    """Run one of this benchmark's cases in a fresh interpreter (purchase_profile's runner, this file's children)."""
    return pp.run_case(case, spec, case_dir, title=title or f"{LABEL[case]} {CASES[case]}", script=Path(__file__))


def ensure_profiled_crm(args: argparse.Namespace, data_dir: Path, data_meta: dict[str, Any], workdir: Path) -> Path:
    """A copy of crm.db whose crm_account_profile crm_account_purchase_profile filled for the business date.

    Kept in <workdir>/profiled (reused with --reuse while the data is the same generation).
    """
    target_dir = workdir / "profiled"
    target, marker = target_dir / "crm.db", target_dir / "profiled.json"
    wanted = {"data_generated_at": data_meta.get("generated_at"), "business_date": BUSINESS_DATE.isoformat()}
    reusable = args.reuse and marker.is_file() and target.is_file()
    if reusable and json.loads(marker.read_text(encoding="utf-8")).get("wanted") == wanted:
        print(f"reusing {target} (crm_account_profile filled for {BUSINESS_DATE})", flush=True)
        return target
    shutil.rmtree(target_dir, ignore_errors=True)
    pp.copy_db(data_dir / "crm.db", target)
    pp.empty_profiles(target)
    out = run_case(
        "profile",
        {"crm": str(target), "erp": str(data_dir / "erp.db"), "business_date": BUSINESS_DATE.isoformat()},
        target_dir / "setup",
        title="setup for (c)/(d): crm_account_purchase_profile fills crm_account_profile",
    )
    marker.write_text(json.dumps({"wanted": wanted, "setup": out}, default=str, indent=1), encoding="utf-8")
    return target


def data_profile(crm_db: Path, erp_db: Path) -> dict[str, int]:
    """What the run works on."""
    with closing(sqlite3.connect(crm_db)) as conn:
        accounts, linked, with_status, with_class = conn.execute(
            "SELECT COUNT(*), COUNT(erp_customer_code), COUNT(erp_status), COUNT(class_id) FROM crm_account"
        ).fetchone()
        rules = conn.execute("SELECT COUNT(*) FROM crm_class_transition_rule WHERE active").fetchone()[0]
    with closing(sqlite3.connect(erp_db)) as conn:
        invoices = conn.execute("SELECT COUNT(*) FROM invoice").fetchone()[0]
        credit = conn.execute("SELECT COUNT(*), COUNT(months_inactive) FROM credit_info").fetchone()
    return {
        "crm_accounts": accounts,
        "accounts_with_erp_code": linked,
        "accounts_with_erp_status": with_status,
        "accounts_with_class": with_class,
        "active_class_rules": rules,
        "erp_invoices": invoices,
        "erp_credit_info": credit[0],
        "erp_credit_info_with_months_inactive": credit[1],
    }


def _guard(
    label: str, routine_crm: Path, naive_crm: Path, ids: Sequence[int], fields: Sequence[str], routine: str
) -> dict:
    """The peer's resulting fields and history-row count per sampled account must equal the routine's."""
    sql = (
        f"SELECT id, {', '.join(fields)},"
        f" (SELECT COUNT(*) FROM crm_account_history AS h WHERE h.account_id = a.id AND h.routine = '{routine}')"
        " FROM crm_account AS a WHERE id IN (SELECT id FROM temp.bench_sample) ORDER BY id"
    )
    got: dict[str, list[tuple[Any, ...]]] = {}
    for side, path in (("routine", routine_crm), ("naive", naive_crm)):
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("CREATE TEMP TABLE bench_sample (id INTEGER PRIMARY KEY)")
            conn.executemany("INSERT INTO temp.bench_sample VALUES (?)", [(i,) for i in ids])
            got[side] = conn.execute(sql).fetchall()
    cols = ["account_id", *fields, "history_rows"]
    bad = [
        {
            "account_id": r[0],
            **{c: {"routine": x, "naive": y} for c, x, y in zip(cols[1:], r[1:], n[1:], strict=True) if x != y},
        }
        for r, n in zip(got["routine"], got["naive"], strict=True)
        if r != n
    ]
    if len(got["routine"]) != len(ids) or len(got["naive"]) != len(ids):
        bad.append({"problem": f"sample of {len(ids)} ids, found {len(got['routine'])} / {len(got['naive'])}"})
    return {
        "name": f"{label} == routine on the sampled accounts ({', '.join(fields)}, history rows)",
        "checked": len(got["naive"]),
        "mismatches": len(bad),
        "examples": bad[:5],
    }


def ratios_and_targets(cases: dict[str, dict[str, Any]], accounts: int) -> list[dict[str, Any]]:
    """The targets of issue 4: each routine under 60 s at 1 M accounts and at least 30x its naive peer."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: str, ok: bool | None, shown: str) -> None:
        rows.append(
            {
                "ratio": name,
                "value": value,
                "shown": "n/a" if value is None else shown,
                "target": target,
                "result": "n/a" if value is None else ("PASS" if ok else "FAIL"),
            }
        )

    for routine, peer, name in (("a", "b", "crm_account_status"), ("c", "d", "crm_class_transition")):
        if routine in cases:
            s = cases[routine]["seconds"]
            add(f"({routine}) {name}, seconds", s, f"< {TARGET_SECONDS:.0f} s", s < TARGET_SECONDS, f"{s:.2f} s")
        if routine in cases and peer in cases:
            r = cases[peer]["seconds"] / cases[routine]["seconds"]
            add(f"({peer})/({routine}) naive vs routine", r, f">= {TARGET_RATIO:.0f}x", r >= TARGET_RATIO, f"{r:.1f}x")
        elif routine in cases or peer in cases:
            add(f"({peer})/({routine}) naive vs routine", None, f">= {TARGET_RATIO:.0f}x", None, "")
    if accounts != TARGET_ACCOUNTS:
        for r in rows:
            r["note"] = f"targets are set for {TARGET_ACCOUNTS:,} accounts; this run has {accounts:,}"
    return rows


def _case_rows(cases: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for case in RUN_ORDER:
        if case not in cases:
            continue
        r = cases[case]
        what = CASES[case]
        if "stages" in r:
            st = r["stages"]
            what += (
                f" [read {st['read']:.2f} s + compute {st['compute']:.2f} s + stage {st['stage']:.2f} s"
                f" + write {st['write']:.2f} s; {r['accounts_changed']:,} accounts changed,"
                f" {r['history_rows']:,} history rows"
                + (f"; CPU {r['cpu_seconds']:.2f} s" if "cpu_seconds" in r else "")
                + "]"
            )
        if r.get("extrapolated"):
            what += (
                f" [extrapolated from {r['sample_accounts']:,} accounts, {r['per_account_ms']:.2f} ms each,"
                f" + {r['fixed_seconds']:.2f} s fixed + {r['commit_seconds']:.2f} s commit;"
                f" {r['sample_changed']:,} changed in the sample]"
            )
        rate = r["rows"] / r["seconds"] if r["seconds"] else float("nan")
        rows.append(
            [
                LABEL[case],
                what,
                f"{r['seconds']:.2f}",
                f"{r['rows']:,} {r['unit']}",
                f"{rate:,.0f}",
                f"{r['peak_rss_mib']:,.0f}",
            ]
        )
    return rows


def _plain_table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for row in rows:
        print("  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)))


def print_report(results: dict[str, Any]) -> None:
    """The plain tables with PASS/FAIL, then the same as Markdown for the README."""
    head = ["case", "what", "seconds", "rows", "rows/s", "peak RSS MiB"]
    rows = _case_rows(results["cases"])
    ratio_head = ["ratio", "value", "target", "result"]
    ratio_rows = [[r["ratio"], r["shown"], r["target"], r["result"]] for r in results["ratios"]]
    print()
    _plain_table(head, rows)
    print()
    _plain_table(ratio_head, ratio_rows)
    if results["ratios"] and results["ratios"][0].get("note"):
        print(f"note: {results['ratios'][0]['note']}")
    for case in ("b", "d"):
        if case in results["cases"]:
            c = results["cases"][case]
            print(
                f"note: {LABEL[case]} was measured on {c['sample_accounts']:,} random accounts"
                f" ({c['sample_seconds']:.2f} s) and extrapolated linearly to {c['rows']:,} (the fixed part and"
                " the one commit counted once); its peak RSS is the sample's"
            )
    for g in results["guards"]:
        status = "ok" if g["mismatches"] == 0 else f"FAILED: {g['mismatches']} mismatches, e.g. {g['examples'][:2]}"
        print(f"guard {g['name']}: {g['checked']:,} accounts compared, {status}")

    d, m = results["data"], results["machine"]
    print("\n<!-- Markdown (paste into the README) -->")
    print(
        f"Account maintenance, {d['crm_accounts']:,} accounts ({d['accounts_with_erp_code']:,} with an ERP code,"
        f" none with a status yet), {d['erp_invoices']:,} ERP invoices, {d['active_class_rules']} active class rules"
        f" (SQLite {m['sqlite']}, Python {m['python']}, {m['cpus']} CPUs;"
        f" {results['arguments']['warm_memory']:,} MiB of memory warmed before each run;"
        f' `make bench-accounts BENCH_ARGS="--accounts {results["arguments"]["accounts"]}"`):\n'
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---", "---", "---:", "---:", "---:", "---:"]) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print(f"| target | value | target (at {TARGET_ACCOUNTS:,} accounts) | result |")
    print("|---|---:|---|---|")
    for row in ratio_rows:
        print("| " + " | ".join(row) + " |")
    samples = [
        f"{LABEL[c]} from {results['cases'][c]['sample_accounts']:,}" for c in ("b", "d") if c in results["cases"]
    ]
    if samples:
        print(f"\n{' and '.join(samples)} random accounts, extrapolated linearly.")


def print_profile(path: Path, top: int = 30) -> None:
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line; --child/--spec are internal (the parent re-runs this file once per case)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accounts", type=int, default=100_000, help="accounts to generate (default %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="generator and sampling seed (default %(default)s)")
    p.add_argument("--invoices-per-account", type=float, default=10.0, help="(default %(default)s)")
    p.add_argument(
        "--workdir", type=Path, help="default var/bench/accounts/<accounts> (the data: var/bench/<accounts>/data)"
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="skip generation (and the profile setup) if already done for these arguments",
    )
    p.add_argument("--naive-sample", type=int, default=2000, help="accounts the naive peers run on (default 2000)")
    p.add_argument("--default-months-inactive", type=int, default=None, help="default: routines.yaml's")
    p.add_argument("--cases", default=",".join(RUN_ORDER), help="subset to run, e.g. a,b (b implies a, d implies c)")
    p.add_argument("--repeat", type=int, default=1, help="run each case N times, report the fastest (default 1)")
    p.add_argument("--cprofile", default="", metavar="CASES", help="also run these routine cases (a, c) under cProfile")
    p.add_argument("--keep-copies", action="store_true", help="keep the per-case database copies under <workdir>/runs")
    pp.add_warm_memory_argument(p)
    p.add_argument("--child", choices=sorted(CHILD_RUNNERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Generate (or reuse) the data, run every case in its own process, check, report."""
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, args.spec)
    pp.WARM_MEMORY_MIB = args.warm_memory  # the case runner is purchase_profile's

    wanted = {c.strip() for c in args.cases.split(",") if c.strip()}
    unknown = sorted(wanted - set(CASES))
    if unknown:
        sys.exit(f"--cases: unknown {unknown}; choose among {', '.join(RUN_ORDER)}")
    wanted |= {ROUTINE_OF[c] for c in wanted if c in ROUTINE_OF}  # a guard needs the routine's output
    selected = [c for c in RUN_ORDER if c in wanted]
    profiled = [c.strip() for c in args.cprofile.split(",") if c.strip()]
    if set(profiled) - {"a", "c"}:
        sys.exit("--cprofile: only the routine cases a and c can be profiled")
    if args.default_months_inactive is None:
        from crm.config import routine_settings

        args.default_months_inactive = int(routine_settings(STATUS_DAG)["params"].get("default_months_inactive", 12))

    data_dir = ROOT / "var" / "bench" / str(args.accounts) / "data"
    workdir = (args.workdir or ROOT / "var" / "bench" / "accounts" / str(args.accounts)).resolve()
    runs_dir = workdir / "runs"
    data_meta = pp.ensure_data(args, data_dir.resolve())
    crm_db, erp_db = data_dir / "crm.db", data_dir / "erp.db"
    shutil.rmtree(runs_dir, ignore_errors=True)
    runs_dir.mkdir(parents=True)
    data = data_profile(crm_db, erp_db)
    print(
        f"data: {data['crm_accounts']:,} accounts ({data['accounts_with_erp_code']:,} with an ERP code,"
        f" {data['accounts_with_erp_status']:,} with an ERP status), {data['erp_invoices']:,} invoices,"
        f" {data['erp_credit_info']:,} credit info rows, {data['active_class_rules']} active class rules",
        flush=True,
    )
    profiled_crm = ensure_profiled_crm(args, data_dir, data_meta, workdir) if {"c", "d"} & set(selected) else None
    pp.warm_cache(*(p for p in (crm_db, erp_db, profiled_crm) if p is not None))

    base_spec = {
        "business_date": BUSINESS_DATE.isoformat(),
        "seed": args.seed,
        "naive_sample": args.naive_sample,
        "default_months_inactive": args.default_months_inactive,
        "erp": str(erp_db.resolve()),
    }

    def case_spec(case: str, case_dir: Path) -> dict[str, Any]:
        """Fresh copy of the CRM database the case writes, its staging folder and run id."""
        case_dir.mkdir(parents=True, exist_ok=True)
        source = crm_db if case in ("a", "b") else profiled_crm
        return {
            **base_spec,
            "crm": str(pp.copy_db(source, case_dir / "crm.db")),
            "staging": str(case_dir / "staging"),
            "run_id": f"bench_{case}",
        }

    results: dict[str, Any] = {
        "arguments": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("child", "spec")
        },
        "machine": pp.machine_info(),
        "uncommitted_changes": subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.splitlines(),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "business_date": BUSINESS_DATE.isoformat(),
        "data": data,
        "data_generation": data_meta,
        "cases": {},
        "guards": [],
    }
    print(f"cases (each in a fresh process, best of {args.repeat}):", flush=True)
    guard_failed = False
    try:
        for case in selected:
            runs = []
            for rep in range(max(1, args.repeat)):
                case_dir = runs_dir / case / str(rep)
                runs.append(run_case(case, case_spec(case, case_dir), case_dir))
            results["cases"][case] = pp.best_of(runs)
            if case in ROUTINE_OF:
                routine_db = runs_dir / ROUTINE_OF[case] / "0" / "crm.db"
                fields = ["erp_status", "status_label"] if case == "b" else ["class_id"]
                dag = STATUS_DAG if case == "b" else CLASS_DAG
                for rep, run in enumerate(runs):
                    guard = _guard(
                        LABEL[case], routine_db, runs_dir / case / str(rep) / "crm.db", run["sample_ids"], fields, dag
                    )
                    results["guards"].append(guard)
                    if guard["mismatches"]:
                        guard_failed = True
                        print(f"  GUARD FAILED: {guard['name']}: {json.dumps(guard['examples'][:3], default=str)}")
                for run in runs:
                    run.pop("sample_ids", None)
                results["cases"][case].pop("sample_ids", None)

        results["cprofile"] = {}
        for case in [c for c in profiled if c in selected]:
            case_dir = runs_dir / f"{case}-profiled"
            prof = case_dir / f"{case}.prof"
            print(f"  {LABEL[case]} again, under cProfile (timings inflated by the profiler):")
            run_case(case, case_spec(case, case_dir) | {"profile": str(prof)}, case_dir)
            print_profile(prof)
            results["cprofile"][case] = str(prof)
    except CaseCrashed as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep_copies:
            pp.remove_copies(runs_dir)

    results["ratios"] = ratios_and_targets(results["cases"], args.accounts)
    (workdir / "results.json").write_text(json.dumps(results, default=str, indent=1), encoding="utf-8")
    print_report(results)
    print(f"\nresults: {workdir / 'results.json'}")
    if guard_failed:
        print("CORRECTNESS GUARD FAILED: the naive peer and the routine disagree (see above)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
