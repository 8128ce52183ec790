"""Reference ERP schema: the demo's stand-in for a real ERP (TOTVS EMS2 and the like).

Routines never query these tables directly: they read include/sql/erp/*.sql,
whose column contracts are what a deployment adapts to its own ERP. This
metadata only creates the demo and test databases.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
)

from crm.db.crm_schema import NAMING

metadata = MetaData(naming_convention=NAMING)
Money = Numeric(18, 2, asdecimal=False)

customer_group = Table(
    "customer_group", metadata, Column("id", Integer, primary_key=True), Column("name", String(80), nullable=False)
)
representative = Table(
    "representative",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(120), nullable=False),
    Column("email", String(254)),
)
carrier = Table(
    "carrier", metadata, Column("id", Integer, primary_key=True), Column("name", String(120), nullable=False)
)
bearer = Table(
    "bearer",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(120), nullable=False),
    Column("bank_code", String(10)),
)
payment_condition = Table(
    "payment_condition",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(80), nullable=False),
    Column("installments", Integer, nullable=False),
    Column("days_between", Integer, nullable=False),
)

customer = Table(
    "customer",
    metadata,
    Column("code", Integer, primary_key=True, autoincrement=False, doc="cod-emitente"),
    Column("company_code", String(20), nullable=False),
    Column("name", String(160), nullable=False),
    Column("short_name", String(60)),
    Column("tax_id", String(20)),
    Column("person_type", String(2), nullable=False),
    Column("email", String(254)),
    Column("mobile_phone", String(30)),
    Column("group_id", ForeignKey("customer_group.id")),
    Column("representative_id", ForeignKey("representative.id")),
    Column("carrier_id", ForeignKey("carrier.id")),
    Column("payment_condition_id", ForeignKey("payment_condition.id")),
    Column("bearer_id", ForeignKey("bearer.id")),
    # Written by crm_erp_account_sync (include/sql/erp/customer_upsert.sql); null for customers made in the ERP.
    Column("phone1", String(30), doc="CRM phone of type TELEFONE_ERP1"),
    Column("phone2", String(30), doc="CRM phone of type TELEFONE_ERP2"),
    Column("fax1", String(30), doc="CRM phone of type FAX_ERP1"),
    Column("fax2", String(30), doc="CRM phone of type FAX_ERP2"),
    Column("address", String(260), doc="correspondence address: street, number, complement"),
    Column("district", String(80)),
    Column("city", String(80)),
    Column("state", String(40)),
    Column("postal_code", String(20)),
    Column("country", String(2)),
    Column("notes", Text, doc="CRM observations of type 'Integração', oldest first"),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)
Index("ix_customer_short_name", customer.c.short_name)

invoice = Table(
    "invoice",
    metadata,
    Column("id", Integer, primary_key=True, doc="entry order; breaks ties between same-day invoices"),
    Column("customer_code", Integer, nullable=False),
    Column("company_code", String(20), nullable=False),
    Column("series", String(5), nullable=False),
    Column("number", String(20), nullable=False),
    Column("issue_date", Date, nullable=False),
    Column("total_value", Money, nullable=False),
    Column("cancelled", Boolean, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)
Index("ix_invoice_customer_code", invoice.c.customer_code)
Index("ix_invoice_updated_at", invoice.c.updated_at)
Index("ix_invoice_issue_date", invoice.c.issue_date)

invoice_item = Table(
    "invoice_item",
    metadata,
    Column("invoice_id", ForeignKey("invoice.id"), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("product_code", String(30), nullable=False),
    Column("quantity", Numeric(14, 4, asdecimal=False), nullable=False),
    Column("unit_price", Money, nullable=False),
)

quote = Table(
    "quote",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("customer_code", Integer, nullable=False),
    Column("quote_date", Date, nullable=False),
    Column("total_value", Money, nullable=False),
    Column("status", String(12), nullable=False),
    Column("updated_at", DateTime, nullable=False),
)
Index("ix_quote_customer_code", quote.c.customer_code)
Index("ix_quote_updated_at", quote.c.updated_at)
Index("ix_quote_quote_date", quote.c.quote_date)

receivable = Table(
    "receivable",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("customer_code", Integer, nullable=False),
    Column("company_code", String(20), nullable=False),
    Column("document_number", String(30), nullable=False),
    Column("invoice_id", ForeignKey("invoice.id")),
    Column("issue_date", Date, nullable=False),
    Column("due_date", Date, nullable=False),
    Column("amount", Money, nullable=False),
    Column("paid_amount", Money, nullable=False, server_default="0"),
    Column("paid", Boolean, nullable=False),
    Column("paid_at", DateTime),
    Column("payment_method", String(12), nullable=False),
    Column("status", String(12), nullable=False),
    Column("bearer_id", ForeignKey("bearer.id")),
    Column("updated_at", DateTime, nullable=False),
    CheckConstraint("payment_method in ('boleto', 'pix_carne', 'other')", name="payment_method"),
    CheckConstraint("status in ('open', 'in_progress', 'paid', 'cancelled')", name="status"),
)
Index("ix_receivable_due_date", receivable.c.due_date)
Index("ix_receivable_customer_code", receivable.c.customer_code)

credit_info = Table(
    "credit_info",
    metadata,
    Column("customer_code", Integer, primary_key=True, autoincrement=False),
    Column("credit_limit", Money),
    Column("months_inactive", Integer, doc="months without purchase after which the customer counts as inactive"),
    Column("updated_at", DateTime, nullable=False),
)

sales_order = Table(
    "sales_order",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("customer_code", Integer, nullable=False),
    Column("company_code", String(20), nullable=False),
    Column("order_number", String(30), nullable=False),
    Column("channel", String(20), nullable=False),
    Column("total_value", Money, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    CheckConstraint("channel in ('infinite_shelf', 'omni', 'store', 'b2b')", name="channel"),
)

order_stage_event = Table(
    "order_stage_event",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_id", ForeignKey("sales_order.id"), nullable=False),
    Column("stage", String(30), nullable=False),
    Column("occurred_at", DateTime, nullable=False),
)
Index("ix_order_stage_event_occurred_at", order_stage_event.c.occurred_at)
