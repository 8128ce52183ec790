"""
### Account status (TOTVS CRM crm1003)

Sets every account's status from the ERP (`erp_status`: Active / Inactive / Not integrated ERP) or
from the health-plan system GP (`gp_status`: Active / Inactive / Not integrated GP), whichever the
`source` Param (default: `routines.yaml`) names, and the display label of that status in the
account's language (`status_label`, from `include/config/account_status_labels.yaml`).

ERP: no ERP customer code → Not integrated; a non-cancelled purchase dated on or after the business
date minus the customer's "months inactive" (ERP credit info, else `default_months_inactive`), in
calendar months (31 March − 1 month = 28/29 February) → Active; otherwise Inactive. GP: unknown
beneficiary → Not integrated; beneficiary and contract active and covering the business date →
Active; otherwise Inactive. Informational only: nothing is blocked or deleted.

Only changed statuses/labels are written, each with a `crm_account_history` row, in one
transaction; a re-run of the date changes nothing. `dry_run` changes nothing and reports what would
change. The run report (counts per status and per change, CSV of the changes) goes by e-mail.

Connections: `crm_db`, `erp_db` or `gp_db`, `smtp_default`. Source queries:
`include/sql/erp/credit_months_inactive.sql`, `purchases_since.sql`, `include/sql/gp/beneficiary_status.sql`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from crm.config import routine_settings, schedule_for
from crm.dag_helpers import common_params, default_args, start_date

DAG_ID = "crm_account_status"
SETTINGS = routine_settings(DAG_ID)
PARAMS = SETTINGS["params"]


@dag(
    dag_id=DAG_ID,
    schedule=schedule_for(DAG_ID),
    start_date=start_date(DAG_ID),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["crm", "erp", "gp", "crm1003"],
    default_args=default_args(DAG_ID),
    params={
        "source": Param(
            PARAMS.get("source", "erp"),
            type="string",
            enum=["erp", "gp"],
            title="Status source",
            description="erp: Active/Inactive/Not integrated ERP from purchases and the ERP's months inactive; "
            "gp: Active/Inactive/Not integrated GP from the health-plan system's beneficiary and contract.",
        ),
        "default_months_inactive": Param(
            int(PARAMS.get("default_months_inactive", 12)),
            type="integer",
            minimum=1,
            maximum=1200,
            title="Default months inactive",
            description="ERP source: months without a purchase after which a customer whose ERP credit info "
            "has no 'months inactive' counts as inactive.",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Compute every status and report what would change (counts and CSV); change nothing.",
        ),
        **common_params(),
    },
)
def crm_account_status():
    @task
    def update_statuses() -> dict:
        """Compute every account's status, stage the changes for the report, write them (unless dry run)."""
        import datetime as dt

        from crm.dag_helpers import business_date, run_facts, stage_frame
        from crm.db import CRM_DB, ERP_DB, GP_DB, engine_for
        from crm.jobs import account_status as job

        ctx = get_current_context()
        params, facts = ctx["params"], run_facts(ctx)
        bdate = business_date(ctx, SETTINGS["timezone"])
        crm = engine_for(CRM_DB)
        source = params["source"]
        plan = job.plan(
            crm,
            engine_for(ERP_DB if source == "erp" else GP_DB),
            bdate,
            source=source,
            default_months_inactive=int(params["default_months_inactive"]),
        )
        staged = stage_frame(DAG_ID, facts["run_id"], "changes", plan.report)
        applied = (
            {}
            if params["dry_run"]
            else job.apply(crm, plan, run_id=facts["run_id"], changed_at=dt.datetime.now(dt.UTC))
        )
        summary = {**plan.summary, **applied, "dry_run": params["dry_run"]}
        if params["dry_run"]:
            summary["dry run"] = "nothing was changed; the CSV lists what a run would change"
        return {"business_date": bdate.isoformat(), "staged": staged, "summary": summary}

    @task(trigger_rule="all_done")
    def send_run_report() -> dict:
        """E-mail the run report with the CSV of the changes (also when the update failed) and close the run."""
        from crm.dag_helpers import send_report, staged_csv_attachment

        ctx = get_current_context()
        done = ctx["ti"].xcom_pull(task_ids="update_statuses") or {}
        attachments, note = staged_csv_attachment(
            done.get("staged"),
            f"{DAG_ID}-{done.get('business_date')}-changes.csv",
            int(PARAMS.get("report_max_rows", 100_000)),
        )
        summary = {**(done.get("summary") or {}), **note}
        return send_report(ctx, DAG_ID, upstream=["update_statuses"], summary=summary, attachments=attachments)

    update_statuses() >> send_run_report()


crm_account_status()
