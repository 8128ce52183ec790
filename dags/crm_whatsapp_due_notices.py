"""
### WhatsApp notices of bills about to fall due (TOTVS Moda, process 103 of GERFP095)

Daily (`include/config/routines.yaml`): for the companies in `companies` (empty: every company with an
active due configuration), the receivables due on the business date + `days_before_due` (empty: the
`rd_conversas` connection's `days_before_due`, QT_DIAS_AVISO_VENC) get one WhatsApp template message:
message type `due_boleto` for boleto bills, `due_carne` for PIX carnê installments in progress, with
the template, chip and field list of the company's configuration (`crm_whatsapp_config`). Only
customers with an RD Conversas contact and a phone of the mobile type; the others are skipped with
the reason.

Companies run as one mapped task each, or as one processing when `group_companies` is on
(IN_AGRUPAFILTROEMP); either way the ledger rows are per company (routine
`crm_whatsapp_due_notices/<company>`, key `receivable <id> / due <date>`), so a bill gets one notice
per due date whatever the grouping, re-run or backfill. The run report breaks the counts down per company.

Connections: `crm_db`, `erp_db`, `rd_conversas`, `smtp_default`. Code: `crm.jobs.whatsapp`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from crm.config import routine_settings, schedule_for
from crm.dag_helpers import common_params, default_args, start_date
from crm.whatsapp_dag import dry_run_param, test_phone_param

DAG_ID = "crm_whatsapp_due_notices"
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
        "companies": Param(
            list(DEFAULTS.get("companies") or []),
            type="array",
            items={"type": "string", "maxLength": 20},
            title="Companies",
            description="Company codes (crm_company.code), one per line. Empty: every company with an active "
            "'due_boleto' or 'due_carne' configuration.",
        ),
        "group_companies": Param(
            bool(DEFAULTS.get("group_companies", False)),
            type="boolean",
            title="Group companies",
            description="One processing for all the companies (IN_AGRUPAFILTROEMP) instead of one mapped task each.",
        ),
        "days_before_due": Param(
            DEFAULTS.get("days_before_due"),
            type=["null", "integer"],
            minimum=0,
            maximum=60,
            title="Days before due",
            description="Notify bills due this many days after the business date. Empty: the rd_conversas "
            "connection's days_before_due (QT_DIAS_AVISO_VENC).",
        ),
        "dry_run": dry_run_param(),
        "test_phone": test_phone_param(),
        **common_params(),
    },
)
def crm_whatsapp_due_notices():
    @task
    def select_companies() -> list[list[str]]:
        """The companies of this run, as the groups the plan and send steps map over."""
        from airflow.sdk.exceptions import AirflowFailException

        from crm.db import CRM_DB, engine_for
        from crm.jobs import whatsapp as wa

        params = get_current_context()["params"]
        try:
            codes = wa.due_companies(engine_for(CRM_DB), params["companies"])
        except ValueError as exc:  # an unknown company code: retrying cannot help
            raise AirflowFailException(str(exc)) from exc
        return wa.company_groups(codes, params["group_companies"])

    @task
    def plan_notices(company_group: list[str]) -> dict:
        """Find the bills due in N days of these companies, build each message, write the ledger per company."""
        from airflow.sdk.exceptions import AirflowFailException

        from crm.dag_helpers import business_date, ledger_routine, run_facts
        from crm.db import CRM_DB, ERP_DB, engine_for
        from crm.jobs import whatsapp as wa
        from crm.notify.whatsapp import load_settings
        from crm.whatsapp_dag import test_phone

        ctx = get_current_context()
        params, facts = ctx["params"], run_facts(ctx)
        crm, settings = engine_for(CRM_DB), load_settings()
        bdate = business_date(ctx, SETTINGS["timezone"])
        try:
            test_to = test_phone(params)
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc
        days = params["days_before_due"]
        days = settings.days_before_due if days is None else int(days)
        plans = wa.plan_due_notices(
            crm, engine_for(ERP_DB), settings, bdate, company_group, days_before_due=days, test_phone=test_to
        )
        base = ledger_routine(DAG_ID, test_to)
        out: dict = {"companies": {}, "routines": {}, "samples": []}
        for code, plan in plans.items():
            routine = wa.company_routine(base, code)
            summary = wa.jsonable(plan.summary)
            if not params["dry_run"]:
                summary.update(wa.write_plan(crm, routine, plan, run_id=facts["run_id"], business_date=bdate))
            out["companies"][code] = summary
            out["routines"][code] = routine
            out["samples"] += plan.samples if params["dry_run"] else []
        return out

    @task
    def send_notices(planned: dict) -> dict:
        """Send this group's pending notices, company by company, over one HTTP session."""
        from crm.dag_helpers import run_facts
        from crm.db import CRM_DB, engine_for
        from crm.notify.dispatch import TransientFailures, dispatch
        from crm.notify.whatsapp import RdConversas, whatsapp_sender

        ctx = get_current_context()
        if ctx["params"]["dry_run"]:
            return {"dry_run": True}
        facts, ti, crm = run_facts(ctx), ctx["ti"], engine_for(CRM_DB)
        results, transient = {}, 0
        with RdConversas() as client:
            for code, routine in planned["routines"].items():
                result = dispatch(
                    crm,
                    routine,
                    whatsapp_sender(client, routine),
                    run_id=facts["run_id"],
                    owner=f"{DAG_ID}/{facts['run_id']}/{ti.task_id}/{ti.map_index}/{code}",
                    try_number=ti.try_number,
                    batch=int(DEFAULTS.get("send_batch", 200)),
                    raise_on_transient=False,
                )
                results[code] = result.as_dict()
                transient += result.retryable
        if transient:  # after every company had its turn: the task's retry sends only those
            raise TransientFailures(f"{transient} notice(s) still failing with transient errors: {results}")
        return results

    @task(trigger_rule="all_done")
    def send_run_report() -> dict:
        """The run report, broken down per company (counts by state and skip reason); always runs."""
        from crm.dag_helpers import ledger_routine
        from crm.db import CRM_DB, engine_for
        from crm.jobs import whatsapp as wa
        from crm.whatsapp_dag import report, test_phone

        ctx = get_current_context()
        groups = ctx["ti"].xcom_pull(task_ids="select_companies") or []
        try:
            base = ledger_routine(DAG_ID, test_phone(ctx["params"]))
        except ValueError:
            base = DAG_ID
        routines = {code: wa.company_routine(base, code) for group in groups for code in group}
        planned = ctx["ti"].xcom_pull(task_ids="plan_notices") or []
        planned = [planned] if isinstance(planned, dict) else [p for p in planned if p]
        plan_summaries = {code: s for p in planned for code, s in (p.get("companies") or {}).items()}
        per_company = wa.company_breakdown(engine_for(CRM_DB), routines, ctx["dag_run"].run_id)
        companies = {code: {**plan_summaries.get(code, {}), "ledger": per_company.get(code, {})} for code in routines}
        summary = {"companies": companies, "group_companies": ctx["params"]["group_companies"],
                   "dry_run": ctx["params"]["dry_run"]}  # fmt: skip
        samples = [s for p in planned for s in p.get("samples") or []][:5]
        return report(ctx, DAG_ID, upstream=["select_companies", "plan_notices", "send_notices"],
                      routines=list(routines.values()), summary=summary, samples=samples)  # fmt: skip

    send_notices.expand(planned=plan_notices.expand(company_group=select_companies())) >> send_run_report()


crm_whatsapp_due_notices()
