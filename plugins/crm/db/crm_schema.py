"""SQLAlchemy Core metadata of the CRM tables every routine reads or writes.

Core (not the ORM) because routines work set-wise: DataFrames in, upserts out.
All tables are created at once, even those only later routines use, so one
`create_all` gives a deployment its whole schema.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# Money: exact NUMERIC in PostgreSQL, floats in Python (pandas works in float64; values are rounded to cents).
Money = Numeric(18, 2, asdecimal=False)
CHANNELS = ("email", "sms", "whatsapp")


def _timestamps() -> list[Column]:
    return [
        Column("created_at", DateTime, nullable=False, server_default=func.current_timestamp()),
        Column("updated_at", DateTime, nullable=False, server_default=func.current_timestamp()),
    ]


company = Table(
    "crm_company",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(20), nullable=False, unique=True),
    Column("name", String(120), nullable=False),
    Column("tax_id", String(20)),
    Column("email", String(254), doc="sender address of the company's e-mails"),
    Column("phone", String(30)),
    Column("timezone", String(64), nullable=False, server_default="America/Sao_Paulo"),
    Column("locale", String(10), nullable=False, server_default="pt_BR"),
    Column("active", Boolean, nullable=False, server_default="1"),
    *_timestamps(),
)

user = Table(
    "crm_user",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("login", String(60), nullable=False, unique=True),
    Column("name", String(120), nullable=False),
    Column("email", String(254)),
    Column("mobile_phone", String(30)),
    Column("locale", String(10), nullable=False, server_default="pt_BR"),
    Column("is_supervisor", Boolean, nullable=False, server_default="0"),
    Column("active", Boolean, nullable=False, server_default="1"),
    *_timestamps(),
)

account_class = Table(
    "crm_class",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(20), nullable=False, unique=True),
    Column("name", String(80), nullable=False),
    Column("rank", Integer, nullable=False, server_default="0"),
    Column("description", Text),
)

customer_type = Table(
    "crm_customer_type",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(20), nullable=False, unique=True),
    Column("name", String(80), nullable=False),
    Column(
        "integrates_erp",
        Boolean,
        nullable=False,
        server_default="0",
        doc="accounts of this type are pushed to the ERP (crm_erp_account_sync): 'Tipo de Conta x Tipo de Cliente'",
    ),
)

account = Table(
    "crm_account",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("company_id", ForeignKey("crm_company.id"), nullable=False),
    Column("kind", String(10), nullable=False, server_default="account"),
    Column("person_type", String(2), nullable=False),
    Column("name", String(160), nullable=False),
    Column("short_name", String(60)),
    Column("tax_id", String(20), doc="CPF (PF) or CNPJ (PJ), digits only"),
    Column("email", String(254)),
    Column("birth_date", Date),
    Column("locale", String(10)),
    Column("owner_id", ForeignKey("crm_user.id")),
    Column("class_id", ForeignKey("crm_class.id")),
    Column("erp_customer_code", Integer, unique=True, doc="ERP customer code; null for leads not yet in the ERP"),
    Column("gp_beneficiary_code", String(30)),
    Column("customer_type_id", ForeignKey("crm_customer_type.id")),
    # What the account sends to the ERP (ids of the ERP's reference tables, checked by crm_erp_account_sync).
    Column("erp_group_id", Integer, doc="ERP customer group"),
    Column("erp_representative_id", Integer, doc="ERP sales representative"),
    Column("erp_carrier_id", Integer, doc="ERP carrier"),
    Column("erp_bearer_id", Integer, doc="ERP bearer (portador: bank or wallet that collects)"),
    Column("erp_payment_condition_id", Integer, doc="ERP payment condition"),
    Column("erp_status", String(20), doc="status code from the ERP integration (crm_account_status)"),
    Column("gp_status", String(20), doc="status code from the health-plan system GP"),
    Column("status_label", String(60), doc="display label of the deciding status, in the account's locale"),
    Column("active", Boolean, nullable=False, server_default="1"),
    Column("opt_out_email", Boolean, nullable=False, server_default="0"),
    Column("opt_out_sms", Boolean, nullable=False, server_default="0"),
    Column("opt_out_whatsapp", Boolean, nullable=False, server_default="0"),
    *_timestamps(),
    CheckConstraint("kind in ('lead', 'account')", name="kind"),
    CheckConstraint("person_type in ('PF', 'PJ')", name="person_type"),
)
Index("ix_crm_account_company_id", account.c.company_id)
# Incremental routines find the accounts changed since their last run by this stamp (the CRM's change signal).
# The ERP code rides along so that lookup (id, code) reads the index alone, not the wide account rows:
# the purchase profile's 12,790 accounts of a one-hour overlap in 4 ms instead of 22 ms (1 M accounts).
Index("ix_crm_account_updated_at_code", account.c.updated_at, account.c.erp_customer_code)
Index("ix_crm_account_owner_id", account.c.owner_id)

phone = Table(
    "crm_phone",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", ForeignKey("crm_account.id")),
    Column("contact_id", ForeignKey("crm_contact.id")),
    Column("phone_type", String(20), nullable=False, doc="mobile, landline, commercial, fax, ..."),
    Column("number", String(30), nullable=False, doc="E.164 when known (+5511...)"),
    Column("is_primary", Boolean, nullable=False, server_default="0"),
    *_timestamps(),
    CheckConstraint("account_id is not null or contact_id is not null", name="owner"),
)
Index("ix_crm_phone_account_id", phone.c.account_id)
Index("ix_crm_phone_contact_id", phone.c.contact_id)

job_function = Table(
    "crm_job_function",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(80), nullable=False, unique=True),
)

contact = Table(
    "crm_contact",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", ForeignKey("crm_account.id"), nullable=False),
    Column("name", String(160), nullable=False),
    Column("email", String(254)),
    Column("job_function_id", ForeignKey("crm_job_function.id")),
    Column("locale", String(10)),
    Column("active", Boolean, nullable=False, server_default="1"),
    Column("opt_out_email", Boolean, nullable=False, server_default="0"),
    *_timestamps(),
)
Index("ix_crm_contact_account_id", contact.c.account_id)

audience = Table(
    "crm_audience",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(40), nullable=False, unique=True),
    Column("name", String(120), nullable=False),
    Column("description", Text),
)

audience_member = Table(
    "crm_audience_member",
    metadata,
    Column("audience_id", ForeignKey("crm_audience.id"), primary_key=True),
    Column("account_id", ForeignKey("crm_account.id"), primary_key=True),
)

# Movement: what the inactivity monitor counts.
activity = Table(
    "crm_activity",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", ForeignKey("crm_account.id"), nullable=False),
    Column("user_id", ForeignKey("crm_user.id")),
    Column("kind", String(20), nullable=False, doc="call, visit, e-mail, meeting, ..."),
    Column("subject", String(200)),
    Column("occurred_at", DateTime, nullable=False),
    *_timestamps(),
)
Index("ix_crm_activity_account_occurred", activity.c.account_id, activity.c.occurred_at)

opportunity = Table(
    "crm_opportunity",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", ForeignKey("crm_account.id"), nullable=False),
    Column("user_id", ForeignKey("crm_user.id")),
    Column("title", String(200), nullable=False),
    Column("stage", String(40), nullable=False),
    Column("value", Money),
    Column("opened_at", DateTime, nullable=False),
    Column("closed_at", DateTime),
    *_timestamps(),
)
Index("ix_crm_opportunity_account_opened", opportunity.c.account_id, opportunity.c.opened_at)

ticket = Table(
    "crm_ticket",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", ForeignKey("crm_account.id"), nullable=False),
    Column("user_id", ForeignKey("crm_user.id")),
    Column("subject", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("opened_at", DateTime, nullable=False),
    Column("closed_at", DateTime),
    *_timestamps(),
)
Index("ix_crm_ticket_account_opened", ticket.c.account_id, ticket.c.opened_at)

address = Table(
    "crm_address",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", ForeignKey("crm_account.id"), nullable=False),
    Column("address_type", String(20), nullable=False),
    Column("street", String(160)),
    Column("number", String(20)),
    Column("complement", String(80)),
    Column("district", String(80)),
    Column("city", String(80)),
    Column("state", String(40)),
    Column("postal_code", String(20)),
    Column("country", String(2), nullable=False, server_default="BR"),
    CheckConstraint("address_type in ('correspondence', 'billing', 'delivery')", name="address_type"),
    UniqueConstraint("account_id", "address_type"),
)

observation_type = Table(
    "crm_observation_type",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(80), nullable=False, unique=True),
)

observation = Table(
    "crm_observation",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", ForeignKey("crm_account.id"), nullable=False),
    Column("observation_type_id", ForeignKey("crm_observation_type.id"), nullable=False),
    Column("text", Text, nullable=False),
    Column("created_by", ForeignKey("crm_user.id")),
    *_timestamps(),
)

# crm338 "dados complementares": the nine purchase fields, one row per account.
account_profile = Table(
    "crm_account_profile",
    metadata,
    Column("account_id", ForeignKey("crm_account.id"), primary_key=True),
    Column(
        "erp_customer_code",
        Integer,
        nullable=False,
        doc="the account's ERP customer code the profile was computed from (a changed code means a stale profile)",
    ),
    Column("first_purchase_date", Date),
    Column("first_purchase_value", Money),
    Column("last_purchase_date", Date),
    Column("last_purchase_value", Money),
    Column("accumulated_value", Money, nullable=False),
    Column("purchase_count", Integer, nullable=False),
    Column("last_quote_date", Date),
    Column("days_since_last_purchase", Integer),
    Column("last_invoice_number", String(40)),
    Column(
        "erp_invoice_high_water",
        Integer,
        doc="highest ERP invoice_id counted in the profile (null: none). An incremental run adds invoices above"
        " it to the stored profile instead of re-reading the customer (crm.jobs.purchase_profile)",
    ),
    Column("business_date", Date, nullable=False, doc="business date the profile was computed for"),
    Column("run_id", String(250), nullable=False, doc="Airflow run that last changed the row"),
    Column("updated_at", DateTime, nullable=False),
    CheckConstraint("purchase_count >= 0", name="purchase_count"),
)

profile_seen_invoice = Table(
    "crm_profile_seen_invoice",
    metadata,
    Column("invoice_id", BigInteger, primary_key=True, doc="ERP invoice_id"),
    Column(
        "digest",
        BigInteger,
        nullable=False,
        doc="hash of the invoice's profile columns and updated_at as the last successful run first read it",
    ),
    Column("run_id", String(250), nullable=False, doc="the crm_account_purchase_profile run that read it"),
    comment="ERP invoices stamped inside the watermark overlap of the last successful purchase-profile run:"
    " the next run does not re-read a customer for one of them that has not changed since",
)

class_transition_rule = Table(
    "crm_class_transition_rule",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("from_class_id", ForeignKey("crm_class.id"), doc="null: from any class"),
    Column("to_class_id", ForeignKey("crm_class.id"), nullable=False),
    Column(
        "measure", String(40), nullable=False, doc="accumulated_value, purchase_count, days_since_last_purchase, ..."
    ),
    Column("operator", String(4), nullable=False, doc=">=, >, <=, <, =, !="),
    Column("threshold", Float, nullable=False),
    Column("window_months", Integer, doc="look-back for windowed measures"),
    Column("priority", Integer, doc="lowest first; null: after every numbered rule (ties: lowest id)"),
    Column("active", Boolean, nullable=False, server_default="1"),
    Column("description", Text),
)

inactivity_profile = Table(
    "crm_inactivity_profile",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(40), nullable=False, unique=True),
    Column("name", String(120), nullable=False),
    Column("period_days", Integer, nullable=False),
    Column("count_activities", Boolean, nullable=False, server_default="1"),
    Column("count_opportunities", Boolean, nullable=False, server_default="1"),
    Column("count_tickets", Boolean, nullable=False, server_default="1"),
    Column("count_purchases", Boolean, nullable=False, server_default="1"),
    Column("transfer", Boolean, nullable=False, server_default="0"),
    Column("transfer_to_user_ids", Text, doc="JSON list of crm_user ids; several means round-robin"),
    Column("notify_user_ids", Text, doc="JSON list of crm_user ids to notify"),
    Column("email_template", String(80), nullable=False),
    Column("active", Boolean, nullable=False, server_default="1"),
    CheckConstraint("period_days > 0", name="period_days"),
)

reminder_settings = Table(
    "crm_reminder_settings",
    metadata,
    Column("company_id", ForeignKey("crm_company.id"), primary_key=True),
    Column("enabled", Boolean, nullable=False, server_default="1"),
    Column("sender_user_id", ForeignKey("crm_user.id"), doc="operator on whose behalf reminders go out"),
    Column("sender_email", String(254)),
    *[
        col
        for side in ("customer", "operator")
        for col in (
            Column(f"{side}_defaults_enabled", Boolean, nullable=False, server_default="0"),
            Column(f"{side}_default_channel", String(10), nullable=False, server_default="sms"),
            Column(f"{side}_sms_template", String(80)),
            Column(f"{side}_sms_offset_minutes", Integer),
            Column(f"{side}_email_template", String(80)),
            Column(f"{side}_email_offset_minutes", Integer),
        )
    ],
)

task = Table(
    "crm_task",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("company_id", ForeignKey("crm_company.id"), nullable=False),
    Column("account_id", ForeignKey("crm_account.id")),
    Column("operator_id", ForeignKey("crm_user.id")),
    Column("title", String(200), nullable=False),
    Column("description", Text),
    Column("starts_at", DateTime, nullable=False, doc="'date from', local time of the company's timezone"),
    Column("status", String(12), nullable=False, server_default="open"),
    Column("recipients", String(10), nullable=False, server_default="customers"),
    *[
        col
        for side in ("customer", "operator")
        for col in (
            Column(f"{side}_channel", String(10), doc="null: the company default"),
            Column(f"{side}_offset_minutes", Integer),
            Column(f"{side}_template", String(80)),
        )
    ],
    Column("recurrence_freq", String(10), doc="daily, weekly, monthly; null for a one-off task"),
    Column("recurrence_interval", Integer, nullable=False, server_default="1"),
    Column("recurrence_until", DateTime),
    Column("recurrence_count", Integer),
    *_timestamps(),
    CheckConstraint("status in ('open', 'completed', 'cancelled')", name="status"),
    CheckConstraint("recipients in ('customers', 'operators', 'both')", name="recipients"),
    CheckConstraint("recurrence_freq is null or recurrence_freq in ('daily', 'weekly', 'monthly')", name="freq"),
)

whatsapp_template = Table(
    "crm_whatsapp_template",
    metadata,
    Column("name", String(120), primary_key=True),
    Column("language", String(10)),
    Column("status", String(20)),
    Column("body", Text),
    Column("parameter_count", Integer),
    Column("fetched_at", DateTime, nullable=False),
)

whatsapp_config = Table(
    "crm_whatsapp_config",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("company_id", ForeignKey("crm_company.id"), nullable=False),
    Column("message_type", String(40), nullable=False, doc="due_boleto, due_carne, order_stage:<stage>, ..."),
    Column("template_name", ForeignKey("crm_whatsapp_template.name"), nullable=False),
    Column("chip", String(30), doc="sender number; null: the connection's default"),
    Column("active", Boolean, nullable=False, server_default="1"),
    Column("parameter_fields", Text, nullable=False, server_default="[]", doc="JSON list of field names"),
    *_timestamps(),
    UniqueConstraint("company_id", "message_type"),
)

external_id = Table(
    "crm_external_id",
    metadata,
    Column("account_id", ForeignKey("crm_account.id"), primary_key=True),
    Column("system", String(30), primary_key=True, doc="rd_conversas, ..."),
    Column("external_id", String(120), nullable=False),
    Column("phone_number", String(30), doc="the number the contact was sent with"),
    Column("synced_at", DateTime, nullable=False),
)

account_history = Table(
    "crm_account_history",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", ForeignKey("crm_account.id"), nullable=False),
    Column("field", String(40), nullable=False),
    Column("old_value", Text),
    Column("new_value", Text),
    Column("routine", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("business_date", Date, nullable=False),
    Column("changed_at", DateTime, nullable=False),
)
Index("ix_crm_account_history_account_id", account_history.c.account_id)
# "What did this routine change on that date?": re-runs of a date (class transition) and reports ask it.
Index("ix_crm_account_history_routine_date", account_history.c.routine, account_history.c.business_date)

notification = Table(
    "crm_notification",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("routine", String(250), nullable=False),
    Column("channel", String(10), nullable=False),
    Column("recipient", String(254), nullable=False),
    Column("business_key", String(250), nullable=False),
    Column("state", String(10), nullable=False, server_default="pending"),
    Column("reason", String(120), doc="why skipped"),
    Column("account_id", ForeignKey("crm_account.id")),
    Column("company_id", ForeignKey("crm_company.id")),
    Column("business_date", Date, doc="the run's business date the row was planned for"),
    Column("payload", Text, doc="JSON: the rendered message (or what the channel needs to build it)"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("retryable", Boolean, nullable=False, server_default="1", doc="false: a permanent failure"),
    Column("last_error", Text),
    Column("provider_message_id", String(250)),
    Column("run_id", String(250), nullable=False, doc="the run that last planned or claimed the row"),
    Column("claim_token", String(80), doc="which task attempt holds the row while it is 'sending'"),
    Column("claimed_at", DateTime),
    Column("attempted_at", DateTime, doc="set, and committed, right before the message leaves: crash => unknown"),
    Column("sent_at", DateTime),
    *_timestamps(),
    UniqueConstraint("routine", "channel", "recipient", "business_key"),
    CheckConstraint("state in ('pending', 'sending', 'sent', 'failed', 'unknown', 'skipped')", name="state"),
    CheckConstraint(f"channel in {CHANNELS!r}", name="channel"),
)
Index("ix_crm_notification_routine_state", notification.c.routine, notification.c.state)
Index("ix_crm_notification_run_id", notification.c.run_id)
Index("ix_crm_notification_company", notification.c.routine, notification.c.company_id, notification.c.business_date)

routine_run = Table(
    "crm_routine_run",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("dag_id", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("business_date", Date, nullable=False),
    Column("scope", String(80), nullable=False, server_default="all", doc="'all' or 'audience:<code>'"),
    Column("status", String(12), nullable=False),
    Column("requested_by", String(250)),
    Column("notify_to", Text, doc="JSON list of addresses the summary went to"),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("duration_seconds", Float),
    Column("watermark", DateTime, doc="source high-water mark this run read up to (incremental routines)"),
    Column("summary", Text, doc="JSON counts and errors"),
    UniqueConstraint("dag_id", "run_id"),
    CheckConstraint("status in ('running', 'success', 'failed')", name="status"),
)
Index("ix_crm_routine_run_dag_status", routine_run.c.dag_id, routine_run.c.status)
