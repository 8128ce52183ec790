"""
### Task reminders by e-mail and SMS (Comarch ERP Optima's reminder automaton)

Every 15 minutes (`include/config/routines.yaml`) sends the reminders of one-off and recurring
CRM tasks (`crm_task`) whose send time — occurrence start minus the offset — fell since the
previous successful run, to the customer (the account's e-mail or mobile phone), the operator
(the user's), or both, as the task and its company's defaults (`crm_reminder_settings`) say.
Times are the company's local wall-clock times, right across DST changes.

A run that finds the previous one missing (downtime, a failed run) catches up what is at most
`grace_hours` late; older reminders are reported as `missed`, not sent late. Every reminder goes
through the notification ledger (key: task, occurrence start, side; channel), so each occurrence
is reminded once, whatever the re-runs or retries. Completed and cancelled tasks get none; a
missing or opted-out address is skipped with the reason. The run report lists the reminders
sent, skipped, missed and failed.

Connections: `crm_db`, `smtp_default`, `sms_gateway`. Params: `grace_hours`, `dry_run`,
`test_recipient` (e-mails), `test_phone` (SMS), `notify_to`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from crm.config import routine_settings, schedule_for
from crm.dag_helpers import default_args, notification_params, start_date

DAG_ID = "crm_task_reminders"
SETTINGS = routine_settings(DAG_ID)
PARAMS = SETTINGS["params"]


@dag(
    dag_id=DAG_ID,
    schedule=schedule_for(DAG_ID),
    start_date=start_date(DAG_ID),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["crm", "email", "sms", "optima"],
    default_args=default_args(DAG_ID),
    params={
        "grace_hours": Param(
            int(PARAMS.get("grace_hours", 24)),
            type="integer",
            minimum=0,
            maximum=720,
            title="Grace period (hours)",
            description="Reminders whose time passed while no run succeeded are still sent if at most this "
            "many hours late; older ones are reported as missed.",
        ),
        "test_phone": Param(
            "",
            type="string",
            title="Test phone",
            description="Send every SMS to this number (E.164, e.g. +48600100200) instead of the real "
            "recipients, recorded apart like test_recipient. Empty: real recipients.",
            pattern="^(\\+?[0-9 ()./-]{8,20})?$",
        ),
        **notification_params(),
    },
)
def crm_task_reminders():
    @task
    def plan_reminders() -> dict:
        """Find the reminders of this run's window, render them, write the ledger (nothing is sent here)."""
        import datetime as dt

        import pendulum
        from airflow.sdk.exceptions import AirflowFailException

        from crm.dag_helpers import business_date, ledger_routine, notify_to, run_facts, test_recipient
        from crm.db import CRM_DB, engine_for
        from crm.jobs import task_reminders as job
        from crm.notify.sms import normalise_phone
        from crm.routines.reminders import Window
        from crm.runs import record_run

        ctx = get_current_context()
        params, facts = ctx["params"], run_facts(ctx)
        bdate = business_date(ctx, SETTINGS["timezone"])
        end = pendulum.instance(ctx.get("logical_date") or ctx["dag_run"].run_after).in_tz("UTC")
        try:
            notify_to(params)  # a malformed report address fails the run now, not at its end
            test_to = test_recipient(params)
            test_phone = normalise_phone(params["test_phone"]) if params["test_phone"] else None
            if params["test_phone"] and test_phone is None:
                raise ValueError(f"test_phone is not an international number: {params['test_phone']!r}")
        except ValueError as exc:  # bad Params: retrying cannot help
            raise AirflowFailException(str(exc)) from exc
        routine = ledger_routine(DAG_ID, test_to or test_phone)
        crm = engine_for(CRM_DB)
        window = Window(
            end=dt.datetime.fromtimestamp(end.timestamp(), dt.UTC),
            since=job.latest_window_end(crm, DAG_ID),
            grace=dt.timedelta(hours=params["grace_hours"]),
        )
        options = job.Options(
            routine=routine,
            test_recipient=test_to,
            test_phone=test_phone,
            max_segments=int(PARAMS.get("sms_max_segments", job.DEFAULT_MAX_SEGMENTS)),
        )
        plan = job.plan_reminders(crm, window, options)
        result = None
        if not params["dry_run"]:
            result = job.write(crm, plan, routine, run_id=facts["run_id"], business_date=bdate)
            if routine == DAG_ID:  # only a real run moves the window: its end is the next run's start
                record_run(
                    crm,
                    dag_id=DAG_ID,
                    run_id=facts["run_id"],
                    business_date=bdate,
                    status="running",
                    started_at=facts["started_at"],
                    requested_by=facts["requested_by"],
                    watermark=window.end,
                )
        return {
            "summary": {
                **plan.summary(result),
                "dry_run": params["dry_run"],
                "test_recipient": test_to,
                "test_phone": test_phone,
            },
            "samples": plan.samples if params["dry_run"] else [],
            "routine": routine,
            "cutoff": window.cutoff.isoformat(),
        }

    @task
    def send_reminders(planned: dict) -> dict:
        """Claim, send and record every pending reminder of this run: e-mails over SMTP, SMS to the gateway."""
        import datetime as dt
        from contextlib import ExitStack

        from crm.dag_helpers import run_facts
        from crm.db import CRM_DB, engine_for
        from crm.jobs.task_reminders import routing_sender
        from crm.notify.dispatch import dispatch, email_sender
        from crm.notify.email import SmtpChannel
        from crm.notify.sms import SmsChannel, sms_sender

        ctx = get_current_context()
        if ctx["params"]["dry_run"]:
            return {"dry_run": True}
        facts, ti = run_facts(ctx), ctx["ti"]
        with ExitStack() as stack:
            sender = routing_sender(
                {
                    "email": lambda: email_sender(stack.enter_context(SmtpChannel())),
                    "sms": lambda: sms_sender(stack.enter_context(SmsChannel())),
                },
                cutoff=dt.datetime.fromisoformat(planned["cutoff"]),
            )
            result = dispatch(
                engine_for(CRM_DB),
                planned["routine"],
                sender,
                run_id=facts["run_id"],
                owner=f"{DAG_ID}/{facts['run_id']}/{ti.task_id}/{ti.map_index}",
                try_number=ti.try_number,
                batch=int(PARAMS.get("send_batch", 200)),
            )
        return result.as_dict()

    @task(trigger_rule="all_done")
    def send_run_report() -> dict:
        """E-mail the run report (sent / skipped / missed / failed, CSV of the ledger rows) and close the run's row."""
        from crm.dag_helpers import run_facts, send_report
        from crm.db import CRM_DB, engine_for
        from crm.jobs.task_reminders import final_counts

        ctx = get_current_context()
        planned = ctx["ti"].xcom_pull(task_ids="plan_reminders") or {}
        routines = [planned["routine"]] if planned.get("routine") else []
        summary = dict(planned.get("summary") or {})
        if routines:
            summary["reminders"] = final_counts(engine_for(CRM_DB), routines, run_facts(ctx)["run_id"])
        return send_report(
            ctx,
            DAG_ID,
            upstream=["plan_reminders", "send_reminders"],
            ledger_routines=routines,
            summary=summary,
            samples=planned.get("samples"),
        )

    send_reminders(plan_reminders()) >> send_run_report()


crm_task_reminders()
