"""Data layer: CRM metadata, reference ERP/GP schemas, engines and the upsert."""

from crm.db.engines import CRM_DB, ERP_DB, GP_DB, engine_for, engine_from_url
from crm.db.upsert import UpsertResult, upsert, write_transaction

__all__ = ["CRM_DB", "ERP_DB", "GP_DB", "UpsertResult", "engine_for", "engine_from_url", "upsert", "write_transaction"]
