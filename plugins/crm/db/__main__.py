"""`python -m crm.db create-schema --url URL`: create the CRM tables in a real CRM database.

Creates the tables that are missing and leaves existing ones (and their rows) alone, so it is safe
to run again after an upgrade adds a table; it never alters an existing table's columns, but adds
the indexes an upgrade defines on it (an index only changes how fast the routines find rows). The reference ERP/GP
schemas are only for the demo and tests (`--which erp|gp`): a real ERP/GP is reached only through
include/sql (read, and written by crm_erp_account_sync through erp/customer_upsert.sql).
"""

from __future__ import annotations

import argparse

from crm.db import crm_schema, engine_from_url, erp_schema, gp_schema

METADATA = {"crm": crm_schema.metadata, "erp": erp_schema.metadata, "gp": gp_schema.metadata}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m crm.db", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create-schema", help="create missing tables (existing ones are left alone)")
    create.add_argument("--url", required=True, help="SQLAlchemy URL, e.g. postgresql+psycopg2://user@host/crm")
    create.add_argument("--which", choices=sorted(METADATA), default="crm")
    args = parser.parse_args(argv)
    engine = engine_from_url(args.url)
    metadata = METADATA[args.which]
    metadata.create_all(engine)
    for table in metadata.sorted_tables:  # create_all skips the indexes of tables that already exist
        for index in table.indexes:
            index.create(engine, checkfirst=True)
    print(f"{args.which} schema ready at {engine.url.render_as_string(hide_password=True)}")


# Airflow's plugin loader imports every .py under plugins/ as a top-level module (plugins/.airflowignore
# excludes crm/); the package check is the second fence against running this inside the scheduler.
if __name__ == "__main__" and __package__ == "crm.db":
    main()
