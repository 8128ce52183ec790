"""Reference schema of the health-plan system (GP): beneficiaries and their contracts.

Like the ERP schema, only the demo and tests create it; routines read
include/sql/gp/*.sql.
"""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Column, Date, ForeignKey, Integer, MetaData, String, Table

from crm.db.crm_schema import NAMING

metadata = MetaData(naming_convention=NAMING)

contract = Table(
    "contract",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("number", String(30), nullable=False, unique=True),
    Column("status", String(12), nullable=False),
    Column("start_date", Date, nullable=False),
    Column("end_date", Date),
    CheckConstraint("status in ('active', 'suspended', 'cancelled')", name="status"),
)

beneficiary = Table(
    "beneficiary",
    metadata,
    Column("code", String(30), primary_key=True),
    Column("contract_id", ForeignKey("contract.id"), nullable=False),
    Column("name", String(160), nullable=False),
    Column("tax_id", String(20)),
    Column("status", String(12), nullable=False),
    CheckConstraint("status in ('active', 'suspended', 'cancelled')", name="status"),
)
