"""Benchmark of the e-mail send path: 10,000 personalised birthday e-mails to a loopback SMTP sink.

Data: --messages accounts (default 10,000) whose birthday is the business date, all active, with an
e-mail address, no opt-out, in three companies and three languages (pt_BR, pl_PL, ro_RO; names with
diacritics), in a fresh SQLite CRM database built with the project's schema
(`crm.db.crm_schema.metadata.create_all`, WAL as `crm.db.engine_from_url` sets it) under
var/bench/email/data/.

Sides, measured in the same run, each against its own SMTP sink (`python -m crm.demo smtp-sink`)
started in a SEPARATE PROCESS, so the sink's CPU (aiosmtpd parsing, one .eml file per message) is
not counted in the sender's process (it still competes for the machine's cores):

  (r)  render, shared by both sides: `crm.jobs.birthday.plan_birthdays` (the accounts query, the
       sandboxed Jinja subject/txt/html per account in its language, the payload with its headers
       validated). The peer sends these same rendered messages.
  (a)  this package: `crm.notify.ledger.plan` (ledger rows) + `crm.notify.dispatch.dispatch` over
       one `SmtpChannel` (claim batches, per message: commit attempted_at, MAIL/RCPT/DATA, commit
       the outcome) - the `send_greetings` task of crm_birthday_greetings.
  (p)  the peer, Airflow's stock per-message e-mail: per message
       `with SmtpHook("smtp_default") as hook: hook.send_email_smtp(to=, subject=, html_content=,
       from_email=)`, which is what `EmailOperator.execute` and `SmtpNotifier.notify` do (a new
       SMTP connection, EHLO, sendmail, close, for each message; no ledger).

Throughput is reported two ways: the send path alone ((a) vs (p), rendering excluded from both)
and end to end ((r)+(a) vs (r)+(p), rendering included in both). Targets: (a) >= 1,000 messages/s
and (p)/(a) >= 10, on both measures; PASS/FAIL is printed, informative only.

Guards (exit status 2 if one fails): each sink stored exactly --messages messages, addressed to
exactly the expected recipients; the ledger has every row `sent`.

    make bench-email                                     # 10,000 messages
    make bench-email BENCH_ARGS="--messages 2000 --cprofile"
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(ROOT / "plugins"))
os.environ.setdefault("CRM_HOME", str(ROOT))

BUSINESS_DATE = dt.date(2026, 11, 22)
ROUTINE = "crm_birthday_greetings"
RATE_TARGET = 1000.0
RATIO_TARGET = 10.0
COMPANIES = (
    (1, "BR01", "Aurora Distribuidora de Alimentos Ltda.", "contato@aurora.example.com", "pt_BR"),
    (2, "PL01", "Łódzka Hurtownia Spożywcza sp. z o.o.", "biuro@lodzka.example.pl", "pl_PL"),
    (3, "RO01", "Țărână Verde Distribuție S.R.L.", "office@tarana.example.ro", "ro_RO"),
)
FIRST = {
    "pt_BR": ("João", "Conceição", "Inês", "Sebastião", "Lúcia", "André", "Márcia", "Otávio"),
    "pl_PL": ("Łukasz", "Małgorzata", "Paweł", "Zofia", "Wojciech", "Agnieszka", "Bożena", "Jędrzej"),
    "ro_RO": ("Ștefan", "Ioana", "Mihai", "Țuca", "Răzvan", "Ană", "Sorin", "Bianca"),
}
LAST = {
    "pt_BR": ("Araújo", "Gonçalves", "Simões", "Magalhães", "Brandão", "Assunção"),
    "pl_PL": ("Wiśniewski", "Dąbrowska", "Kowalczyk", "Żak", "Wróbel", "Szczęsny"),
    "ro_RO": ("Popescu", "Ionescu", "Vasilescu", "Stănescu", "Dumitrașcu", "Bălan"),
}


def build_data(path: Path, n: int, seed: int) -> None:
    """A fresh CRM database: three companies, `n` accounts born on the business date (other years)."""
    from crm.db import engine_from_url
    from crm.db.crm_schema import account, company, metadata

    if path.exists():
        path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    engine = engine_from_url(f"sqlite:///{path}")
    metadata.create_all(engine)
    rng = random.Random(seed)
    rows = []
    for i in range(1, n + 1):
        cid, _, _, _, loc = COMPANIES[(i - 1) % 3]
        first, last = rng.choice(FIRST[loc]), rng.choice(LAST[loc])
        pf = rng.random() < 0.8
        rows.append(
            {
                "id": i,
                "company_id": cid,
                "person_type": "PF" if pf else "PJ",
                "name": f"{first} {last}" if pf else f"{last} & {first} Ltda.",
                "short_name": first if pf and rng.random() < 0.5 else None,
                "email": f"client{i:06d}@mail{i % 7}.example.com",
                "birth_date": BUSINESS_DATE.replace(year=rng.randint(1940, 2006)),
                "locale": loc,
                "active": True,
                "opt_out_email": False,
            }
        )
    with engine.begin() as conn:
        conn.execute(
            company.insert(),
            [
                {"id": c, "code": code, "name": name, "email": mail, "locale": loc}
                for c, code, name, mail, loc in COMPANIES
            ],
        )
        for start in range(0, n, 5000):
            conn.execute(account.insert(), rows[start : start + 5000])
    engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """`python -m crm.demo smtp-sink` in its own process, storing into `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Sink:
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
        cmd = [sys.executable, "-m", "crm.demo", "smtp-sink", "--port", str(self.port), "--dir", str(self.directory)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the SMTP sink exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.recv(100)  # the 220 greeting: the server is up
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the SMTP sink did not start within 30 s")
        os.environ["AIRFLOW_CONN_SMTP_DEFAULT"] = json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": self.port,
                "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "crm-batch@example.com"},
            }
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def recipients(self) -> list[str]:
        """X-Envelope-To of every stored message (the sink writes it as the second line)."""
        out = []
        for p in self.directory.glob("*.eml"):
            with p.open("rb") as f:
                f.readline()
                line = f.readline().decode()
            out.append(line.partition(":")[2].strip())
        return out


def check_mailbox(sink: Sink, expected: list[str], side: str, problems: list[str]) -> int:
    got = sink.recipients()
    if len(got) != len(expected):
        problems.append(f"{side}: the sink stored {len(got)} messages, expected {len(expected)}")
    elif sorted(got) != sorted(expected):
        problems.append(f"{side}: the sink stored {len(got)} messages but not to exactly the expected recipients")
    return len(got)


def run_ours(
    crm_url: str, mail: Path, n: int, profile: cProfile.Profile | None, connections: int = 1
) -> dict[str, Any]:
    from crm.db import engine_from_url
    from crm.jobs import birthday
    from crm.notify import ledger
    from crm.notify.dispatch import dispatch, email_sender
    from crm.notify.email import SmtpChannel

    crm = engine_from_url(crm_url)
    run_id = "bench__" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    with Sink(mail) as sink:
        if profile:
            profile.enable()
        t0 = time.perf_counter()
        plan = birthday.plan_birthdays(crm, BUSINESS_DATE)
        t1 = time.perf_counter()
        planned = ledger.plan(crm, ROUTINE, "email", plan.items, run_id=run_id, business_date=BUSINESS_DATE)
        t2 = time.perf_counter()
        c2 = time.process_time()
        with contextlib.ExitStack() as stack:
            channels = [stack.enter_context(SmtpChannel()) for _ in range(connections)]
            result = dispatch(
                crm,
                ROUTINE,
                [email_sender(channel) for channel in channels],
                run_id=run_id,
                owner=f"{ROUTINE}/{run_id}/send_greetings/-1",
                try_number=1,
                batch=200,
            )
            connects = sum(channel.connects for channel in channels)
        t3 = time.perf_counter()
        send_cpu = time.process_time() - c2
        if profile:
            profile.disable()
        problems: list[str] = []
        pending = [it for it in plan.items if it.state == "pending"]
        if len(pending) != n or planned.queued != n:
            problems.append(f"ours: {len(pending)} rendered / {planned.queued} queued, expected {n}")
        states = ledger.counts(crm, ROUTINE, run_id)["states"]
        if states != {"sent": n}:
            problems.append(f"ours: ledger states {states}, expected {{'sent': {n}}}")
        stored = check_mailbox(sink, [p.payload["to"][0] for p in pending], "ours", problems)
    return {
        "render_s": t1 - t0,
        "ledger_plan_s": t2 - t1,
        "send_s": t3 - t2,
        "send_cpu_s": send_cpu,
        "dispatch": result.as_dict(),
        "smtp_connections": connects,
        "stored": stored,
        "problems": problems,
        "messages": [it.payload for it in pending],
    }


def run_peer(messages: list[dict[str, Any]], mail: Path) -> dict[str, Any]:
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with Sink(mail) as sink:
        t0 = time.perf_counter()
        for m in messages:
            with SmtpHook("smtp_default") as hook:
                hook.send_email_smtp(to=m["to"], subject=m["subject"], html_content=m["html"], from_email=m["from"])
        t1 = time.perf_counter()
        problems: list[str] = []
        stored = check_mailbox(sink, [m["to"][0] for m in messages], "peer", problems)
    return {"send_s": t1 - t0, "stored": stored, "problems": problems}


def run_ceiling(messages: list[dict[str, Any]], mail: Path, connections: int) -> dict[str, Any]:
    """The sink's ceiling: the same messages' wire bytes (built beforehand, untimed) replayed by bare smtplib loops.

    No ledger, no rendering, no MIME work in the timed part: what this sink on this machine can take
    at most over that many connections; nothing that sends these messages to it can be faster.
    """
    import smtplib
    import threading

    from crm.notify.dispatch import wire_from_payload

    wires = [wire_from_payload(m) for m in messages]
    with Sink(mail) as sink:
        port = sink.port
        chunks = [wires[i::connections] for i in range(connections)]

        def replay(chunk: list) -> None:
            client = smtplib.SMTP("127.0.0.1", port)
            client.ehlo()
            for data, env_from, rcpts, _ in chunk:
                client.sendmail(env_from, rcpts, data)
            client.quit()

        threads = [threading.Thread(target=replay, args=(c,)) for c in chunks]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t1 = time.perf_counter()
        problems: list[str] = []
        stored = check_mailbox(sink, [m["to"][0] for m in messages], "ceiling", problems)
    return {"send_s": t1 - t0, "stored": stored, "problems": problems}


def rate(n: int, s: float) -> float:
    return n / s if s > 0 else float("inf")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "var" / "bench" / "email"))
    ap.add_argument(
        "--mail-dir",
        default="/dev/shm/crm-bench-email" if Path("/dev/shm").is_dir() else None,
        help="where the sinks store their .eml files (default: tmpfs /dev/shm/crm-bench-email if there is one,\n"
        "else <out>/mail): on a disk shared with other jobs, file creation in the sink dominates both sides",
    )
    ap.add_argument("--cprofile", action="store_true", help="profile side (a) and print the top functions")
    ap.add_argument("--skip-peer", action="store_true", help="measure side (a) only (while tuning)")
    ap.add_argument(
        "--connections",
        type=int,
        default=None,
        help="SMTP connections of side (a), one sender thread each (default: send_connections of crm_birthday_greetings"
        " in routines.yaml)",
    )
    args = ap.parse_args()
    n = args.messages
    out = Path(args.out)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    db = data / "crm.db"

    import logging

    logging.basicConfig(level=logging.WARNING)
    t = time.perf_counter()
    build_data(db, n, args.seed)
    print(f"data: {n:,} accounts born on {BUSINESS_DATE} in {db} ({time.perf_counter() - t:.1f} s)", flush=True)

    profile = cProfile.Profile() if args.cprofile else None
    load_before = os.getloadavg()
    mail = Path(args.mail_dir) if args.mail_dir else out / "mail"
    print(f"sinks store into {mail}/{{ours,peer}}", flush=True)
    from crm.config import routine_settings

    connections = args.connections or int(routine_settings(ROUTINE)["params"].get("send_connections", 1))
    ours = run_ours(f"sqlite:///{db}", mail / "ours", n, profile, connections)
    ours_send_path = ours["ledger_plan_s"] + ours["send_s"]
    print(
        f"(a) render {ours['render_s']:.2f} s, ledger plan {ours['ledger_plan_s']:.2f} s, "
        f"send {ours['send_s']:.2f} s (sender CPU {ours['send_cpu_s']:.2f} s) "
        f"-> send path {rate(n, ours_send_path):,.0f} msg/s",
        flush=True,
    )
    if profile:
        s = io.StringIO()
        pstats.Stats(profile, stream=s).sort_stats("tottime").print_stats(35)
        print(s.getvalue())
    messages = ours.pop("messages")
    peer = None if args.skip_peer else run_peer(messages, mail / "peer")
    ceiling = run_ceiling(messages, mail / "ceiling", connections)
    load_after = os.getloadavg()
    problems = ours["problems"] + (peer["problems"] if peer else []) + ceiling["problems"]

    render = ours["render_s"]
    rows = [
        ("(r)", "render: plan_birthdays (query, sandboxed Jinja x3, payload)", render),
        ("(a1)", "this package: ledger.plan (10k rows, one transaction)", ours["ledger_plan_s"]),
        (
            "(a2)",
            f"this package: dispatch over {connections} SmtpChannel(s) (claim, 2 commits + SMTP per message)",
            ours["send_s"],
        ),
        ("(a)", "this package, send path = (a1) + (a2)", ours_send_path),
        ("(r)+(a)", "this package, end to end", render + ours_send_path),
    ]
    if peer:
        rows += [
            ("(p)", "peer: `with SmtpHook() as h: h.send_email_smtp()` per message", peer["send_s"]),
            ("(r)+(p)", "peer, end to end", render + peer["send_s"]),
        ]
    rows.append(
        ("(s)", f"sink ceiling: the same bytes replayed by bare smtplib over {connections} connection(s)",
         ceiling["send_s"])
    )  # fmt: skip
    ratios = []
    if peer:
        ratios = [
            ("(p)/(s)", "the most any sender could gain over the peer here", peer["send_s"] / ceiling["send_s"]),
            ("(p)/(a)", "send path: peer vs this package", peer["send_s"] / ours_send_path),
            ("((r)+(p))/((r)+(a))", "end to end", (render + peer["send_s"]) / (render + ours_send_path)),
        ]
    checks = [
        (
            "(a) send path",
            f"{rate(n, ours_send_path):,.0f} msg/s",
            ">= 1,000 msg/s",
            rate(n, ours_send_path) >= RATE_TARGET,
        ),
        (
            "(r)+(a) end to end",
            f"{rate(n, render + ours_send_path):,.0f} msg/s",
            ">= 1,000 msg/s",
            rate(n, render + ours_send_path) >= RATE_TARGET,
        ),
    ] + [(name, f"{v:.1f}x", ">= 10x", v >= RATIO_TARGET) for name, _, v in ratios if name != "(p)/(s)"]

    print()
    print(f"{'case':<22}{'seconds':>9}{'msg/s':>10}  what")
    for case, what, secs in rows:
        print(f"{case:<22}{secs:>9.2f}{rate(n, secs):>10,.0f}  {what}")
    for name, what, v in ratios:
        print(f"{name:<22}{v:>9.1f}x  {what}")
    for name, value, target, ok in checks:
        print(f"{name:<22}{value:>12}  target {target}: {'PASS' if ok else 'FAIL'}")
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} ({os.cpu_count()} CPUs)")

    print("\nMarkdown:\n")
    print("| case | what | seconds | messages/s |")
    print("|---|---|---:|---:|")
    for case, what, secs in rows:
        print(f"| {case} | {what} | {secs:.2f} | {rate(n, secs):,.0f} |")
    print()
    print("| measure | value | target | result |")
    print("|---|---:|---|---|")
    for name, value, target, ok in checks:
        print(f"| {name} | {value} | {target} | {'PASS' if ok else 'FAIL'} |")

    results = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "messages": n,
        "mail_dir": str(mail),
        "ours": ours,
        "peer": peer,
        "ceiling": ceiling,
        "connections": connections,
        "rows": [
            {"case": c, "what": w, "seconds": round(s, 3), "messages_per_s": round(rate(n, s), 1)} for c, w, s in rows
        ],
        "ratios": {name: round(v, 2) for name, _, v in ratios},
        "checks": [{"measure": a, "value": b, "target": c, "pass": d} for a, b, c, d in checks],
        "problems": problems,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults: {out / 'results.json'}")
    if problems:
        print("GUARD FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
