"""
### WhatsApp notices of order stages (TOTVS Moda: "infinite shelf" and OMNI orders)

Every 5 minutes (`include/config/routines.yaml`): the order-stage events recorded in the ERP since
the last successful run (a few minutes of overlap catch late events; the ledger keeps them from
being sent twice) up to the run's own time. An event whose stage the order's company configured
(active message type `order_stage:<stage>` in `crm_whatsapp_config`) sends one WhatsApp template
message to the customer; stages not configured are ignored. Ledger key `order <id> / <stage>`: an
order is notified once per stage, whatever re-runs or overlaps. Only customers with an RD Conversas
contact and a mobile phone; the others are skipped with the reason. The first run looks back
`first_lookback_minutes`; the `since` Param replays a window by hand.

Run report: e-mailed when someone asked (`notify_to`, the triggering user) or when something failed
(`alert_to` in routines.yaml); every run is recorded in crm_routine_run with its watermark.

Connections: `crm_db`, `erp_db`, `rd_conversas`, `smtp_default`. Code: `crm.jobs.whatsapp`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from crm.config import routine_settings, schedule_for
from crm.dag_helpers import common_params, default_args, start_date
from crm.whatsapp_dag import dry_run_param, test_phone_param

DAG_ID = "crm_whatsapp_order_stages"
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
        "since": Param(
            "",
            type="string",
            title="Events since",
            description="Replay: notify the events after this moment (ISO, UTC, e.g. 2026-11-22T08:00:00) up to "
            "the run's time. Empty: since the last successful run.",
            maxLength=40,
            pattern=r"^(\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?([+-]\d{2}:\d{2}|Z)?)?$",
        ),
        "dry_run": dry_run_param(),
        "test_phone": test_phone_param(),
        **common_params(),
    },
)
def crm_whatsapp_order_stages():
    @task
    def plan_notices() -> dict:
        """Read the stage events of the window, build each configured stage's message, write the ledger."""
        import datetime as dt

        from airflow.sdk.exceptions import AirflowFailException

        from crm.dag_helpers import business_date, ledger_routine, run_facts
        from crm.db import CRM_DB, ERP_DB, engine_for
        from crm.jobs import whatsapp as wa
        from crm.notify.whatsapp import load_settings
        from crm.runs import latest_watermark, record_run
        from crm.whatsapp_dag import run_time, test_phone

        ctx = get_current_context()
        params, facts = ctx["params"], run_facts(ctx)
        crm, settings = engine_for(CRM_DB), load_settings()
        bdate = business_date(ctx, SETTINGS["timezone"])
        previous = latest_watermark(crm, DAG_ID)
        try:
            test_to = test_phone(params)
            since, until = wa.order_window(
                run_time(ctx),
                previous,
                since_param=(params.get("since") or "").strip() or None,
                overlap=dt.timedelta(minutes=int(DEFAULTS.get("overlap_minutes", 15))),
                first_lookback=dt.timedelta(minutes=int(DEFAULTS.get("first_lookback_minutes", 60))),
            )
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc
        plan = wa.plan_order_stages(crm, engine_for(ERP_DB), settings, since, until, test_phone=test_to)
        routine = ledger_routine(DAG_ID, test_to)
        summary = wa.jsonable(plan.summary)
        if not params["dry_run"]:
            summary.update(wa.write_plan(crm, routine, plan, run_id=facts["run_id"], business_date=bdate))
            if not test_to:
                watermark = max(until, previous) if previous is not None else until
                record_run(crm, dag_id=DAG_ID, run_id=facts["run_id"], business_date=bdate, status="running",
                           started_at=facts["started_at"], requested_by=facts["requested_by"],
                           watermark=watermark, summary=summary)  # fmt: skip
        return {
            "summary": {**summary, "dry_run": params["dry_run"]},
            "samples": plan.samples if params["dry_run"] else [],
            "routine": routine,
        }

    @task
    def send_notices(planned: dict) -> dict:
        """Send every pending stage notice of this run over one HTTP session."""
        from crm.dag_helpers import run_facts
        from crm.db import CRM_DB, engine_for
        from crm.notify.dispatch import dispatch
        from crm.notify.whatsapp import RdConversas, whatsapp_sender

        ctx = get_current_context()
        if ctx["params"]["dry_run"]:
            return {"dry_run": True}
        facts, ti = run_facts(ctx), ctx["ti"]
        with RdConversas() as client:
            result = dispatch(
                engine_for(CRM_DB),
                planned["routine"],
                whatsapp_sender(client, planned["routine"]),
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
        planned = ctx["ti"].xcom_pull(task_ids="plan_notices") or {}
        routines = [planned["routine"]] if planned.get("routine") else []
        return report(ctx, DAG_ID, upstream=["plan_notices", "send_notices"], routines=routines,
                      summary=planned.get("summary"), samples=planned.get("samples"), alert_only=True)  # fmt: skip

    send_notices(plan_notices()) >> send_run_report()


crm_whatsapp_order_stages()
