"""
### Account inactivity monitor (TOTVS CRM crm00356, "Monitorar Movimentações das Contas")

Lists the active accounts without any counted movement in the last `period_days` days of the run's
business date (days of the routine's timezone in `routines.yaml`), as configured by the inactivity
profile chosen in the `profile` Param (`crm_inactivity_profile`: period, which movement counts —
activities, opportunities, tickets, ERP purchases —, transfer or not and to whom, who is notified,
the e-mail template).

If the profile transfers, the idle accounts get the new owner (one user, or round-robin over the
list in its order, accounts by id); the owner changes, their history (previous owner kept) and the
notification ledger rows are written in one transaction. Each notified user gets one e-mail
listing the accounts concerned (their own, or all for supervisors) with a CSV attached; the
requester gets the run report. A re-run of the date moves and sends nothing more; `dry_run`
shows what would change and be sent.

Connections: `crm_db`, `erp_db` (purchases: `include/sql/erp/purchases_since.sql`), `smtp_default`.
Params: `profile`, `dry_run`, `test_recipient`, `notify_to`. Code: `crm.jobs.account_inactivity`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from crm.config import routine_settings, schedule_for
from crm.dag_helpers import default_args, notification_params, start_date

DAG_ID = "crm_account_inactivity"
SETTINGS = routine_settings(DAG_ID)
DEFAULTS = SETTINGS["params"]


@dag(
    dag_id=DAG_ID,
    schedule=schedule_for(DAG_ID),
    start_date=start_date(DAG_ID),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["crm", "email", "crm00356"],
    default_args=default_args(DAG_ID),
    params={
        "profile": Param(
            DEFAULTS.get("profile", "90_DAYS_NOTIFY"),
            type="string",
            title="Inactivity profile",
            description="Code of a crm_inactivity_profile (period, counted movement, transfer, notified users, "
            "template). An unknown or inactive code fails the run at once.",
            minLength=1,
            maxLength=40,
        ),
        **notification_params(),
    },
)
def crm_account_inactivity():
    @task
    def find_and_transfer() -> dict:
        """List idle accounts, transfer them if the profile says so, plan the e-mails: one transaction."""
        import datetime as dt

        from airflow.sdk.exceptions import AirflowFailException

        from crm.dag_helpers import business_date, ledger_routine, run_facts, staging_path, test_recipient
        from crm.db import CRM_DB, ERP_DB, engine_for
        from crm.jobs import account_inactivity as job
        from crm.notify.templates import TemplateProblem

        ctx = get_current_context()
        params, facts = ctx["params"], run_facts(ctx)
        bdate = business_date(ctx, SETTINGS["timezone"])
        crm = engine_for(CRM_DB)
        try:
            test_to = test_recipient(params)
            plan = job.plan(
                crm,
                engine_for(ERP_DB),
                bdate,
                params["profile"],
                sender=job.default_sender(),
                timezone=SETTINGS["timezone"],
                test_recipient=test_to,
            )
        except (ValueError, TemplateProblem) as exc:  # unknown profile, bad config or template: no retry helps
            raise AirflowFailException(str(exc)) from exc
        routine = ledger_routine(DAG_ID, test_to)
        applied = None
        if not params["dry_run"]:
            # the write's own time: account_changes never lowers updated_at, so a later edit stays visible
            applied = job.apply(crm, plan, routine=routine, run_id=facts["run_id"], changed_at=dt.datetime.now(dt.UTC))
        path = staging_path(DAG_ID, facts["run_id"]) / "inactive_accounts.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            plan.listing.to_parquet(f, index=False)
        summary = {**plan.summary(), "dry_run": params["dry_run"], "test_recipient": test_to}
        if applied is None:
            summary["dry_run_would_change_owners"] = len(plan.changes)
            summary["dry_run_would_send"] = sum(1 for it in plan.items if it.state == "pending")
        else:
            summary.update(applied)
        return {
            "summary": summary,
            "samples": plan.samples if params["dry_run"] else [],
            "routine": routine,
            "staged": str(path),
        }

    @task
    def send_notifications(planned: dict) -> dict:
        """Claim, send and record the pending e-mails of this run (CSV attached), over one SMTP connection."""
        from crm.dag_helpers import run_facts
        from crm.db import CRM_DB, engine_for
        from crm.jobs.account_inactivity import attachments_of
        from crm.notify.dispatch import dispatch, email_sender
        from crm.notify.email import SmtpChannel

        ctx = get_current_context()
        if ctx["params"]["dry_run"]:
            return {"dry_run": True}
        facts, ti = run_facts(ctx), ctx["ti"]
        with SmtpChannel() as channel:
            result = dispatch(
                engine_for(CRM_DB),
                planned["routine"],
                email_sender(channel, attachments_for=attachments_of),
                run_id=facts["run_id"],
                owner=f"{DAG_ID}/{facts['run_id']}/{ti.task_id}/{ti.map_index}",
                try_number=ti.try_number,
                batch=int(DEFAULTS.get("send_batch", 200)),
            )
        return result.as_dict()

    @task(trigger_rule="all_done")
    def send_run_report() -> dict:
        """E-mail the run report (counts, inactive accounts CSV, ledger CSV) and close the run's row."""
        from crm.dag_helpers import send_report
        from crm.jobs.account_inactivity import report_attachment

        ctx = get_current_context()
        planned = ctx["ti"].xcom_pull(task_ids="find_and_transfer") or {}
        files = [report_attachment(planned["staged"], ctx["params"]["profile"])] if planned.get("staged") else []
        return send_report(
            ctx,
            DAG_ID,
            upstream=["find_and_transfer", "send_notifications"],
            ledger_routines=[planned["routine"]] if planned.get("routine") else [],
            summary=planned.get("summary"),
            samples=planned.get("samples"),
            attachments=files,
        )

    send_notifications(find_and_transfer()) >> send_run_report()


crm_account_inactivity()
