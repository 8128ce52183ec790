"""SQLAlchemy engines for the Airflow connections `crm_db`, `erp_db`, `gp_db`.

Resolved inside tasks only (never at DAG parse time). A connection may carry a
full SQLAlchemy URL in its extra (`sqlalchemy_url`), which is how a
deployment points at any database SQLAlchemy supports; otherwise the URL is
built from the connection's fields:

- type `sqlite`: the database file, in the connection's schema (where Airflow
  puts the path of a URI, `AIRFLOW_CONN_CRM_DB='sqlite:////abs/crm.db'`, and
  where airflow_settings.yaml sets it) or in its host (host wins if both are set);
- type `postgres`/`postgresql` (optionally `+driver`, default psycopg2): host,
  port, schema (the database), login and password.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event

CRM_DB = "crm_db"
ERP_DB = "erp_db"
GP_DB = "gp_db"

_POSTGRES_TYPES = {"postgres", "postgresql"}


def url_from_connection(conn: Any) -> str:
    """The SQLAlchemy URL an Airflow Connection stands for."""
    extra = conn.extra_dejson or {}
    if extra.get("sqlalchemy_url"):
        return str(extra["sqlalchemy_url"])
    ctype = (conn.conn_type or "").lower()
    if ctype == "sqlite":
        # AIRFLOW_CONN_X='sqlite:////abs/path.db' parses to schema='/abs/path.db' and an empty host.
        path = conn.host or conn.schema
        if not path:
            raise ValueError(
                f"connection {conn.conn_id!r}: a sqlite connection needs the database file in schema (or host)"
            )
        return f"sqlite:///{path}"
    if ctype.split("+")[0] in _POSTGRES_TYPES:
        driver = ctype.split("+")[1] if "+" in ctype else "psycopg2"
        return URL.create(
            f"postgresql+{driver}",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or None,
        ).render_as_string(hide_password=False)
    raise ValueError(
        f"connection {conn.conn_id!r}: unsupported type {conn.conn_type!r}; "
        "use sqlite/postgres or put a SQLAlchemy URL in the extra as 'sqlalchemy_url'"
    )


def engine_for(conn_id: str) -> Engine:
    """Engine of an Airflow connection; call it inside a task."""
    from airflow.sdk import BaseHook

    return engine_from_url(url_from_connection(BaseHook.get_connection(conn_id)))


@functools.cache
def engine_from_url(url: str) -> Engine:
    """One pooled engine per URL and process; SQLite gets WAL and a busy timeout so readers do not block writers."""
    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        # pysqlite's own BEGIN handling breaks SAVEPOINT and defers BEGIN past the first SELECT;
        # SQLAlchemy's documented recipe: driver autocommit, and emit BEGIN ourselves.
        event.listen(engine, "connect", _sqlite_pragmas)
        # execution_options(sqlite_begin="IMMEDIATE") takes the write lock up front (claims: read-then-write).
        event.listen(
            engine,
            "begin",
            lambda conn: conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', '')}".strip()),
        )
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
    dbapi_conn.isolation_level = None
