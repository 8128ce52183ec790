"""
### ERP account integration (TOTVS CRM "Novo Lead / Nova Conta" integration rules)

Accounts whose customer type integrates with the ERP (`crm_customer_type.integrates_erp`) and that
changed since the last successful run are checked against every integration rule: correspondence,
billing and delivery addresses; customer group, representative, carrier, bearer and payment
condition present and known to the ERP; short name present and unique in the ERP (its key) and in
the batch; company name and e-mail; a CPF (person) or CNPJ (company) with valid check digits.

Valid accounts are upserted into the ERP customer table through the write contract
`include/sql/erp/customer_upsert.sql` (only ERP-typed phones TELEFONE_ERP1/2, FAX_ERP1/2 and
observations of type "Integração" are sent), and the ERP code is written back to the account with
its history. Invalid accounts are not sent: the run report lists each violation (account, rule,
field) with a CSV. A re-run writes nothing more; `dry_run` shows what would be written.

Connections: `crm_db`, `erp_db` (read and written), `smtp_default`. Params: `full_check`, `dry_run`,
`notify_to`. Code: `crm.jobs.erp_account_sync`, rules in `crm.routines.erp_integration`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from crm.config import routine_settings, schedule_for
from crm.dag_helpers import common_params, default_args, start_date

DAG_ID = "crm_erp_account_sync"
SETTINGS = routine_settings(DAG_ID)


@dag(
    dag_id=DAG_ID,
    schedule=schedule_for(DAG_ID),
    start_date=start_date(DAG_ID),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["crm", "erp", "integration"],
    default_args=default_args(DAG_ID),
    params={
        "full_check": Param(
            False,
            type="boolean",
            title="Check every account",
            description="Check all accounts of integrating customer types, not only those changed since the "
            "last successful run.",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Check and compute everything, write nothing to the ERP or the CRM; the report lists "
            "what would be inserted, updated and written back.",
        ),
        **common_params(),
    },
)
def crm_erp_account_sync():
    @task
    def sync_accounts() -> dict:
        """Check the changed accounts, upsert the valid ones into the ERP, write their codes back."""
        import datetime as dt

        from crm.dag_helpers import business_date, run_facts, staging_path
        from crm.db import CRM_DB, ERP_DB, engine_for
        from crm.jobs import erp_account_sync as job

        ctx = get_current_context()
        params, facts = ctx["params"], run_facts(ctx)
        crm, erp = engine_for(CRM_DB), engine_for(ERP_DB)
        plan = job.plan_sync(crm, erp, business_date(ctx, SETTINGS["timezone"]), full_check=params["full_check"])
        if params["dry_run"]:
            summary = {**plan.summary(), "dry_run": True}
        else:
            summary = job.apply_sync(
                crm,
                erp,
                plan,
                run_id=facts["run_id"],
                written_at=dt.datetime.now(dt.UTC),  # the write's time; CRM updated_at is never lowered by it
                started_at=facts["started_at"],
                requested_by=facts["requested_by"],
            )
        folder = staging_path(DAG_ID, facts["run_id"])
        folder.mkdir(parents=True, exist_ok=True)
        for name, frame in (("violations", plan.violations), ("pushed", plan.pushed)):
            with (folder / f"{name}.parquet").open("wb") as f:
                frame.to_parquet(f, index=False)
        return {"summary": summary, "staged": str(folder)}

    @task(trigger_rule="all_done")
    def send_run_report() -> dict:
        """E-mail the run report with the violations and pushed-accounts CSVs, and close the run's row."""
        from crm.dag_helpers import send_report
        from crm.jobs.erp_account_sync import report_attachments

        ctx = get_current_context()
        done = ctx["ti"].xcom_pull(task_ids="sync_accounts") or {}
        files = report_attachments(done["staged"]) if done.get("staged") else []
        return send_report(ctx, DAG_ID, upstream=["sync_accounts"], summary=done.get("summary"), attachments=files)

    sync_accounts() >> send_run_report()


crm_erp_account_sync()
