"""
### Birthday greetings (TOTVS CRM crm304rp)

Every day (08:00 America/Sao_Paulo by default, `include/config/routines.yaml`) e-mails a greeting
to each account whose birthday is the run's business date in that timezone; 29 February
birthdays are greeted on 28 February in common years. Only active accounts with an e-mail and no
e-mail opt-out; the others are counted in the report as skipped, with the reason.

Each message is rendered from `include/templates/email/<template>[.<lang>].{subject,txt,html}`
in the account's language (fallback: the default files), in a Jinja sandbox; the `subject`
Param, when given, replaces the template's subject. Through the notification ledger: a re-run,
a cleared run or a backfill of the same date sends nothing twice; a message whose hand-over was
interrupted is reported as `unknown`, never resent automatically.

Connections: `crm_db`, `smtp_default`. Params: `template`, `subject`, `dry_run`,
`test_recipient`, `notify_to`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from crm.config import TEMPLATES_DIR, routine_settings, schedule_for
from crm.dag_helpers import default_args, notification_params, start_date

DAG_ID = "crm_birthday_greetings"
SETTINGS = routine_settings(DAG_ID)
# The enum of the trigger form: a directory listing of include/templates/email (a file read, no database).
TEMPLATE_NAMES = sorted({p.name.split(".")[0] for p in (TEMPLATES_DIR / "email").glob("birthday*.txt")}) or ["birthday"]


@dag(
    dag_id=DAG_ID,
    schedule=schedule_for(DAG_ID),
    start_date=start_date(DAG_ID),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["crm", "email", "crm304rp"],
    default_args=default_args(DAG_ID),
    params={
        "template": Param(
            SETTINGS["params"].get("template", "birthday"),
            type="string",
            enum=TEMPLATE_NAMES,
            title="Template",
            description="Birthday template in include/templates/email (the account's language is chosen "
            "automatically, with the default files as fallback).",
        ),
        "subject": Param(
            "",
            type="string",
            title="Subject",
            description="Jinja template over the account's fields (first_name, name, short_name, age, "
            "company_name, ...), e.g. 'Parabéns, {{ first_name }}!'. Empty: the template's own subject, "
            "in the account's language. One line.",
            maxLength=200,
            pattern="^[^\\r\\n]*$",
        ),
        **notification_params(),
    },
)
def crm_birthday_greetings():
    @task
    def plan_greetings() -> dict:
        """Find today's birthdays, render each message, write the ledger rows (nothing is sent here)."""
        from airflow.sdk.exceptions import AirflowFailException

        from crm.dag_helpers import business_date, ledger_routine, notify_to, run_facts, test_recipient
        from crm.db import CRM_DB, engine_for
        from crm.jobs import birthday
        from crm.notify import ledger
        from crm.notify.templates import TemplateProblem

        ctx = get_current_context()
        params, facts = ctx["params"], run_facts(ctx)
        bdate = business_date(ctx, SETTINGS["timezone"])
        crm = engine_for(CRM_DB)
        try:
            notify_to(params)  # a malformed report address fails the run now, not at its end
            test_to = test_recipient(params)
            plan = birthday.plan_birthdays(
                crm, bdate, template=params["template"], subject=params["subject"], test_recipient=test_to
            )
        except (ValueError, TemplateProblem) as exc:  # bad Params or a broken template file: retrying cannot help
            raise AirflowFailException(str(exc)) from exc
        result = None
        if not params["dry_run"]:
            result = ledger.plan(
                crm,
                ledger_routine(DAG_ID, test_to),
                "email",
                plan.items,
                run_id=facts["run_id"],
                business_date=bdate,
            )
        return {
            "summary": {
                **birthday.summary_of(plan, result),
                "template": params["template"],
                "dry_run": params["dry_run"],
                "test_recipient": test_to,
            },
            "samples": plan.samples if params["dry_run"] else [],
            "routine": ledger_routine(DAG_ID, test_to),
        }

    @task
    def send_greetings(planned: dict) -> dict:
        """Claim, send and record every pending greeting of this run, over `send_connections` SMTP connections."""
        import contextlib

        from crm.dag_helpers import run_facts
        from crm.db import CRM_DB, engine_for
        from crm.notify.dispatch import dispatch, email_sender
        from crm.notify.email import SmtpChannel

        ctx = get_current_context()
        if ctx["params"]["dry_run"]:
            return {"dry_run": True}
        facts, ti = run_facts(ctx), ctx["ti"]
        with contextlib.ExitStack() as stack:
            channels = [stack.enter_context(SmtpChannel()) for _ in range(int(SETTINGS["params"]["send_connections"]))]
            result = dispatch(
                engine_for(CRM_DB),
                planned["routine"],
                [email_sender(channel) for channel in channels],
                run_id=facts["run_id"],
                owner=f"{DAG_ID}/{facts['run_id']}/{ti.task_id}/{ti.map_index}",
                try_number=ti.try_number,
                batch=int(SETTINGS["params"].get("send_batch", 200)),
            )
        return result.as_dict()

    @task(trigger_rule="all_done")
    def send_run_report() -> dict:
        """E-mail the run report (counts, errors, CSV of the ledger rows) and close the run's row."""
        from crm.dag_helpers import send_report

        ctx = get_current_context()
        planned = ctx["ti"].xcom_pull(task_ids="plan_greetings") or {}
        return send_report(
            ctx,
            DAG_ID,
            upstream=["plan_greetings", "send_greetings"],
            ledger_routines=[planned["routine"]] if planned.get("routine") else [],
            summary=planned.get("summary"),
            samples=planned.get("samples"),
        )

    send_greetings(plan_greetings()) >> send_run_report()


crm_birthday_greetings()
