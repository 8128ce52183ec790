"""
### Overdue-invoice notices with PDF invoices (iBee dunning automation)

Weekly (Mondays 07:00 America/Sao_Paulo by default, `include/config/routines.yaml`), and by hand
from the trigger form: one e-mail per partner per ISO week to the partner's contacts whose job
function matches `contact_functions`, listing its open receivables due `days_overdue` or more
days before the business date, each attached as a PDF invoice (`invoice_format`), optionally with
an account statement PDF. Partners are the active legal entities (PJ) of the CRM, optionally one
`audience`; inactive partners and persons are never checked.

Partners with overdue invoices but no matching contact are errors of the run; opted-out partners
are skipped. The receivables are read again right before each e-mail leaves: one paid in the
meantime is left out, a notice whose invoices were all paid is not sent. Through the notification
ledger (business key `partner <id> / <ISO week>`): a re-run in the same week sends nothing new.
The execution report (partners notified with contacts and invoices, skipped and why, errors, CSV)
goes to `notify_to`, else to the sender(s).

Connections: `crm_db`, `erp_db`, `smtp_default`. Code: `crm.jobs.overdue`, `crm.notify.pdf`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from crm.config import TEMPLATES_DIR, routine_settings, schedule_for
from crm.dag_helpers import default_args, notification_params, start_date

DAG_ID = "crm_overdue_invoice_notices"
SETTINGS = routine_settings(DAG_ID)
DEFAULTS = SETTINGS["params"]
# The enum of the trigger form: a directory listing of include/templates/email (a file read, no database).
TEMPLATE_NAMES = sorted({p.name.split(".")[0] for p in (TEMPLATES_DIR / "email").glob("overdue*.txt")}) or [
    "overdue_3_days"
]


@dag(
    dag_id=DAG_ID,
    schedule=schedule_for(DAG_ID),
    start_date=start_date(DAG_ID),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["crm", "email", "pdf", "ibee"],
    default_args=default_args(DAG_ID),
    params={
        "audience": Param(
            "",
            type="string",
            title="Audience",
            description="Code of a crm_audience to narrow the partners to; empty: every active PJ partner.",
            maxLength=40,
        ),
        "days_overdue": Param(
            int(DEFAULTS.get("days_overdue", 3)),
            type="integer",
            minimum=0,
            maximum=3650,
            title="Days overdue",
            description="Open receivables due at least this many days before the business date.",
        ),
        "contact_functions": Param(
            DEFAULTS.get("contact_functions", "Conta, %Manage"),
            type="string",
            title="Contact job functions",
            description="Comma-separated patterns, case-insensitive: a pattern matches a job function that "
            "starts with it; % inside matches any text ('Conta' matches Conta and Contabilidade; '%Manage' "
            "matches Manager and Management). Empty or wildcard-only patterns are refused.",
            minLength=1,
            maxLength=400,
        ),
        "template": Param(
            DEFAULTS.get("template", "overdue_3_days"),
            type="string",
            enum=TEMPLATE_NAMES,
            title="E-mail template",
            description="Overdue template in include/templates/email (the partner's language is chosen "
            "automatically, the default files as fallback).",
        ),
        "sender": Param(
            DEFAULTS.get("sender", "company"),
            type="string",
            enum=["company", "user"],
            title="Sender",
            description="company: the partner's company address; user: the address of the user who "
            "triggers the run (crm_user.login), on the company's behalf.",
        ),
        "copy_to": Param(
            DEFAULTS.get("copy_to", ""),
            type="string",
            title="Send a copy to",
            description="Address(es) in CC of every notice, e.g. the finance department. Empty: none.",
            maxLength=500,
        ),
        "invoice_format": Param(
            DEFAULTS.get("invoice_format", "simple"),
            type="string",
            enum=["simple", "detailed"],
            title="Invoice format",
            description="Layout of the attached invoice PDFs (include/templates/pdf/invoice_<format>.yaml).",
        ),
        "attach_statement": Param(
            bool(DEFAULTS.get("attach_statement", False)),
            type="boolean",
            title="Attach account statement",
            description="Also attach a statement PDF listing every overdue invoice and the total.",
        ),
        **notification_params(),
    },
)
def crm_overdue_invoice_notices():
    @task
    def plan_notices() -> dict:
        """Find the partners with overdue invoices and their contacts, render, write the ledger (no sending)."""
        from airflow.sdk.exceptions import AirflowFailException

        from crm.dag_helpers import business_date, ledger_routine, notify_to, run_facts, test_recipient
        from crm.db import CRM_DB, ERP_DB, engine_for
        from crm.jobs import overdue
        from crm.notify import ledger
        from crm.notify.templates import TemplateProblem

        ctx = get_current_context()
        params, facts = ctx["params"], run_facts(ctx)
        bdate = business_date(ctx, SETTINGS["timezone"])
        crm = engine_for(CRM_DB)
        try:
            notify_to(params)  # a malformed report address fails the run now, not at its end
            test_to = test_recipient(params)
            options = overdue.Options.from_params(params, test_to)
            plan = overdue.plan_notices(crm, engine_for(ERP_DB), bdate, options, requested_by=facts["requested_by"])
        except (ValueError, TemplateProblem) as exc:  # bad Params or a broken template: retrying cannot help
            raise AirflowFailException(str(exc)) from exc
        routine = ledger_routine(DAG_ID, test_to)
        result = None
        if not params["dry_run"]:
            result = ledger.plan(crm, routine, "email", plan.items, run_id=facts["run_id"], business_date=bdate)
        return {
            "summary": {
                **overdue.summary_of(plan, result, options),
                "dry_run": params["dry_run"],
                "test_recipient": test_to,
            },
            "samples": plan.samples if params["dry_run"] else [],
            "sample_notice": plan.sample_payloads[0]["overdue"] if params["dry_run"] and plan.sample_payloads else None,
            "routine": routine,
            "report_to": plan.senders,
        }

    @task
    def send_notices(planned: dict) -> dict:
        """Claim each pending notice, re-read its receivables, make the PDFs and send (`send_connections` at once)."""
        import contextlib

        from crm.dag_helpers import run_facts
        from crm.db import CRM_DB, ERP_DB, engine_for
        from crm.jobs.overdue import OverdueSender
        from crm.notify.dispatch import dispatch
        from crm.notify.email import SmtpChannel

        ctx = get_current_context()
        if ctx["params"]["dry_run"]:
            return {"dry_run": True}
        facts, ti = run_facts(ctx), ctx["ti"]
        with contextlib.ExitStack() as stack:
            channels = [stack.enter_context(SmtpChannel()) for _ in range(int(DEFAULTS["send_connections"]))]
            result = dispatch(
                engine_for(CRM_DB),
                planned["routine"],
                [OverdueSender(channel, engine_for(ERP_DB)) for channel in channels],
                run_id=facts["run_id"],
                owner=f"{DAG_ID}/{facts['run_id']}/{ti.task_id}/{ti.map_index}",
                try_number=ti.try_number,
                batch=int(DEFAULTS.get("send_batch", 200)),
            )
        return result.as_dict()

    @task(trigger_rule="all_done")
    def send_run_report() -> dict:
        """E-mail the execution report (partners notified, skipped, errors; CSVs) to the sender(s) or notify_to."""
        from crm.dag_helpers import send_report
        from crm.db import CRM_DB, ERP_DB, engine_for
        from crm.jobs import overdue

        ctx = get_current_context()
        planned = ctx["ti"].xcom_pull(task_ids="plan_notices") or {}
        routine = planned.get("routine")
        files, summary = overdue.report_attachments(
            engine_for(CRM_DB), engine_for(ERP_DB), routine, ctx["dag_run"].run_id, planned
        )
        params = dict(ctx["params"])
        if not (params.get("notify_to") or "").strip() and planned.get("report_to"):
            params["notify_to"] = ", ".join(planned["report_to"])  # the execution report goes to the sender
        return send_report(
            {**ctx, "params": params},
            DAG_ID,
            upstream=["plan_notices", "send_notices"],
            ledger_routines=[routine] if routine else [],
            summary=summary,
            samples=planned.get("samples"),
            attachments=files,
        )

    send_notices(plan_notices()) >> send_run_report()


crm_overdue_invoice_notices()
