"""Benchmark of crm_account_purchase_profile against its peers, measured in the same run.

Why this shape: a number alone says nothing, so every case of the routine is measured next to
what it competes with, on the same data, in the same run (docs: DESIGN.md, "Performance"):

  (a)  the routine, full refresh into an empty crm_account_profile: compute() then load()
  (b)  the routine's incremental run after 1% of the customers bought again (same business date)
  (b') the same incremental run for the next business date (every account's day count moves)
  (c)  a naive peer: one query per account, the nine fields in Python, ORM session.merge per row
       (measured on --naive-sample accounts, extrapolated linearly to all)
  (d)  the physical limit of extraction: a bare sqlite3 cursor running include/sql/erp/invoices.sql
  (e)  what a DBA would write: the nine fields in one SQL statement inside SQLite (ERP attached)

and, as floors under (b): (d_b) the ERP reads (b) cannot avoid, bare, and (w_b) the write it cannot
avoid: the rows (b) changed, written bare by primary key into a fresh copy of the same database.

Each case runs in a fresh subprocess (so its peak RSS is its own) on a fresh copy of the database
it writes. The data comes from crm.demo.generate. Results: a table on stdout, PASS/FAIL per target
(informative: the exit status is 0 unless a case crashed or a correctness guard failed), a Markdown
table for the README, and <workdir>/results.json.

    PYTHONPATH=plugins .venv/bin/python bench/purchase_profile.py --accounts 100000
    make bench BENCH_ARGS="--accounts 1000000 --reuse"
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import os
import platform
import pstats
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "plugins") not in sys.path:  # `make bench` sets PYTHONPATH=plugins; a bare run does not
    sys.path.insert(0, str(ROOT / "plugins"))

BUSINESS_DATE = dt.date(2026, 11, 22)
INVOICES_SQL = ROOT / "include" / "sql" / "erp" / "invoices.sql"
CHANGED_SHARE = 0.01
TARGET_ACCOUNTS = 1_000_000
RSS_LIMIT_MIB = 2048.0
FIELDS = (
    "first_purchase_date",
    "first_purchase_value",
    "last_purchase_date",
    "last_purchase_value",
    "accumulated_value",
    "purchase_count",
    "last_quote_date",
    "days_since_last_purchase",
    "last_invoice_number",
)
MONEY = {"first_purchase_value", "last_purchase_value", "accumulated_value"}
# A sum rounded to cents can land on either side of a half cent depending on the summation order
# (numpy bincount vs SQLite SUM): one cent apart is the same answer, more is a bug.
MONEY_TOLERANCE = {"first_purchase_value": 1e-6, "last_purchase_value": 1e-6, "accumulated_value": 0.0100001}

CASES: dict[str, str] = {
    "a": "routine, full refresh (compute + load)",
    "b": "routine, incremental, 1% changed",
    "b2": "routine, incremental, 1% changed, next day",
    "c": "naive: query per account + ORM merge",
    "d": "bare sqlite3 cursor over invoices.sql",
    "db": "bare sqlite3 cursor over the invoices and quotes (b) re-read",
    "wb": "bare sqlite3 UPDATE of the rows (b) changed, one commit",
    "e": "one SQL statement in SQLite (DBA)",
}
LABEL = {"a": "(a)", "b": "(b)", "b2": "(b')", "c": "(c)", "d": "(d)", "db": "(d_b)", "wb": "(w_b)", "e": "(e)"}
RUN_ORDER = ("d", "a", "b", "db", "wb", "b2", "e", "c")


class GuardFailed(RuntimeError):
    """Two implementations of the nine fields disagree: the timings would compare different things."""


class CaseCrashed(RuntimeError):
    """A case's subprocess exited with an error."""


# --------------------------------------------------------------------------------------------
# The DBA's statement (case e), also the oracle the correctness guards check the routine against
# --------------------------------------------------------------------------------------------


DBA_VARIANTS = ("customer_code index", "not indexed")


def dba_select(only_sample: bool = False, not_indexed: bool = False) -> str:
    """The nine fields in one SELECT over crm_account and the attached ERP (`erp`), routine semantics.

    Cancelled invoices and those after :bd do not count; same-day ties go to the lowest id (first)
    and the highest id (last). `only_sample` restricts it to the codes in temp.bench_sample;
    `not_indexed` makes SQLite scan invoice and quote sequentially instead of through an index.
    """
    sample = " AND customer_code IN (SELECT code FROM temp.bench_sample)" if only_sample else ""
    hint = " NOT INDEXED" if not_indexed else ""
    return f"""
WITH ranked AS (
    SELECT customer_code, issue_date, total_value, number,
           ROW_NUMBER() OVER (PARTITION BY customer_code ORDER BY issue_date, id) AS first_rank,
           ROW_NUMBER() OVER (PARTITION BY customer_code ORDER BY issue_date DESC, id DESC) AS last_rank
    FROM erp.invoice{hint}
    WHERE NOT cancelled AND issue_date <= :bd{sample}
), agg AS (
    SELECT customer_code,
           MAX(CASE WHEN first_rank = 1 THEN issue_date END) AS first_purchase_date,
           MAX(CASE WHEN first_rank = 1 THEN total_value END) AS first_purchase_value,
           MAX(CASE WHEN last_rank = 1 THEN issue_date END) AS last_purchase_date,
           MAX(CASE WHEN last_rank = 1 THEN total_value END) AS last_purchase_value,
           MAX(CASE WHEN last_rank = 1 THEN number END) AS last_invoice_number,
           SUM(total_value) AS total,
           COUNT(*) AS n
    FROM ranked
    GROUP BY customer_code
), q AS (
    SELECT customer_code, MAX(quote_date) AS last_quote_date
    FROM erp.quote{hint}
    WHERE quote_date <= :bd{sample}
    GROUP BY customer_code
)
SELECT a.id AS account_id,
       agg.first_purchase_date,
       ROUND(agg.first_purchase_value, 2) AS first_purchase_value,
       agg.last_purchase_date,
       ROUND(agg.last_purchase_value, 2) AS last_purchase_value,
       ROUND(COALESCE(agg.total, 0), 2) AS accumulated_value,
       COALESCE(agg.n, 0) AS purchase_count,
       q.last_quote_date,
       CAST(julianday(:bd) - julianday(agg.last_purchase_date) AS INTEGER) AS days_since_last_purchase,
       agg.last_invoice_number
FROM crm_account AS a
LEFT JOIN agg ON agg.customer_code = a.erp_customer_code
LEFT JOIN q ON q.customer_code = a.erp_customer_code
WHERE a.erp_customer_code IS NOT NULL{sample.replace("customer_code", "a.erp_customer_code")}
"""


# --------------------------------------------------------------------------------------------
# Child side: one case, in its own process
# --------------------------------------------------------------------------------------------


def _rss_mib() -> float:
    """Peak RSS of this process so far, in MiB.

    Linux: VmHWM of /proc/self/status, because ru_maxrss survives execve and would report the
    parent's high-water mark at fork time instead of the case's own. Elsewhere: ru_maxrss.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _routine_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Cases a, b, b2: the job's own compute() and load(), exactly as the DAG calls them."""
    from crm.db import engine_from_url
    from crm.jobs.purchase_profile import compute, load

    crm = engine_from_url(f"sqlite:///{spec['crm']}")
    erp = engine_from_url(f"sqlite:///{spec['erp']}")
    bd = dt.date.fromisoformat(spec["business_date"])
    run_after = dt.datetime.combine(bd, dt.time(5, 30), dt.UTC) + dt.timedelta(minutes=spec.get("run_offset_min", 0))
    full = bool(spec["full_refresh"])
    profiler = cProfile.Profile() if spec.get("profile") else None

    started_at = dt.datetime.now(dt.UTC)
    base = _rss_mib()
    if profiler:
        profiler.enable()
    t0 = time.perf_counter()
    result = compute(crm, erp, bd, full_refresh=full)
    t1 = time.perf_counter()
    summary = load(crm, result, business_date=bd, run_id=spec["run_id"], run_after=run_after, started_at=started_at)
    t2 = time.perf_counter()
    if profiler:
        profiler.disable()
        profiler.dump_stats(spec["profile"])
    if spec.get("codes_out"):  # what (b) read from the ERP, for the floor of its reads (d_b)
        window = {  # as crm.sources binds them for SQLite
            k: v.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, dt.datetime) else v.isoformat()
            for k, v in result.changes_window.items()
        }
        read = {"codes": result.reread_codes, "quote_codes": result.reread_quote_codes, "window": window}
        Path(spec["codes_out"]).write_text(json.dumps(read))
    expected_mode = "full" if full else "incremental"
    if summary["mode"] != expected_mode:
        raise RuntimeError(f"expected a {expected_mode} run, got {summary['mode']} ({summary['mode_reason']})")
    return {
        "seconds": t2 - t0,
        "rows": int(summary["accounts_considered"]),
        "unit": "profiles",
        "base_rss_mib": base,
        "compute_seconds": t1 - t0,
        "load_seconds": t2 - t1,
        "summary": summary,
    }


def _naive_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Case c: what a row-by-row implementation does; timed on a sample, extrapolated to all accounts."""
    from sqlalchemy import select, text
    from sqlalchemy.orm import Session, registry

    from crm.db import engine_from_url
    from crm.db.crm_schema import account, account_profile

    class NaiveProfile:
        """An ORM row of crm_account_profile (mapped imperatively on the Core table)."""

        def __init__(self, **kwargs: Any) -> None:
            for key, value in kwargs.items():
                setattr(self, key, value)

    registry().map_imperatively(NaiveProfile, account_profile)
    crm = engine_from_url(f"sqlite:///{spec['crm']}")
    erp = engine_from_url(f"sqlite:///{spec['erp']}")
    bd = dt.date.fromisoformat(spec["business_date"])
    now = dt.datetime(bd.year, bd.month, bd.day, 5, 30)
    invoices_sql = text(
        "SELECT id, issue_date, total_value, number, cancelled FROM invoice WHERE customer_code = :code"
    )
    quote_sql = text("SELECT MAX(quote_date) FROM quote WHERE customer_code = :code AND quote_date <= :bd")
    base = _rss_mib()

    t0 = time.perf_counter()
    with crm.connect() as conn:
        accounts = conn.execute(
            select(account.c.id, account.c.erp_customer_code).where(account.c.erp_customer_code.is_not(None))
        ).all()
    fixed = time.perf_counter() - t0
    sample = random.Random(spec["seed"]).sample(accounts, min(spec["naive_sample"], len(accounts)))

    t1 = time.perf_counter()
    with Session(crm) as session, erp.connect() as erp_conn:
        for account_id, code in sample:
            purchases = []
            for inv_id, issue_date, value, number, cancelled in erp_conn.execute(invoices_sql, {"code": code}):
                day = dt.date.fromisoformat(issue_date)
                if not cancelled and day <= bd:
                    purchases.append((day, inv_id, float(value), number))
            last_quote = erp_conn.execute(quote_sql, {"code": code, "bd": bd.isoformat()}).scalar()
            first = min(purchases) if purchases else None
            last = max(purchases) if purchases else None
            session.merge(
                NaiveProfile(
                    account_id=account_id,
                    erp_customer_code=code,
                    first_purchase_date=first[0] if first else None,
                    first_purchase_value=round(first[2], 2) if first else None,
                    last_purchase_date=last[0] if last else None,
                    last_purchase_value=round(last[2], 2) if last else None,
                    accumulated_value=round(sum(p[2] for p in purchases), 2),
                    purchase_count=len(purchases),
                    last_quote_date=dt.date.fromisoformat(last_quote) if last_quote else None,
                    days_since_last_purchase=(bd - last[0]).days if last else None,
                    last_invoice_number=last[3] if last else None,
                    business_date=bd,
                    run_id=spec["run_id"],
                    updated_at=now,
                )
            )
        session.commit()
    per_account = (time.perf_counter() - t1) / max(len(sample), 1)
    return {
        "seconds": fixed + per_account * len(accounts),
        "rows": len(accounts),
        "unit": "profiles",
        "base_rss_mib": base,
        "extrapolated": True,
        "sample_accounts": len(sample),
        "sample_seconds": per_account * len(sample),
        "fixed_seconds": fixed,
        "per_account_ms": per_account * 1000,
    }


def _cursor_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Case d: reading the invoices is the floor under any Python implementation of (a)."""
    sql = INVOICES_SQL.read_text(encoding="utf-8")
    base = _rss_mib()
    t0 = time.perf_counter()
    with closing(sqlite3.connect(spec["erp"])) as conn:
        cur = conn.cursor()
        cur.execute(sql, {"business_date": spec["business_date"]})
        n = 0
        while rows := cur.fetchmany(500_000):
            n += len(rows)
        cur.close()
    return {"seconds": time.perf_counter() - t0, "rows": n, "unit": "invoices", "base_rss_mib": base}


def _cursor_by_customer_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Case d_b: what (b) cannot avoid reading from the ERP, bare: the same statements, in its batches.

    The change list (purchase_changes.sql) and the changed invoices (invoice_changes.sql) over the
    same window, then the invoices and last quotes of the customers (b) read again in full.
    """
    read = json.loads(Path(spec["codes"]).read_text())
    sql_dir = ROOT / "include" / "sql" / "erp"
    base = _rss_mib()
    t0 = time.perf_counter()
    n = 0
    with closing(sqlite3.connect(spec["erp"])) as conn:
        for name in ("purchase_changes", "invoice_changes"):
            cur = conn.execute((sql_dir / f"{name}.sql").read_text(encoding="utf-8"), read["window"])
            while rows := cur.fetchmany(500_000):
                n += len(rows)
        for name, codes in (("invoices_by_customer", read["codes"]), ("last_quotes_by_customer", read["quote_codes"])):
            sql = (sql_dir / f"{name}.sql").read_text(encoding="utf-8")
            for start in range(0, len(codes), 5000):  # crm.sources' batch of an IN list
                batch = codes[start : start + 5000]
                names = {f"c{i}": c for i, c in enumerate(batch)}
                expanded = sql.replace(":customer_codes", "(" + ", ".join(f":{k}" for k in names) + ")")
                cur = conn.execute(expanded, {**names, "business_date": spec["business_date"]})
                while rows := cur.fetchmany(500_000):
                    n += len(rows)
    return {"seconds": time.perf_counter() - t0, "rows": n, "unit": "rows", "base_rss_mib": base}


def _bare_write_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Case w_b: what (b) cannot avoid writing, bare: the profile rows it changed, by primary key.

    The rows (their values as (b) left them) are read from (b)'s database before the clock starts;
    then one UPDATE per row (executemany) and one commit into a fresh copy of the database (b)
    started from, with the routine's own SQLite settings (WAL, synchronous=NORMAL, foreign keys).
    """
    from crm.db.engines import _sqlite_pragmas

    with closing(sqlite3.connect(spec["changed_from"])) as src:
        cur = src.execute("SELECT * FROM crm_account_profile WHERE run_id = ?", (spec["b_run_id"],))
        columns = [d[0] for d in cur.description]
        rows = cur.fetchall()
    key = columns.index("account_id")
    values = [(*r[:key], *r[key + 1 :], r[key]) for r in rows]
    sets = ", ".join(f"{c} = ?" for c in columns if c != "account_id")
    base = _rss_mib()
    t0 = time.perf_counter()
    with closing(sqlite3.connect(spec["crm"])) as conn:
        _sqlite_pragmas(conn, None)  # the routine's engine's own settings, applied by the same function
        conn.execute("BEGIN IMMEDIATE")
        written = conn.executemany(f"UPDATE crm_account_profile SET {sets} WHERE account_id = ?", values).rowcount
        conn.execute("COMMIT")
    seconds = time.perf_counter() - t0
    if written != len(rows):
        raise RuntimeError(f"(w_b): {written} rows updated, expected {len(rows)}")
    return {"seconds": seconds, "rows": written, "unit": "profiles", "base_rss_mib": base}


def _sql_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Case e: the same nine fields computed by SQLite itself, written to a scratch database.

    The fairest peer is the fastest statement a DBA would write, and which one is fastest depends
    on the size of the data: through the customer_code indexes (already in customer order for the
    window functions, but a random walk over the table) or with NOT INDEXED (one sequential scan,
    then sorts). Both run, each into its own scratch database; the faster one is reported (and
    its output is the one the guard checks), the other's time is kept in the results.
    """
    base = _rss_mib()
    timings: dict[str, float] = {}
    rows = 0
    for variant in DBA_VARIANTS:
        scratch = f"{spec['scratch']}.{variant}"
        t0 = time.perf_counter()
        with closing(sqlite3.connect(spec["crm"])) as conn:
            conn.execute("ATTACH DATABASE ? AS erp", (spec["erp"],))
            conn.execute("ATTACH DATABASE ? AS scratch", (scratch,))
            conn.execute(
                "CREATE TABLE scratch.profile AS " + dba_select(not_indexed=variant == "not indexed"),
                {"bd": spec["business_date"]},
            )
            conn.commit()
            rows = conn.execute("SELECT COUNT(*) FROM scratch.profile").fetchone()[0]
        timings[variant] = time.perf_counter() - t0
    fastest = min(timings, key=timings.__getitem__)
    os.replace(f"{spec['scratch']}.{fastest}", spec["scratch"])
    for variant in DBA_VARIANTS:
        Path(f"{spec['scratch']}.{variant}").unlink(missing_ok=True)
    return {
        "seconds": timings[fastest],
        "rows": rows,
        "unit": "profiles",
        "base_rss_mib": base,
        "variant": fastest,
        "variant_seconds": timings,
    }


CHILD_RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "a": _routine_run,
    "b": _routine_run,
    "b2": _routine_run,
    "c": _naive_run,
    "d": _cursor_run,
    "db": _cursor_by_customer_run,
    "wb": _bare_write_run,
    "e": _sql_run,
}


def child_main(case: str, spec_path: Path) -> int:
    """Run one case and write its measurements, with this process's peak RSS, next to the spec."""
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    out = CHILD_RUNNERS[case](spec)
    out["peak_rss_mib"] = _rss_mib()
    Path(spec["out"]).write_text(json.dumps(out, default=str, indent=1), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------------------------
# Parent side: data, fresh copies, subprocesses, guards, report
# --------------------------------------------------------------------------------------------


def copy_db(src: Path, dst: Path) -> Path:
    """A consistent copy of a SQLite database (the backup API also carries what is still in the WAL)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{dst}{suffix}").unlink(missing_ok=True)
    with closing(sqlite3.connect(src)) as s, closing(sqlite3.connect(dst)) as d:
        s.backup(d)
    return dst


def warm_cache(*paths: Path) -> None:
    """Read the files once so every case starts with them in the page cache, not only the later ones."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def schema_fingerprint() -> str:
    """A digest of the CRM, ERP and GP tables' columns and indexes: data made for another schema is not reused.

    Indexes count: the same query on data generated with other indexes runs another plan.
    """
    import hashlib

    from crm.db import crm_schema, erp_schema, gp_schema

    tables = [t for md in (crm_schema.metadata, erp_schema.metadata, gp_schema.metadata) for t in md.sorted_tables]
    parts = [f"{t.name}.{c.name}:{c.type!r}:{c.nullable}" for t in tables for c in t.columns]
    parts += [
        f"{t.name}.{ix.name}({','.join(c.name for c in ix.columns)}){':unique' * bool(ix.unique)}"
        for t in tables
        for ix in sorted(t.indexes, key=lambda ix: str(ix.name))
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def ensure_data(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """Generate the demo databases, or reuse them when --reuse and they were made with these arguments."""
    wanted = {
        "accounts": args.accounts,
        "seed": args.seed,
        "invoices_per_account": args.invoices_per_account,
        "business_date": BUSINESS_DATE.isoformat(),
        "schema": schema_fingerprint(),
    }
    marker = data_dir / "bench-data.json"
    if args.reuse and marker.is_file():
        meta = json.loads(marker.read_text(encoding="utf-8"))
        if meta.get("arguments") == wanted and all((data_dir / n).is_file() for n in ("crm.db", "erp.db")):
            print(f"reusing the data in {data_dir} (generated {meta.get('generated_at')})", flush=True)
            return meta
        print(f"--reuse: {data_dir} holds no data for {wanted}; generating", flush=True)
    from crm.demo.generate import generate

    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    print(f"generating {args.accounts:,} accounts (seed {args.seed}) into {data_dir} ...", flush=True)
    t0 = time.perf_counter()
    report = generate(
        data_dir,
        accounts=args.accounts,
        seed=args.seed,
        invoices_per_account=args.invoices_per_account,
        business_date=BUSINESS_DATE,
    )
    meta = {
        "arguments": wanted,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "generate_seconds": round(time.perf_counter() - t0, 1),
        "generator_report": report,
    }
    marker.write_text(json.dumps(meta, default=str, indent=1), encoding="utf-8")
    print(f"generated in {meta['generate_seconds']} s", flush=True)
    return meta


def data_profile(crm_db: Path, erp_db: Path) -> dict[str, int]:
    """What the run works on: accounts in scope, invoices and quotes in the ERP."""
    with closing(sqlite3.connect(crm_db)) as conn:
        accounts, linked = conn.execute("SELECT COUNT(*), COUNT(erp_customer_code) FROM crm_account").fetchone()
    with closing(sqlite3.connect(erp_db)) as conn:
        invoices = conn.execute("SELECT COUNT(*) FROM invoice").fetchone()[0]
        in_window = conn.execute(
            "SELECT COUNT(*) FROM invoice WHERE issue_date <= ?", (BUSINESS_DATE.isoformat(),)
        ).fetchone()[0]
        quotes = conn.execute("SELECT COUNT(*) FROM quote").fetchone()[0]
        customers = conn.execute("SELECT COUNT(*) FROM customer").fetchone()[0]
    return {
        "crm_accounts": accounts,
        "accounts_with_erp_code": linked,
        "erp_customers": customers,
        "erp_invoices": invoices,
        "erp_invoices_up_to_business_date": in_window,
        "erp_quotes": quotes,
    }


def change_customers(crm_db: Path, erp_db: Path, share: float, seed: int) -> list[int]:
    """One new invoice, dated on the business date and written after the ERP's watermark, for `share` of customers.

    The customers are drawn among the ERP customers that have a CRM account; returns their codes.
    """
    with closing(sqlite3.connect(crm_db)) as conn:
        linked = {
            r[0] for r in conn.execute("SELECT erp_customer_code FROM crm_account WHERE erp_customer_code IS NOT NULL")
        }
    with closing(sqlite3.connect(erp_db)) as conn:
        customers = dict(conn.execute("SELECT code, company_code FROM customer").fetchall())
        candidates = sorted(linked & customers.keys())
        chosen = sorted(random.Random(seed).sample(candidates, max(1, round(len(candidates) * share))))
        latest = conn.execute(
            "SELECT MAX(m) FROM (SELECT MAX(updated_at) AS m FROM invoice UNION ALL SELECT MAX(updated_at) FROM quote)"
        ).fetchone()[0]
        written = dt.datetime.fromisoformat(latest) + dt.timedelta(seconds=1)
        series = conn.execute("SELECT series FROM invoice LIMIT 1").fetchone()[0]
        rng = random.Random(seed + 1)
        conn.executemany(
            "INSERT INTO invoice (customer_code, company_code, series, number, issue_date, total_value, cancelled,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
            [
                (
                    code,
                    customers[code],
                    series,
                    f"BENCH-{i:07d}",
                    BUSINESS_DATE.isoformat(),
                    round(rng.uniform(10, 5000), 2),
                    written.strftime("%Y-%m-%d %H:%M:%S.%f"),
                )
                for i, code in enumerate(chosen, 1)
            ],
        )
        conn.commit()
    return chosen


def empty_profiles(crm_db: Path) -> Path:
    """(a) starts from an empty crm_account_profile and no previous run of the routine, whatever the data holds."""
    with closing(sqlite3.connect(crm_db)) as conn:
        conn.execute("DELETE FROM crm_account_profile")
        conn.execute("DELETE FROM crm_routine_run WHERE dag_id = 'crm_account_purchase_profile'")
        conn.commit()
    return crm_db


def remove_copies(runs_dir: Path) -> None:
    """Drop the per-case database copies (specs, results and profiles stay): they add up to gigabytes."""
    for path in runs_dir.rglob("*.db*"):
        path.unlink()


def sample_codes(crm_db: Path, k: int, seed: int) -> list[int]:
    """A random sample of the ERP codes of CRM accounts (the unchanged ones an incremental guard also checks)."""
    with closing(sqlite3.connect(crm_db)) as conn:
        codes = [
            r[0] for r in conn.execute("SELECT erp_customer_code FROM crm_account WHERE erp_customer_code IS NOT NULL")
        ]
    return random.Random(seed).sample(codes, min(k, len(codes)))


# MiB touched and freed before every timed run (--warm-memory, which main() sets it from); 0: none.
WARM_MEMORY_MIB = 2048


def warm_memory(mib: int) -> float:
    """Touch `mib` MiB of fresh memory once and free it again; the seconds it took.

    Why: on this project's VM free memory is handed back to the host (virtio_balloon free page
    reporting), and touching it again costs ~2 s per GiB, so a case paid for its memory according to
    what ran before it. Memory freed just before a case starts is quick to touch again: every run of
    every case meets memory in the same state, as warm_cache does for the files. The measurements
    behind this are in bench/README.md, in its paragraph on `--warm-memory`.
    """
    if mib <= 0:
        return 0.0
    import numpy as np

    t0 = time.perf_counter()
    buf = np.empty(mib << 20, dtype=np.uint8)
    buf[:: os.sysconf("SC_PAGE_SIZE")] = 1
    del buf
    return time.perf_counter() - t0


def run_case(
    case: str,
    spec: dict[str, Any],
    case_dir: Path,
    *,
    title: str | None = None,
    script: Path | None = None,
) -> dict[str, Any]:
    """Run one case in a fresh interpreter (`script --child case`, default this file) and return what it measured.

    WARM_MEMORY_MIB of memory is touched first (see warm_memory).
    """
    case_dir.mkdir(parents=True, exist_ok=True)
    spec_path = case_dir / "spec.json"
    spec = {**spec, "out": str(case_dir / "result.json")}
    Path(spec["out"]).unlink(missing_ok=True)
    spec_path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    title = title or f"{LABEL[case]:5} {CASES[case]}"
    print(f"  {title} ...", end=" ", flush=True)
    # The fresh copy just written is still being flushed to disk: let that finish before the clock starts,
    # or its writeback (and the fsync of the case's commit, which waits on it) lands inside the measurement.
    os.sync()
    warmed = warm_memory(WARM_MEMORY_MIB)
    proc = subprocess.run(
        [sys.executable, str((script or Path(__file__)).resolve()), "--child", case, "--spec", str(spec_path)],
        check=False,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "plugins"), os.environ.get("PYTHONPATH")])),
        },
    )
    if proc.returncode != 0:
        raise CaseCrashed(f"case {title.strip()} exited with status {proc.returncode}")
    out = json.loads(Path(spec["out"]).read_text(encoding="utf-8"))
    out["warm_memory_seconds"] = round(warmed, 2)
    print(f"{out['seconds']:.2f} s, {out['rows']:,} {out['unit']}, peak RSS {out['peak_rss_mib']:.0f} MiB", flush=True)
    return out


def best_of(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The fastest repetition, with the highest peak RSS seen in any repetition."""
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    best["repetitions"] = [round(r["seconds"], 3) for r in runs]
    return best


# --------------------------------------------------------------------------------------------
# Correctness guards
# --------------------------------------------------------------------------------------------


def _same(field: str, want: Any, got: Any) -> bool:
    if want is None or got is None:
        return want is None and got is None
    if field in MONEY:
        return abs(float(want) - float(got)) <= MONEY_TOLERANCE[field]
    if field in ("purchase_count", "days_since_last_purchase"):
        return int(want) == int(got)
    return str(want) == str(got)


def compare_rows(
    expected: Iterable[Sequence[Any]], actual: Iterable[Sequence[Any]]
) -> tuple[int, list[dict[str, Any]]]:
    """Merge-compare two account_id-ordered row streams (account_id + the nine fields): (checked, mismatches)."""
    mismatches: list[dict[str, Any]] = []
    checked = 0
    exp_it: Iterator[Sequence[Any]] = iter(expected)
    act_it: Iterator[Sequence[Any]] = iter(actual)
    want, got = next(exp_it, None), next(act_it, None)
    while want is not None or got is not None:
        if got is None or (want is not None and want[0] < got[0]):
            mismatches.append({"account_id": want[0], "problem": "missing from the routine's output"})  # type: ignore[index]
            want = next(exp_it, None)
            continue
        if want is None or got[0] < want[0]:
            mismatches.append({"account_id": got[0], "problem": "not expected"})
            got = next(act_it, None)
            continue
        checked += 1
        diff = {
            f: {"expected": w, "got": g}
            for f, w, g in zip(FIELDS, want[1:], got[1:], strict=True)
            if not _same(f, w, g)
        }
        if diff:
            mismatches.append({"account_id": want[0], "fields": diff})
        want, got = next(exp_it, None), next(act_it, None)
    return checked, mismatches


def _profile_rows(conn: sqlite3.Connection, table: str, where: str = "") -> Iterator[tuple[Any, ...]]:
    sql = f"SELECT account_id, {', '.join(FIELDS)} FROM {table} {where} ORDER BY account_id"
    yield from conn.execute(sql)


def guard_sql_vs_routine(scratch_db: Path, routine_crm: Path) -> dict[str, Any]:
    """Every row of (e) against every row of (a): two implementations of the same nine fields must agree."""
    with closing(sqlite3.connect(scratch_db)) as conn:
        conn.execute("ATTACH DATABASE ? AS a", (str(routine_crm),))
        checked, bad = compare_rows(_profile_rows(conn, "main.profile"), _profile_rows(conn, "a.crm_account_profile"))
    return {"name": "(e) == (a), all rows", "checked": checked, "mismatches": len(bad), "examples": bad[:5]}


def guard_naive_vs_routine(naive_crm: Path, routine_crm: Path) -> dict[str, Any]:
    """The naive peer's sample rows against (a): a peer that computes something else proves nothing."""
    with closing(sqlite3.connect(naive_crm)) as conn:
        conn.execute("ATTACH DATABASE ? AS a", (str(routine_crm),))
        checked, bad = compare_rows(
            _profile_rows(
                conn, "a.crm_account_profile", "WHERE account_id IN (SELECT account_id FROM main.crm_account_profile)"
            ),
            _profile_rows(conn, "main.crm_account_profile"),
        )
    return {"name": "(c) == (a), sampled rows", "checked": checked, "mismatches": len(bad), "examples": bad[:5]}


def guard_incremental(
    label: str, crm_db: Path, erp_db: Path, business_date: dt.date, codes: Sequence[int]
) -> dict[str, Any]:
    """After an incremental run, the changed customers and a random sample of others against the DBA statement."""
    with closing(sqlite3.connect(crm_db)) as conn:
        conn.execute("ATTACH DATABASE ? AS erp", (str(erp_db),))
        conn.execute("CREATE TEMP TABLE bench_sample (code INTEGER PRIMARY KEY)")
        conn.executemany("INSERT INTO temp.bench_sample VALUES (?)", [(c,) for c in codes])
        expected = sorted(conn.execute(dba_select(only_sample=True), {"bd": business_date.isoformat()}))
        actual = _profile_rows(
            conn,
            "main.crm_account_profile",
            "WHERE account_id IN"
            " (SELECT id FROM crm_account WHERE erp_customer_code IN (SELECT code FROM temp.bench_sample))",
        )
        checked, bad = compare_rows(expected, actual)
    return {
        "name": f"{label} == SQL oracle, changed + sampled rows",
        "checked": checked,
        "mismatches": len(bad),
        "examples": bad[:5],
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _verdict(value: float | None, target: str, ok: Callable[[float], bool]) -> str:
    if value is None:
        return "n/a"
    if target == "(informative)":
        return "-"
    return "PASS" if ok(value) else "FAIL"


def ratios_and_targets(cases: dict[str, dict[str, Any]], accounts: int) -> list[dict[str, Any]]:
    """The ratios the design asks for, each with its target (set for 1,000,000 accounts) and PASS/FAIL."""

    def sec(c: str) -> float | None:
        return cases[c]["seconds"] if c in cases else None

    def ratio(num: str, den: str) -> float | None:
        n, d = sec(num), sec(den)
        return n / d if n is not None and d else None

    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: str, ok: Callable[[float], bool], fmt: str = "{:.2f}") -> None:
        rows.append(
            {
                "ratio": name,
                "value": value,
                "shown": "n/a" if value is None else fmt.format(value),
                "target": target,
                "result": _verdict(value, target, ok),
            }
        )

    add("(a)/(d)  routine vs bare extraction", ratio("a", "d"), "<= 2.5x", lambda v: v <= 2.5)
    add("(e)/(a)  DBA SQL vs routine", ratio("e", "a"), ">= 2x (routine 2x faster)", lambda v: v >= 2.0)
    add("(c)/(a)  naive vs routine", ratio("c", "a"), ">= 30x (routine 30x faster)", lambda v: v >= 30.0, "{:.1f}")
    add("(b)/(a)  incremental vs full", ratio("b", "a"), "< 5%", lambda v: v < 0.05, "{:.1%}")
    add(
        "(d_b)/(a) floor of (b): its reads alone vs full",
        ratio("db", "a"),
        "(informative)",
        lambda v: True,
        "{:.1%}",
    )
    add(
        "(w_b)/(a) floor of (b): its write alone vs full",
        ratio("wb", "a"),
        "(informative)",
        lambda v: True,
        "{:.1%}",
    )
    add(  # not a target of the issue's: a next-day run must move every account's day count (one UPDATE of all)
        "(b')/(a) incremental next day vs full",
        ratio("b2", "a"),
        "(informative)",
        lambda v: True,
        "{:.1%}",
    )
    routine = [cases[c]["peak_rss_mib"] for c in ("a", "b", "b2") if c in cases]
    add(
        "peak RSS of the routine (a, b, b')",
        max(routine) if routine else None,
        f"< {RSS_LIMIT_MIB / 1024:.0f} GiB",
        lambda v: v < RSS_LIMIT_MIB,
        "{:,.0f} MiB",
    )
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
        if case in ("a", "b", "b2"):
            what += f" [compute {r['compute_seconds']:.2f} s + load {r['load_seconds']:.2f} s]"
        if r.get("variant"):
            others = ", ".join(f"{v} {t:.2f} s" for v, t in r["variant_seconds"].items() if v != r["variant"])
            what += f" [fastest of two statements: {r['variant']}; {others}]"
        if r.get("extrapolated"):
            what += f" [extrapolated from {r['sample_accounts']:,} accounts, {r['per_account_ms']:.2f} ms each]"
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


def print_report(results: dict[str, Any]) -> None:
    """The plain table, the ratios with PASS/FAIL, then the same as Markdown for the README."""
    head = ["case", "what", "seconds", "rows", "rows/s", "peak RSS MiB"]
    rows = _case_rows(results["cases"])
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for row in rows:
        print("  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)))
    print()
    ratio_head = ["ratio", "value", "target", "result"]
    ratio_rows = [[r["ratio"], r["shown"], r["target"], r["result"]] for r in results["ratios"]]
    widths = [max(len(x) for x in col) for col in zip(ratio_head, *ratio_rows, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(ratio_head, widths, strict=True)))
    for row in ratio_rows:
        print("  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)))
    if results["ratios"] and results["ratios"][0].get("note"):
        print(f"note: {results['ratios'][0]['note']}")
    if "c" in results["cases"]:
        c = results["cases"]["c"]
        print(
            f"note: (c) was measured on {c['sample_accounts']:,} random accounts ({c['sample_seconds']:.2f} s) and"
            f" extrapolated linearly to {c['rows']:,}; its peak RSS is the sample's"
        )
    for g in results["guards"]:
        status = "ok" if g["mismatches"] == 0 else f"FAILED: {g['mismatches']} mismatches, e.g. {g['examples'][:2]}"
        print(f"guard {g['name']}: {g['checked']:,} rows compared, {status}")

    d = results["data"]
    m = results["machine"]
    print("\n<!-- Markdown (paste into the README) -->")
    print(
        f"Purchase profile, {d['accounts_with_erp_code']:,} accounts with an ERP code,"
        f" {d['erp_invoices_up_to_business_date']:,} invoices up to the business date, {d['erp_quotes']:,} quotes"
        f" (SQLite {m['sqlite']}, Python {m['python']}, {m['cpus']} CPUs;"
        f" {results['arguments']['warm_memory']:,} MiB of memory warmed before each run;"
        f' `make bench BENCH_ARGS="--accounts {results["arguments"]["accounts"]}"`):\n'
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---", "---", "---:", "---:", "---:", "---:"]) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print("| ratio | value | target (at 1,000,000 accounts) | result |")
    print("|---|---:|---|---|")
    for row in ratio_rows:
        print("| " + " | ".join(row[:2]) + " | " + row[2] + " | " + row[3] + " |")
    if "c" in results["cases"]:
        print(f"\n(c) is extrapolated from {results['cases']['c']['sample_accounts']:,} random accounts.")


def print_profile(path: Path, top: int = 30) -> None:
    """The profiled (a) run: where the time goes, by own time and by cumulative time."""
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def machine_info() -> dict[str, Any]:
    """Enough about the machine and the code to reproduce (or distrust) the numbers."""
    import numpy
    import pandas
    import sqlalchemy

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "git_commit": commit,
    }


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def add_warm_memory_argument(p: argparse.ArgumentParser) -> None:
    """--warm-memory, shared with the accounts benchmark (both run their cases through run_case)."""
    p.add_argument(
        "--warm-memory",
        type=int,
        default=WARM_MEMORY_MIB,
        metavar="MIB",
        help="memory touched and freed before every timed run, so each meets memory in the same state"
        " (see warm_memory; 0: off, default %(default)s)",
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line; --child/--spec are internal (the parent re-runs this file once per case)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accounts", type=int, default=100_000, help="accounts to generate (default %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="generator and sampling seed (default %(default)s)")
    p.add_argument("--invoices-per-account", type=float, default=10.0, help="(default %(default)s)")
    p.add_argument("--workdir", type=Path, help="default var/bench/<accounts>")
    p.add_argument("--reuse", action="store_true", help="skip generation if the workdir holds data for these arguments")
    p.add_argument("--naive-sample", type=int, default=2000, help="accounts the naive peer (c) runs on (default 2000)")
    p.add_argument(
        "--cases", default=",".join(RUN_ORDER), help="subset to run, e.g. a,d (b and b' imply a, d_b and w_b imply b)"
    )
    p.add_argument("--repeat", type=int, default=1, help="run each case N times, report the fastest (default 1)")
    p.add_argument(
        "--cprofile",
        nargs="?",
        const="a",
        default="",
        metavar="CASES",
        help="also run these routine cases (default a; any of a,b,b') once more under cProfile and print the top",
    )
    p.add_argument(
        "--keep-copies",
        action="store_true",
        help="keep the per-case database copies under <workdir>/runs (about 10 GB at 1,000,000 accounts)",
    )
    add_warm_memory_argument(p)
    p.add_argument("--child", choices=sorted(CHILD_RUNNERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Generate (or reuse) the data, run every case in its own process, check, report."""
    global WARM_MEMORY_MIB
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, args.spec)
    WARM_MEMORY_MIB = args.warm_memory

    wanted = [
        c.strip().replace("'", "2").replace("d_b", "db").replace("w_b", "wb")
        for c in args.cases.split(",")
        if c.strip()
    ]
    unknown = sorted(set(wanted) - set(CASES))
    if unknown:
        sys.exit(f"--cases: unknown {unknown}; choose among {', '.join(RUN_ORDER)}")
    if {"db", "wb"} & set(wanted):
        wanted.append("b")
    if {"b", "b2"} & set(wanted):
        wanted.append("a")
    selected = [c for c in RUN_ORDER if c in wanted]
    profiled = [c.strip().replace("'", "2") for c in args.cprofile.split(",") if c.strip()]
    if set(profiled) - {"a", "b", "b2"}:
        sys.exit("--cprofile: only the routine's cases a, b, b' can be profiled")

    workdir = (args.workdir or ROOT / "var" / "bench" / str(args.accounts)).resolve()
    data_dir = workdir / "data"
    runs_dir = workdir / "runs"
    data_meta = ensure_data(args, data_dir)
    crm_db, erp_db = data_dir / "crm.db", data_dir / "erp.db"
    shutil.rmtree(runs_dir, ignore_errors=True)
    runs_dir.mkdir(parents=True)
    data = data_profile(crm_db, erp_db)
    print(
        f"data: {data['accounts_with_erp_code']:,} accounts with an ERP code (of {data['crm_accounts']:,}),"
        f" {data['erp_invoices']:,} invoices ({data['erp_invoices_up_to_business_date']:,} up to"
        f" {BUSINESS_DATE}), {data['erp_quotes']:,} quotes",
        flush=True,
    )

    changed: list[int] = []
    erp_changed = runs_dir / "erp-changed.db"
    if {"b", "b2"} & set(selected):
        copy_db(erp_db, erp_changed)
        changed = change_customers(crm_db, erp_changed, CHANGED_SHARE, args.seed)
        print(f"(b) setup: {len(changed):,} customers ({CHANGED_SHARE:.0%}) got a new invoice in a copy of erp.db")
    warm_cache(*(p for p in (crm_db, erp_db, erp_changed) if p.is_file()))

    next_day = BUSINESS_DATE + dt.timedelta(days=1)
    base_spec = {"business_date": BUSINESS_DATE.isoformat(), "seed": args.seed, "naive_sample": args.naive_sample}

    def case_spec(case: str, case_dir: Path) -> dict[str, Any]:
        """What one run of a case works on: fresh copies of the databases it writes, its dates and run id."""
        case_dir.mkdir(parents=True)
        spec: dict[str, Any] = {**base_spec, "erp": str(erp_db), "run_id": f"bench_{case}"}
        if case == "a":
            spec |= {"crm": str(empty_profiles(copy_db(crm_db, case_dir / "crm.db"))), "full_refresh": True}
        elif case in ("b", "b2"):
            spec |= {
                "crm": str(copy_db(runs_dir / "a" / "0" / "crm.db", case_dir / "crm.db")),
                "erp": str(erp_changed),
                "full_refresh": False,
                "run_offset_min": 60,
            }
            if case == "b2":
                spec |= {"business_date": next_day.isoformat(), "run_offset_min": 24 * 60}
            else:
                spec["codes_out"] = str(runs_dir / "b-codes.json")
        elif case == "db":
            spec |= {"erp": str(erp_changed), "codes": str(runs_dir / "b-codes.json")}
        elif case == "wb":
            spec |= {
                "crm": str(copy_db(runs_dir / "a" / "0" / "crm.db", case_dir / "crm.db")),
                "changed_from": str(runs_dir / "b" / "0" / "crm.db"),
                "b_run_id": "bench_b",
            }
        elif case == "c":
            spec |= {"crm": str(empty_profiles(copy_db(crm_db, case_dir / "crm.db")))}
        elif case == "e":
            spec |= {"crm": str(copy_db(crm_db, case_dir / "crm.db")), "scratch": str(case_dir / "scratch.db")}
        return spec

    results: dict[str, Any] = {
        "arguments": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("child", "spec")
        },
        "machine": machine_info(),
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
                if rep and not args.keep_copies:  # only repetition 0 is checked or built on; the page cache
                    remove_copies(case_dir)  # full of stale copies slows every later case (kernel reclaim)
            results["cases"][case] = best_of(runs)

            guard = None
            if case == "e" and "a" in selected:
                guard = guard_sql_vs_routine(runs_dir / "e" / "0" / "scratch.db", runs_dir / "a" / "0" / "crm.db")
            elif case == "c" and "a" in selected:
                guard = guard_naive_vs_routine(runs_dir / "c" / "0" / "crm.db", runs_dir / "a" / "0" / "crm.db")
            elif case in ("b", "b2"):
                others = sample_codes(crm_db, 2000, args.seed + 2)
                bd = next_day if case == "b2" else BUSINESS_DATE
                guard = guard_incremental(
                    LABEL[case], runs_dir / case / "0" / "crm.db", erp_changed, bd, sorted(set(changed) | set(others))
                )
            if guard:
                results["guards"].append(guard)
                if guard["mismatches"]:
                    guard_failed = True
                    print(f"  GUARD FAILED: {guard['name']}: {json.dumps(guard['examples'][:3], default=str)}")

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
            remove_copies(runs_dir)

    results["ratios"] = ratios_and_targets(results["cases"], args.accounts)
    (workdir / "results.json").write_text(json.dumps(results, default=str, indent=1), encoding="utf-8")
    print_report(results)
    print(f"\nresults: {workdir / 'results.json'}")
    if guard_failed:
        print("CORRECTNESS GUARD FAILED: the implementations disagree (see above)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
