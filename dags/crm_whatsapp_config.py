"""
### RD Conversas configuration maintenance (TOTVS Moda INTFM037: "Consultar templates", "Replicar dados")

Manual only. `fetch_templates` reads RD Conversas' template catalogue (every page) into
`crm_whatsapp_template`, so message configurations (`crm_whatsapp_config`, one per company and
message type, enforced by the database) can only name templates that exist there (foreign key).
Templates the API no longer lists are kept with status `REMOVED` (configurations still point at
them; their notices then fail at plan time, visibly). `replicate_from` + `replicate_to` copy one
company's configurations (all, or the `message_types` listed) to other companies in one transaction,
overwriting theirs of the same type.

Connections: `crm_db`, `rd_conversas`, `smtp_default`. Code: `crm.jobs.whatsapp`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from crm.config import schedule_for
from crm.dag_helpers import common_params, default_args, start_date

DAG_ID = "crm_whatsapp_config"


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
        "fetch_templates": Param(
            True,
            type="boolean",
            title="Fetch templates",
            description="Read RD Conversas' template catalogue (every page) into crm_whatsapp_template.",
        ),
        "replicate_from": Param(
            "",
            type="string",
            title="Replicate from company",
            description="Company code whose message configurations are copied. Empty: no replication.",
            maxLength=20,
        ),
        "replicate_to": Param(
            [],
            type="array",
            items={"type": "string", "maxLength": 20},
            title="Replicate to companies",
            description="Company codes that receive the copy (their configurations of the same types are replaced).",
        ),
        "message_types": Param(
            [],
            type="array",
            items={"type": "string", "maxLength": 40},
            title="Message types",
            description="Only these message types (due_boleto, due_carne, order_stage:shipped, ...). Empty: all.",
        ),
        **common_params(),
    },
)
def crm_whatsapp_config():
    @task
    def fetch_templates() -> dict:
        """Page through the API's template catalogue and upsert it into the CRM."""
        from crm.db import CRM_DB, engine_for
        from crm.jobs.whatsapp import store_templates
        from crm.notify.whatsapp import RdConversas

        if not get_current_context()["params"]["fetch_templates"]:
            return {"skipped": True}
        with RdConversas() as client:
            templates = list(client.templates())
        return store_templates(engine_for(CRM_DB), templates)

    @task
    def replicate_configuration(fetched: dict) -> dict:
        """Copy one company's message configurations to the companies listed (one transaction)."""
        from airflow.sdk.exceptions import AirflowFailException

        from crm.db import CRM_DB, engine_for
        from crm.jobs.whatsapp import replicate_config

        params = get_current_context()["params"]
        source = (params["replicate_from"] or "").strip()
        if not source:
            return {"skipped": True}
        try:
            return replicate_config(engine_for(CRM_DB), source, params["replicate_to"], params["message_types"])
        except ValueError as exc:  # unknown companies, nothing to copy: retrying cannot help
            raise AirflowFailException(str(exc)) from exc

    @task(trigger_rule="all_done")
    def send_run_report() -> dict:
        """Record the run and e-mail what was fetched and replicated."""
        from crm.dag_helpers import send_report

        ctx = get_current_context()
        ti = ctx["ti"]
        summary = {
            "templates": ti.xcom_pull(task_ids="fetch_templates"),
            "replication": ti.xcom_pull(task_ids="replicate_configuration"),
        }
        return send_report(ctx, DAG_ID, upstream=["fetch_templates", "replicate_configuration"], summary=summary)

    replicate_configuration(fetch_templates()) >> send_run_report()


crm_whatsapp_config()
