"""
### WhatsApp contact sync to RD Conversas (TOTVS Moda, PESFP079 / automatic send on save)

Every 10 minutes (`include/config/routines.yaml`): the accounts created, or whose mobile phone
changed, since the last successful run are sent to RD Conversas; `mode=batch` sends every account
that has a phone of the configured mobile type (`mobile_phone_type` in the `rd_conversas`
connection) and was never sent. The contact id RD Conversas returns is stored as the account's
additional field (`crm_external_id`, system = the connection's `additional_field`). An account is
created once, ever; a changed number updates the existing contact. Numbers that are not on
WhatsApp are skipped with that reason.

Through the notification ledger (channel `whatsapp`): re-runs never send twice. Run report:
e-mailed when someone asked (`notify_to`, the triggering user) or when something failed
(`alert_to` in routines.yaml).

Connections: `crm_db`, `rd_conversas` (token in the password), `smtp_default`. Code: `crm.jobs.whatsapp`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from crm.config import routine_settings, schedule_for
from crm.dag_helpers import common_params, default_args, start_date
from crm.whatsapp_dag import dry_run_param

DAG_ID = "crm_whatsapp_contact_sync"
SETTINGS = routine_settings(DAG_ID)
DEFAULTS = SETTINGS.get("params") or {}


@dag(
    dag_id=DAG_ID,
    schedule=schedule_for(DAG_ID),
    start_date=start_date(DAG_ID),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["crm", "whatsapp", "rd-conversas", "totvs-moda"],
    default_args=default_args(DAG_ID),
    params={
        "mode": Param(
            "incremental",
            type="string",
            enum=["incremental", "batch"],
            title="Mode",
            description="incremental: accounts created or whose mobile phone changed since the last successful "
            "run (the first run is a batch); batch: every account with a mobile phone not yet in RD Conversas.",
        ),
        "dry_run": dry_run_param(),
        **common_params(),
    },
)
def crm_whatsapp_contact_sync():
    @task
    def plan_contacts() -> dict:
        """Find the accounts to create or update in RD Conversas and write the ledger (nothing is sent here)."""
        import datetime as dt

        from crm.dag_helpers import business_date, run_facts
        from crm.db import CRM_DB, engine_for
        from crm.jobs import whatsapp as wa
        from crm.notify.whatsapp import load_settings
        from crm.runs import latest_watermark, record_run
        from crm.whatsapp_dag import run_time

        ctx = get_current_context()
        params, facts = ctx["params"], run_facts(ctx)
        crm, settings = engine_for(CRM_DB), load_settings()
        now = run_time(ctx)
        previous = latest_watermark(crm, DAG_ID) if params["mode"] == "incremental" else None
        overlap = dt.timedelta(minutes=int(DEFAULTS.get("overlap_minutes", 5)))
        since = previous - overlap if previous is not None else None
        plan = wa.plan_contacts(crm, settings, since=since)
        summary = wa.jsonable(plan.summary)
        if not params["dry_run"]:
            bdate = business_date(ctx, SETTINGS["timezone"])
            summary.update(wa.write_plan(crm, DAG_ID, plan, run_id=facts["run_id"], business_date=bdate))
            watermark = max(now, previous) if previous is not None else now
            record_run(crm, dag_id=DAG_ID, run_id=facts["run_id"], business_date=bdate, status="running",
                       started_at=facts["started_at"], requested_by=facts["requested_by"], watermark=watermark,
                       summary=summary)  # fmt: skip
        return {
            "summary": {**summary, "dry_run": params["dry_run"]},
            "samples": plan.samples if params["dry_run"] else [],
        }

    @task
    def send_contacts(planned: dict) -> dict:
        """Create/update each planned contact and store the returned id right away, over one HTTP session."""
        from crm.dag_helpers import run_facts
        from crm.db import CRM_DB, engine_for
        from crm.jobs.whatsapp import contact_store
        from crm.notify.dispatch import dispatch
        from crm.notify.whatsapp import RdConversas, whatsapp_sender

        ctx = get_current_context()
        if ctx["params"]["dry_run"]:
            return {"dry_run": True}
        facts, ti, crm = run_facts(ctx), ctx["ti"], engine_for(CRM_DB)
        with RdConversas() as client:
            result = dispatch(
                crm,
                DAG_ID,
                whatsapp_sender(client, DAG_ID, on_contact=contact_store(crm, client.settings)),
                run_id=facts["run_id"],
                owner=f"{DAG_ID}/{facts['run_id']}/{ti.task_id}/{ti.map_index}",
                try_number=ti.try_number,
                batch=int(DEFAULTS.get("send_batch", 200)),
            )
        return result.as_dict()

    @task(trigger_rule="all_done")
    def send_run_report() -> dict:
        """Record the run (and its watermark); e-mail the report if asked for or if something failed."""
        from crm.whatsapp_dag import report

        ctx = get_current_context()
        planned = ctx["ti"].xcom_pull(task_ids="plan_contacts") or {}
        return report(ctx, DAG_ID, upstream=["plan_contacts", "send_contacts"], routines=[DAG_ID],
                      summary=planned.get("summary"), samples=planned.get("samples"), alert_only=True)  # fmt: skip

    send_contacts(plan_contacts()) >> send_run_report()


crm_whatsapp_contact_sync()
