"""
### Class transition (TOTVS CRM crm251)

Moves accounts between classes (`crm_class`) when the rules of `crm_class_transition_rule`
(maintained by the business: from class, to class, measure, operator, threshold, window, priority)
fire. Measures: `accumulated_value` and `purchase_count` (in the last `window_months` calendar
months, or lifetime without a window), `days_since_last_purchase`, `months_as_customer`.
Evaluated over all accounts at once, or the members of the `audience` Param.

One transition per account per business date: among the rules an account satisfies, the lowest
priority number wins (ties: the lowest rule id; a rule without a priority comes after every
numbered one); an account satisfying no rule keeps its class.
Rules that cannot be evaluated fail the run in `check_rules`, naming each, before anything changes.

Runs when `crm_account_purchase_profile` has refreshed `crm_account_profile` (Asset
`crm://crm_db/crm_account_profile`), with its own cron fallback (`routines.yaml`). Each change is
written with a `crm_account_history` row, in one transaction; a re-run of the date changes nothing.
`dry_run` reports what would change. The run report (counts per transition and rule, CSV of the
changes) goes by e-mail.

Connections: `crm_db`, `erp_db`, `smtp_default`. Source query: `include/sql/erp/purchases_since.sql`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from crm.config import PROFILE_ASSET_URI, routine_settings, schedule_for
from crm.dag_helpers import common_params, default_args, start_date

DAG_ID = "crm_class_transition"
SETTINGS = routine_settings(DAG_ID)
PARAMS = SETTINGS["params"]


@dag(
    dag_id=DAG_ID,
    schedule=schedule_for(DAG_ID, assets=[PROFILE_ASSET_URI]),
    start_date=start_date(DAG_ID),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["crm", "erp", "crm251"],
    default_args=default_args(DAG_ID),
    params={
        "audience": Param(
            "",
            type="string",
            title="Audience",
            description="Code of a CRM audience (crm_audience.code) to evaluate only its members. Empty: all accounts.",
            maxLength=40,
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Evaluate every rule and report which accounts would move (counts and CSV); change nothing.",
        ),
        **common_params(),
    },
)
def crm_class_transition():
    @task
    def check_rules() -> dict:
        """Fail the run, naming each bad rule, if any active rule cannot be evaluated (retrying cannot help)."""
        from airflow.sdk.exceptions import AirflowFailException

        from crm.db import CRM_DB, engine_for
        from crm.jobs import class_transition as job

        try:
            rules = job.check(engine_for(CRM_DB))
        except job.RuleError as exc:
            raise AirflowFailException(str(exc)) from exc
        return {"active_rules": [r.label() for r in rules]}

    @task
    def transition_classes(checked: dict) -> dict:
        """Evaluate the rules over the accounts, stage the changes for the report, write them (unless dry run)."""
        import datetime as dt

        from airflow.sdk.exceptions import AirflowFailException

        from crm.dag_helpers import business_date, run_facts, stage_frame
        from crm.db import CRM_DB, ERP_DB, engine_for
        from crm.jobs import class_transition as job

        ctx = get_current_context()
        params, facts = ctx["params"], run_facts(ctx)
        bdate = business_date(ctx, SETTINGS["timezone"])
        crm = engine_for(CRM_DB)
        try:
            plan = job.plan(crm, engine_for(ERP_DB), bdate, audience_code=params["audience"].strip() or None)
        except (job.RuleError, job.AudienceNotFound) as exc:  # rules changed since check_rules, or a bad Param
            raise AirflowFailException(str(exc)) from exc
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
        """E-mail the run report with the CSV of the changes (also when a step failed) and close the run."""
        from crm.dag_helpers import send_report, staged_csv_attachment

        ctx = get_current_context()
        done = ctx["ti"].xcom_pull(task_ids="transition_classes") or {}
        attachments, note = staged_csv_attachment(
            done.get("staged"),
            f"{DAG_ID}-{done.get('business_date')}-changes.csv",
            int(PARAMS.get("report_max_rows", 100_000)),
        )
        summary = {**(done.get("summary") or {}), **note}
        return send_report(
            ctx, DAG_ID, upstream=["check_rules", "transition_classes"], summary=summary, attachments=attachments
        )

    transition_classes(check_rules()) >> send_run_report()


crm_class_transition()
