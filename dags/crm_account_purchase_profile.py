"""
### Account purchase profile (TOTVS CRM crm338, "dados complementares da conta")

For every account with an ERP customer code (or only the members of the `audience` Param) computes,
from the ERP, the nine purchase fields of `crm_account_profile`: first and last purchase date and
value, accumulated value and count, last quote date, days since the last purchase (relative to the
run's business date) and the last invoice number. Cancelled invoices do not count; same-day invoices
are ordered by ERP entry order (see `crm.routines.purchase_profile`).

Incremental by default: only accounts whose ERP data changed since the last successful run are
touched (new invoices added to the stored profile, an edited one recomputes the account), the others
get their day count moved to the business date; `full_refresh` recomputes all.
The load is one transaction; the summary goes to `crm_routine_run` and by e-mail to the requester.

Connections: `crm_db`, `erp_db`, `smtp_default`. Source queries: `include/sql/erp/invoices*.sql`,
`invoice_changes.sql`, `last_quotes*.sql`, `purchase_changes.sql`, `purchase_watermark.sql`.
Schedule: `include/config/routines.yaml`.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, get_current_context, task

from crm.config import PROFILE_ASSET_URI, routine_settings, schedule_for
from crm.dag_helpers import common_params, default_args, start_date

DAG_ID = "crm_account_purchase_profile"
SETTINGS = routine_settings(DAG_ID)
PROFILE_ASSET = Asset(PROFILE_ASSET_URI)


@dag(
    dag_id=DAG_ID,
    schedule=schedule_for(DAG_ID),
    start_date=start_date(DAG_ID),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["crm", "erp", "crm338"],
    default_args=default_args(DAG_ID),
    params={
        "audience": Param(
            "",
            type="string",
            title="Audience",
            description="Code of a CRM audience (crm_audience.code) to update only its members. Empty: all accounts.",
            maxLength=40,
        ),
        "full_refresh": Param(
            False,
            type="boolean",
            title="Full refresh",
            description="Recompute every account instead of only those whose ERP data changed since the last run.",
        ),
        **common_params(),
    },
)
def crm_account_purchase_profile():
    @task
    def compute_profiles() -> dict:
        """Extract invoices/quotes in chunks, fold them into profiles, stage the result as Parquet."""
        from crm.dag_helpers import business_date, run_facts, staging_path
        from crm.db import CRM_DB, ERP_DB, engine_for
        from crm.jobs import purchase_profile as job

        ctx = get_current_context()
        params, facts = ctx["params"], run_facts(ctx)
        bdate = business_date(ctx, SETTINGS["timezone"])
        try:
            result = job.compute(
                engine_for(CRM_DB),
                engine_for(ERP_DB),
                bdate,
                audience_code=params["audience"].strip() or None,
                full_refresh=params["full_refresh"],
                chunk_rows=int(SETTINGS["params"].get("chunk_rows", 500_000)),
            )
        except job.AudienceNotFound as exc:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(str(exc)) from exc  # a bad Param: retrying cannot help
        path = staging_path(DAG_ID, facts["run_id"]) / "profiles.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            result.profiles.to_parquet(f, index=False)
        return {
            "staged": str(path),
            "business_date": bdate.isoformat(),
            "mode": result.mode,
            "scope": result.scope,
            "watermark": result.watermark.isoformat() if result.watermark else None,
            "stats": result.stats,
            "drop_account_ids": result.drop_account_ids,
        }

    @task(outlets=[PROFILE_ASSET])
    def load_profiles(computed: dict) -> dict:
        """Upsert the staged profiles, refresh the others' day counts and record the run, in one transaction."""
        import datetime as dt

        import pandas as pd
        from airflow.sdk import ObjectStoragePath

        from crm.dag_helpers import run_facts
        from crm.db import CRM_DB, engine_for
        from crm.jobs import purchase_profile as job

        ctx = get_current_context()
        facts = run_facts(ctx)
        with ObjectStoragePath(computed["staged"]).open("rb") as f:
            profiles = pd.read_parquet(f)
        result = job.ComputeResult(
            profiles=profiles,
            mode=computed["mode"],
            scope=computed["scope"],
            watermark=dt.datetime.fromisoformat(computed["watermark"]) if computed["watermark"] else None,
            stats=computed["stats"],
            drop_account_ids=computed["drop_account_ids"],
        )
        audience = ctx["params"]["audience"].strip() or None
        summary = job.load(
            engine_for(CRM_DB),
            result,
            business_date=dt.date.fromisoformat(computed["business_date"]),
            run_id=facts["run_id"],
            run_after=facts["run_after"],
            started_at=facts["started_at"],
            requested_by=facts["requested_by"],
            audience_code=audience,
        )
        return {"business_date": computed["business_date"], "summary": summary}

    @task(trigger_rule="all_done")
    def send_run_report() -> dict:
        """E-mail the run report to the requester (also when a step failed) and close the run's row."""
        from crm.dag_helpers import send_report

        ctx = get_current_context()
        loaded = ctx["ti"].xcom_pull(task_ids="load_profiles") or {}
        return send_report(ctx, DAG_ID, upstream=["compute_profiles", "load_profiles"], summary=loaded.get("summary"))

    load_profiles(compute_profiles()) >> send_run_report()


crm_account_purchase_profile()
