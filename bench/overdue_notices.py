"""Benchmark of crm_overdue_invoice_notices: PDFs per second, and the whole run to a loopback SMTP sink.

Data: --partners active PJ partners (default 10,000), each with 1-5 open receivables 4-60 days
overdue and one or two contacts whose job function matches the default patterns, in fresh SQLite
CRM/ERP databases built with the project's schemas (crm.db.*_schema) under var/bench/overdue/.

Cases, measured in the same run:
  (p)  PDFs per second on one core: `crm.notify.pdf.render_pdf`, invoices (simple layout) and
       statements, in this process
  (p0) its peer: fpdf2 used the stock way (add_font per document, fpdf2 subsets the TTF at output),
       same layout code, on a sample (--stock-sample documents), extrapolated
  (e)  the whole run, end to end, with the time per stage: plan (ERP + CRM reads, render, pattern
       matching) -> ledger (plan rows) -> send (claim, re-read the receivables, re-render, PDFs,
       MIME, SMTP to the sink, ledger outcome) -> report (partners CSV, run report e-mail).
       The SMTP sink (`python -m crm.demo smtp-sink`) runs in a separate process; the run checks
       that it stored one message per partner (plus the report).

Targets: (p) >= 300 PDFs/s; (e) < 120 s for 10,000 partners. PASS/FAIL is printed; the exit status
is 0 unless a case crashed or a check failed. Results: a table on stdout (and as Markdown) and
var/bench/overdue/results.json.

    make bench-overdue                                  # 10,000 partners
    make bench-overdue BENCH_ARGS="--partners 2000"
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(ROOT / "plugins"))

BUSINESS_DATE = dt.date(2026, 11, 22)
DAG_ID = "crm_overdue_invoice_notices"
PDF_TARGET = 300.0
RUN_TARGET = 120.0
COMPANIES = (
    (1, "BR01", "Aurora Distribuidora de Alimentos Ltda.", "contato@example.com", "pt_BR"),
    (2, "PL01", "Łódzka Hurtownia Spożywcza sp. z o.o.", "biuro@example.pl", "pl_PL"),
    (3, "RO01", "Țărână Verde Distribuție S.R.L.", "office@example.ro", "ro_RO"),
)
NAMES = ("Padaria São Jorge", "Przedsiębiorstwo Handlowe Żuraw", "Comerț Carpați", "Distribuidora Ipê Amarelo",
         "Piekarnia Świt", "Brutăria Mureș", "Ótica Três Corações", "Apteka Źródło", "Construcții Bârsa")  # fmt: skip


def build_data(out: Path, partners: int, seed: int) -> dict[str, int]:
    """Fresh crm.db / erp.db with `partners` overdue partners (1-5 receivables, 1-2 matching contacts each)."""
    from sqlalchemy import create_engine

    from crm.db.crm_schema import metadata as crm_meta
    from crm.db.erp_schema import metadata as erp_meta

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name, meta in (("crm.db", crm_meta), ("erp.db", erp_meta)):
        engine = create_engine(f"sqlite:///{out / name}")
        meta.create_all(engine)
        engine.dispose()
    rng = random.Random(seed)
    now = "2026-11-21 10:00:00.000000"
    accounts, contacts, receivables = [], [], []
    rid = 0
    for i in range(1, partners + 1):
        cid, _, _, _, locale = COMPANIES[i % len(COMPANIES)]
        code = 100_000 + i
        accounts.append((i, cid, "account", "PJ", f"{NAMES[i % len(NAMES)]} {i} Ltda.", f"P{i}", f"{i:014d}",
                         f"p{i}@example.com", locale, code, 1, 0, now, now))  # fmt: skip
        for k, fid in enumerate(rng.sample([1, 2, 3], rng.randint(1, 2))):
            contacts.append((i * 3 + k, i, f"Contato {i}-{k}", f"c{i}.{k}@example.com", fid, locale, 1, 0, now, now))
        for k in range(rng.randint(1, 5)):
            rid += 1
            due = BUSINESS_DATE - dt.timedelta(days=rng.randint(4, 60))
            amount = round(rng.lognormvariate(6.5, 0.8), 2)
            receivables.append((rid, code, COMPANIES[i % len(COMPANIES)][1], f"{code}-{k + 1}/1",
                                (due - dt.timedelta(days=30)).isoformat(), due.isoformat(), amount, 0.0, 0,
                                "boleto", "open", 1, now))  # fmt: skip
    with sqlite3.connect(out / "crm.db") as crm:
        crm.executemany(
            "INSERT INTO crm_company (id, code, name, email, locale, timezone, active, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, 'America/Sao_Paulo', 1, ?, ?)",
            [(c[0], c[1], c[2], c[3], c[4], now, now) for c in COMPANIES],
        )
        crm.executemany("INSERT INTO crm_job_function (id, name) VALUES (?, ?)",
                        [(1, "Contabilidade"), (2, "Manager"), (3, "Management"), (4, "Vendas")])  # fmt: skip
        crm.executemany(
            "INSERT INTO crm_account (id, company_id, kind, person_type, name, short_name, tax_id, email, locale,"
            " erp_customer_code, active, opt_out_email, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            accounts,
        )
        crm.executemany(
            "INSERT INTO crm_contact (id, account_id, name, email, job_function_id, locale, active, opt_out_email,"
            " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            contacts,
        )
    with sqlite3.connect(out / "erp.db") as erp:
        erp.execute("INSERT INTO bearer (id, name, bank_code) VALUES (1, 'Banco do Brasil', '001')")
        erp.executemany(
            "INSERT INTO receivable (id, customer_code, company_code, document_number, issue_date, due_date, amount,"
            " paid_amount, paid, payment_method, status, bearer_id, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            receivables,
        )
    return {"partners": partners, "contacts": len(contacts), "receivables": len(receivables)}


def sample_documents(n: int) -> list[tuple[str, str, dict[str, Any]]]:
    """n (layout, locale, fields) of invoices and, every fourth, a statement of 1-5 invoices."""
    from crm.notify.pdf import money

    rng = random.Random(7)
    docs = []
    for i in range(n):
        _, _, cname, cemail, locale = COMPANIES[i % len(COMPANIES)]
        currency = {"pt_BR": "BRL", "pl_PL": "PLN", "ro_RO": "RON"}[locale]
        invs = [
            {"number": f"{100000 + i}-{k}/1", "invoice_number": "", "issue_date": "01.10.2026",
             "due_date": "01.11.2026", "days_overdue": 21 + k, "amount": money(rng.random() * 5000, currency, locale),
             "paid_amount": money(0, currency, locale), "open_amount": money(rng.random() * 5000, currency, locale),
             "payment_method": "boleto", "bearer": "", "items": []}
            for k in range(rng.randint(1, 5))
        ]  # fmt: skip
        fields = {
            "company": {"name": cname, "email": cemail, "phone": "+55 11 3040-5060", "tax_id": "11222333000181"},
            "partner": {
                "name": f"{NAMES[i % len(NAMES)]} {i}",
                "tax_id": f"{i:014d}",
                "code": 100000 + i,
                "address": "Rua Augusta, 100\n01310-000 São Paulo - SP",
            },
            "business_date": "22/11/2026",
            "invoice": invs[0],
            "items": [],
            "invoices": invs,
            "total": money(1234.5, currency, locale),
        }
        docs.append(("statement" if i % 4 == 3 else "invoice_simple", locale, fields))
    return docs


def bench_pdfs(n: int, stock_sample: int) -> dict[str, Any]:
    """(p) the routine's renderer and (p0) fpdf2's stock font handling, on the same documents."""
    from fpdf import FPDF
    from fpdf.output import OutputProducer as Stock

    from crm.notify import pdf as P

    docs = sample_documents(n)
    P.render_pdf(P.load_layout("invoice_simple", "pt_BR"), docs[0][2])  # fonts parsed once per process
    started = time.process_time()
    wall = time.perf_counter()
    size = 0
    for layout, locale, fields in docs:
        size += len(P.render_pdf(P.load_layout(layout, locale), fields))
    cpu, wall = time.process_time() - started, time.perf_counter() - wall

    def stock_clone(pdf: FPDF, style: str) -> None:  # the stock way: parse the TTF for every document
        pdf.add_font(P.FAMILY, style, str(P.FONTS_DIR / P.FONT_FILES[style]))

    original_clone, original_producer = P._clone_font, P._CachingOutputProducer
    P._clone_font, P._CachingOutputProducer = stock_clone, Stock
    try:
        s_started = time.process_time()
        for layout, locale, fields in docs[:stock_sample]:
            P.render_pdf(P.load_layout(layout, locale), fields)
        s_cpu = time.process_time() - s_started
    finally:
        P._clone_font, P._CachingOutputProducer = original_clone, original_producer
    return {
        "documents": n,
        "cpu_seconds": round(cpu, 3),
        "wall_seconds": round(wall, 3),
        "pdfs_per_cpu_second": round(n / cpu, 1),
        "mean_kib": round(size / n / 1024, 1),
        "stock_sample": stock_sample,
        "stock_pdfs_per_cpu_second": round(stock_sample / s_cpu, 1),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_run(data: Path, mail: Path, partners: int) -> dict[str, Any]:
    """(e) plan -> ledger -> send -> report, against a sink in another process."""
    shutil.rmtree(mail, ignore_errors=True)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
    sink = subprocess.Popen(
        [sys.executable, "-m", "crm.demo", "smtp-sink", "--port", str(port), "--dir", str(mail)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        os.environ["AIRFLOW_CONN_SMTP_DEFAULT"] = json.dumps(
            {"conn_type": "smtp", "host": "127.0.0.1", "port": port,
             "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "crm-batch@example.com", "timeout": 60}}
        )  # fmt: skip
        return _run_stages(data, mail, partners)
    finally:
        sink.terminate()
        sink.wait(10)


def _run_stages(data: Path, mail: Path, partners: int) -> dict[str, Any]:
    from crm.config import routine_settings
    from crm.db import engine_from_url
    from crm.jobs import overdue
    from crm.notify import ledger
    from crm.notify.dispatch import dispatch
    from crm.notify.email import SmtpChannel
    from crm.notify.report import run_report

    crm, erp = engine_from_url(f"sqlite:///{data / 'crm.db'}"), engine_from_url(f"sqlite:///{data / 'erp.db'}")
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    options = overdue.Options(copy_to=["financeiro@example.com"])
    plan = overdue.plan_notices(crm, erp, BUSINESS_DATE, options)
    stages["plan"] = time.perf_counter() - t0
    t = time.perf_counter()
    result = ledger.plan(crm, DAG_ID, "email", plan.items, run_id="bench", business_date=BUSINESS_DATE)
    stages["ledger"] = time.perf_counter() - t
    t = time.perf_counter()
    connections = int(routine_settings(DAG_ID)["params"].get("send_connections", 1))  # as the DAG sends
    with contextlib.ExitStack() as stack:
        channels = [stack.enter_context(SmtpChannel()) for _ in range(connections)]
        senders = [overdue.OverdueSender(channel, erp) for channel in channels]
        sent = dispatch(crm, DAG_ID, senders, run_id="bench", owner="bench", try_number=1)
    stages["send"] = time.perf_counter() - t
    t = time.perf_counter()
    files, summary = overdue.report_attachments(crm, erp, DAG_ID, "bench", {"summary": {}})
    now = dt.datetime.now(dt.UTC)
    run_report(crm, dag_id=DAG_ID, run_id="bench", business_date=BUSINESS_DATE, status="success",
               started_at=now - dt.timedelta(seconds=time.perf_counter() - t0), finished_at=now,
               to=["ops@example.com"], ledger_routines=[DAG_ID], summary=summary, attachments=files)  # fmt: skip
    stages["report"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list(mail.glob("*.eml"))) < sent.sent + 1:
        time.sleep(0.2)
    stored = list(mail.glob("*.eml"))
    return {
        "planned": result.planned,
        "queued": result.queued,
        "sent": sent.sent,
        "failed": sent.failed + sent.retryable + sent.unknown,
        "messages_in_sink": len(stored),
        "sink_mib": round(sum(p.stat().st_size for p in stored) / 2**20, 1),
        "stages_seconds": {k: round(v, 2) for k, v in stages.items()},
        "total_seconds": round(total, 2),
        "pdfs": sum(len(it.payload["overdue"]["receivable_ids"]) for it in plan.items if it.state == "pending"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partners", type=int, default=10_000)
    parser.add_argument("--pdfs", type=int, default=3000, help="documents for the PDF rate (p)")
    parser.add_argument("--stock-sample", type=int, default=60, help="documents for the stock fpdf2 peer (p0)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench" / "overdue")
    args = parser.parse_args()
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="crm-bench-airflow-"))
    work = args.workdir
    t = time.perf_counter()
    counts = build_data(work / "data", args.partners, args.seed)
    print(f"data: {counts} in {time.perf_counter() - t:.1f}s", flush=True)
    pdfs = bench_pdfs(args.pdfs, args.stock_sample)
    print(f"pdf: {pdfs}", flush=True)
    run = bench_run(work / "data", work / "mail", args.partners)
    print(f"run: {run}", flush=True)
    ok = run["sent"] == args.partners and run["messages_in_sink"] == args.partners + 1 and run["failed"] == 0
    rate, total = pdfs["pdfs_per_cpu_second"], run["total_seconds"]
    st = run["stages_seconds"]
    lines = [
        "| case | what | seconds | count | rate |",
        "|---|---|---:|---:|---:|",
        f"| (p) | routine's PDFs (invoices + statements), one core | {pdfs['cpu_seconds']:.2f} | "
        f"{pdfs['documents']:,} PDFs ({pdfs['mean_kib']} KiB avg) | {rate:,.0f} PDFs/s |",
        f"| (p0) | fpdf2 stock font handling (TTF parsed + subset per document) | "
        f"{pdfs['stock_sample'] / pdfs['stock_pdfs_per_cpu_second']:.2f} | {pdfs['stock_sample']} PDFs | "
        f"{pdfs['stock_pdfs_per_cpu_second']:,.0f} PDFs/s |",
        f"| (e) | whole run, {args.partners:,} partners -> loopback sink | {total:.2f} | "
        f"{run['sent']:,} e-mails, {run['pdfs']:,} PDFs, {run['sink_mib']} MiB | "
        f"{run['sent'] / total:,.0f} e-mails/s |",
        *(f"| (e) | &nbsp;&nbsp;stage {k} | {v:.2f} | | |" for k, v in st.items()),
        "",
        "| ratio / target | value | target | result |",
        "|---|---:|---|---|",
        f"| (p) PDFs per second, one core | {rate:,.0f} | >= {PDF_TARGET:.0f} | "
        f"{'PASS' if rate >= PDF_TARGET else 'FAIL'} |",
        f"| (p)/(p0) vs stock fpdf2 | {rate / pdfs['stock_pdfs_per_cpu_second']:.1f}x | | |",
        f"| (e) whole run | {total:.1f} s | < {RUN_TARGET:.0f} s | {'PASS' if total < RUN_TARGET else 'FAIL'} |",
    ]
    print("\n".join(lines))
    results = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "data": counts,
        "pdf": pdfs,
        "run": run,
        "checks_ok": ok,
        "markdown": "\n".join(lines),
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    shutil.rmtree(work / "mail", ignore_errors=True)  # hundreds of MiB of .eml
    if not ok:
        print("CHECK FAILED: not every partner got exactly one e-mail", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
